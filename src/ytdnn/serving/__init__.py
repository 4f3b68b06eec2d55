"""Serving: the model bundle and the HTTP service.

- :mod:`ytdnn.serving.bundle` — ``build_bundle`` (ONNX export + parity, tables, manifest with
  SHA-256), ``load_recommender`` (verifies the checksums first), the ``current`` pointer;
- :mod:`ytdnn.serving.recommender` — the in-process path user → candidates → ranked videos;
- :mod:`ytdnn.serving.features` — per-request features from precomputed tables and NumPy history;
- :mod:`ytdnn.serving.onnx_ranker` — the ranking network split into user / candidate / cross graphs;
- :mod:`ytdnn.serving.app` — the FastAPI app (``create_app``) and ``serve`` (uvicorn);
- :mod:`ytdnn.serving.settings` — limits, candidate counts, admin token, warm-up.

Submodules are imported on use, so ``import ytdnn.serving`` stays cheap.
"""
