r"""
Certify a Lipschitz VAE
=======================

The margin of :func:`pyrobust.margin_bound` is a first-order estimate; Barrett et al. [BAR]
give a *certificate*: if the decoder mean :math:`g`, the encoder mean :math:`\mu` and the encoder
std :math:`\sigma` are :math:`a`-, :math:`b`- and :math:`c`-Lipschitz, then no perturbation of
norm below the certified margin can break r-robustness (see :doc:`../theory`). This tutorial

1. asks :func:`pyrobust.design_lipschitz` which constants certify a target margin;
2. builds a VAE with those constants from Björck-orthonormalised layers and GroupSort
   activations (:class:`pyrobust.models.LipschitzEncoder`,
   :class:`pyrobust.models.LipschitzDecoder`) and trains it on digits;
3. verifies the constants from the trained layers, certifies every test input
   (:func:`pyrobust.certified_margin`), and checks the certificate against the strongest attack
   found (:func:`pyrobust.empirical_margin`).
"""

# %%
# Design: which constants certify the margin we want?
# ---------------------------------------------------
# We ask for r-robustness at :math:`r = 2` (half a typical digit's norm) against every
# perturbation of norm below :math:`R = 0.2`, with the encoder's
# :math:`\|\sigma(x)\|_2` capped at 0.1 and one constant :math:`L = a = b = c` for the three
# maps.
import matplotlib.pyplot as plt
import pyro
import torch

import pyrobust as pr

R_TARGET, RADIUS, LATENT, CAP = 0.2, 2.0, 8, 0.1
design = pr.design_lipschitz(RADIUS, R_TARGET, LATENT, max_scale_norm=CAP)
print(design)

# %%
# A larger margin needs smaller constants, i.e. a smoother, less expressive VAE; a margin
# beyond what the cap allows has no design at all, and the error says why:
try:
    pr.design_lipschitz(RADIUS, 5.0, LATENT, a=1.0, b=1.0, c=1.0)
except ValueError as err:
    print("ValueError:", err)

# %%
# Build and train
# ---------------
# Each net is an MLP of Björck layers scaled so that the whole map is :math:`L`-Lipschitz in
# :math:`\ell_2`. The decoder outputs Bernoulli logits, so the mean :math:`g(z)` is the sigmoid
# of an :math:`L`-Lipschitz map: :math:`L/4`-Lipschitz. We round :math:`L` down, which only
# enlarges the margin.
L = float(int(design.a * 10) / 10)
pyro.clear_param_store()
torch.manual_seed(0)
images, _ = pr.data.load_digits()
train_idx, test_idx = pr.data.train_test_split(len(images), test_fraction=0.2, seed=0)
x_train, x_test = images[train_idx], images[test_idx]

vae = pr.models.VAE(
    pr.models.LipschitzEncoder(
        (1, 8, 8), LATENT, (64, 64), loc_lipschitz=L, scale_lipschitz=L, max_scale_norm=CAP
    ),
    pr.models.LipschitzDecoder(LATENT, (1, 8, 8), (64, 64), lipschitz=L, output="logits"),
    likelihood="bernoulli",
)
history = pr.inference.fit(vae, x_train, epochs=10, batch_size=128, lr=2e-3, seed=0, progress=False)
# Frozen for the queries: each Björck layer then orthonormalises its weight once.
vae = vae.eval().requires_grad_(False)

# %%
# Certify
# -------
# :func:`pyrobust.models.lipschitz_constants` verifies the constants from the trained layers'
# singular values, and :func:`pyrobust.certified_margin` reads them itself when none are given.
constants = pr.models.lipschitz_constants(vae.encoder, vae.decoder)
print(constants)

x = x_test[:16]
cert = pr.certified_margin(vae.model, vae.guide, x, r=RADIUS)
ds = cert["robustness"].dataset
print(ds[["certified_margin", "best_bound", "s"]].to_dataframe().head())
print(f"smallest certified margin over {len(x)} inputs: {float(ds['certified_margin'].min()):.3f}")

# %%
# Every input is certified at least the target margin: the constants and the cap hold for every
# input, so the certificate does too.
#
# Check it against an attack
# --------------------------
# The empirical margin is the largest perturbation size at which the strongest maximum-damage
# attack found still leaves the VAE r-robust (bisection over the size). A certificate is only
# worth its name if no attack beats it: every empirical margin must lie above the certified one.
# The attack uses the certificate's reference, two independent reconstructions
# (``reference="sample"``).
emp = pr.empirical_margin(
    vae.model,
    vae.guide,
    x,
    r=RADIUS,
    reference="sample",
    bisection_steps=6,
    steps=20,
    restarts=1,
    num_samples=200,
    seed=0,
)
empirical = emp["robustness"]["margin"]
certified = ds["certified_margin"]
print("certified <= empirical for every input:", bool((certified <= empirical).all()))
print(f"empirical / certified, median: {float((empirical / certified).median()):.1f}")

# %%
# Per input: the certified margin (the same for every input here, since every encoder sits at
# the cap :math:`\|\sigma(x)\|_2 = 0.1`) and the empirical margin, which no certificate may
# exceed.
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(empirical["obs_id"], empirical, "o", label="empirical margin (attack)")
ax.plot(certified["obs_id"], certified, "s", label="certified margin [BAR]")
ax.axhline(R_TARGET, color="gray", linestyle=":", label=f"target {R_TARGET}")
ax.set(xlabel="test input", ylabel="margin (l2)", ylim=(0, None))
ax.legend(loc="center right", fontsize=8)  # the band between the margins is empty
fig.tight_layout()
