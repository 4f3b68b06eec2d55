r"""Ranking objectives: what the ranking tower is trained on and how its outputs are served.

Each objective is a small dataclass (TensorFlow Recommenders' *Task* idea) that a trainer takes:

- ``name`` — the CLI name (a key of :data:`RANKING_OBJECTIVES`);
- ``n_heads`` — how many logits the ranking network must output per impression;
- ``fit(is_click, watch_time_s)`` — sets the data-dependent constants (loss scale, resampling
  rate ``c``, mean watch time given a click) from the *training* impressions; returns ``self``;
- ``init_bias(is_click, watch_time_s)`` — the bias-only optimum of every output head, to
  initialise the output layer's bias (a badly started bias costs many epochs on the first
  layer alone, e.g. WLR starting at odds 1 when the optimum is ~100 s);
- ``batch_transform(batch, generator)`` — identity except for ``wlr-resample``, which expands
  the minibatch into resampled positives;
- ``loss(outputs, is_click, watch_time_s)`` — a scalar to minimise (on transformed batches);
- ``validation_loss(...)`` — the same objective on untransformed rows (equals ``loss`` except
  for ``wlr-resample``, where it is the resampling's expectation);
- ``predict(outputs)`` — a dict with at least ``logit`` (head 0) and ``expected_watch_s``
  (what is served), plus ``odds`` and/or ``p_click`` where they mean something;
- ``ranking_key`` — which ``predict`` entry orders items, per instance: ``expected_watch_s``;
  ``p_click`` for the click models (whose served value is ``p_click`` times a constant anyway);
  for ``wlr-corrected`` its ``rank_by`` parameter (``odds`` by default, see its docstring);
- ``calibrates`` — whether the trainer should fit a held-out calibration constant after training
  (``set_watch_scale``; only ``wlr-corrected``, see :mod:`ytdnn.training.calibration`).

Notation: for impression *i*, :math:`c_i` = ``is_click`` (0/1), :math:`T_i` = ``watch_time_s``
(0 when not clicked), :math:`z_i` = head-0 logit. :math:`E[T|x]` always counts unclicked
impressions as 0, so it is the expected watch time *per impression*, the thing served. On a
dataset of *N* impressions of which *k* are clicked, :math:`\Sigma T` is the total watch time.

**The loss denominator.** Every objective returns

.. math:: L = \frac{1}{B \cdot s} \sum_{i=1}^{B} \ell_i

with *B* the number of rows handed to ``loss`` and *s* = ``loss_scale``, a *fixed* constant
(never a per-batch sum of weights: dividing by each batch's own total weight would re-weight
batches against each other and move the optimum). ``fit`` sets *s* so that one unit of
learning rate means about the same across objectives:

- ``wlr``: :math:`\ell = c_i T_i\,\mathrm{sp}(-z_i) + (1-c_i)\,\mathrm{sp}(z_i)`;
  *s* = mean example weight (ΣT + N − k)/N.
- ``wlr-exact``: :math:`\ell = c_i T_i\,\mathrm{sp}(-z_i) + \mathrm{sp}(z_i)`; *s* = (ΣT + N)/N.
- ``wlr-resample``: unit-weight BCE on the expanded batch; *s* = 1 (c makes the expected
  weight per source row 1).
- ``wlr-corrected``: the wlr term with its *s*, plus ``click_loss_weight`` · BCE of head 1 / B.
- ``poisson``: :math:`\ell = e^{z_i} - T_i z_i`; *s* = mean T.
- ``mse``: :math:`\ell = (z_i - T_i)^2`; *s* = Var T.
- ``log-mse``: :math:`\ell = (z_i - \log(1+T_i))^2`; *s* = Var log(1+T).
- ``click``, ``click-only``: BCE of :math:`z_i` against :math:`c_i`; *s* = 1.

(sp = softplus, sp(z) = log(1 + e^z).) With these, the weighted-logistic losses are "log loss per
unit of example weight" and the squared-error losses equal 1 at the bias-only optimum, so
the same learning rate is sensible for all of them. Before ``fit``, *s* = 1 (raw loss / B).

**Serving exponentials.** ``odds`` and every ``e^z`` served are computed as
``exp(min(z, MAX_LOGIT_FOR_EXP))`` with :data:`MAX_LOGIT_FOR_EXP` = 30 (e^30 s ≈ 3·10^5 years):
an untrained or diverged network must not serve ``inf``.

Inputs are validated on every call (shapes, is_click ∈ {0, 1}, finite watch_time_s ≥ 0); bad
input raises :class:`ObjectiveInputError` naming the field and the first bad row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MAX_LOGIT_FOR_EXP",
    "ObjectiveError",
    "ObjectiveInputError",
    "UnknownObjectiveError",
    "RankingObjective",
    "WLRObjective",
    "WLRResampleObjective",
    "WLRExactObjective",
    "WLRCorrectedObjective",
    "PoissonObjective",
    "MSEObjective",
    "LogMSEObjective",
    "ClickOnlyObjective",
    "ClickObjective",
    "RANKING_OBJECTIVES",
    "RANK_BY_CHOICES",
    "make_objective",
    "objective_from_config",
]

MAX_LOGIT_FOR_EXP: float = 30.0
"""Logits are clamped to at most this before ``exp`` when serving (e^30 ≈ 1.07e13)."""


class ObjectiveError(ValueError):
    """An objective was misconfigured or used before the constants it needs were fitted."""


class ObjectiveInputError(ObjectiveError):
    """Bad tensors handed to an objective; the message names the field and the first bad row."""


class UnknownObjectiveError(ObjectiveError):
    """No ranking objective is registered under the requested name."""


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _first_bad_row(bad: Tensor) -> int:
    return int(torch.nonzero(bad.reshape(-1))[0, 0])


def _check_labels(is_click: Tensor, watch_time_s: Tensor, *, n_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Return (is_click, watch_time_s) as float tensors of shape [B] after validating them."""
    for field_name, value in (("is_click", is_click), ("watch_time_s", watch_time_s)):
        if not isinstance(value, Tensor):
            raise ObjectiveInputError(f"{field_name}: expected a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 1:
            raise ObjectiveInputError(f"{field_name}: expected shape [B], got {list(value.shape)}")
    if is_click.shape[0] != watch_time_s.shape[0]:
        raise ObjectiveInputError(
            f"is_click has {is_click.shape[0]} rows but watch_time_s has {watch_time_s.shape[0]}")
    if n_rows is not None and is_click.shape[0] != n_rows:
        raise ObjectiveInputError(f"is_click: expected {n_rows} rows (one per output row), got {is_click.shape[0]}")
    if is_click.shape[0] == 0:
        raise ObjectiveInputError("is_click: empty batch (0 rows)")
    bad_click = (is_click != 0) & (is_click != 1)
    if bool(bad_click.any()):
        row = _first_bad_row(bad_click)
        raise ObjectiveInputError(f"is_click row {row}: expected 0 or 1, got {is_click[row].item()}")
    watch = watch_time_s if watch_time_s.is_floating_point() else watch_time_s.double()
    bad_watch = ~torch.isfinite(watch) | (watch < 0)
    if bool(bad_watch.any()):
        row = _first_bad_row(bad_watch)
        raise ObjectiveInputError(
            f"watch_time_s row {row}: expected a finite number of seconds >= 0, got {watch[row].item()}")
    return is_click, watch


def _check_outputs(outputs: Tensor, n_heads: int) -> Tensor:
    """Return outputs as [B, n_heads]; a 1-D [B] tensor is accepted when n_heads == 1."""
    if not isinstance(outputs, Tensor) or not outputs.is_floating_point():
        raise ObjectiveInputError(
            f"outputs: expected a floating-point torch.Tensor [B, {n_heads}], got {type(outputs).__name__}"
            + (f" of dtype {outputs.dtype}" if isinstance(outputs, Tensor) else ""))
    if outputs.dim() == 1 and n_heads == 1:
        return outputs.unsqueeze(1)
    if outputs.dim() != 2 or outputs.shape[1] != n_heads:
        raise ObjectiveInputError(f"outputs: expected shape [B, {n_heads}], got {list(outputs.shape)}")
    return outputs


def _label_tensors(outputs: Tensor, is_click: Tensor, watch_time_s: Tensor,
                   n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """Validate a loss call; return (logits [B, n_heads], click [B], watch [B]) in the logits' dtype."""
    logits = _check_outputs(outputs, n_heads)
    click, watch = _check_labels(is_click, watch_time_s, n_rows=logits.shape[0])
    return logits, click.to(logits.dtype), watch.to(logits.dtype)


class _Totals:
    """Dataset totals used by ``fit`` and ``init_bias`` (float64, on the CPU)."""

    def __init__(self, is_click: Tensor, watch_time_s: Tensor) -> None:
        click, watch = _check_labels(is_click, watch_time_s)
        click64 = click.detach().to("cpu", torch.float64)
        watch64 = watch.detach().to("cpu", torch.float64)
        self.n = int(click64.numel())
        self.k = int(click64.sum().item())
        # T of unclicked rows is 0 by the schema; multiplying by click makes that true regardless.
        self.watch = watch64 * click64
        self.total_watch_s = float(self.watch.sum().item())

    def require_clicks(self, who: str) -> None:
        if self.k == 0:
            raise ObjectiveError(f"{who}: the data has no clicked impression (k = 0); nothing to fit")
        if self.total_watch_s <= 0:
            raise ObjectiveError(f"{who}: total watch time of the clicked impressions is 0; nothing to fit")

    def require_unclicked(self, who: str) -> None:
        if self.k == self.n:
            raise ObjectiveError(f"{who}: every impression is clicked (N - k = 0); the odds optimum is infinite")


def _exp_clamped(logit: Tensor) -> Tensor:
    return torch.exp(torch.clamp(logit, max=MAX_LOGIT_FOR_EXP))


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RankingObjective:
    """Base of the ranking objectives. See the module docstring for the shared contract."""

    name: str = field(default="", init=False)
    loss_scale: float = 1.0
    """Fixed denominator factor *s* of the loss (set by ``fit``; 1 before)."""

    n_heads: ClassVar[int] = 1

    @property
    def ranking_key(self) -> str:
        """The ``predict`` entry that orders items (the score ranking metrics judge)."""
        return "expected_watch_s"

    @property
    def calibrates(self) -> bool:
        """True when the trainer should fit a held-out scale on the served value (:meth:`set_watch_scale`)."""
        return False

    def set_watch_scale(self, scale: float | None) -> None:
        """Store a fitted calibration constant of the served value (None clears it); only calibrating
        objectives have one."""
        raise ObjectiveError(f"{self.name}: this objective has no calibration constant")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise ObjectiveError(f"{self.name}: loss_scale must be a finite number > 0, got {self.loss_scale}")

    # -- data-dependent constants ------------------------------------------------------------
    def fit(self, is_click: Tensor, watch_time_s: Tensor) -> Self:
        """Set the data-dependent constants from the training impressions; returns ``self``."""
        totals = _Totals(is_click, watch_time_s)
        scale = self._fitted_loss_scale(totals)
        if not (math.isfinite(scale) and scale > 0):
            raise ObjectiveError(f"{self.name}: the fitted loss_scale is {scale}; the data carries no weight")
        self.loss_scale = scale
        return self

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        return 1.0

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        """Bias-only optimum of each output head (length ``n_heads``), from the training data."""
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------
    def batch_transform(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Hook applied to each training minibatch before the forward pass; identity here."""
        return batch

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        """Scalar loss: Σ_i ℓ_i / (B · loss_scale). ``outputs`` is [B, n_heads] (or [B] if 1 head)."""
        raise NotImplementedError

    def validation_loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        """The loss on *untransformed* rows (validation, early stopping); ``loss`` except for resampling."""
        return self.loss(outputs, is_click, watch_time_s)

    # -- serving -----------------------------------------------------------------------------
    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        """Served quantities per row; always ``logit`` (head 0) and ``expected_watch_s``."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """Name and every fitted constant, JSON-serialisable; :func:`objective_from_config` inverts it."""
        return dataclasses.asdict(self)


def _weighted_bce_sum(logit: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logit, target, weight=weight, reduction="sum")


# ---------------------------------------------------------------------------------------------
# The weighted-logistic family
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class WLRObjective(RankingObjective):
    r"""Covington's weighted logistic regression (the paper's ranking objective).

    A clicked impression is a positive with weight :math:`T` (its watch time), an unclicked one
    a negative with weight 1: :math:`\ell = c\,T\,\mathrm{sp}(-z) + (1-c)\,\mathrm{sp}(z)`,
    i.e. BCE-with-logits with a per-example weight. Served: ``expected_watch_s`` = odds = e^z.

    The optimum at x solves :math:`E[cT|x]\,\sigma(-z) = P(c=0|x)\,\sigma(z)`, so

    .. math:: e^{z^*} = \frac{E[T\,|\,x]}{1 - p(x)}

    with :math:`E[T|x]` counting unclicked impressions as 0 and p(x) the click probability. The
    paper's :math:`\approx E[T](1+P)` is the first-order expansion of 1/(1−p); the served value
    overstates E[T|x] by the factor 1/(1−p), a relative bias p/(1−p) that differs per item (so it
    also distorts the *ranking* between items with different click rates). On a dataset the
    bias-only optimum is :math:`\Sigma T/(N-k)`.

    A clicked impression with T = 0 is a positive of weight 0: it contributes nothing at all —
    neither a positive nor a negative — exactly as the definition says; it still counts in *k*.
    """

    name: str = field(default="wlr", init=False)

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        # Mean example weight: Σ_clicked T + (N − k) over N.
        return (totals.total_watch_s + (totals.n - totals.k)) / totals.n

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        totals.require_clicks(self.name)
        totals.require_unclicked(self.name)
        return [math.log(totals.total_watch_s / (totals.n - totals.k))]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        weight = click * watch + (1.0 - click)
        return _weighted_bce_sum(logits[:, 0], click, weight) / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        odds = _exp_clamped(z)
        return {"logit": z, "odds": odds, "expected_watch_s": odds}


@dataclass(kw_only=True)
class WLRResampleObjective(RankingObjective):
    r"""WLR by resampling: positives repeated in proportion to watch time, all with unit weight.

    ``batch_transform`` expands each minibatch: a clicked row becomes :math:`n_i` positive copies
    with :math:`n_i \sim \mathrm{Poisson}(c\,T_i)` (``copies="poisson"``) or
    :math:`\lfloor cT_i\rfloor + \mathrm{Bernoulli}(\mathrm{frac}(cT_i))` (``copies="round"``),
    and every unclicked row one negative; the features of every row are gathered by index. The
    loss is then unit-weight BCE on the expanded batch, *B* being the expanded row count.
    **The trainer must call ``batch_transform`` on every training batch**; without it this is
    an unweighted click model.

    Since :math:`E[n_i] = cT_i`, the expected objective is
    :math:`\sum_{clicked} c\,T_i\,\mathrm{sp}(-z_i) + \sum_{unclicked}\mathrm{sp}(z_i)`: WLR with every
    positive weight multiplied by the constant *c*. Its optimum odds are therefore
    :math:`c\,E[T|x]/(1-p(x))`, and serving divides by *c*:
    ``expected_watch_s`` = ``odds`` = e^z / c (computed as exp(min(z − log c, 30))); ``logit`` is
    the raw network output z. The bias-only optimum of z is :math:`\log(c\,\Sigma T/(N-k))`.

    Same optimum, different optimisation: (1) gradient variance — a weighted gradient uses every
    positive every epoch with its exact weight, resampling adds Poisson/rounding noise in which
    positives appear (a long watch is seen many times per epoch, a short one often not at all),
    but never puts a weight of hundreds on a single row, so per-row gradients are bounded and
    Adam's moment estimates are not dominated by rare huge weights; (2) effective step size —
    the loss is a mean over the expanded rows, so per-example steps are those of a plain
    logistic regression, whereas WLR's step grows with T/s; (3) minibatches — batch size and
    composition vary with the draws (c is chosen so the expected expanded size equals the
    source size), and the per-batch ratio normalisation has an O(1/B) bias that WLR's fixed
    denominator avoids; (4) regularisation and early stopping act on a different trajectory and
    a different effective number of examples, so they stop at different points even though the
    limits coincide.

    ``c`` defaults to ``None``; ``fit`` sets it to :math:`k/\Sigma T = 1/\text{mean}(T\,|\,\text{click})`,
    so the expected number of positive copies equals the number of clicked rows.
    """

    name: str = field(default="wlr-resample", init=False)
    c: float | None = None
    """Copies per second of watch time; ``fit`` sets it to 1/mean(T | click)."""
    copies: Literal["poisson", "round"] = "poisson"
    """How a non-integer expected count c·T becomes a count (see the class docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.c is not None and not (math.isfinite(self.c) and self.c > 0):
            raise ObjectiveError(f"{self.name}: c must be a finite number > 0, got {self.c}")
        if self.copies not in ("poisson", "round"):
            raise ObjectiveError(f"{self.name}: copies must be 'poisson' or 'round', got {self.copies!r}")

    def _require_c(self) -> float:
        if self.c is None:
            raise ObjectiveError(f"{self.name}: c is not set; call fit(is_click, watch_time_s) or pass c=")
        return self.c

    def fit(self, is_click: Tensor, watch_time_s: Tensor) -> Self:
        totals = _Totals(is_click, watch_time_s)
        totals.require_clicks(self.name)
        self.c = totals.k / totals.total_watch_s
        self.loss_scale = 1.0  # unit weights; c makes the expected weight per source row 1
        return self

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        c = self._require_c()
        totals = _Totals(is_click, watch_time_s)
        totals.require_clicks(self.name)
        totals.require_unclicked(self.name)
        return [math.log(c * totals.total_watch_s / (totals.n - totals.k))]

    def resample_index(self, is_click: Tensor, watch_time_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """Source row of every expanded row (int64, sorted); every expanded row has unit weight.

        ``generator`` must live on the labels' device (the default generator if ``None``).
        """
        c = self._require_c()
        click, watch = _check_labels(is_click, watch_time_s)
        click = click.to(watch.dtype)
        rate = c * watch * click
        if self.copies == "poisson":
            n_positive = torch.poisson(rate, generator=generator)
        else:
            whole = torch.floor(rate)
            extra = torch.rand(rate.shape, generator=generator, dtype=rate.dtype, device=rate.device) < (rate - whole)
            n_positive = whole + extra.to(rate.dtype)
        counts = torch.where(click > 0, n_positive, torch.ones_like(n_positive)).to(torch.int64)
        rows = torch.arange(click.shape[0], device=click.device)
        return torch.repeat_interleave(rows, counts)

    def batch_transform(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Expand ``batch`` (needs ``is_click`` and ``watch_time_s``): every tensor's rows are gathered.

        Every value must be a tensor whose first dimension is the batch size (ragged features
        must be padded first). Copies of a clicked row keep ``is_click`` = 1 and its
        ``watch_time_s``; the loss ignores ``watch_time_s`` (weights are all 1).
        """
        for key in ("is_click", "watch_time_s"):
            if key not in batch:
                raise ObjectiveInputError(f"batch: missing required key '{key}' (have {sorted(batch)})")
        n_rows = batch["is_click"].shape[0] if batch["is_click"].dim() > 0 else -1
        for key, value in batch.items():
            if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != n_rows:
                shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ObjectiveInputError(
                    f"batch['{key}']: expected a tensor with {n_rows} rows (the batch size), got {shape}")
        index = self.resample_index(batch["is_click"], batch["watch_time_s"], generator)
        return {key: value.index_select(0, index.to(value.device)) for key, value in batch.items()}

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, _ = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], click, reduction="sum") / (logits.shape[0] * self.loss_scale)

    def validation_loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        """The expectation of ``loss``'s numerator over the resampling, on unexpanded rows.

        Σ_i [c·T_i·sp(−z_i)·c_i + (1 − c_i)·sp(z_i)] / (B · loss_scale): WLR with positive weights
        c·T. Deterministic, so early stopping is not driven by resampling noise; ``loss`` on raw
        rows would instead be an unweighted click loss.
        """
        c = self._require_c()
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        weight = click * c * watch + (1.0 - click)
        return _weighted_bce_sum(logits[:, 0], click, weight) / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        c = self._require_c()
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        odds = _exp_clamped(z - math.log(c))
        return {"logit": z, "odds": odds, "expected_watch_s": odds}


@dataclass(kw_only=True)
class WLRExactObjective(RankingObjective):
    r"""Exact WLR: every impression is a weight-1 negative, a clicked one also a weight-T positive.

    :math:`\ell = c\,T\,\mathrm{sp}(-z) + \mathrm{sp}(z)`. The optimum solves
    :math:`E[cT|x]\,\sigma(-z) = \sigma(z)`, i.e. :math:`e^{z^*} = E[T|x]` exactly (no 1/(1−p)
    factor). Served ``expected_watch_s`` = ``odds`` = e^z; bias-only optimum :math:`\log(\Sigma T/N)`.
    """

    name: str = field(default="wlr-exact", init=False)

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        return (totals.total_watch_s + totals.n) / totals.n

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        totals.require_clicks(self.name)
        return [math.log(totals.total_watch_s / totals.n)]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        z = logits[:, 0]
        total = (click * watch * F.softplus(-z) + F.softplus(z)).sum()
        return total / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        odds = _exp_clamped(z)
        return {"logit": z, "odds": odds, "expected_watch_s": odds}


RANK_BY_CHOICES: tuple[str, ...] = ("odds", "expected_watch_s")
"""What ``wlr-corrected`` can rank by: the WLR head's odds (default) or its served value."""


@dataclass(kw_only=True)
class WLRCorrectedObjective(RankingObjective):
    r"""WLR corrected by a click model: two heads, ranked by the odds, served c · odds · (1 − p̂).

    Head 0 is trained by plain WLR (optimum odds E[T|x]/(1−p(x))), head 1 is a click logit
    trained by unweighted BCE on ``is_click`` (optimum p(x)). Served

    .. math:: \text{expected\_watch\_s} = c \cdot e^{z_0} \cdot (1 - \hat p) \;\to\; c \cdot E[T|x],

    computed as exp(min(z₀ − sp(z₁) + log c, 30)) since 1 − σ(z₁) = e^{−sp(z₁)}; ``odds`` =
    e^{z₀} (the paper's score, never scaled), ``p_click`` = σ(z₁).

    **What it ranks by** (``rank_by``). ``"odds"`` (default): e^{z₀}. The paper's weighted
    per-user loss counts, on each page, the watch time of clicked impressions ranked below
    unclicked ones. For two impressions i, j with independent clicks, putting i above j loses
    E_j·(1 − p_i) in expectation (j clicked, i not), the other order E_i·(1 − p_j); i above j is
    the cheaper order exactly when E_i/(1 − p_i) > E_j/(1 − p_j), i.e. when odds_i > odds_j. So the
    WLR odds — not E[T|x] — are the order that minimises that loss, and ``"odds"`` keeps plain
    WLR's ranking while the served value is calibrated. ``"expected_watch_s"`` ranks by the
    served value (NDCG against E[T] rewards that order; on KuaiRand it costs ≈ 0.016 of weighted
    per-user loss, see ``reports/wlr_methods.md``).

    **The calibration constant** c = ``watch_scale``: the two heads' product has the right
    optimum but Adam leaves its overall level off by several percent, so after training the
    ranker job fits one held-out constant, c = mean T / mean (odds · (1 − p̂)) on the validation
    day(s) (:func:`ytdnn.training.calibration.fit_watch_scale`), when ``calibrate`` is true. None
    (not fitted) serves with c = 1. It changes no ranking.

    Loss = WLR term (Σ weighted log loss / (B · loss_scale), loss_scale = mean WLR weight after
    fit) + ``click_loss_weight`` · (Σ BCE / B). With the default weight 1 both terms are "log loss
    per unit of example weight"; the heads share no output parameters, so the weight only
    trades their pull on the shared tower. Bias-only optimum: [log ΣT/(N−k), log k/(N−k)], served
    ΣT/N.
    """

    name: str = field(default="wlr-corrected", init=False)
    click_loss_weight: float = 1.0
    rank_by: str = "odds"
    """Which ``predict`` entry orders items: ``"odds"`` or ``"expected_watch_s"``."""
    calibrate: bool = True
    """Fit ``watch_scale`` on held-out rows after training (the ranker job does)."""
    watch_scale: float | None = None
    """The fitted calibration constant c of the served value; None = not fitted (c = 1)."""

    n_heads: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.click_loss_weight) and self.click_loss_weight >= 0):
            raise ObjectiveError(f"{self.name}: click_loss_weight must be finite and >= 0, got {self.click_loss_weight}")
        if self.rank_by not in RANK_BY_CHOICES:
            raise ObjectiveError(f"{self.name}: rank_by must be one of {list(RANK_BY_CHOICES)}, got {self.rank_by!r}")
        if not isinstance(self.calibrate, bool):
            raise ObjectiveError(f"{self.name}: calibrate must be true or false, got {self.calibrate!r}")
        if self.watch_scale is not None:
            self._check_scale(self.watch_scale)

    def _check_scale(self, scale: float) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ObjectiveError(f"{self.name}: watch_scale must be a finite number > 0, got {scale!r}")

    @property
    def ranking_key(self) -> str:
        return self.rank_by

    @property
    def calibrates(self) -> bool:
        return self.calibrate

    def set_watch_scale(self, scale: float | None) -> None:
        if scale is not None:
            self._check_scale(scale)
        self.watch_scale = None if scale is None else float(scale)

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        return (totals.total_watch_s + (totals.n - totals.k)) / totals.n

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        totals.require_clicks(self.name)
        totals.require_unclicked(self.name)
        unclicked = totals.n - totals.k
        return [math.log(totals.total_watch_s / unclicked), math.log(totals.k / unclicked)]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        n_rows = logits.shape[0]
        weight = click * watch + (1.0 - click)
        wlr = _weighted_bce_sum(logits[:, 0], click, weight) / (n_rows * self.loss_scale)
        click_bce = F.binary_cross_entropy_with_logits(logits[:, 1], click, reduction="sum") / n_rows
        return wlr + self.click_loss_weight * click_bce

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        logits = _check_outputs(outputs, self.n_heads)
        z, click_logit = logits[:, 0], logits[:, 1]
        log_scale = 0.0 if self.watch_scale is None else math.log(self.watch_scale)
        return {
            "logit": z,
            "odds": _exp_clamped(z),
            "p_click": torch.sigmoid(click_logit),
            "expected_watch_s": _exp_clamped(z - F.softplus(click_logit) + log_scale),
        }


# ---------------------------------------------------------------------------------------------
# Regression on watch time
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PoissonObjective(RankingObjective):
    r"""Poisson regression with a log link on T over all impressions (unclicked T = 0).

    :math:`\ell = e^z - T z` (the Poisson negative log-likelihood without the z-free terms; it
    is a proper loss for any T ≥ 0, not only integers). The optimum is
    :math:`e^{z^*} = E[T|x]`; served ``expected_watch_s`` = e^z. Bias-only optimum log(ΣT/N).
    """

    name: str = field(default="poisson", init=False)

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        totals.require_clicks(self.name)
        return totals.total_watch_s / totals.n

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        totals.require_clicks(self.name)
        return [math.log(totals.total_watch_s / totals.n)]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        target = click * watch
        total = F.poisson_nll_loss(logits[:, 0], target, log_input=True, full=False, reduction="sum")
        return total / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        return {"logit": z, "expected_watch_s": _exp_clamped(z)}


@dataclass(kw_only=True)
class MSEObjective(RankingObjective):
    r"""Squared error on T: :math:`\ell = (z - T)^2`; optimum z* = E[T|x].

    Served ``expected_watch_s`` = max(z, 0): the optimum is never negative, and a negative
    prediction of a watch time is meaningless. ``logit`` is the raw z. Bias-only optimum mean T.
    """

    name: str = field(default="mse", init=False)

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        variance = float(totals.watch.var(correction=0).item())
        if variance <= 0:
            raise ObjectiveError(f"{self.name}: watch_time_s is constant over the data; Var T = 0")
        return variance

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        return [totals.total_watch_s / totals.n]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        total = F.mse_loss(logits[:, 0], click * watch, reduction="sum")
        return total / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        return {"logit": z, "expected_watch_s": torch.clamp(z, min=0.0)}


@dataclass(kw_only=True)
class LogMSEObjective(RankingObjective):
    r"""Squared error of z against log(1 + T); served e^z − 1 (clamped at 0).

    The optimum is z* = E[log(1+T) | x], so the served :math:`e^{z^*} - 1` is biased **down**: by
    Jensen's inequality (log is concave), :math:`\exp(E[\log(1+T)]) - 1 \le E[T]`, with equality
    only when T is constant given x. With half the impressions at T = 0 the gap is large; this
    objective ranks reasonably but is not calibrated. Bias-only optimum mean log(1+T).
    """

    name: str = field(default="log-mse", init=False)

    def _fitted_loss_scale(self, totals: _Totals) -> float:
        variance = float(torch.log1p(totals.watch).var(correction=0).item())
        if variance <= 0:
            raise ObjectiveError(f"{self.name}: watch_time_s is constant over the data; Var log(1+T) = 0")
        return variance

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        return [float(torch.log1p(totals.watch).mean().item())]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, watch = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        total = F.mse_loss(logits[:, 0], torch.log1p(click * watch), reduction="sum")
        return total / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        served = torch.expm1(torch.clamp(z, max=MAX_LOGIT_FOR_EXP))
        return {"logit": z, "expected_watch_s": torch.clamp(served, min=0.0)}


# ---------------------------------------------------------------------------------------------
# Click models
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ClickOnlyObjective(RankingObjective):
    r"""Unweighted BCE on ``is_click``: the click model that ignores watch time.

    ``p_click`` = σ(z); served ``expected_watch_s`` = p̂ · ``mean_watch_given_click``, a constant
    fitted by ``fit`` (ΣT/k over the training data), so it ranks exactly as p̂ does. It is the
    "weighting positives and negatives equally" baseline of the paper. Bias-only optimum
    log(k/(N−k)).
    """

    name: str = field(default="click-only", init=False)
    mean_watch_given_click: float | None = None
    """Mean T over clicked training impressions; ``fit`` sets it."""

    @property
    def ranking_key(self) -> str:
        return "p_click"

    def __post_init__(self) -> None:
        super().__post_init__()
        value = self.mean_watch_given_click
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ObjectiveError(f"{self.name}: mean_watch_given_click must be finite and >= 0, got {value}")

    def fit(self, is_click: Tensor, watch_time_s: Tensor) -> Self:
        totals = _Totals(is_click, watch_time_s)
        if totals.k == 0:
            raise ObjectiveError(f"{self.name}: the data has no clicked impression (k = 0); nothing to fit")
        self.mean_watch_given_click = totals.total_watch_s / totals.k
        self.loss_scale = 1.0
        return self

    def init_bias(self, is_click: Tensor, watch_time_s: Tensor) -> list[float]:
        totals = _Totals(is_click, watch_time_s)
        if totals.k == 0:
            raise ObjectiveError(f"{self.name}: the data has no clicked impression (k = 0); the optimum is -inf")
        totals.require_unclicked(self.name)
        return [math.log(totals.k / (totals.n - totals.k))]

    def loss(self, outputs: Tensor, is_click: Tensor, watch_time_s: Tensor) -> Tensor:
        logits, click, _ = _label_tensors(outputs, is_click, watch_time_s, self.n_heads)
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], click, reduction="sum") / (logits.shape[0] * self.loss_scale)

    def predict(self, outputs: Tensor) -> dict[str, Tensor]:
        if self.mean_watch_given_click is None:
            raise ObjectiveError(f"{self.name}: mean_watch_given_click is not set; call fit(is_click, watch_time_s)")
        z = _check_outputs(outputs, self.n_heads)[:, 0]
        p_click = torch.sigmoid(z)
        return {"logit": z, "p_click": p_click, "expected_watch_s": p_click * self.mean_watch_given_click}


@dataclass(kw_only=True)
class ClickObjective(ClickOnlyObjective):
    """The unweighted click model baseline under its own CLI name; identical to ``click-only``."""

    name: str = field(default="click", init=False)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

RANKING_OBJECTIVES: dict[str, Callable[..., RankingObjective]] = {
    "wlr": WLRObjective,
    "wlr-resample": WLRResampleObjective,
    "wlr-exact": WLRExactObjective,
    "wlr-corrected": WLRCorrectedObjective,
    "poisson": PoissonObjective,
    "mse": MSEObjective,
    "log-mse": LogMSEObjective,
    "click-only": ClickOnlyObjective,
    "click": ClickObjective,
}
"""CLI name → factory taking the objective's keyword parameters."""


def check_objective_name(name: str) -> str:
    """``name`` if it is a registered objective; a ValueError listing the known ones otherwise (for configs)."""
    if name not in RANKING_OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(RANKING_OBJECTIVES)}")
    return name


def make_objective(name: str, **kwargs: Any) -> RankingObjective:
    """Build the ranking objective registered as ``name`` with keyword parameters ``kwargs``."""
    try:
        factory = RANKING_OBJECTIVES[name]
    except KeyError:
        raise UnknownObjectiveError(
            f"objective: unknown name {name!r}; expected one of {sorted(RANKING_OBJECTIVES)}") from None
    try:
        return factory(**kwargs)
    except TypeError as error:
        raise ObjectiveError(f"objective {name!r}: bad parameters {sorted(kwargs)}: {error}") from None


def objective_from_config(config: Mapping[str, Any]) -> RankingObjective:
    """Rebuild an objective (with its fitted constants) from :meth:`RankingObjective.to_config`."""
    if "name" not in config:
        raise ObjectiveError(f"objective config: missing 'name' (have {sorted(config)})")
    params = {key: value for key, value in config.items() if key != "name"}
    return make_objective(str(config["name"]), **params)
