r"""
An ArviZ workflow on robustness results
=======================================

Every pyrobust result is an :class:`xarray.DataTree` in the ArviZ schema: Monte-Carlo draws on
``(chain, draw)`` dims in ``posterior_predictive``, the inputs and perturbations in
``constant_data``, the summaries in a ``robustness`` group, and every setting in the attrs.
So the ArviZ tools work on it as they are, with no glue code. This tutorial

* reads the draws behind a probability of r-robustness and checks its Monte-Carlo error with
  ``arviz_stats`` (ESS and MCSE) against the binomial formula;
* summarises and plots the distance draws with ``arviz_stats`` and ``arviz_plots``;
* saves the result to netCDF, loads it back, and reads the settings that produced it.
"""

# %%
# A model and a question
# ----------------------
# A small VAE trained on digits (see the previous tutorials), asked for its probability of
# r-robustness at :math:`r = 1` under random perturbations of norm 1.
import tempfile
from pathlib import Path

import arviz_plots as azp
import arviz_stats as azs
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
import xarray as xr

import pyrobust as pr

pyro.clear_param_store()
torch.manual_seed(0)
images, _ = pr.data.load_digits()
train_idx, test_idx = pr.data.train_test_split(len(images), test_fraction=0.2, seed=0)
vae = pr.models.VAE(
    pr.models.MLPEncoder((1, 8, 8), latent_dim=6, hidden=(128,)),
    pr.models.MLPDecoder(6, (1, 8, 8), hidden=(128,)),
)
history = pr.inference.fit(
    vae, images[train_idx], epochs=15, batch_size=128, lr=3e-3, seed=0, progress=False
)
vae.eval()

x = images[test_idx][:6]
R = 1.0
tree = pr.r_robustness(
    vae.model, vae.guide, x, r=R, eps=1.0, family="sphere", num_samples=1000, seed=0
)
tree  # noqa: B018 - sphinx-gallery shows the DataTree's HTML view

# %%
# The probability is the mean of indicator draws
# ----------------------------------------------
# ``posterior_predictive`` holds the draws :math:`\|\Delta(x, \delta)\|` (``distance``), one
# per encoder draw :math:`\eta`, and the indicators :math:`\|\Delta\| \le r` (``inside``).
# The indicators averaged over draws are the probability in the ``robustness`` group.
distance = tree["posterior_predictive"]["distance"]
inside = tree["posterior_predictive"]["inside"]
assert bool(((distance <= R) == inside).all())
probability = tree["robustness"]["probability"]
print("mean of the indicator draws:", inside.mean(["chain", "draw"]).values.ravel().round(3))
print("probability (robustness)   :", probability.values.ravel().round(3))

# %%
# Its Monte-Carlo error, by ArviZ
# -------------------------------
# The draws are independent, so ArviZ's effective sample size should be close to the 1,000
# draws and its Monte-Carlo standard error close to the binomial
# :math:`\sqrt{p (1 - p) / n}`. The Clopper–Pearson interval in the ``robustness`` group is
# the exact version of the same statement.
mcse = azs.mcse(inside)
comparison = xr.Dataset(
    {
        "ess": azs.ess(inside),
        "mcse (arviz)": mcse,
        "mcse (binomial)": np.sqrt(probability * (1 - probability) / inside.sizes["draw"]),
        "ci_lower": tree["robustness"]["ci"].sel(ci_bound="lower", drop=True),
        "ci_upper": tree["robustness"]["ci"].sel(ci_bound="upper", drop=True),
    }
)
print(comparison.squeeze("eps", drop=True).to_dataframe().round(4))

# %%
# Summaries and plots of the draws
# --------------------------------
# ``arviz_stats.summary`` reads the group by name: the mean, standard deviation and 89%
# equal-tailed interval of each input's distance.
print(azs.summary(tree, group="posterior_predictive", var_names=["distance"], kind="stats"))

# %%
# The distribution of the distance for three inputs, with ``arviz_plots`` (matplotlib backend).
# The decision threshold is :math:`r = 1`: the mass to its left is the probability.
pc = azp.plot_dist(
    tree,
    group="posterior_predictive",
    var_names=["distance"],
    coords={"obs_id": [0, 1, 2]},
    backend="matplotlib",
)
plt.gcf().set_size_inches(8, 2.6)
plt.show()

# %%
# A forest plot of the distance draws of every input: the point is the median, i.e. the degree
# of robustness (the smallest :math:`r` that would pass), the lines the credible intervals.
pc = azp.plot_forest(
    tree, group="posterior_predictive", var_names=["distance"], backend="matplotlib"
)
plt.show()

# %%
# Save, load, and read the provenance
# -----------------------------------
# :func:`pyrobust.analysis.save` writes netCDF (or zarr) atomically; :func:`pyrobust.analysis.load`
# reads it back; :func:`pyrobust.analysis.settings` decodes the settings stored in the attrs
# (netCDF cannot store booleans, lists or ``None``, so they are stored as JSON strings).
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "robustness.nc"
    pr.analysis.save(tree, path)
    loaded = pr.analysis.load(path)
    same = loaded["robustness"].dataset.equals(tree["robustness"].dataset)
    print(
        f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, robustness group round-trips: {same}"
    )
settings = pr.analysis.settings(loaded)
print({k: settings[k] for k in ("r", "num_samples", "reference", "family", "eps", "seed")})
