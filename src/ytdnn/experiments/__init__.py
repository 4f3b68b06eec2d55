"""Studies built from the layers above: each answers a user's question with an experiment.

- :mod:`ytdnn.experiments.wlr_methods` — when is e^(Wx+b) the expected watch time? Every
  weighted-LR training method (and the regression/click alternatives) at every click rate on
  the simulator, and on KuaiRand (``ytdnn experiment wlr-methods``).
"""
