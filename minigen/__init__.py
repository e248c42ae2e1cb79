"""minigen: small, tested PyTorch implementations of generative models.

Companion package of the minigen book: one module per topic, each docstring naming the book
equation that derives it. Importing ``minigen`` is fast and imports neither matplotlib nor POT:
``minigen.plot`` and ``minigen.ot`` are imported on demand (``from minigen import plot, ot``).

>>> import minigen
>>> device = minigen.setup()                  # seed ($MINIGEN_SEED, default 0), one CPU thread, CUDA when present
>>> g = minigen.rng(1)                         # this run's random stream 1, a torch.Generator
>>> target = minigen.data.mixture_1d()        # 0.5 N(-1, 0.5^2) + 0.5 N(1, 0.5^2)
"""
from . import (approx, compare, data, diffusion, flow_matching, flows, gan, images, intervals, metrics, mmd,
               networks, ode, optim, posterior, runtime, sbi, simulators, sourcerer, surrogates, train)
from .runtime import get_device, rng, seed, seed_all, setup

__all__ = ["approx", "compare", "data", "diffusion", "flow_matching", "flows", "gan", "images", "intervals", "metrics",
           "mmd", "networks", "ode", "optim", "posterior", "runtime", "sbi", "simulators", "sourcerer", "surrogates", "train",
           "get_device", "rng", "seed", "seed_all", "setup"]
__version__ = "0.3.0"
