"""Robustness of VAEs as probabilistic queries: r-robustness, margin bounds, attacks, certificates.

Every function takes ``(model, guide, x, ...)`` like ``pyro.infer.Predictive`` and returns an
``xarray.DataTree`` in the ArviZ schema with a ``robustness`` group.

* probabilistic queries [CAM]: :func:`r_robustness`, :func:`margin_bound`;
* attacks and empirical margins: :func:`max_damage_attack`, :func:`latent_attack`,
  :func:`output_attack`, :func:`empirical_margin`, :func:`likelihood_degradation`;
* Lipschitz certificates [BAR]: :func:`certified_margin`.
"""

from pyrobust.robustness.attacks import latent_attack, max_damage_attack, output_attack
from pyrobust.robustness.certify import certified_margin, design_lipschitz
from pyrobust.robustness.empirical import empirical_margin, likelihood_degradation
from pyrobust.robustness.margin import margin_bound
from pyrobust.robustness.query import r_robustness

__all__ = [
    "certified_margin",
    "design_lipschitz",
    "empirical_margin",
    "latent_attack",
    "likelihood_degradation",
    "margin_bound",
    "max_damage_attack",
    "output_attack",
    "r_robustness",
]
