r"""Candidate-generation losses: full softmax, sampled softmax with log-Q correction, samplers.

The candidate generator scores item *i* for a user vector u as
:math:`s_i = u \cdot v_i + b_i` (``item_bias`` optional) and is trained as extreme multiclass
classification over the corpus. **Targets are item indices**: ``target_ids[b]`` is the row of
the positive item in ``item_table`` (int64 in [0, N)), not a raw ``video_id``; the vocabulary
that maps ids to rows lives in ``ytdnn.features``.

- :class:`FullSoftmaxLoss` — cross-entropy over all N logits (exact; O(B·N·d)).
- :class:`SampledSoftmaxLoss` — K negatives drawn per batch (shared by every row, with
  replacement) from a :class:`CandidateSampler`; the softmax runs over the positive and the K
  negatives only (O(B·K·d)).

**Log-Q correction.** Each of the K draws picks item i with probability :math:`q_i`, so item i
appears :math:`K q_i` times in expectation, and for any set S of items
:math:`\sum_{j=1}^{K} 1[n_j \in S]\, e^{s_{n_j}} / (K q_{n_j})` is an unbiased estimate of
:math:`\sum_{i \in S} e^{s_i}`. So each sampled negative's logit has
:math:`Q_i = \log(K q_i)` subtracted, where ``q_i`` is the per-draw probability
(:meth:`CandidateSampler.probability`) and ``K q_i`` the expected number of times i is drawn in K
draws **with replacement** (:meth:`CandidateSampler.log_q`). (Had duplicates been removed, the
right Q would be the inclusion probability :math:`1 - (1 - q_i)^K`; we keep duplicates, so
:math:`K q_i` is exact.) The positive's own logit is treated to match:

- ``remove_accidental_hits=True`` (default): copies of the positive among the negatives are
  masked to −inf, so the sample estimates :math:`Z - e^{s_y}` without bias, and the positive
  enters once, **uncorrected** (weight 1): the denominator is an unbiased estimate of the full
  partition function Z and the loss tends to the full-softmax cross-entropy as K → ∞ (no offset).
- ``remove_accidental_hits=False``: the positive's sampled copies estimate its share of Z, so the
  positive logit is corrected too (TensorFlow's convention); the loss tends to the full
  cross-entropy plus the parameter-free constant :math:`\log(K q_y)`.

Correcting the positive *and* removing its copies (TensorFlow's ``sampled_softmax_loss`` with
both defaults on) drops the positive from the partition function as K grows: on a Zipf(1.2)
toy with q = p it over-predicts the head item (learned 0.44 vs true 0.35 at K = 8, 0.49 at
K = 64), while both pairings above recover p (KL < 0.006). Without any correction the model
learns roughly :math:`e^{s_i} \propto p_i / q_i`: popular items (large q) are pushed down. With
``log_q_correction=False`` no logit is corrected.

**Accidental hits.** A sampled negative equal to the row's own positive gets logit −inf, so
the positive is not counted twice.

Samplers draw on the CPU from a CPU ``torch.Generator`` (``None`` = the global one); ids are
moved to the item table's device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SamplerError",
    "RetrievalLossInputError",
    "CandidateSampler",
    "UniformSampler",
    "UnigramSampler",
    "LogUniformSampler",
    "FullSoftmaxLoss",
    "SampledSoftmaxLoss",
]


class SamplerError(ValueError):
    """A sampler was given bad parameters or ids outside [0, n_items)."""


class RetrievalLossInputError(ValueError):
    """Bad tensors handed to a retrieval loss; the message names the field."""


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


class CandidateSampler(ABC):
    """Draws item indices i.i.d. with replacement from a fixed distribution q over [0, n_items)."""

    def __init__(self, n_items: int) -> None:
        if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
            raise SamplerError(f"n_items: expected an int >= 1, got {n_items!r}")
        self.n_items = n_items

    @abstractmethod
    def _log_probability_table(self) -> Tensor:
        """log q_i for every item, float64 on the CPU, shape [n_items]."""

    @abstractmethod
    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` independent draws (int64 [k], CPU), duplicates kept."""

    def _check_ids(self, ids: Tensor) -> None:
        if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
            raise SamplerError(f"ids: expected an int64 tensor of item indices, got {getattr(ids, 'dtype', type(ids))}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_items):
            bad = ids[(ids < 0) | (ids >= self.n_items)][0].item()
            raise SamplerError(f"ids: item index {bad} is outside [0, {self.n_items})")

    def probability(self, ids: Tensor) -> Tensor:
        """q_i: the probability that one draw returns item i (float64, on ids' device)."""
        return self.log_probability(ids).exp()

    def log_probability(self, ids: Tensor) -> Tensor:
        """log q_i (float64, on ids' device); −inf for items the sampler never draws."""
        self._check_ids(ids)
        table = self._log_probability_table()
        return table.to(ids.device)[ids.long()]

    def log_q(self, ids: Tensor, num_draws: int) -> Tensor:
        """log(num_draws · q_i): log of the expected number of times i appears in num_draws draws."""
        if num_draws < 1:
            raise SamplerError(f"num_draws: expected >= 1, got {num_draws}")
        return self.log_probability(ids) + math.log(num_draws)

    @staticmethod
    def _check_k(k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise SamplerError(f"k: expected an int >= 0 draws, got {k!r}")


class UniformSampler(CandidateSampler):
    """q_i = 1/N for every item."""

    def _log_probability_table(self) -> Tensor:
        return torch.full((self.n_items,), -math.log(self.n_items), dtype=torch.float64)

    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        self._check_k(k)
        return torch.randint(self.n_items, (k,), generator=generator, dtype=torch.int64)


class UnigramSampler(CandidateSampler):
    r"""q_i ∝ (count_i + smoothing)^alpha — word2vec's distorted unigram (alpha = 0.75).

    Items whose smoothed count is 0 are never drawn (q_i = 0). They may still be targets, except
    with log-Q correction and ``remove_accidental_hits=False``, where the positive's correction
    would be infinite; pass ``smoothing > 0`` then if the item table holds items unseen in the
    counts (padding, cold items).
    """

    def __init__(self, counts: Tensor, alpha: float = 0.75, smoothing: float = 0.0) -> None:
        counts = torch.as_tensor(counts)
        if counts.dim() != 1:
            raise SamplerError(f"counts: expected shape [n_items], got {list(counts.shape)}")
        super().__init__(int(counts.shape[0]))
        if not (math.isfinite(alpha) and alpha >= 0):
            raise SamplerError(f"alpha: expected a finite number >= 0, got {alpha}")
        if not (math.isfinite(smoothing) and smoothing >= 0):
            raise SamplerError(f"smoothing: expected a finite number >= 0, got {smoothing}")
        smoothed = counts.to(torch.float64) + smoothing
        bad = ~torch.isfinite(smoothed) | (smoothed < 0)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0, 0])
            raise SamplerError(f"counts[{row}]: expected a finite count >= 0, got {counts[row].item()}")
        # 0^alpha is 1 in torch when alpha = 0; an item with no count stays undrawable.
        weights = torch.where(smoothed > 0, smoothed.pow(alpha), torch.zeros_like(smoothed))
        total = float(weights.sum())
        if not total > 0:
            raise SamplerError("counts: every count is 0; nothing to sample from")
        self.alpha = alpha
        self.smoothing = smoothing
        self._log_q = torch.log(weights / total)
        self._cdf = torch.cumsum(weights, 0) / total

    def _log_probability_table(self) -> Tensor:
        return self._log_q

    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        self._check_k(k)
        # Inverse CDF: the first item whose cumulative mass exceeds u; zero-mass items are skipped.
        u = torch.rand(k, generator=generator, dtype=torch.float64) * self._cdf[-1]
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.n_items - 1)


