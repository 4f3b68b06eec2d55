"""Synthetic impression logs with known ground truth, in the project's schema.

The generative model (every draw vectorised NumPy, every stream seeded from ``config.seed``):

World
    ``K = n_topics`` topic centres ``c_k ~ N(0, I/d)`` (so ``‖c_k‖ ≈ 1``). Each user and item has
    a primary topic ``t`` and a latent vector ``√ρ·c_t + √(1−ρ)·n`` with ``n ~ N(0, I/d)`` and
    ``ρ = taste_cluster_share``. A user's topic preference is ``softmax_k(taste_sharpness·⟨u, c_k⟩)``;
    it drives both the personal share of exposure and the user's search/topic tokens. Items have
    an author (mostly one of their topic), a music id, tags (the first tag is the topic) and a
    log-normal duration. Profile columns of the users table are noisy functions of the latent
    vector (``profile_signal``), so they carry signal.

Exposure
    Each user-day gets ``Poisson(impressions_per_user_day · activity_u)`` impressions. Each one is,
    with probability ``personal_exposure_share``, an item of a topic drawn from the user's topic
    preference (popularity-weighted within the topic), otherwise an item drawn from the global
    popularity distribution. Log popularity of item ``i`` on day ``t`` is
    ``−skew·log(rank_i) + trend_i·(t − t̄)`` with ``trend_i ~ N(0, popularity_drift²)``: a Zipf law
    whose items drift, so some trend up and some fade.

Clicks
    ``p(x) = σ(b + a(u,i) + e_i + g_i·(t − t̄) + tab_click_effect·tab + A·cos(2π(h − 21)/24))``
    with affinity ``a(u,i) = taste_strength·⟨u, v_i⟩``, item effect ``e_i`` (author part plus item
    part, std ``item_effect_std``), trend term ``g_i = trend_click_weight·trend_i`` and hour ``h``.
    The bias ``b`` is solved by bisection so that the mean of ``p`` over the generated
    impressions equals ``target_click_rate`` (the realised click rate then differs only by
    Bernoulli noise).

Watch time given a click
    ``log T | click, x ~ N(μ(x), σ²)`` with
    ``μ(x) = log duration_i + watch_log_offset + w_i + watch_affinity_weight·a(u,i)``, uncapped, so
    ``E[T | click, x] = exp(μ + σ²/2)`` exactly. Ground truth per impression:
    ``true_p_click = p(x)`` and ``true_expected_watch_s = E[T | x] = p(x)·exp(μ + σ²/2)``
    (unclicked impressions count as 0).

Tokens
    Each impression carries ``Poisson(tokens_per_impression)`` token ids; each token is, with
    probability ``1 − token_noise``, a token of a topic drawn from the user's topic preference
    (token ``j`` belongs to topic ``j mod K``), otherwise uniform over the vocabulary.

Generation runs in chunks of (day, block of ``users_per_block`` users), each with its own random
stream, so :func:`simulate` and :func:`simulate_to_parquet` produce the same rows. Within a chunk
rows are in time order; with ``n_users <= users_per_block`` the whole log is in time order.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ytdnn.config import JobConfig
from ytdnn.data.schema import ImpressionShardWriter, InteractionData, conform_impressions
from ytdnn.utils.io import atomic_write_json, atomic_write_with

__all__ = ["SCALE_PRESETS", "SimulatorConfig", "scale_config", "simulate", "simulate_to_parquet"]

_MS_PER_HOUR = 3_600_000
_MS_PER_MINUTE = 60_000
# Relative traffic per UTC hour: a smooth day/night cycle peaking at 17:00, trough at 05:00.
_HOUR_WEIGHTS = 1.0 + 0.7 * np.cos(2.0 * np.pi * (np.arange(24) - 17.0) / 24.0)
_HOUR_CDF = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
_AGE_RANGES = ("12-17", "18-23", "24-30", "31-40", "41-49", "50+")
_AGE_THRESHOLDS = np.array([-1.2, -0.5, 0.0, 0.5, 1.2])
_ACTIVITY_DEGREES = ("low_active", "middle_active", "high_active", "full_active")
# Separate random streams: world tables, and one stream per (day, user block) chunk.
_WORLD_STREAM = 0
_CHUNK_STREAM = 1


class SimulatorConfig(JobConfig):
    """Parameters of the synthetic log. Every field is validated; bad values raise a ValueError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_users: int = Field(2000, gt=0, description="number of users")
    n_videos: int = Field(5000, gt=0, description="number of videos (items)")
    n_days: int = Field(14, gt=0, description="days of log")
    start_date: int = Field(20220425, description="first day, YYYYMMDD (UTC)")
    impressions_per_user_day: float = Field(8.0, gt=0, description="Poisson mean of impressions per user-day")
    user_activity_sigma: float = Field(0.5, ge=0, description="log-normal spread of per-user activity")
    latent_dim: int = Field(16, gt=0, description="dimension d of user/item latent vectors")
    n_topics: int = Field(32, gt=0, description="latent topics (clusters of taste)")
    taste_cluster_share: float = Field(0.6, ge=0, le=1, description="rho: share of latent variance from the topic centre")
    taste_sharpness: float = Field(4.0, ge=0, description="inverse temperature of a user's topic preference")
    personal_exposure_share: float = Field(0.5, ge=0, le=1, description="share of impressions drawn from the user's taste")
    popularity_skew: float = Field(1.0, ge=0, description="Zipf exponent of item exposure (0 = uniform)")
    popularity_drift: float = Field(0.15, ge=0, description="std of the per-day trend of item log popularity")
    target_click_rate: float = Field(0.2, gt=0, lt=1, description="mean p(x) over the generated impressions")
    taste_strength: float = Field(3.0, ge=0, description="logit scale of the user-item affinity (0 = no personalisation)")
    item_effect_std: float = Field(1.0, ge=0, description="std of the item's click logit effect")
    author_effect_share: float = Field(0.3, ge=0, le=1, description="share of the item effect variance due to the author")
    trend_click_weight: float = Field(0.5, description="click logit per unit of the item's popularity trend per day")
    tab1_share: float = Field(0.8, ge=0, le=1, description="share of impressions on tab 1 (the rest on tab 0)")
    tab_click_effect: float = Field(1.0, description="click logit of tab 1 over tab 0")
    hour_click_amplitude: float = Field(0.2, ge=0, description="amplitude of the hour-of-day click logit (peak 21:00 UTC)")
    watch_sigma: float = Field(0.8, gt=0, description="sigma of log watch time given a click")
    watch_log_offset: float = Field(-0.7, description="log watch time minus log duration at zero effects")
    watch_affinity_weight: float = Field(0.3, description="weight of the affinity a(u,i) in the log watch time")
    watch_item_effect_std: float = Field(0.4, ge=0, description="std of the item's log watch time effect")
    click_watch_item_correlation: float = Field(-0.3, ge=-1, le=1,
                                                description="correlation of item click and watch effects (<0: clickbait)")
    duration_median_s: float = Field(30.0, gt=0, description="median video duration in seconds")
    duration_sigma: float = Field(0.8, ge=0, description="log-normal sigma of video duration")
    n_tokens: int = Field(1000, gt=0, description="search/topic token vocabulary size")
    tokens_per_impression: float = Field(3.0, ge=0, description="Poisson mean of tokens per impression")
    token_noise: float = Field(0.2, ge=0, le=1, description="share of tokens drawn uniformly, not from the user's taste")
    n_tags: int = Field(64, gt=0, description="tag vocabulary; tags < n_topics are topic tags")
    n_authors: int = Field(500, gt=0, description="number of authors")
    author_topic_loyalty: float = Field(0.8, ge=0, le=1, description="probability an item's author works in its topic")
    n_music: int = Field(1000, gt=0, description="number of music ids")
    profile_signal: float = Field(0.7, ge=0, le=1, description="how strongly profile columns track the latent vector")
    users_per_block: int = Field(100_000, gt=0, description="users per generation chunk (bounds memory; part of the seed)")
    seed: int = Field(0, ge=0, description="random seed; same seed, same log")

    @field_validator("start_date")
    @classmethod
    def _check_start_date(cls, value: int) -> int:
        try:
            dt.datetime.strptime(str(value), "%Y%m%d")
        except ValueError as exc:
            raise ValueError(f"start_date must be a calendar date YYYYMMDD, got {value}") from exc
        return value

    @model_validator(mode="after")
    def _check_sizes(self) -> "SimulatorConfig":
        # Every topic needs at least one item, one token and one tag for the sampling scheme.
        for name in ("n_videos", "n_tokens", "n_tags"):
            if getattr(self, name) < self.n_topics:
                raise ValueError(f"{name} must be >= n_topics ({self.n_topics}), got {getattr(self, name)}")
        return self

    def start_day(self) -> dt.date:
        return dt.datetime.strptime(str(self.start_date), "%Y%m%d").date()


