"""pyrobust.analysis: results in ArviZ/xarray, disentanglement metrics, plots and reports.

Every pyrobust result is an ``xarray.DataTree`` in the ArviZ schema. This subpackage saves and
loads them (netCDF via ``h5netcdf``, or zarr), combines the results of several models along a
``model`` or ``beta`` dim, scores disentanglement with the disentanglement_lib definitions, and
draws the plots and the HTML report of a run. Plotting imports matplotlib only when called.
"""

from pyrobust.analysis.io import combine, load, save, settings
from pyrobust.analysis.metrics import beta_vae_score, dci, factor_vae_score, mig, sap

__all__ = [
    "beta_vae_score",
    "combine",
    "dci",
    "factor_vae_score",
    "load",
    "mig",
    "sap",
    "save",
    "settings",
]
