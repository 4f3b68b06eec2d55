"""Evaluation: metrics (docs/metrics.md), ranker and retrieval evaluation, baselines, reports."""
