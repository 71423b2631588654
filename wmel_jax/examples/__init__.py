"""Example world models that ship with wmel-jax, and the script that trained them.

Small TD-MPC2-architecture models (the 1M layout, adapter schema: encoder,
latent dynamics, observation decoder) for cartpole-swingup, reacher-easy and
acrobot-swingup, each at two quality levels ("good" and "weak"):
``<task>-<quality>.pt`` (torch, as trained) and ``<task>-<quality>.safetensors``
(the same weights converted by ``wmel-jax convert``; loadable without torch).
``manifest.json`` lists them with their sha256, training summary and the
reference path's M1/M2/M3 at N = 150. ``train_examples.py`` (torch) made them:
``python -m wmel_jax.examples.train_examples``; the package never imports it.
"""
