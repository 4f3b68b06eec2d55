"""Retrieval (candidate generation) examples: one per watch, built only from the user's past.

A *watch* is a clicked impression. Each example asks "which video does the user watch next?"
(Covington et al. 2016, section 3.3: predict the held-out *next* watch, never a random one) and
carries only what the user did strictly before the watch:

- ``history``: corpus indices of the last ``history_length`` (N = 50) earlier watches, the model
  averages their embeddings. Events with the same timestamp as the example never enter its
  history (they are not "before" it), and neither does the watch itself or anything later.
- ``tokens``: the last ``token_history_length`` search/topic tokens of earlier events (a bag;
  order dropped).
- ``profile``: the user's profile fields (categoricals), one vocabulary per field.
- ``example_age``: the paper's example age, ``(t_end - t) / scale`` with ``t_end`` the end of the
  training window and ``scale`` its length, both in days; during training every example has its
  real age, at serving every query gets ``serving_example_age_days`` (0 by default, "now").

Label format: ``target`` is the *corpus index* of the watched video (``0 <= target < n_items``,
``video_ids[target]`` is the video id), or ``-1`` for a watch of a video outside the corpus
(kept in evaluation replays so that such watches count as misses, dropped in training).

Index conventions: the corpus index ``c`` of a video is its row in the output layer; in the
``history`` matrix the same video is ``c + 1`` because ``0`` is padding / out-of-corpus. Token
and profile values use index ``0`` for padding / unknown as well.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, ConfigDict, Field

MS_PER_DAY = 86_400_000
# Example-age transforms fed to the tower: the paper feeds x together with x^2 and sqrt(x) for
# continuous features so the network gets super- and sub-linear terms for free.
EXAMPLE_AGE_COLUMNS = ("example_age", "example_age_sq", "example_age_sqrt")


class RetrievalFeatureError(ValueError):
    """Input that cannot be turned into retrieval examples; names the column or field."""


class RetrievalFeatureConfig(BaseModel):
    """How retrieval examples are built (a section of the retrieval job's config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    history_length: int = Field(50, ge=1, description="last N watches averaged into the watch vector")
    max_examples_per_user: int | None = Field(
        200, ge=1, description="cap on training examples per user (a uniform sample); None = no cap")
    min_item_clicks: int = Field(1, ge=1, description="a video enters the corpus with at least this many train watches")
    use_tokens: bool = True
    token_history_length: int = Field(50, ge=1, description="last L tokens of earlier events in the bag")
    token_source: Literal["impressions", "watches"] = Field(
        "impressions", description="events whose tokens enter the bag: every impression or watches only")
    max_tokens: int = Field(100_000, ge=1, description="token vocabulary size (most frequent in train)")
    profile_fields: list[str] | Literal["auto"] = Field(
        "auto", description="user profile columns to embed; 'auto' = every non-id column with "
        "2..max_profile_cardinality distinct values (numeric '__num' copies excluded)")
    max_profile_cardinality: int = Field(64, ge=2)
    min_profile_value_users: int = Field(5, ge=1, description="rarer profile values map to unknown (0)")
    use_example_age: bool = True
    serving_example_age_days: float = Field(0.0, description="example age given to every query at serving")


@dataclass
class RetrievalExamples:
    """A batch-able set of retrieval examples (NumPy arrays, row-aligned).

    history: int64 [n, history_length], corpus index + 1 of earlier watches, 0 = padding;
    tokens: int64 [n, token_history_length], token index, 0 = padding;
    profile: int64 [n, n_profile_fields], value index per field, 0 = unknown;
    dense: float32 [n, dense_width], the example-age columns (width 0 when disabled);
    target: int64 [n], corpus index of the watched video, -1 when outside the corpus;
    user_id, video_id, time_ms, row_id: int64 [n], where each example came from;
    example_age_days: float32 [n], the raw age before scaling.
    """

    history: np.ndarray
    tokens: np.ndarray
    profile: np.ndarray
    dense: np.ndarray
    target: np.ndarray
    user_id: np.ndarray
    video_id: np.ndarray
    time_ms: np.ndarray
    row_id: np.ndarray
    example_age_days: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, rows: np.ndarray | slice) -> RetrievalExamples:
        return RetrievalExamples(**{name: getattr(self, name)[rows] for name in self.__dataclass_fields__})

    def tensors(self, rows: np.ndarray | slice | None = None) -> dict[str, torch.Tensor]:
        """The model inputs (and ``target``) of ``rows`` as torch tensors."""
        part = self if rows is None else self.take(rows)
        return {
            "history": torch.from_numpy(part.history),
            "tokens": torch.from_numpy(part.tokens),
            "profile": torch.from_numpy(part.profile),
            "dense": torch.from_numpy(part.dense),
            "target": torch.from_numpy(part.target),
        }

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: np.random.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        order = np.arange(len(self))
        if shuffle:
            (generator or np.random.default_rng()).shuffle(order)
        for start in range(0, len(order), batch_size):
            yield self.tensors(order[start:start + batch_size])


