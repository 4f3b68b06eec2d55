"""``python -m ytdnn``: the command line (what ``torchrun -m ytdnn ...`` launches on each rank)."""

from __future__ import annotations

from ytdnn.cli import main

if __name__ == "__main__":
    main()
