"""Plain ``torch.nn.Module`` networks: the ranking tower and shared embedding helpers."""

from __future__ import annotations

from ytdnn.models.embedding import EmbeddingBank, LayoutError, mean_of_bags
from ytdnn.models.ranking import RankingNet, load_weights, save_weights

__all__ = ["EmbeddingBank", "LayoutError", "RankingNet", "load_weights", "mean_of_bags", "save_weights"]
