"""pyrobust: the robustness of variational autoencoders as queries on Pyro models.

Robustness queries take ``(model, guide, x)`` exactly like ``pyro.infer.Predictive`` and return
``xarray.DataTree`` results in the ArviZ schema.
"""

from pyrobust import analysis, data, inference, models, robustness

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # subpackages
    "analysis",
    "data",
    "inference",
    "models",
    "robustness",
]
