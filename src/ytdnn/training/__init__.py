"""Training: loss objects ("tasks"), the generic trainer, and the ranker and retrieval jobs.

- ``losses`` — ranking objectives (WLR and its exact/corrected/resampled variants, Poisson,
  MSE, log-MSE, click models) as small named objects a trainer takes.
- ``retrieval_losses`` — full and sampled softmax (log-Q correction, accidental-hit removal)
  and the candidate samplers they draw negatives from.
"""