def _sorted_lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, default: int = 0) -> np.ndarray:
    """values[keys == q] for each q of ``query`` (``default`` when absent); keys sorted, unique."""
    out = np.full(len(query), default, dtype=np.int64)
    if len(keys) == 0:
        return out
    position = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    found = keys[position] == query
    out[found] = values[position[found]]
    return out


def last_events_before(
    event_user: np.ndarray,
    event_time: np.ndarray,
    event_value: np.ndarray,
    query_user: np.ndarray,
    query_time: np.ndarray,
    length: int,
) -> np.ndarray:
    """For each query (u, t), the values of u's last ``length`` events with time strictly < t.

    Returns int64 [n_queries, length], right-aligned (most recent event in the last column),
    0-padded on the left. Events at exactly ``t`` are excluded, so a watch never sees itself or
    anything logged at the same instant. Vectorised: events are sorted by (user, time) once;
    each query's end position is one ``searchsorted`` on that order.
    """
    event_user = np.asarray(event_user, dtype=np.int64)
    event_time = np.asarray(event_time, dtype=np.int64)
    event_value = np.asarray(event_value, dtype=np.int64)
    query_user = np.asarray(query_user, dtype=np.int64)
    query_time = np.asarray(query_time, dtype=np.int64)
    n_queries = len(query_user)
    out = np.zeros((n_queries, length), dtype=np.int64)
    if n_queries == 0 or len(event_user) == 0:
        return out
    # One sortable integer key per (user, time): dense user rank * span + time offset.
    users = np.unique(event_user)
    t_min = int(min(event_time.min(), query_time.min()))
    span = int(max(event_time.max(), query_time.max())) - t_min + 2
    if len(users) * span >= 2**62:
        raise RetrievalFeatureError(f"time_ms spans {span} ms over {len(users)} users: too wide to index")
    event_rank = np.searchsorted(users, event_user)
    event_key = event_rank * span + (event_time - t_min)
    order = np.argsort(event_key, kind="stable")
    sorted_key = event_key[order]
    sorted_value = event_value[order]

    query_rank = np.searchsorted(users, query_user)
    known = (query_rank < len(users)) & (users[np.minimum(query_rank, len(users) - 1)] == query_user)
    query_rank = np.where(known, query_rank, 0)
    query_key = query_rank * span + (query_time - t_min)
    end = np.searchsorted(sorted_key, query_key, side="left")  # first event at time >= t
    user_start = np.searchsorted(sorted_key, query_rank * span, side="left")
    positions = end[:, None] - length + np.arange(length)[None, :]
    valid = (positions >= user_start[:, None]) & known[:, None]
    out[valid] = sorted_value[positions[valid]]
    return out


