"""Small shared helpers: atomic writes, JSON, seeding."""
