"""pyrobust.analysis: results in ArviZ/xarray, disentanglement metrics, plots and reports.

Every pyrobust result is an ``xarray.DataTree`` in the ArviZ schema. This subpackage saves and
loads them (netCDF via ``h5netcdf``, or zarr), converts a Pyro model and guide to one
(:func:`from_pyro`, the SVI converter arviz-base lacks), combines the results of several models along a
``model`` or ``beta`` dim, scores disentanglement with the disentanglement_lib definitions, and
draws the plots and the HTML report of a run. Plotting imports matplotlib only when called.
"""

from pyrobust.analysis.convert import from_pyro
from pyrobust.analysis.io import combine, load, save, settings
from pyrobust.analysis.metrics import beta_vae_score, dci, factor_vae_score, mig, sap
from pyrobust.analysis.plots import (
    plot_against_beta,
    plot_latent_traversals,
    plot_margin_scatter,
    plot_reconstructions,
    plot_robustness_curve,
    plot_training_curves,
)
from pyrobust.analysis.report import report

__all__ = [
    "beta_vae_score",
    "combine",
    "dci",
    "factor_vae_score",
    "from_pyro",
    "load",
    "mig",
    "plot_against_beta",
    "plot_latent_traversals",
    "plot_margin_scatter",
    "plot_reconstructions",
    "plot_robustness_curve",
    "plot_training_curves",
    "report",
    "sap",
    "save",
    "settings",
]
