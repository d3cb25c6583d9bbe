"""pyrobust: the robustness of variational autoencoders as queries on Pyro models.

Robustness queries take ``(model, guide, x)`` exactly like ``pyro.infer.Predictive`` and return
``xarray.DataTree`` results in the ArviZ schema (Camuto et al., AISTATS 2021; Barrett et al.,
AISTATS 2022).
"""

from pyrobust import analysis, data, inference, models, robustness
from pyrobust.robustness import (
    certified_margin,
    design_lipschitz,
    empirical_margin,
    latent_attack,
    likelihood_degradation,
    margin_bound,
    max_damage_attack,
    output_attack,
    r_robustness,
)
from pyrobust.robustness.audit import audit

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - grouped by purpose
    "__version__",
    # robustness queries
    "r_robustness",
    "margin_bound",
    "certified_margin",
    "design_lipschitz",
    # attacks and empirical margins
    "max_damage_attack",
    "empirical_margin",
    "likelihood_degradation",
    "latent_attack",
    "output_attack",
    # audits that outgrow one machine (sharded, resumable, optionally on Ray)
    "audit",
    # subpackages
    "models",
    "inference",
    "analysis",
    "data",
    "robustness",
]