# ---- numerics -------------------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + e^-x)): no overflow, and accurate near both 0 and 1.
    return np.exp(-np.logaddexp(0.0, -x))


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class _LogitHistogram:
    """Counts and sums of logits per fine bin, to solve the click bias in bounded memory.

    mean_j σ(b + z_j) is approximated by Σ_k n_k σ(b + z̄_k) / N with z̄_k the mean logit of bin k.
    With bin width w the error is at most max|σ''|·w²/8 ≈ 0.0963·w²/8 ≈ 4.6e-8 for w = 1/512.
    """

    lower = -64.0
    width = 1.0 / 512.0
    n_bins = 65_536

    def __init__(self) -> None:
        self.counts = np.zeros(self.n_bins, dtype=np.float64)
        self.sums = np.zeros(self.n_bins, dtype=np.float64)

    def add(self, logits: np.ndarray) -> None:
        index = np.clip(np.floor((logits - self.lower) / self.width), 0, self.n_bins - 1).astype(np.int64)
        self.counts += np.bincount(index, minlength=self.n_bins)
        self.sums += np.bincount(index, weights=logits, minlength=self.n_bins)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def mean_probability(self, bias: float) -> float:
        used = self.counts > 0
        means = self.sums[used] / self.counts[used]
        return float(np.dot(self.counts[used], _sigmoid(bias + means)) / self.counts[used].sum())

    def solve_bias(self, target: float, tol: float = 1e-12) -> float:
        """The bias b with mean σ(b + z) = target, by bisection.

        Bracket: with M = max|z̄|, b = logit(target) − M − 1 makes every σ(b + z̄) < target and
        b = logit(target) + M + 1 makes every one > target; the mean is increasing in b.
        """
        if self.total == 0:
            raise ValueError("no impressions were generated; increase n_users, n_days or impressions_per_user_day")
        used = self.counts > 0
        counts = self.counts[used]
        means = self.sums[used] / counts
        span = float(np.abs(means).max()) + 1.0
        low, high = _logit(target) - span, _logit(target) + span
        while high - low > tol:
            mid = 0.5 * (low + high)
            if np.dot(counts, _sigmoid(mid + means)) / counts.sum() < target:
                low = mid
            else:
                high = mid
        return 0.5 * (low + high)


