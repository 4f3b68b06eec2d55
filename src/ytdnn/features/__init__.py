"""Features: vocabularies, quantile normalisers, leak-free history features, feature pipelines."""
