"""Robustness of VAEs as probabilistic queries: r-robustness, margin bounds, attacks.

Every function takes ``(model, guide, x, ...)`` like ``pyro.infer.Predictive`` and returns an
``xarray.DataTree`` in the ArviZ schema with a ``robustness`` group.
"""

from pyrobust.robustness.margin import margin_bound
from pyrobust.robustness.query import r_robustness

__all__ = ["margin_bound", "r_robustness"]
