"""Synthetic feature layouts and ranking batches for model and trainer tests."""

from __future__ import annotations

import torch

from ytdnn.features.layout import EmbeddingTableSpec, FeatureLayout, FeatureSpec, RankingBatch

# Dense columns, in layout.dense order: age (user, w1) → col 0; views (item, w3) → cols 1..3;
# hour (user, w2) → cols 4..5; previous_impressions (cross, w1) → col 6.
USER_DENSE_COLUMNS = [0, 4, 5]
CANDIDATE_DENSE_COLUMNS = [1, 2, 3, 6]


def make_layout(video_vocab: int = 20, user_vocab: int = 12, author_vocab: int = 6) -> FeatureLayout:
    """A layout with every kind of feature on every side, sides deliberately interleaved."""
    tables = [EmbeddingTableSpec("video_id", video_vocab, 4), EmbeddingTableSpec("user_id", user_vocab, 3),
              EmbeddingTableSpec("author_id", author_vocab, 2)]
    features = [
        FeatureSpec("video_id", "categorical", "item", "ids", table="video_id"),
        FeatureSpec("age", "dense", "user", "profile", width=1),
        FeatureSpec("user_id", "categorical", "user", "ids", table="user_id"),
        FeatureSpec("watched_video_ids", "multivalent", "user", "history", table="video_id"),
        FeatureSpec("views", "dense", "item", "video_stats", width=3),
        FeatureSpec("author_id", "categorical", "item", "ids", table="author_id"),
        FeatureSpec("hour", "dense", "user", "context", width=2),
        FeatureSpec("clicked_authors", "multivalent", "cross", "history", table="author_id"),
        FeatureSpec("previous_impressions", "dense", "cross", "history", width=1),
    ]
    return FeatureLayout(tables, features)


def make_batch(n_rows: int, layout: FeatureLayout | None = None, seed: int = 0,
               history_length: int = 5) -> RankingBatch:
    """Random ids (with OOV zeros and padding) and a watch time driven by the video id and dense col 1.

    Videos with an even id are watched ~3x longer: a network can learn it, a bias cannot.
    """
    layout = layout or make_layout()
    generator = torch.Generator().manual_seed(seed)
    vocab = {t.name: t.vocab_size for t in layout.tables}
    categorical = torch.stack([torch.randint(0, vocab[f.table], (n_rows,), generator=generator)  # type: ignore[index]
                               for f in layout.categorical], dim=1)
    multivalent = []
    for feature in layout.multivalent:
        ids = torch.randint(1, vocab[feature.table], (n_rows, history_length), generator=generator)  # type: ignore[index]
        keep = torch.rand((n_rows, history_length), generator=generator) < 0.6
        multivalent.append(ids * keep)
    dense = torch.rand((n_rows, layout.dense_width), generator=generator)
    video = categorical[:, 0]
    p_click = 0.3 + 0.3 * dense[:, 1]
    is_click = (torch.rand(n_rows, generator=generator) < p_click).float()
    mean_watch = torch.where(video % 2 == 0, 30.0, 10.0) * (0.5 + dense[:, 1])
    # Exponential watch times by inversion, so the draw uses the seeded generator.
    exponential = -torch.log(torch.rand(n_rows, generator=generator).clamp_min(1e-6))
    watch_time_s = is_click * mean_watch * exponential
    return RankingBatch(categorical, multivalent, dense, is_click, watch_time_s)