class LogUniformSampler(CandidateSampler):
    r"""Zipfian q over items ranked by frequency: :math:`q_k = \log\frac{k+2}{k+1} / \log(N+1)`.

    Index 0 must be the most frequent item (sort the item table by count). The q_k telescope
    to 1. Draws by inverse CDF, :math:`k = \lfloor (N+1)^u \rfloor - 1` with u ~ U[0, 1)
    (P(k' ≤ k) = log(k+2)/log(N+1)).
    """

    def _log_probability_table(self) -> Tensor:
        ranks = torch.arange(self.n_items, dtype=torch.float64)
        return torch.log(torch.log1p(1.0 / (ranks + 1.0)) / math.log(self.n_items + 1.0))

    def sample(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        self._check_k(k)
        u = torch.rand(k, generator=generator, dtype=torch.float64)
        draws = torch.floor(torch.exp(u * math.log(self.n_items + 1.0))) - 1.0
        return draws.to(torch.int64).clamp_(0, self.n_items - 1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def _as_table(item_table: Tensor | nn.Embedding) -> Tensor:
    table = item_table.weight if isinstance(item_table, nn.Embedding) else item_table
    if not isinstance(table, Tensor) or table.dim() != 2:
        raise RetrievalLossInputError(
            f"item_table: expected a [N, d] tensor or nn.Embedding, got {getattr(table, 'shape', type(table))}")
    return table


def _check_inputs(user_vectors: Tensor, table: Tensor, item_bias: Tensor | None,
                  target_ids: Tensor) -> Tensor | None:
    if not isinstance(user_vectors, Tensor) or user_vectors.dim() != 2 or user_vectors.shape[1] != table.shape[1]:
        raise RetrievalLossInputError(
            f"user_vectors: expected shape [B, {table.shape[1]}] (d of item_table), got "
            f"{list(user_vectors.shape) if isinstance(user_vectors, Tensor) else type(user_vectors).__name__}")
    if not isinstance(target_ids, Tensor) or target_ids.dtype != torch.int64 or target_ids.dim() != 1:
        raise RetrievalLossInputError(
            "target_ids: expected an int64 tensor [B] of item-table row indices, got "
            f"{getattr(target_ids, 'dtype', type(target_ids))} {list(getattr(target_ids, 'shape', []))}")
    if target_ids.shape[0] != user_vectors.shape[0]:
        raise RetrievalLossInputError(
            f"target_ids has {target_ids.shape[0]} rows but user_vectors has {user_vectors.shape[0]}")
    if target_ids.numel() == 0:
        raise RetrievalLossInputError("target_ids: empty batch (0 rows)")
    n_items = table.shape[0]
    bad = (target_ids < 0) | (target_ids >= n_items)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise RetrievalLossInputError(
            f"target_ids row {row}: item index {target_ids[row].item()} is outside [0, {n_items})")
    if item_bias is None:
        return None
    bias = item_bias.weight if isinstance(item_bias, nn.Embedding) else item_bias
    if bias.dim() == 2 and bias.shape[1] == 1:
        bias = bias[:, 0]
    if bias.dim() != 1 or bias.shape[0] != n_items:
        raise RetrievalLossInputError(f"item_bias: expected shape [{n_items}] (one per item), got {list(bias.shape)}")
    return bias


class FullSoftmaxLoss:
    """Exact softmax cross-entropy over the whole corpus: mean_b CE(u_b·Vᵀ + b, target_b)."""

    def loss(self, user_vectors: Tensor, item_table: Tensor | nn.Embedding, item_bias: Tensor | None,
             target_ids: Tensor) -> Tensor:
        """Scalar mean cross-entropy; ``target_ids`` are item-table row indices (int64 [B])."""
        table = _as_table(item_table)
        bias = _check_inputs(user_vectors, table, item_bias, target_ids)
        logits = user_vectors @ table.T
        if bias is not None:
            logits = logits + bias
        return F.cross_entropy(logits, target_ids)

    __call__ = loss


class SampledSoftmaxLoss:
    """Softmax over the positive and K shared sampled negatives, with log-Q correction.

    See the module docstring for the estimator. With ``log_q_correction`` every sampled negative
    has log(K q_i) subtracted, and the positive too only when ``remove_accidental_hits`` is off;
    with ``remove_accidental_hits`` a negative equal to the row's positive is masked to −inf.
    Returns the batch mean of the cross-entropy.
    """

    def __init__(self, num_negatives: int, sampler: CandidateSampler, log_q_correction: bool = True,
                 remove_accidental_hits: bool = True) -> None:
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise RetrievalLossInputError(f"num_negatives: expected an int >= 1, got {num_negatives!r}")
        if not isinstance(sampler, CandidateSampler):
            raise RetrievalLossInputError(f"sampler: expected a CandidateSampler, got {type(sampler).__name__}")
        self.num_negatives = num_negatives
        self.sampler = sampler
        self.log_q_correction = log_q_correction
        self.remove_accidental_hits = remove_accidental_hits

    def loss(self, user_vectors: Tensor, item_table: Tensor | nn.Embedding, item_bias: Tensor | None,
             target_ids: Tensor, generator: torch.Generator | None = None,
             negative_ids: Tensor | None = None) -> Tensor:
        """Scalar mean sampled-softmax cross-entropy.

        ``negative_ids`` (int64 [K]) overrides the draw — they are then *assumed* to be K draws
        from ``sampler`` (the log-Q term uses K = len(negative_ids)); otherwise
        ``num_negatives`` ids are drawn with ``generator``.
        """
        table = _as_table(item_table)
        if table.shape[0] != self.sampler.n_items:
            raise RetrievalLossInputError(
                f"item_table: has {table.shape[0]} rows but the sampler covers {self.sampler.n_items} items")
        bias = _check_inputs(user_vectors, table, item_bias, target_ids)
        if negative_ids is None:
            negative_ids = self.sampler.sample(self.num_negatives, generator)
        elif not isinstance(negative_ids, Tensor) or negative_ids.dim() != 1 or negative_ids.numel() == 0:
            raise RetrievalLossInputError("negative_ids: expected a non-empty int64 tensor [K]")
        negative_ids = negative_ids.to(device=table.device, dtype=torch.int64)
        num_draws = int(negative_ids.shape[0])

        positive_logits = (user_vectors * table[target_ids]).sum(dim=1)  # [B]
        negative_logits = user_vectors @ table[negative_ids].T  # [B, K]
        if bias is not None:
            positive_logits = positive_logits + bias[target_ids]
            negative_logits = negative_logits + bias[negative_ids]

        if self.log_q_correction:
            negative_logits = negative_logits - self.sampler.log_q(negative_ids, num_draws).to(negative_logits.dtype)
            if not self.remove_accidental_hits:
                # The positive's sampled copies stand for it in Z, so it is weighted like them.
                positive_log_q = self.sampler.log_q(target_ids, num_draws)
                if bool(torch.isinf(positive_log_q).any()):
                    row = int(torch.nonzero(torch.isinf(positive_log_q))[0, 0])
                    raise RetrievalLossInputError(
                        f"target_ids row {row}: item {target_ids[row].item()} has sampling probability 0, so "
                        "its log-Q correction is infinite; give the sampler smoothing > 0 or remove accidental hits")
                positive_logits = positive_logits - positive_log_q.to(positive_logits.dtype)

        if self.remove_accidental_hits:
            hits = negative_ids.unsqueeze(0) == target_ids.unsqueeze(1)  # [B, K]
            negative_logits = negative_logits.masked_fill(hits, float("-inf"))

        logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], dim=1)
        # The positive sits in column 0; its logit is finite, so a fully masked row is still defined.
        return F.cross_entropy(logits, torch.zeros_like(target_ids))

    __call__ = loss