def _sample_rows(flat_cdf: np.ndarray, rows: np.ndarray, width: int, uniforms: np.ndarray) -> np.ndarray:
    """Draw one column per row from row-wise CDFs laid out flat: row r occupies values (r, r + 1].

    ``flat_cdf[r*width + k] = r + P(column <= k | row r)`` with the row's last value exactly r + 1,
    so one ``searchsorted`` draws for every row at once without an (n, width) temporary.
    """
    position = np.searchsorted(flat_cdf, rows + uniforms, side="right")
    return np.clip(position - rows * width, 0, width - 1)


def _flat_cdf(probabilities: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(probabilities, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    return (cdf + np.arange(probabilities.shape[0], dtype=np.float64)[:, None]).ravel()


def _rowwise_dot(left: np.ndarray, left_index: np.ndarray, right: np.ndarray, right_index: np.ndarray,
                 block: int = 1 << 17) -> np.ndarray:
    out = np.empty(left_index.shape[0], dtype=np.float64)
    for start in range(0, left_index.shape[0], block):
        stop = start + block
        out[start:stop] = np.einsum("ij,ij->i", left[left_index[start:stop]], right[right_index[start:stop]])
    return out


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# ---- the world: users, items and their hidden parameters ------------------------------------------------------

@dataclass(frozen=True)
class _World:
    user_vectors: np.ndarray
    user_topic_cdf: np.ndarray  # flat, see _sample_rows
    user_activity: np.ndarray
    item_vectors: np.ndarray
    item_click_effect: np.ndarray
    item_watch_mu: np.ndarray  # log duration + watch_log_offset + item watch effect
    item_trend: np.ndarray
    item_base_log_popularity: np.ndarray
    items_by_topic: np.ndarray  # item indices sorted by topic
    topic_item_offsets: np.ndarray  # (K + 1,) into items_by_topic
    topic_token_counts: np.ndarray  # tokens per topic (token j is in topic j mod K)
    users: pl.DataFrame
    videos: pl.DataFrame


def _latent(rng: np.random.Generator, centres: np.ndarray, topics: np.ndarray, share: float) -> np.ndarray:
    d = centres.shape[1]
    noise = rng.normal(0.0, 1.0 / math.sqrt(d), size=(topics.shape[0], d))
    return math.sqrt(share) * centres[topics] + math.sqrt(1.0 - share) * noise


def _standardise(values: np.ndarray) -> np.ndarray:
    std = values.std()
    return (values - values.mean()) / std if std > 0 else np.zeros_like(values)


def _build_world(config: SimulatorConfig) -> _World:
    rng = np.random.default_rng([config.seed, _WORLD_STREAM])
    k, d = config.n_topics, config.latent_dim
    centres = rng.normal(0.0, 1.0 / math.sqrt(d), size=(k, d))

    # Users.
    user_topic = rng.integers(0, k, size=config.n_users)
    user_vectors = _latent(rng, centres, user_topic, config.taste_cluster_share)
    topic_preference = _softmax_rows(config.taste_sharpness * user_vectors @ centres.T)
    activity = np.exp(rng.normal(0.0, config.user_activity_sigma, size=config.n_users))
    activity /= activity.mean()
    users = _user_profiles(rng, config, user_vectors, user_topic, activity)

    # Items: the first K items cover every topic once so no topic is empty.
    item_topic = np.concatenate([np.arange(k), rng.integers(0, k, size=config.n_videos - k)])
    item_vectors = _latent(rng, centres, item_topic, config.taste_cluster_share)
    author = _item_authors(rng, config, item_topic)
    author_effect = rng.normal(0.0, config.item_effect_std * math.sqrt(config.author_effect_share), config.n_authors)
    own_effect = rng.normal(0.0, config.item_effect_std * math.sqrt(1.0 - config.author_effect_share), config.n_videos)
    click_effect = author_effect[author] + own_effect
    rho = config.click_watch_item_correlation
    watch_effect = config.watch_item_effect_std * (
        rho * _standardise(click_effect) + math.sqrt(1.0 - rho * rho) * rng.normal(size=config.n_videos))
    topic_log_duration = rng.normal(0.0, 0.3, size=k)
    log_duration = np.log(config.duration_median_s) + topic_log_duration[item_topic] + \
        rng.normal(0.0, config.duration_sigma, size=config.n_videos)
    duration_s = np.clip(np.exp(log_duration), 1.0, 4.0 * 3600.0)
    rank = rng.permutation(config.n_videos) + 1
    base_log_popularity = -config.popularity_skew * np.log(rank)
    trend = rng.normal(0.0, config.popularity_drift, size=config.n_videos)
    music = _zipf_choice(rng, config.n_music, config.n_videos)
    extra_tags = rng.binomial(2, 0.3, size=config.n_videos) if config.n_tags > k else np.zeros(config.n_videos, int)
    extra_values = rng.integers(k, max(config.n_tags, k + 1), size=int(extra_tags.sum()))
    tag_counts = 1 + extra_tags
    tag_offsets = np.concatenate([[0], np.cumsum(tag_counts)]).astype(np.int64)
    tag_values = np.empty(int(tag_offsets[-1]), dtype=np.int64)
    tag_values[tag_offsets[:-1]] = item_topic  # the first tag is the topic tag
    is_extra = np.ones(tag_values.shape[0], dtype=bool)
    is_extra[tag_offsets[:-1]] = False
    tag_values[is_extra] = extra_values
    videos = pl.DataFrame({
        "video_id": pl.Series(np.arange(config.n_videos), dtype=pl.Int64),
        "author_id": pl.Series(author, dtype=pl.Int64),
        "music_id": pl.Series(music, dtype=pl.Int64),
        "tags": _list_series(tag_offsets, tag_values),
        "duration_s": pl.Series(duration_s, dtype=pl.Float64),
    })

    items_by_topic = np.argsort(item_topic, kind="stable")
    topic_item_offsets = np.concatenate([[0], np.cumsum(np.bincount(item_topic, minlength=k))])
    topic_token_counts = (config.n_tokens - np.arange(k) + k - 1) // k  # |{j < n_tokens : j mod K = t}|
    return _World(
        user_vectors=user_vectors,
        user_topic_cdf=_flat_cdf(topic_preference),
        user_activity=activity,
        item_vectors=item_vectors,
        item_click_effect=click_effect,
        item_watch_mu=np.log(duration_s) + config.watch_log_offset + watch_effect,
        item_trend=trend,
        item_base_log_popularity=base_log_popularity,
        items_by_topic=items_by_topic,
        topic_item_offsets=topic_item_offsets,
        topic_token_counts=topic_token_counts,
        users=users,
        videos=videos,
    )


def _zipf_choice(rng: np.random.Generator, n_values: int, size: int, exponent: float = 1.0) -> np.ndarray:
    weights = (rng.permutation(n_values) + 1.0) ** -exponent
    cdf = np.cumsum(weights) / weights.sum()
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_values - 1)


def _item_authors(rng: np.random.Generator, config: SimulatorConfig, item_topic: np.ndarray) -> np.ndarray:
    # Author a works in topic a mod K; a loyal item picks uniformly among its topic's authors.
    k = config.n_topics
    per_topic = np.maximum(0, (config.n_authors - np.arange(k) + k - 1) // k)
    loyal = (rng.random(item_topic.shape[0]) < config.author_topic_loyalty) & (per_topic[item_topic] > 0)
    topical = item_topic + k * np.floor(rng.random(item_topic.shape[0]) * per_topic[item_topic]).astype(np.int64)
    anyone = _zipf_choice(rng, config.n_authors, item_topic.shape[0])
    return np.where(loyal, topical, anyone)


def _user_profiles(rng: np.random.Generator, config: SimulatorConfig, user_vectors: np.ndarray,
                   user_topic: np.ndarray, activity: np.ndarray) -> pl.DataFrame:
    signal = config.profile_signal
    d = config.latent_dim
    directions = rng.normal(size=(2, d))

    def noisy_projection(direction: np.ndarray) -> np.ndarray:
        return math.sqrt(signal) * _standardise(user_vectors @ direction) + \
            math.sqrt(1.0 - signal) * rng.normal(size=config.n_users)

    gender = (noisy_projection(directions[0]) > 0).astype(np.int64)
    age_bucket = np.digitize(noisy_projection(directions[1]), _AGE_THRESHOLDS)
    keeps_topic = rng.random(config.n_users) < signal
    interest_group = np.where(keeps_topic, user_topic, rng.integers(0, config.n_topics, size=config.n_users))
    activity_quartile = np.digitize(activity, np.quantile(activity, [0.25, 0.5, 0.75])) if config.n_users > 1 \
        else np.zeros(1, dtype=np.int64)
    register_days = np.round(np.exp(rng.normal(6.0, 1.0, size=config.n_users)))
    return pl.DataFrame({
        "user_id": pl.Series(np.arange(config.n_users), dtype=pl.Int64),
        "gender": pl.Series(gender, dtype=pl.Int64),
        "age_range": pl.Series([_AGE_RANGES[i] for i in age_bucket], dtype=pl.String),
        "interest_group": pl.Series(interest_group, dtype=pl.Int64),
        "activity_degree": pl.Series([_ACTIVITY_DEGREES[i] for i in activity_quartile], dtype=pl.String),
        "register_days": pl.Series(register_days, dtype=pl.Float64),
    })


def _list_series(offsets: np.ndarray, values: np.ndarray, name: str = "") -> pl.Series:
    array = pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), pa.array(values.astype(np.int64)))
    return pl.Series(name, pl.from_arrow(array)).cast(pl.List(pl.Int64))


