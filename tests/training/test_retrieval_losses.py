"""Tests of the candidate-generation losses and samplers (ytdnn.training.retrieval_losses)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ytdnn.training.retrieval_losses import (
    CandidateSampler,
    FullSoftmaxLoss,
    LogUniformSampler,
    RetrievalLossInputError,
    SampledSoftmaxLoss,
    SamplerError,
    UniformSampler,
    UnigramSampler,
)


class FixedSampler(UniformSampler):
    """A uniform-probability sampler whose draws are fixed in advance (to force accidental hits)."""

    def __init__(self, n_items: int, draws: list[int]) -> None:
        super().__init__(n_items)
        self.draws = torch.tensor(draws, dtype=torch.int64)

    def sample(self, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        assert k == len(self.draws)
        return self.draws.clone()


def all_samplers() -> list[CandidateSampler]:
    counts = torch.tensor([50.0, 0.0, 7.0, 300.0, 1.0, 20.0, 2.0, 90.0])
    return [UniformSampler(8), UnigramSampler(counts, alpha=0.75), UnigramSampler(counts, alpha=1.0, smoothing=1.0),
            LogUniformSampler(8)]


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", all_samplers(), ids=lambda s: type(s).__name__)
def test_sampler_probabilities_sum_to_one_and_match_empirical_frequencies(sampler: CandidateSampler) -> None:
    ids = torch.arange(sampler.n_items)
    q = sampler.probability(ids)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    n_draws = 200_000
    draws = sampler.sample(n_draws, torch.Generator().manual_seed(11))
    assert draws.dtype == torch.int64 and draws.shape == (n_draws,)
    frequency = torch.bincount(draws, minlength=sampler.n_items).double() / n_draws
    # Each frequency is within 5 binomial standard deviations of q (and exactly 0 where q = 0).
    tolerance = 5 * torch.sqrt(q * (1 - q) / n_draws)
    assert bool(((frequency - q).abs() <= tolerance).all()), (frequency, q)
    assert sampler.log_q(ids, 10).tolist() == pytest.approx((torch.log(q) + math.log(10)).tolist())


def test_unigram_probabilities_by_hand() -> None:
    # counts^0.75: 1 → 1, 16 → 8, 0 → 0, 81 → 27; total 36.
    sampler = UnigramSampler(torch.tensor([1, 16, 0, 81]), alpha=0.75)
    assert sampler.probability(torch.arange(4)).tolist() == pytest.approx([1 / 36, 8 / 36, 0.0, 27 / 36])
    assert int((sampler.sample(10_000, torch.Generator().manual_seed(0)) == 2).sum()) == 0


def test_log_uniform_probabilities_by_hand() -> None:
    # N = 3: q_k = log((k+2)/(k+1)) / log 4 → log2/log4 = 1/2, log1.5/log4, log(4/3)/log4.
    sampler = LogUniformSampler(3)
    expected = [0.5, math.log(1.5) / math.log(4), math.log(4 / 3) / math.log(4)]
    assert sampler.probability(torch.arange(3)).tolist() == pytest.approx(expected)


def test_sampler_rejects_bad_input() -> None:
    with pytest.raises(SamplerError, match=r"counts\[1\]"):
        UnigramSampler(torch.tensor([1.0, -2.0]))
    with pytest.raises(SamplerError, match="every count is 0"):
        UnigramSampler(torch.zeros(3))
    with pytest.raises(SamplerError, match="outside"):
        UniformSampler(4).probability(torch.tensor([4]))
    with pytest.raises(SamplerError, match="n_items"):
        UniformSampler(0)


# ---------------------------------------------------------------------------------------------
# Sampled softmax
# ---------------------------------------------------------------------------------------------


def test_accidental_hit_is_masked_by_hand() -> None:
    # d = 1, items v = [1, 2, 3], user u = 1, positive = item 1, the sampler draws [1, 2].
    # Uniform q = 1/3, K = 2, log(K q) = log(2/3) subtracted from each sampled negative.
    # Masked (positive uncorrected): logits [2, −inf, 3 − log(2/3)]
    #   → loss = −2 + log(e² + 1.5·e³) = log(1 + 1.5e).
    # Not masked (positive corrected too, a common shift): [2, 2, 3] − log(2/3)
    #   → loss = −2 + log(2e² + e³) = log(2 + e).
    table = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    user = torch.tensor([[1.0]], dtype=torch.float64)
    target = torch.tensor([1])
    masked = SampledSoftmaxLoss(2, FixedSampler(3, [1, 2]))
    assert masked.loss(user, table, None, target).item() == pytest.approx(math.log(1 + 1.5 * math.e), rel=1e-12)
    unmasked = SampledSoftmaxLoss(2, FixedSampler(3, [1, 2]), remove_accidental_hits=False)
    assert unmasked.loss(user, table, None, target).item() == pytest.approx(math.log(2 + math.e), rel=1e-12)
    # Without log-Q and with masking: [2, −inf, 3] → softplus(1).
    plain = SampledSoftmaxLoss(2, FixedSampler(3, [1, 2]), log_q_correction=False)
    assert plain.loss(user, table, None, target).item() == pytest.approx(math.log1p(math.e), rel=1e-12)


def test_accidental_hits_are_masked_per_row() -> None:
    # Two rows share the draws [0, 0]; row 0's positive is item 0 (both negatives masked → loss 0),
    # row 1's positive is item 1 (no hit): logits [s1, s0, s0] with s_i = u·v_i.
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    user = torch.tensor([[0.5, 0.5], [2.0, 1.0]], dtype=torch.float64)
    loss = SampledSoftmaxLoss(2, FixedSampler(2, [0, 0])).loss(user, table, None, torch.tensor([0, 1]))
    row1 = -1.0 + math.log(math.exp(1.0) + 2 * math.exp(2.0))
    assert loss.item() == pytest.approx((0.0 + row1) / 2, rel=1e-12)


def test_sampled_softmax_with_every_item_as_negative_equals_full_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    n_items, dim, batch = 30, 4, 16
    table = nn.Embedding(n_items, dim)
    bias = torch.randn(n_items, generator=gen)
    user = torch.randn(batch, dim, generator=gen)
    target = torch.randint(n_items, (batch,), generator=gen)
    full = FullSoftmaxLoss().loss(user, table, bias, target)
    # K = N, q = 1/N → log(K q) = 0; the positive's own copy among the negatives is masked.
    sampled = SampledSoftmaxLoss(n_items, UniformSampler(n_items))
    exact = sampled.loss(user, table, bias, target, negative_ids=torch.arange(n_items))
    assert exact.item() == pytest.approx(full.item(), rel=1e-6)
    # Many random uniform draws (with replacement). With hits removed the positive is uncorrected
    # and the denominator is an unbiased estimate of Z: sampled ≈ full, no offset.
    num_draws = 20_000
    many = SampledSoftmaxLoss(num_draws, UniformSampler(n_items)).loss(
        user, table, bias, target, generator=torch.Generator().manual_seed(2))
    assert many.item() == pytest.approx(full.item(), rel=0.01)
    # Keeping hits and correcting the positive too: ≈ full + log(K q) = full + log(K / N).
    kept = SampledSoftmaxLoss(num_draws, UniformSampler(n_items), remove_accidental_hits=False).loss(
        user, table, bias, target, generator=torch.Generator().manual_seed(2))
    assert kept.item() == pytest.approx(full.item() + math.log(num_draws / n_items), rel=0.01)
    assert abs(kept.item() - full.item()) > 5  # the constant is really there


def learned_distribution(loss_fn: SampledSoftmaxLoss, data_p: torch.Tensor) -> torch.Tensor:
    """Train item biases alone (user vectors 0) by sampled softmax; return softmax(bias)."""
    n_items = data_p.numel()
    gen = torch.Generator().manual_seed(5)
    bias = torch.zeros(n_items, requires_grad=True)
    table = torch.zeros(n_items, 1)
    optimiser = torch.optim.Adam([bias], lr=0.05)
    users = torch.zeros(512, 1)
    for step in range(400):
        if step == 300:
            for group in optimiser.param_groups:
                group["lr"] = 0.01
        targets = torch.multinomial(data_p, 512, replacement=True, generator=gen)
        optimiser.zero_grad()
        loss_fn.loss(users, table, bias, targets, generator=gen).backward()
        optimiser.step()
    return torch.softmax(bias.detach(), 0)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p / q).log()).sum())


def test_log_q_correction_recovers_the_data_distribution() -> None:
    # A skewed item distribution (Zipf 1.2 over 20 items), a unigram sampler on its counts.
    n_items = 20
    data_p = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float32) ** 1.2
    data_p = data_p / data_p.sum()
    sampler = UnigramSampler(data_p * 1e6, alpha=1.0)
    corrected = learned_distribution(SampledSoftmaxLoss(32, sampler), data_p)
    corrected_kept = learned_distribution(SampledSoftmaxLoss(32, sampler, remove_accidental_hits=False), data_p)
    uncorrected = learned_distribution(SampledSoftmaxLoss(32, sampler, log_q_correction=False), data_p)
    # With log-Q the sampled softmax is consistent for the full softmax, whose optimum is data_p
    # (either pairing of the positive's treatment); without it the model learns ≈ p/q (here ≈
    # uniform), and the head item is badly under-predicted.
    assert kl(data_p, corrected) < 0.01
    assert kl(data_p, corrected_kept) < 0.01
    assert kl(data_p, uncorrected) > 0.2
    assert float(corrected[0]) == pytest.approx(float(data_p[0]), rel=0.05)
    assert float(uncorrected[0]) < 0.5 * float(data_p[0])


def test_zero_probability_target() -> None:
    sampler = UnigramSampler(torch.tensor([5.0, 0.0, 3.0]))
    table = torch.zeros(3, 2)
    users, targets = torch.zeros(2, 2), torch.tensor([0, 1])
    # Default (hits removed): the positive is not corrected, so an undrawable target is fine.
    assert math.isfinite(SampledSoftmaxLoss(2, sampler).loss(users, table, None, targets).item())
    with pytest.raises(RetrievalLossInputError, match="row 1: item 1 has sampling probability 0"):
        SampledSoftmaxLoss(2, sampler, remove_accidental_hits=False).loss(users, table, None, targets)


def test_retrieval_losses_reject_bad_input() -> None:
    table = torch.zeros(5, 3)
    loss = SampledSoftmaxLoss(2, UniformSampler(5))
    with pytest.raises(RetrievalLossInputError, match=r"target_ids row 1: item index 5"):
        loss.loss(torch.zeros(2, 3), table, None, torch.tensor([0, 5]))
    with pytest.raises(RetrievalLossInputError, match="int64"):
        loss.loss(torch.zeros(2, 3), table, None, torch.tensor([0.0, 1.0]))
    with pytest.raises(RetrievalLossInputError, match=r"user_vectors: expected shape \[B, 3\]"):
        FullSoftmaxLoss().loss(torch.zeros(2, 4), table, None, torch.tensor([0, 1]))
    with pytest.raises(RetrievalLossInputError, match=r"item_bias: expected shape \[5\]"):
        FullSoftmaxLoss().loss(torch.zeros(2, 3), table, torch.zeros(4), torch.tensor([0, 1]))
    with pytest.raises(RetrievalLossInputError, match="sampler covers 6"):
        SampledSoftmaxLoss(2, UniformSampler(6)).loss(torch.zeros(2, 3), table, None, torch.tensor([0, 1]))
