"""The ranking feature pipeline: impressions (+ history) + users + videos → :class:`RankingBatch`.

Feature groups (each can be switched off for ablations; all on by default):

- ``ids``: impression video id, author id, music id, tags (multivalent, averaged), user id;
- ``context``: tab and hour of day (request context, user side);
- ``profile``: user profile columns: categoricals through their own vocabularies, numerics
  (follow/fans/friend counts, register days, …) through quantiles;
- ``video_stats``: duration and statistics of the videos table, mostly as rates (likes per play,
  complete plays per play, …) so that popularity and quality are separated, through quantiles;
- ``history``: :mod:`ytdnn.features.history` (the last N clicked ids share the ``video_id`` table
  with the impression video id).

Everything fitted — vocabularies (top values by *clicked* training impressions) and quantile
knots (over all training impressions, i.e. the distribution the network sees) — comes from the
training frame passed to :meth:`RankingFeaturePipeline.fit`; :meth:`transform` applies it to any
frame. Dense columns are [x̃, x̃², √x̃] per feature (plus a missing flag for the history
features that are null when there is no earlier click), all in [0, 1].

Profile columns, when not listed in the config, are chosen by a rule that fits both KuaiRand
(string columns plus ``X__num`` float twins) and the simulator: a float column is numeric when it
is not a ``__num`` twin, or when it is the twin of a count that the source also bucketed (a
sibling ``X_range`` column exists: follow/fans/friend counts, register days); every non-float
column except ``user_id`` is categorical unless its float twin was taken as numeric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ytdnn.features.history import (
    CLICKED_IDS,
    DENSE_HISTORY_COLUMNS,
    HISTORY_COLUMNS,
    HistoryConfig,
    HistoryError,
    compute_history,
    history_for_requests,
)
from ytdnn.features.layout import EmbeddingTableSpec, FeatureLayout, FeatureSpec, RankingBatch, Side
from ytdnn.features.quantile import MissingPolicy, QuantileNormaliser
from ytdnn.features.vocab import Vocabulary, embedding_dim
from ytdnn.utils.io import atomic_write_json, read_json

FeatureGroup = Literal["ids", "video_stats", "history", "profile", "context"]
FEATURE_GROUPS: tuple[FeatureGroup, ...] = ("ids", "video_stats", "history", "profile", "context")
PIPELINE_FORMAT = "ytdnn-ranking-features-v1"
STATE_FILE = "ranking_features.json"
NUM_SUFFIX = "__num"


class FeaturePipelineError(ValueError):
    """The pipeline was given a frame it cannot use (missing column, not fitted, bad saved state)."""


class VideoStat(BaseModel):
    """A video statistic feature: ``numerator`` / ``denominator`` (or the raw column when no denominator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    numerator: str
    denominator: str | None = None


DEFAULT_VIDEO_STATS: tuple[VideoStat, ...] = (
    VideoStat(name="duration_s", numerator="duration_s"),
    VideoStat(name="show_cnt", numerator="show_cnt"),  # exposure: how much the platform pushes it
    VideoStat(name="play_rate", numerator="play_cnt", denominator="show_cnt"),
    VideoStat(name="valid_play_rate", numerator="valid_play_cnt", denominator="play_cnt"),
    VideoStat(name="complete_play_rate", numerator="complete_play_cnt", denominator="play_cnt"),
    VideoStat(name="long_play_rate", numerator="long_time_play_cnt", denominator="play_cnt"),
    VideoStat(name="short_play_rate", numerator="short_time_play_cnt", denominator="play_cnt"),
    VideoStat(name="mean_play_duration", numerator="play_duration", denominator="play_cnt"),
    VideoStat(name="play_progress", numerator="play_progress"),
    VideoStat(name="like_rate", numerator="like_cnt", denominator="play_cnt"),
    VideoStat(name="comment_rate", numerator="comment_cnt", denominator="play_cnt"),
    VideoStat(name="follow_rate", numerator="follow_cnt", denominator="play_cnt"),
    VideoStat(name="share_rate", numerator="share_cnt", denominator="play_cnt"),
    VideoStat(name="collect_rate", numerator="collect_cnt", denominator="play_cnt"),
    VideoStat(name="reduce_similar_rate", numerator="reduce_similar_cnt", denominator="play_cnt"),
)


class RankingFeatureConfig(BaseModel):
    """What the ranking feature pipeline builds; a sub-config of the ranker job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    groups: list[FeatureGroup] = Field(default_factory=lambda: list(FEATURE_GROUPS),
                                       description="feature groups to build (ablations switch them off)")
    video_vocab_size: int = Field(100_000, ge=0, description="max video ids kept (shared with the history ids)")
    author_vocab_size: int = Field(50_000, ge=0)
    music_vocab_size: int = Field(50_000, ge=0)
    tag_vocab_size: int = Field(2_000, ge=0)
    user_vocab_size: int = Field(200_000, ge=0)
    context_vocab_size: int = Field(100, ge=0, description="max values per context feature (tab, hour)")
    profile_vocab_size: int = Field(500, ge=0, description="max values per categorical profile column")
    min_count: int = Field(1, ge=1, description="values seen in fewer clicked training impressions map to OOV")
    max_tags: int = Field(4, ge=1, description="tags kept per video (padded with 0)")
    embedding_multiplier: float = Field(4.0, gt=0, description="k in dim = clip(round(k·log2 V), min, max)")
    embedding_min_dim: int = Field(4, ge=1)
    embedding_max_dim: int = Field(64, ge=1)
    n_quantiles: int = Field(100, ge=1, description="quantile knots per continuous feature")
    hour_timezone: str = Field("UTC", description="time zone of the hour-of-day context feature")
    video_stats: list[VideoStat] = Field(default_factory=lambda: list(DEFAULT_VIDEO_STATS),
                                         description="video statistics; those whose columns are absent are skipped")
    profile_categorical: list[str] | None = Field(None, description="users columns as categoricals; None = auto")
    profile_numeric: list[str] | None = Field(None, description="users columns as quantile numerics; None = auto")
    history: HistoryConfig = Field(default_factory=HistoryConfig)

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: list[FeatureGroup]) -> list[FeatureGroup]:
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups repeat an entry: {groups}")
        return groups

    @field_validator("video_stats")
    @classmethod
    def _unique_stats(cls, stats: list[VideoStat]) -> list[VideoStat]:
        names = [s.name for s in stats]
        if len(set(names)) != len(names):
            raise ValueError(f"video_stats names repeat: {names}")
        return stats


# ---- the plan: which raw column feeds which feature ----------------------------------------------------------

@dataclass(frozen=True)
class _Categorical:
    spec: FeatureSpec
    column: str  # column of the raw frame


@dataclass(frozen=True)
class _Multivalent:
    spec: FeatureSpec
    column: str
    max_len: int


@dataclass(frozen=True)
class _Dense:
    spec: FeatureSpec
    column: str
    missing: MissingPolicy


def _resolve_profile_columns(users: pl.DataFrame, config: RankingFeatureConfig) -> tuple[list[str], list[str]]:
    """(categorical, numeric) users columns, from the config or by the module docstring's rule."""
    columns = [c for c in users.columns if c != "user_id"]
    for listed in (config.profile_categorical or []) + (config.profile_numeric or []):
        if listed not in users.columns:
            raise FeaturePipelineError(f"users table has no profile column {listed!r}; it has {columns}")
    if config.profile_categorical is not None and config.profile_numeric is not None:
        return list(config.profile_categorical), list(config.profile_numeric)
    is_float = {c: users.schema[c].is_float() for c in columns}
    numeric: list[str] = []
    for column in columns:
        if not is_float[column]:
            continue
        if column.endswith(NUM_SUFFIX):
            base = column[: -len(NUM_SUFFIX)]
            if f"{base}_range" in users.columns:
                numeric.append(column)
        else:
            numeric.append(column)
    numeric_bases = {c[: -len(NUM_SUFFIX)] for c in numeric if c.endswith(NUM_SUFFIX)}
    categorical = [c for c in columns if not is_float[c] and c not in numeric_bases]
    return (list(config.profile_categorical) if config.profile_categorical is not None else categorical,
            list(config.profile_numeric) if config.profile_numeric is not None else numeric)


def _profile_feature_name(column: str) -> str:
    base = column[: -len(NUM_SUFFIX)] if column.endswith(NUM_SUFFIX) else column
    return f"profile_{base}"


class RankingFeaturePipeline:
    """Fit on training impressions (with history), then turn any impressions into a :class:`RankingBatch`."""

    def __init__(self, config: RankingFeatureConfig | None = None) -> None:
        self.config = config or RankingFeatureConfig()
        self.vocabularies: dict[str, Vocabulary] = {}
        self.normalisers: dict[str, QuantileNormaliser] = {}
        self.profile_categorical: list[str] = []
        self.profile_numeric: list[str] = []
        self.video_stats: list[VideoStat] = []
        self._layout: FeatureLayout | None = None

    # ---- history ----------------------------------------------------------------------------------------------

    def add_history(self, all_impressions: pl.DataFrame, videos: pl.DataFrame | None = None) -> pl.DataFrame:
        """The whole log with the history columns appended (same rows and order; see :mod:`.history`).

        ``videos`` gives each video's author; it may be omitted when the frame has ``author_id``.
        """
        if videos is None:
            if "author_id" not in all_impressions.columns:
                raise HistoryError("add_history needs the videos table for author_id: "
                                   "call add_history(impressions, videos)")
            videos = all_impressions.select("video_id", "author_id").unique("video_id", keep="first")
        return compute_history(all_impressions, videos, self.config.history)

    # ---- fitting ----------------------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self._layout is not None

    @property
    def layout(self) -> FeatureLayout:
        if self._layout is None:
            raise FeaturePipelineError("the pipeline is not fitted: call fit(train, users, videos) or load(directory)")
        return self._layout

    def _enabled(self, group: FeatureGroup) -> bool:
        return group in self.config.groups

    def _plan(self) -> tuple[list[_Categorical], list[_Multivalent], list[_Dense]]:
        """Every feature of the enabled groups, in layout order, with its table and raw column."""
        categorical: list[_Categorical] = []
        multivalent: list[_Multivalent] = []
        dense: list[_Dense] = []

        def cat(name: str, side: Side, group: str, table: str) -> None:
            categorical.append(_Categorical(FeatureSpec(name, "categorical", side, group, table), name))

        def num(name: str, side: Side, group: str, missing: MissingPolicy = "median") -> None:
            width = 4 if missing == "indicator" else 3
            dense.append(_Dense(FeatureSpec(name, "dense", side, group, None, width), name, missing))

        if self._enabled("ids"):
            cat("video_id", "item", "ids", "video_id")
            cat("author_id", "item", "ids", "author_id")
            cat("music_id", "item", "ids", "music_id")
            multivalent.append(_Multivalent(FeatureSpec("tags", "multivalent", "item", "ids", "tag"), "tags",
                                            self.config.max_tags))
            cat("user_id", "user", "ids", "user_id")
        if self._enabled("context"):
            cat("tab", "user", "context", "tab")
            cat("hour_of_day", "user", "context", "hour_of_day")
        if self._enabled("profile"):
            for column in self.profile_categorical:
                name = _profile_feature_name(column)
                cat(name, "user", "profile", name)
            for column in self.profile_numeric:
                num(_profile_feature_name(column), "user", "profile")
        if self._enabled("video_stats"):
            for stat in self.video_stats:
                num(f"video_{stat.name}", "item", "video_stats")
        if self._enabled("history"):
            multivalent.append(_Multivalent(FeatureSpec(CLICKED_IDS, "multivalent", "user", "history", "video_id"),
                                            CLICKED_IDS, self.config.history.max_clicked))
            for column in DENSE_HISTORY_COLUMNS:
                num(column.name, column.side, "history", "indicator" if column.nullable else "median")
        names = [f.spec.name for f in (*categorical, *multivalent, *dense)]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise FeaturePipelineError(f"two features share the name(s) {duplicated}; rename the profile columns")
        return categorical, multivalent, dense

    def fit(self, train_impressions: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame
            ) -> "RankingFeaturePipeline":
        """Vocabularies and quantiles from ``train_impressions`` (TRAIN rows only, history already added)."""
        if train_impressions.height == 0:
            raise FeaturePipelineError("fit needs at least one training impression")
        if "is_click" not in train_impressions.columns:
            raise FeaturePipelineError("fit: training impressions lack column 'is_click' (vocabularies are "
                                       "built from clicked impressions)")
        categorical, multivalent, dense = self.resolve_inputs(users, videos)
        raw = self._raw_frame(train_impressions, users, videos, categorical, multivalent, dense)
        clicked = raw.filter(pl.col("is_click") == 1)
        vocabularies = {table: Vocabulary.build(clicked[column], name=table, max_size=max_size,
                                                min_count=self.config.min_count)
                        for table, column, max_size in self.vocabulary_sources()}
        normalisers = {name: QuantileNormaliser.fit(raw[column], name=name, n_quantiles=self.config.n_quantiles,
                                                    missing=missing)
                       for name, column, missing in self.quantile_sources()}
        return self.set_fitted(vocabularies, normalisers)

    def resolve_inputs(self, users: pl.DataFrame, videos: pl.DataFrame
                       ) -> tuple[list[_Categorical], list[_Multivalent], list[_Dense]]:
        """Fix the profile columns and video statistics the tables offer; the plan of features (first step of fit)."""
        config = self.config
        if self._enabled("profile"):
            self.profile_categorical, self.profile_numeric = _resolve_profile_columns(users, config)
        else:
            self.profile_categorical, self.profile_numeric = [], []
        present = set(videos.columns)
        self.video_stats = ([s for s in config.video_stats
                             if s.numerator in present and (s.denominator is None or s.denominator in present)]
                            if self._enabled("video_stats") else [])
        return self._plan()

    def raw_features(self, impressions: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame) -> pl.DataFrame:
        """One raw column per feature plus the labels (what the vocabularies and quantiles are fitted on)."""
        return self._raw_frame(impressions, users, videos, *self._plan())

    def vocabulary_sources(self) -> list[tuple[str, str, int]]:
        """(table, raw column, max size) of each vocabulary, after :meth:`resolve_inputs`."""
        config = self.config
        categorical, multivalent, _ = self._plan()
        max_size = {"video_id": config.video_vocab_size, "author_id": config.author_vocab_size,
                    "music_id": config.music_vocab_size, "tag": config.tag_vocab_size,
                    "user_id": config.user_vocab_size, "tab": config.context_vocab_size,
                    "hour_of_day": config.context_vocab_size}
        # A table's vocabulary comes from the column of the feature that defines the id space
        # (video_id: the impression video id, even when only the history ids read the table).
        table_source = {"video_id": "video_id", "tag": "tags"}
        tables = [f.spec.table for f in (*categorical, *multivalent)]
        return [(table, table_source.get(table, table), max_size.get(table, config.profile_vocab_size))
                for table in dict.fromkeys(t for t in tables if t is not None)]

    def quantile_sources(self) -> list[tuple[str, str, MissingPolicy]]:
        """(feature, raw column, missing policy) of each quantile-normalised feature, after :meth:`resolve_inputs`."""
        return [(d.spec.name, d.column, d.missing) for d in self._plan()[2]]

    def set_fitted(self, vocabularies: dict[str, Vocabulary], normalisers: dict[str, QuantileNormaliser]
                   ) -> "RankingFeaturePipeline":
        """Install fitted vocabularies and quantiles and build the layout (last step of fit)."""
        config = self.config
        categorical, multivalent, dense = self._plan()
        self.vocabularies = vocabularies
        self.normalisers = normalisers
        tables = [EmbeddingTableSpec(name, vocab.size,
                                     embedding_dim(vocab.size, multiplier=config.embedding_multiplier,
                                                   min_dim=config.embedding_min_dim,
                                                   max_dim=max(config.embedding_min_dim, config.embedding_max_dim)))
                  for name, vocab in vocabularies.items()]
        self._layout = FeatureLayout(tables, [f.spec for f in (*categorical, *multivalent, *dense)])
        return self

    # ---- transforming -----------------------------------------------------------------------------------------

    def _raw_frame(self, impressions: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame,
                   categorical: list[_Categorical], multivalent: list[_Multivalent], dense: list[_Dense]
                   ) -> pl.DataFrame:
        """One column per feature (raw values: ids, strings, numbers, lists) plus the labels."""
        needed = ["user_id", "video_id"]
        if self._enabled("context"):
            needed.append("time_ms")
        if self._enabled("history"):
            needed.extend(HISTORY_COLUMNS)
        missing = [c for c in needed if c not in impressions.columns]
        if missing:
            hint = " (run add_history on the whole log first)" if set(missing) & set(HISTORY_COLUMNS) else ""
            raise FeaturePipelineError(f"impressions lack column(s) {missing}{hint}")
        for column in ("user_id", "video_id"):
            nulls = impressions[column].is_null()
            if nulls.any():
                raise FeaturePipelineError(f"impressions: {column} is null at row {int(nulls.arg_max())}")
        names = {f.spec.name for f in (*categorical, *multivalent, *dense)}
        columns: list[pl.Expr] = [
            (pl.col("is_click").cast(pl.Float64) if "is_click" in impressions.columns else pl.lit(0.0)).alias("is_click"),
            (pl.col("watch_time_s").cast(pl.Float64) if "watch_time_s" in impressions.columns else pl.lit(0.0))
            .alias("watch_time_s"),
            pl.col("user_id").cast(pl.Int64).alias("_user"),
            pl.col("video_id").cast(pl.Int64).alias("_video"),
        ]
        if "video_id" in names or CLICKED_IDS in names:
            columns.append(pl.col("video_id").cast(pl.Int64))
        if "user_id" in names:
            columns.append(pl.col("user_id").cast(pl.Int64))
        if "tab" in names:
            # The schema's "no tab" value is 0; serving requests may omit the column.
            tab = pl.col("tab").cast(pl.Int64) if "tab" in impressions.columns else pl.lit(0, pl.Int64)
            columns.append(tab.alias("tab"))
        if "hour_of_day" in names:
            columns.append(pl.from_epoch(pl.col("time_ms").cast(pl.Int64), time_unit="ms")
                           .dt.replace_time_zone("UTC").dt.convert_time_zone(self.config.hour_timezone)
                           .dt.hour().cast(pl.Int64).alias("hour_of_day"))
        if self._enabled("history"):
            columns.append(pl.col(CLICKED_IDS))
            columns.extend(pl.col(c.name).cast(pl.Float64) for c in DENSE_HISTORY_COLUMNS)
        raw = impressions.select(columns)

        video_columns: list[pl.Expr] = []
        if self._enabled("ids"):
            for column in ("author_id", "music_id", "tags"):
                if column not in videos.columns:
                    raise FeaturePipelineError(f"videos table lacks column {column!r} (needed by the ids group)")
            video_columns += [pl.col("author_id").cast(pl.Int64), pl.col("music_id").cast(pl.Int64),
                              pl.col("tags").cast(pl.List(pl.Int64))]
        for stat in self.video_stats:
            for column in (stat.numerator, stat.denominator):
                if column is not None and column not in videos.columns:
                    raise FeaturePipelineError(f"videos table lacks column {column!r} (video statistic {stat.name!r})")
            value = pl.col(stat.numerator).cast(pl.Float64)
            if stat.denominator is not None:
                denominator = pl.col(stat.denominator).cast(pl.Float64)
                value = pl.when(denominator > 0).then(value / denominator)  # null (→ median) when undefined
            video_columns.append(value.alias(f"video_{stat.name}"))
        if video_columns:
            table = videos.select(pl.col("video_id").cast(pl.Int64).alias("_video"), *video_columns)
            if table["_video"].is_duplicated().any():
                raise FeaturePipelineError("videos table has a repeated video_id; expected one row per video")
            raw = raw.join(table, on="_video", how="left", maintain_order="left")

        # Categorical profile values are integers or text (booleans, floats … are compared as text).
        profile_columns = [(pl.col(c).cast(pl.Int64) if users.schema[c].is_integer() else pl.col(c).cast(pl.String))
                           .alias(_profile_feature_name(c)) for c in self.profile_categorical if c in users.columns] + \
                          [pl.col(c).cast(pl.Float64).alias(_profile_feature_name(c)) for c in self.profile_numeric
                           if c in users.columns]
        missing = [c for c in (*self.profile_categorical, *self.profile_numeric) if c not in users.columns]
        if missing:
            raise FeaturePipelineError(f"users table lacks profile column(s) {missing}")
        if profile_columns:
            table = users.select(pl.col("user_id").cast(pl.Int64).alias("_user"), *profile_columns)
            if table["_user"].is_duplicated().any():
                raise FeaturePipelineError("users table has a repeated user_id; expected one row per user")
            raw = raw.join(table, on="_user", how="left", maintain_order="left")
        return raw

    def _vocabulary(self, spec: FeatureSpec) -> Vocabulary:
        if spec.table is None or spec.table not in self.vocabularies:
            raise FeaturePipelineError(f"feature {spec.name!r}: no vocabulary for table {spec.table!r}")
        return self.vocabularies[spec.table]

    def transform(self, impressions: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame) -> RankingBatch:
        """Tensors for every row of ``impressions`` (with history columns when the group is on), in order."""
        layout = self.layout
        categorical, multivalent, dense = self._plan()
        raw = self._raw_frame(impressions, users, videos, categorical, multivalent, dense)
        n = raw.height
        cat_columns = [self._vocabulary(f.spec).lookup(raw[f.column]) for f in categorical]
        cat = np.stack(cat_columns, axis=1) if cat_columns else np.zeros((n, 0), dtype=np.int64)
        multi = [torch.from_numpy(self._vocabulary(f.spec).lookup_lists(raw[f.column], f.max_len)) for f in multivalent]
        dense_blocks = [self.normalisers[f.spec.name].transform_expand(raw[f.column]) for f in dense]
        dense_array = (np.concatenate(dense_blocks, axis=1) if dense_blocks else np.zeros((n, 0))).astype(np.float32)
        if dense_array.shape[1] != layout.dense_width:  # pragma: no cover - guards the plan/layout agreement
            raise FeaturePipelineError(f"dense block has {dense_array.shape[1]} columns; layout says {layout.dense_width}")
        return RankingBatch(
            categorical=torch.from_numpy(np.ascontiguousarray(cat, dtype=np.int64)),
            multivalent=multi,
            dense=torch.from_numpy(dense_array),
            is_click=torch.from_numpy(raw["is_click"].to_numpy().astype(np.float32)),
            watch_time_s=torch.from_numpy(raw["watch_time_s"].to_numpy().astype(np.float32)),
        )

    def transform_requests(self, past_log: pl.DataFrame, requests: pl.DataFrame, users: pl.DataFrame,
                           videos: pl.DataFrame) -> RankingBatch:
        """Serving: features of candidate ``requests`` (user_id, video_id, time_ms[, tab]) given the past log."""
        if self._enabled("history"):
            requests = history_for_requests(past_log, requests, videos, self.config.history)
        return self.transform(requests, users, videos)

    # ---- persistence ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, object]:
        return {
            "format": PIPELINE_FORMAT,
            "config": self.config.model_dump(mode="json"),
            "profile_categorical": self.profile_categorical,
            "profile_numeric": self.profile_numeric,
            "video_stats": [s.model_dump(mode="json") for s in self.video_stats],
            "layout": self.layout.to_dict(),
            "vocabularies": {name: v.to_dict() for name, v in self.vocabularies.items()},
            "quantiles": {name: q.to_dict() for name, q in self.normalisers.items()},
        }

    def save(self, directory: str | Path) -> Path:
        """Write the fitted state as ``<directory>/ranking_features.json`` (atomically); returns the file."""
        path = Path(directory) / STATE_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, payload: dict[str, object]) -> "RankingFeaturePipeline":
        if payload.get("format") != PIPELINE_FORMAT:
            raise FeaturePipelineError(f"not a ranking feature state: format {payload.get('format')!r}, "
                                       f"expected {PIPELINE_FORMAT!r}")
        pipeline = cls(RankingFeatureConfig.model_validate(payload["config"]))
        pipeline.profile_categorical = list(payload["profile_categorical"])  # type: ignore[arg-type]
        pipeline.profile_numeric = list(payload["profile_numeric"])  # type: ignore[arg-type]
        pipeline.video_stats = [VideoStat.model_validate(s) for s in payload["video_stats"]]  # type: ignore[union-attr]
        pipeline.vocabularies = {name: Vocabulary.from_dict(v)
                                 for name, v in payload["vocabularies"].items()}  # type: ignore[union-attr]
        pipeline.normalisers = {name: QuantileNormaliser.from_dict(q)
                                for name, q in payload["quantiles"].items()}  # type: ignore[union-attr]
        pipeline._layout = FeatureLayout.from_dict(payload["layout"])  # type: ignore[arg-type]
        # transform() rebuilds the plan from the config; it must reproduce the saved layout exactly.
        planned = [f.spec for group in pipeline._plan() for f in group]
        if planned != pipeline._layout.features:
            raise FeaturePipelineError("saved layout does not match the features the saved config builds")
        missing = [f.name for f in planned if f.kind == "dense" and f.name not in pipeline.normalisers]
        if missing:
            raise FeaturePipelineError(f"saved state lacks quantiles for {missing}")
        return pipeline

    @classmethod
    def load(cls, directory: str | Path) -> "RankingFeaturePipeline":
        path = Path(directory) / STATE_FILE
        if not path.exists():
            raise FeaturePipelineError(f"{path}: no saved ranking feature pipeline here")
        return cls.from_dict(read_json(path))

    # ---- reporting --------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """Tables (rows, dim), feature counts per kind and group, and the dense width."""
        layout = self.layout
        return {
            "tables": {t.name: {"vocab_size": t.vocab_size, "dim": t.dim} for t in layout.tables},
            "categorical": [f.name for f in layout.categorical],
            "multivalent": [f.name for f in layout.multivalent],
            "dense": {f.name: f.width for f in layout.dense},
            "dense_width": layout.dense_width,
            "groups": {g: sum(f.group == g for f in layout.features) for g in self.config.groups},
        }


def build_ranking_features(impressions: pl.DataFrame, users: pl.DataFrame, videos: pl.DataFrame,
                           train_mask: pl.Expr, config: RankingFeatureConfig | None = None,
                           log: Callable[[str], None] | None = None
                           ) -> tuple[RankingFeaturePipeline, pl.DataFrame]:
    """Convenience: add history over the whole log, fit on the ``train_mask`` rows; (pipeline, log with history)."""
    pipeline = RankingFeaturePipeline(config)
    start = time.perf_counter()
    with_history = pipeline.add_history(impressions, videos)
    if log:
        log(f"history features for {with_history.height} impressions in {time.perf_counter() - start:.1f}s")
    pipeline.fit(with_history.filter(train_mask), users, videos)
    return pipeline, with_history