@dataclass
class RetrievalFeaturizer:
    """The fitted vocabularies and constants that turn impressions into retrieval examples.

    ``video_ids[c]`` is the video of corpus index ``c`` (ordered by train watches, most first);
    ``item_train_clicks[c]`` its number of training watches (the sampler's unigram counts).
    """

    config: RetrievalFeatureConfig
    video_ids: np.ndarray
    item_train_clicks: np.ndarray
    token_ids: np.ndarray
    profile_fields: list[str]
    profile_values: list[list[str]]
    train_end_time_ms: int
    age_scale_days: float
    _video_sorted: np.ndarray = field(init=False, repr=False)
    _video_sorted_index: np.ndarray = field(init=False, repr=False)
    _token_sorted: np.ndarray = field(init=False, repr=False)
    _token_sorted_index: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.video_ids = np.asarray(self.video_ids, dtype=np.int64)
        self.item_train_clicks = np.asarray(self.item_train_clicks, dtype=np.int64)
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
        order = np.argsort(self.video_ids, kind="stable")
        self._video_sorted = self.video_ids[order]
        self._video_sorted_index = order.astype(np.int64)
        order = np.argsort(self.token_ids, kind="stable")
        self._token_sorted = self.token_ids[order]
        self._token_sorted_index = order.astype(np.int64) + 1

    # ---- sizes the model needs

    @property
    def n_items(self) -> int:
        return int(len(self.video_ids))

    @property
    def n_tokens(self) -> int:
        """Rows of the token table, including 0 (padding / unknown)."""
        return int(len(self.token_ids)) + 1

    @property
    def profile_cardinalities(self) -> list[int]:
        """Rows of each profile table, including 0 (unknown)."""
        return [len(values) + 1 for values in self.profile_values]

    @property
    def dense_width(self) -> int:
        return len(EXAMPLE_AGE_COLUMNS) if self.config.use_example_age else 0

    # ---- fitting

    @classmethod
    def fit(cls, train_impressions: pl.DataFrame, users: pl.DataFrame,
            config: RetrievalFeatureConfig) -> RetrievalFeaturizer:
        """Fit the corpus, token and profile vocabularies on the *training* impressions only."""
        _check_columns(train_impressions, ("user_id", "video_id", "time_ms", "is_click"), "impressions")
        watches = train_impressions.filter(pl.col("is_click") == 1)
        if watches.height == 0:
            raise RetrievalFeatureError("impressions: no clicked rows (is_click == 1) to learn a corpus from")
        counts = (watches.group_by("video_id").agg(pl.len().alias("clicks"))
                  .filter(pl.col("clicks") >= config.min_item_clicks)
                  .sort(["clicks", "video_id"], descending=[True, False]))
        if counts.height == 0:
            raise RetrievalFeatureError(
                f"min_item_clicks={config.min_item_clicks}: no video has that many training watches")

        token_ids = np.zeros(0, dtype=np.int64)
        if config.use_tokens and "tokens" in train_impressions.columns:
            source = watches if config.token_source == "watches" else train_impressions
            token_counts = (source.select(pl.col("tokens").explode().alias("token")).drop_nulls()
                            .group_by("token").agg(pl.len().alias("n"))
                            .sort(["n", "token"], descending=[True, False]).head(config.max_tokens))
            token_ids = token_counts["token"].to_numpy().astype(np.int64)

        fields = _resolve_profile_fields(users, config)
        train_users = watches.select("user_id").unique()
        known = users.join(train_users, on="user_id", how="inner") if "user_id" in users.columns else users
        values: list[list[str]] = []
        for name in fields:
            column = known.select(pl.col(name).cast(pl.String).alias("v")).drop_nulls()
            frequent = (column.group_by("v").agg(pl.len().alias("n"))
                        .filter(pl.col("n") >= config.min_profile_value_users)
                        .sort(["n", "v"], descending=[True, False]))
            values.append(frequent["v"].to_list())

        t_start = int(train_impressions["time_ms"].min())
        t_end = int(train_impressions["time_ms"].max())
        age_scale_days = max((t_end - t_start) / MS_PER_DAY, 1.0)
        return cls(config=config, video_ids=counts["video_id"].to_numpy(),
                   item_train_clicks=counts["clicks"].to_numpy(), token_ids=token_ids,
                   profile_fields=fields, profile_values=values, train_end_time_ms=t_end,
                   age_scale_days=age_scale_days)

    # ---- persistence (JSON, no pickle)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "video_ids": self.video_ids.tolist(),
            "item_train_clicks": self.item_train_clicks.tolist(),
            "token_ids": self.token_ids.tolist(),
            "profile_fields": list(self.profile_fields),
            "profile_values": [list(v) for v in self.profile_values],
            "train_end_time_ms": int(self.train_end_time_ms),
            "age_scale_days": float(self.age_scale_days),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RetrievalFeaturizer:
        try:
            return cls(config=RetrievalFeatureConfig.model_validate(payload["config"]),
                       video_ids=np.asarray(payload["video_ids"], dtype=np.int64),
                       item_train_clicks=np.asarray(payload["item_train_clicks"], dtype=np.int64),
                       token_ids=np.asarray(payload["token_ids"], dtype=np.int64),
                       profile_fields=list(payload["profile_fields"]),
                       profile_values=[list(v) for v in payload["profile_values"]],
                       train_end_time_ms=int(payload["train_end_time_ms"]),
                       age_scale_days=float(payload["age_scale_days"]))
        except KeyError as exc:
            raise RetrievalFeatureError(f"featurizer metadata: missing field {exc.args[0]!r}") from exc

    # ---- id lookups

    def corpus_index(self, video_ids: np.ndarray) -> np.ndarray:
        """Corpus index of each video id, -1 when the video is not in the corpus."""
        return _sorted_lookup(self._video_sorted, self._video_sorted_index, np.asarray(video_ids, np.int64), -1)

    def token_index(self, tokens: np.ndarray) -> np.ndarray:
        return _sorted_lookup(self._token_sorted, self._token_sorted_index, np.asarray(tokens, np.int64), 0)

    # ---- example construction

    def example_age_features(self, age_days: np.ndarray) -> np.ndarray:
        """[n, 3] float32: a, a^2, sqrt(max(a, 0)) with a = age_days / age_scale_days."""
        if not self.config.use_example_age:
            return np.zeros((len(age_days), 0), dtype=np.float32)
        scaled = np.asarray(age_days, dtype=np.float64) / self.age_scale_days
        return np.stack([scaled, scaled**2, np.sqrt(np.maximum(scaled, 0.0))], axis=1).astype(np.float32)

    def profile_matrix(self, users: pl.DataFrame, user_ids: np.ndarray) -> np.ndarray:
        """[n, n_fields] value indices of each user's profile (0 = unknown user or value)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        out = np.zeros((len(user_ids), len(self.profile_fields)), dtype=np.int64)
        if not self.profile_fields:
            return out
        missing = [f for f in self.profile_fields if f not in users.columns]
        if missing:
            raise RetrievalFeatureError(f"users: missing profile column(s) {missing} the model was trained with")
        table = users.select(["user_id", *self.profile_fields]).unique("user_id", keep="first", maintain_order=True)
        table_ids = table["user_id"].to_numpy().astype(np.int64)
        order = np.argsort(table_ids, kind="stable")
        row_of_user = _sorted_lookup(table_ids[order], order.astype(np.int64), user_ids, -1)
        has_row = row_of_user >= 0
        for j, (name, values) in enumerate(zip(self.profile_fields, self.profile_values, strict=True)):
            mapping = pl.DataFrame({"v": values, "index": np.arange(1, len(values) + 1, dtype=np.int64)},
                                   schema={"v": pl.String, "index": pl.Int64})
            codes = (table.select(pl.col(name).cast(pl.String).alias("v"))
                     .join(mapping, on="v", how="left", maintain_order="left")["index"]
                     .fill_null(0).to_numpy().astype(np.int64))
            out[has_row, j] = codes[row_of_user[has_row]]
        return out

    def _watch_table(self, impressions: pl.DataFrame) -> pl.DataFrame:
        """Distinct watches (user, video, time): a watch logged twice is one event of history."""
        return (impressions.filter(pl.col("is_click") == 1)
                .select("user_id", "video_id", "time_ms").unique(maintain_order=True))

    def _token_table(self, impressions: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not (self.config.use_tokens and len(self.token_ids) and "tokens" in impressions.columns):
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        source = impressions.filter(pl.col("is_click") == 1) if self.config.token_source == "watches" else impressions
        exploded = (source.select("user_id", "time_ms", pl.col("tokens").alias("token"))
                    .explode("token").drop_nulls("token"))
        index = self.token_index(exploded["token"].to_numpy())
        keep = index > 0
        return (exploded["user_id"].to_numpy()[keep], exploded["time_ms"].to_numpy()[keep], index[keep])

    def build_examples(
        self,
        history_impressions: pl.DataFrame,
        users: pl.DataFrame,
        query_user: np.ndarray,
        query_time_ms: np.ndarray,
        *,
        query_video: np.ndarray | None = None,
        query_row: np.ndarray | None = None,
        example_age_days: np.ndarray | float | None = None,
    ) -> RetrievalExamples:
        """Examples for queries (user, time): features from ``history_impressions`` strictly
        before each time. ``example_age_days`` defaults to the serving value."""
        _check_columns(history_impressions, ("user_id", "video_id", "time_ms", "is_click"), "impressions")
        query_user = np.asarray(query_user, dtype=np.int64)
        query_time_ms = np.asarray(query_time_ms, dtype=np.int64)
        n = len(query_user)
        if len(query_time_ms) != n:
            raise RetrievalFeatureError(f"query_time_ms has {len(query_time_ms)} rows, query_user {n}")
        watches = self._watch_table(history_impressions)
        history = last_events_before(
            watches["user_id"].to_numpy(), watches["time_ms"].to_numpy(),
            self.corpus_index(watches["video_id"].to_numpy()) + 1,  # out of corpus -> 0 (padding)
            query_user, query_time_ms, self.config.history_length)
        token_user, token_time, token_value = self._token_table(history_impressions)
        tokens = last_events_before(token_user, token_time, token_value, query_user, query_time_ms,
                                    self.config.token_history_length) if len(token_value) else \
            np.zeros((n, 1), dtype=np.int64)
        if example_age_days is None:
            example_age_days = self.config.serving_example_age_days
        age = np.broadcast_to(np.asarray(example_age_days, dtype=np.float32), (n,)).copy()
        video = np.full(n, -1, dtype=np.int64) if query_video is None else np.asarray(query_video, dtype=np.int64)
        target = self.corpus_index(video) if query_video is not None else np.full(n, -1, dtype=np.int64)
        return RetrievalExamples(
            history=history, tokens=tokens, profile=self.profile_matrix(users, query_user),
            dense=self.example_age_features(age), target=target, user_id=query_user, video_id=video,
            time_ms=query_time_ms,
            row_id=np.full(n, -1, dtype=np.int64) if query_row is None else np.asarray(query_row, dtype=np.int64),
            example_age_days=age)

    def training_examples(self, train_impressions: pl.DataFrame, users: pl.DataFrame,
                          seed: int = 0) -> RetrievalExamples:
        """One example per training watch of a corpus video, at most ``max_examples_per_user``
        per user (a uniform sample, seeded), each with its real example age."""
        _check_columns(train_impressions, ("user_id", "video_id", "time_ms", "is_click"), "impressions")
        watches = train_impressions.filter(pl.col("is_click") == 1)
        if "row_id" not in watches.columns:
            watches = watches.with_row_index("row_id").with_columns(pl.col("row_id").cast(pl.Int64))
        watches = watches.with_columns(pl.Series("target", self.corpus_index(watches["video_id"].to_numpy())))
        watches = watches.filter(pl.col("target") >= 0)
        cap = self.config.max_examples_per_user
        if cap is not None:
            rng = np.random.default_rng(seed)
            watches = (watches.with_columns(pl.Series("_draw", rng.random(watches.height)))
                       .with_columns(pl.col("_draw").rank("ordinal").over("user_id").alias("_rank"))
                       .filter(pl.col("_rank") <= cap).drop("_draw", "_rank"))
        watches = watches.sort(["time_ms", "row_id"])
        time_ms = watches["time_ms"].to_numpy().astype(np.int64)
        age_days = (self.train_end_time_ms - time_ms) / MS_PER_DAY
        return self.build_examples(train_impressions, users, watches["user_id"].to_numpy(), time_ms,
                                   query_video=watches["video_id"].to_numpy(),
                                   query_row=watches["row_id"].to_numpy(), example_age_days=age_days)

    def replay_examples(self, impressions: pl.DataFrame, users: pl.DataFrame,
                        query_mask: pl.Expr) -> RetrievalExamples:
        """One example per watch selected by ``query_mask`` (e.g. the test days), in time order,
        with the history of *all* of ``impressions`` strictly before it and the serving age.
        Watches of videos outside the corpus are kept with ``target == -1`` (they count as misses)."""
        _check_columns(impressions, ("user_id", "video_id", "time_ms", "is_click"), "impressions")
        frame = impressions if "row_id" in impressions.columns else \
            impressions.with_row_index("row_id").with_columns(pl.col("row_id").cast(pl.Int64))
        queries = frame.filter(query_mask & (pl.col("is_click") == 1)).sort(["time_ms", "row_id"])
        return self.build_examples(impressions, users, queries["user_id"].to_numpy(), queries["time_ms"].to_numpy(),
                                   query_video=queries["video_id"].to_numpy(), query_row=queries["row_id"].to_numpy())

    def serving_examples(self, impressions: pl.DataFrame, users: pl.DataFrame, user_ids: Sequence[int] | np.ndarray,
                         at_time_ms: int | None = None) -> RetrievalExamples:
        """One query per user "now": every earlier event counts (strictly before ``at_time_ms``;
        all of them when None) and the example age is the serving value (0 by default)."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        if at_time_ms is None:
            at_time_ms = int(impressions["time_ms"].max()) + 1 if impressions.height else 0
        return self.build_examples(impressions, users, user_ids, np.full(len(user_ids), at_time_ms, dtype=np.int64))


def _check_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RetrievalFeatureError(f"{what}: missing column(s) {missing}; expected at least {list(columns)}")


def _resolve_profile_fields(users: pl.DataFrame, config: RetrievalFeatureConfig) -> list[str]:
    if config.profile_fields != "auto":
        missing = [f for f in config.profile_fields if f not in users.columns]
        if missing:
            raise RetrievalFeatureError(
                f"features.profile_fields: column(s) {missing} not in the users table (has {users.columns})")
        return list(config.profile_fields)
    fields = []
    for name, dtype in users.schema.items():
        if name == "user_id" or name.endswith("__num") or isinstance(dtype, pl.List):
            continue
        if 2 <= users[name].n_unique() <= config.max_profile_cardinality:
            fields.append(name)
    return fields