# ---- chunks: one (day, user block) at a time ------------------------------------------------------------------

@dataclass
class _Chunk:
    user: np.ndarray
    video: np.ndarray
    time_ms: np.ndarray
    date: int
    hourmin: np.ndarray
    tab: np.ndarray
    logit: np.ndarray  # click logit without the bias
    watch_mu: np.ndarray | None = None  # mean of log T given a click
    click_uniform: np.ndarray | None = None
    watch_normal: np.ndarray | None = None
    token_offsets: np.ndarray | None = None
    token_values: np.ndarray | None = None


def _day_sampling_tables(config: SimulatorConfig, world: _World, day: int) -> tuple[np.ndarray, np.ndarray]:
    """Global popularity CDF and per-topic flat CDFs (items in topic order) for one day."""
    centre = 0.5 * (config.n_days - 1)
    log_weight = world.item_base_log_popularity + world.item_trend * (day - centre)
    weight = np.exp(log_weight - log_weight.max())
    global_cdf = np.cumsum(weight) / weight.sum()
    sorted_weight = weight[world.items_by_topic]
    offsets = world.topic_item_offsets
    cumulative = np.concatenate([[0.0], np.cumsum(sorted_weight)])
    sizes = np.diff(offsets)
    topic_of_position = np.repeat(np.arange(config.n_topics), sizes)
    start = cumulative[offsets[:-1]][topic_of_position]
    total = (cumulative[offsets[1:]] - cumulative[offsets[:-1]])[topic_of_position]
    within = (cumulative[1:] - start) / total
    within[offsets[1:] - 1] = 1.0  # each topic's last value exactly 1 (see _sample_rows)
    return global_cdf, within + topic_of_position


