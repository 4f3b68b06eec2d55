"""Serving settings: limits, candidate counts, the admin token, warm-up and the ranker backend.

Loaded like every job config (defaults < TOML file given to ``ytdnn serve --config`` <
overrides); the admin token may also come from the environment variable ``YTDNN_ADMIN_TOKEN``
so that it need not be written into a file. Without a token the admin routes answer 403.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from ytdnn.config import JobConfig

ADMIN_TOKEN_ENV = "YTDNN_ADMIN_TOKEN"


class ServingSettings(JobConfig):
    """How the service answers. Every limit is enforced on each request (422 beyond it)."""

    candidate_count: int = Field(300, ge=1, le=10_000,
                                 description="candidates retrieved from the index and ranked per /v1/recommend")
    default_k: int = Field(10, ge=1, description="k when a /v1/recommend request gives none")
    max_k: int = Field(100, ge=1, description="largest k a request may ask for")
    max_rank_videos: int = Field(1000, ge=1, description="largest video_ids list /v1/rank accepts")
    max_exclude: int = Field(1000, ge=0, description="largest exclude list /v1/recommend accepts")
    max_history_events: int = Field(500, ge=0, description="largest request history accepted")
    unknown_videos: Literal["reject", "score_oov"] = Field(
        "reject", description="/v1/rank with video ids the bundle does not know: 422 naming them ('reject') "
        "or score them with every item feature out-of-vocabulary ('score_oov')")
    clock: Literal["log_end", "wall"] = Field(
        "log_end", description="'now' when a request gives no context.time_ms: just after the bundled log's "
        "last event ('log_end', right for replaying a historical dataset) or the wall clock ('wall')")
    ranker_backend: Literal["onnx", "torch"] = Field("onnx", description="run the ranker with ONNX Runtime or PyTorch")
    item_cache: bool = Field(True, description="precompute the item half of the ranker's first layer for every "
                                               "video at load (a request then only gathers its rows)")
    intra_op_threads: int = Field(1, ge=1, le=64, description="threads per matrix product (ONNX Runtime / PyTorch)")
    workers: int = Field(1, ge=1, le=64, description="server processes (uvicorn workers), each with its own copy "
                         "of the model; with more than one, bundles are rolled out through the watched `current` "
                         "pointer (every worker follows it) and /admin/reload answers 409")
    scoring_threads: int = Field(0, ge=0, le=64, description="0: score on the event loop (cheapest for CPU-bound "
                                 "requests of a few ms); N: in a pool of N worker threads")
    warmup_requests: int = Field(30, ge=0, description="requests run on a freshly loaded model before it serves")
    admin_token: str | None = Field(None, description=f"token for /admin routes; ${ADMIN_TOKEN_ENV} overrides it")
    watch_pointer: bool = Field(False, description="poll the `current` pointer beside the bundles and reload "
                                                   "when it changes")
    watch_interval_s: float = Field(2.0, gt=0, description="how often the pointer is polled")
    background_load: bool = Field(True, description="load the first bundle after the server starts (readyz "
                                                    "answers 503 until it is warm) instead of before")

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        if self.max_k > self.candidate_count:
            raise ValueError(f"max_k ({self.max_k}) must be <= candidate_count ({self.candidate_count}): "
                             "a request cannot get more videos than are ranked")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ValueError("admin_token: use at least 8 characters")
        return self

    def with_environment(self) -> ServingSettings:
        """A copy with the admin token taken from ``$YTDNN_ADMIN_TOKEN`` when that is set."""
        token = os.environ.get(ADMIN_TOKEN_ENV)
        return self.merged({"admin_token": token}) if token else self


def load_settings(config_path: str | Path | None = None, overrides: list[str] | None = None) -> ServingSettings:
    """Defaults, then the TOML file, then ``key=value`` overrides, then the environment."""
    return ServingSettings.load(config_path, overrides).with_environment()
