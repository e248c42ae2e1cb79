"""minigen: small, tested PyTorch implementations of generative models.

Companion package of the minigen book. Importing ``minigen`` is fast and imports neither
matplotlib nor POT: ``minigen.plot`` and ``minigen.ot`` are imported on demand.

>>> import minigen
>>> device = minigen.setup(seed=0)            # seeds, one CPU thread, CUDA when present
>>> target = minigen.data.mixture_1d()        # 0.5 N(-1, 0.5^2) + 0.5 N(1, 0.5^2)
"""
from . import data, metrics, nn, runtime, train
from .runtime import get_device, seed_all, setup

__all__ = ["data", "metrics", "nn", "runtime", "train", "get_device", "seed_all", "setup"]
__version__ = "0.1.0"