def _generate_chunk(config: SimulatorConfig, world: _World, day: int, block: int, *,
                    with_outcomes: bool) -> _Chunk:
    """Impressions of one (day, user block); the stream depends only on (seed, day, block).

    Draw order is fixed; ``with_outcomes=False`` stops after the click logits (enough to solve
    the bias), and the draws it made are the same as the first draws of the full chunk.
    """
    rng = np.random.default_rng([config.seed, _CHUNK_STREAM, day, block])
    first_user = block * config.users_per_block
    block_users = np.arange(first_user, min(first_user + config.users_per_block, config.n_users))
    counts = rng.poisson(config.impressions_per_user_day * world.user_activity[block_users])
    user = np.repeat(block_users, counts)
    n = user.shape[0]

    hour = np.minimum(np.searchsorted(_HOUR_CDF, rng.random(n), side="right"), 23)
    ms_in_hour = rng.integers(0, _MS_PER_HOUR, size=n)
    tab = (rng.random(n) < config.tab1_share).astype(np.int32)
    personal = rng.random(n) < config.personal_exposure_share
    topic_uniform = rng.random(n)
    item_uniform = rng.random(n)

    # Exposure: a taste topic then a popular item within it, or a popular item overall.
    global_cdf, topic_cdf = _day_sampling_tables(config, world, day)
    video = np.minimum(np.searchsorted(global_cdf, item_uniform, side="right"), config.n_videos - 1)
    if personal.any():
        topic = _sample_rows(world.user_topic_cdf, user[personal], config.n_topics, topic_uniform[personal])
        position = np.searchsorted(topic_cdf, topic + item_uniform[personal], side="right")
        position = np.clip(position, world.topic_item_offsets[topic], world.topic_item_offsets[topic + 1] - 1)
        video[personal] = world.items_by_topic[position]

    day_start = dt.datetime.combine(config.start_day() + dt.timedelta(days=day), dt.time(), tzinfo=dt.timezone.utc)
    time_ms = int(day_start.timestamp() * 1000) + hour * _MS_PER_HOUR + ms_in_hour
    order = np.lexsort((user, time_ms))  # log order: by time, then user
    user, video, hour, ms_in_hour, tab, time_ms = (a[order] for a in (user, video, hour, ms_in_hour, tab, time_ms))

    affinity = config.taste_strength * _rowwise_dot(world.user_vectors, user, world.item_vectors, video)
    hour_of_day = hour + ms_in_hour / _MS_PER_HOUR
    centre = 0.5 * (config.n_days - 1)
    logit = (affinity + world.item_click_effect[video]
             + config.trend_click_weight * world.item_trend[video] * (day - centre)
             + config.tab_click_effect * tab
             + config.hour_click_amplitude * np.cos(2.0 * np.pi * (hour_of_day - 21.0) / 24.0))
    chunk = _Chunk(user=user, video=video, time_ms=time_ms.astype(np.int64), date=_yyyymmdd(day_start.date()),
                   hourmin=(hour * 100 + ms_in_hour // _MS_PER_MINUTE).astype(np.int32), tab=tab, logit=logit)
    if not with_outcomes:
        return chunk

    chunk.watch_mu = world.item_watch_mu[video] + config.watch_affinity_weight * affinity
    chunk.click_uniform = rng.random(n)
    chunk.watch_normal = rng.standard_normal(n)
    token_counts = rng.poisson(config.tokens_per_impression, size=n)
    token_user = np.repeat(user, token_counts)
    m = token_user.shape[0]
    token_topic = _sample_rows(world.user_topic_cdf, token_user, config.n_topics, rng.random(m))
    within = np.floor(rng.random(m) * world.topic_token_counts[token_topic]).astype(np.int64)
    tokens = token_topic + config.n_topics * within
    noisy = rng.random(m) < config.token_noise
    tokens[noisy] = rng.integers(0, config.n_tokens, size=int(noisy.sum()))
    chunk.token_offsets = np.concatenate([[0], np.cumsum(token_counts)]).astype(np.int64)
    chunk.token_values = tokens.astype(np.int64)
    return chunk


def _yyyymmdd(day: dt.date) -> int:
    return day.year * 10_000 + day.month * 100 + day.day


def _chunk_keys(config: SimulatorConfig) -> Iterator[tuple[int, int]]:
    n_blocks = -(-config.n_users // config.users_per_block)
    for day in range(config.n_days):
        for block in range(n_blocks):
            yield day, block


def _finalise(config: SimulatorConfig, chunk: _Chunk, bias: float, first_row_id: int) -> pl.DataFrame:
    """Clicks, watch times and ground truth for a chunk, as an impressions frame in the schema."""
    assert chunk.watch_mu is not None and chunk.click_uniform is not None and chunk.watch_normal is not None
    assert chunk.token_offsets is not None and chunk.token_values is not None
    n = chunk.user.shape[0]
    p_click = _sigmoid(bias + chunk.logit)
    is_click = chunk.click_uniform < p_click
    sigma = config.watch_sigma
    watch_time_s = np.where(is_click, np.exp(chunk.watch_mu + sigma * chunk.watch_normal), 0.0)
    expected_watch_s = p_click * np.exp(chunk.watch_mu + 0.5 * sigma * sigma)  # E[T|x] = p · E[T | click, x]
    frame = pl.DataFrame({
        "row_id": pl.Series(np.arange(first_row_id, first_row_id + n), dtype=pl.Int64),
        "user_id": pl.Series(chunk.user, dtype=pl.Int64),
        "video_id": pl.Series(chunk.video, dtype=pl.Int64),
        "time_ms": pl.Series(chunk.time_ms, dtype=pl.Int64),
        "date": pl.Series(np.full(n, chunk.date), dtype=pl.Int32),
        "hourmin": pl.Series(chunk.hourmin, dtype=pl.Int32),
        "is_click": pl.Series(is_click.astype(np.int8), dtype=pl.Int8),
        "watch_time_s": pl.Series(watch_time_s, dtype=pl.Float64),
        "tab": pl.Series(chunk.tab, dtype=pl.Int32),
        "tokens": _list_series(chunk.token_offsets, chunk.token_values),
        "true_p_click": pl.Series(p_click, dtype=pl.Float64),
        "true_expected_watch_s": pl.Series(expected_watch_s, dtype=pl.Float64),
    })
    return conform_impressions(frame, source="simulator")


def _provenance(config: SimulatorConfig, bias: float, histogram: _LogitHistogram) -> dict[str, object]:
    return {
        "generator": "ytdnn.data.simulator",
        "config": config.model_dump(mode="json"),
        "click_bias": bias,
        "expected_click_rate": histogram.mean_probability(bias),
    }


def _empty_impressions() -> pl.DataFrame:
    frame = pl.DataFrame(schema={"user_id": pl.Int64, "video_id": pl.Int64, "time_ms": pl.Int64,
                                 "date": pl.Int32, "is_click": pl.Int8, "watch_time_s": pl.Float64,
                                 "true_p_click": pl.Float64, "true_expected_watch_s": pl.Float64})
    return conform_impressions(frame, source="simulator")


# ---- the scale set ---------------------------------------------------------------------------------------------

# The scale set of issue 6: 50M impressions, 5M users, 1M videos over the default 14 days, i.e.
# 10 impressions per user over the window and 50 per video. Smaller sizes keep that shape, so the
# embedding tables grow with the log: ``scale_config(n)`` has n/10 users and n/50 videos.
SCALE_IMPRESSIONS_PER_USER = 10
SCALE_IMPRESSIONS_PER_VIDEO = 50
SCALE_PRESETS: dict[str, int] = {"scale-1m": 1_000_000, "scale-10m": 10_000_000, "scale-20m": 20_000_000,
                                 "scale-50m": 50_000_000}


def scale_config(n_impressions: int, seed: int = 0, **overrides: object) -> SimulatorConfig:
    """A log of about ``n_impressions`` rows shaped like the issue-6 scale set (see the constants above)."""
    if n_impressions <= 0:
        raise ValueError(f"n_impressions must be > 0, got {n_impressions}")
    n_days = int(overrides.pop("n_days", 14))  # type: ignore[call-overload]
    n_users = max(1, n_impressions // SCALE_IMPRESSIONS_PER_USER)
    n_videos = max(64, n_impressions // SCALE_IMPRESSIONS_PER_VIDEO)  # >= n_topics (32) and n_tags (64)
    return SimulatorConfig(n_users=n_users, n_videos=n_videos, n_days=n_days,
                           impressions_per_user_day=SCALE_IMPRESSIONS_PER_USER / n_days, seed=seed,
                           **overrides)  # type: ignore[arg-type]


# ---- public API -----------------------------------------------------------------------------------------------

def simulate(config: SimulatorConfig) -> InteractionData:
    """Generate the whole log in memory (see the module docstring for the model).

    Returns impressions with ``true_p_click`` and ``true_expected_watch_s``, a users table with
    profile columns and a videos table; ``provenance`` holds the config and the solved bias.
    """
    world = _build_world(config)
    chunks = [_generate_chunk(config, world, day, block, with_outcomes=True) for day, block in _chunk_keys(config)]
    histogram = _LogitHistogram()
    for chunk in chunks:
        histogram.add(chunk.logit)
    bias = histogram.solve_bias(config.target_click_rate)
    frames: list[pl.DataFrame] = []
    row_id = 0
    for chunk in chunks:
        frames.append(_finalise(config, chunk, bias, row_id))
        row_id += frames[-1].height
    impressions = pl.concat(frames) if frames else _empty_impressions()
    return InteractionData(impressions, world.users, world.videos, name=f"simulated-seed{config.seed}",
                           provenance=_provenance(config, bias, histogram))


def simulate_to_parquet(config: SimulatorConfig, directory: str | Path, *, shard_rows: int = 1_000_000) -> Path:
    """Generate the log chunk by chunk into ``directory`` in the ytdnn layout, in bounded memory.

    Writes ``impressions/part-NNNNN.parquet`` (``shard_rows`` rows each, the last one shorter),
    ``users.parquet``, ``videos.parquet`` and ``dataset.json``; ``read_dataset(directory)`` then
    returns the same data as ``simulate(config)``. Two passes over the chunks: the first only
    draws the click logits to solve the bias, the second writes. Memory holds one chunk (one
    day of ``users_per_block`` users) plus one shard. The shards are written to a temporary
    folder that replaces ``impressions/`` once complete.
    """
    if shard_rows <= 0:
        raise ValueError(f"shard_rows must be > 0, got {shard_rows}")
    directory = Path(directory)
    if (directory / "impressions.parquet").exists():
        raise ValueError(f"{directory / 'impressions.parquet'} exists and would shadow impressions/; "
                         "write to an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    world = _build_world(config)

    histogram = _LogitHistogram()
    for day, block in _chunk_keys(config):
        histogram.add(_generate_chunk(config, world, day, block, with_outcomes=False).logit)
    bias = histogram.solve_bias(config.target_click_rate)

    row_id = 0
    with ImpressionShardWriter(directory, shard_rows, _empty_impressions) as writer:
        for day, block in _chunk_keys(config):
            frame = _finalise(config, _generate_chunk(config, world, day, block, with_outcomes=True), bias, row_id)
            row_id += frame.height
            writer.add(frame)

    atomic_write_with(directory / "users.parquet", lambda tmp: world.users.write_parquet(tmp), suffix=".parquet")
    atomic_write_with(directory / "videos.parquet", lambda tmp: world.videos.write_parquet(tmp), suffix=".parquet")
    atomic_write_json(directory / "dataset.json", {"name": f"simulated-seed{config.seed}",
                                                    "provenance": _provenance(config, bias, histogram),
                                                    "format": "ytdnn-v1"})
    return directory
