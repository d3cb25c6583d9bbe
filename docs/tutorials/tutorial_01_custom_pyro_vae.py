r"""
Query your own Pyro VAE
=======================

pyrobust asks robustness questions of a VAE written in plain Pyro, with no wrapper class. This
tutorial takes the VAE of Pyro's own `VAE tutorial <https://pyro.ai/examples/vae.html>`_ as its
author wrote it (the only change: 64 pixels for scikit-learn's 8x8 digits instead of MNIST's
784), trains it for a few seconds, and asks it

* how likely its reconstruction is to stay within :math:`r` of :math:`g(\mu(x))` under random
  perturbations of growing size (:func:`pyrobust.r_robustness`);
* how large a perturbation is provably harmless to first order (the [CAM] margin bound,
  :func:`pyrobust.margin_bound`);
* what the worst perturbation of a given size does (:func:`pyrobust.max_damage_attack`).

Its sites are named ``"latent"`` and ``"obs"`` (not pyrobust's defaults ``"z"`` and ``"x"``),
and the model observes ``x.reshape(-1, 64)``: inputs are images of shape ``(n, 1, 8, 8)``,
the observed site has shape ``(n, 64)``, and distances are measured over the observed site's
64 pixels (see :doc:`../site_protocol`).
"""

# %%
# The Pyro tutorial's VAE
# -----------------------
# Copied from the tutorial: an encoder and a decoder with one softplus hidden layer, a
# Bernoulli likelihood on the pixel intensities, ``pyro.module`` registrations, a data plate.
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyrobust as pr


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        # setup the two linear transformations used
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 64)
        # setup the non-linearities
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        # define the forward computation on the latent z
        # first compute the hidden units
        hidden = self.softplus(self.fc1(z))
        # return the parameter for the output Bernoulli
        # each is of size batch_size x 64
        loc_img = self.sigmoid(self.fc21(hidden))
        return loc_img


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        # setup the three linear transformations used
        self.fc1 = nn.Linear(64, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        # setup the non-linearities
        self.softplus = nn.Softplus()

    def forward(self, x):
        # define the forward computation on the image x
        # first shape the mini-batch to have pixels in the rightmost dimension
        x = x.reshape(-1, 64)
        # then compute the hidden units
        hidden = self.softplus(self.fc1(x))
        # then return a mean vector and a (positive) square root covariance
        # each of size batch_size x z_dim
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class VAE(nn.Module):
    # by default our latent space is 50-dimensional
    # and we use 400 hidden units
    def __init__(self, z_dim=50, hidden_dim=400):
        super().__init__()
        # create the encoder and decoder networks
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    # define the model p(x|z)p(z)
    def model(self, x):
        # register PyTorch module `decoder` with Pyro
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            # setup hyperparameters for prior p(z)
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            # sample from prior (value will be sampled by guide when computing the ELBO)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            # decode the latent code z
            loc_img = self.decoder(z)
            # score against actual images
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, 64),
            )

    # define the guide (i.e. variational distribution) q(z|x)
    def guide(self, x):
        # register PyTorch module `encoder` with Pyro
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            # use the encoder to get the parameters used to define q(z|x)
            z_loc, z_scale = self.encoder(x)
            # sample the latent code z
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


# %%
# Train it on digits
# ------------------
# :func:`pyrobust.data.load_digits` returns scikit-learn's 1,797 handwritten digits as images of
# shape ``(n, 1, 8, 8)`` in :math:`[0, 1]` (shipped with scikit-learn: nothing is downloaded).
# The training loop is the tutorial's: SVI with ``Trace_ELBO`` and Adam, here for 60 epochs of
# minibatches of 128 with a smaller net (8 latent dims, 128 hidden units).
pyro.clear_param_store()
pyro.set_rng_seed(0)
images, labels = pr.data.load_digits()
train_idx, test_idx = pr.data.train_test_split(len(images), test_fraction=0.2, seed=0)
x_train, x_test = images[train_idx], images[test_idx]
print("train", tuple(x_train.shape), "test", tuple(x_test.shape))

vae = VAE(z_dim=8, hidden_dim=128)
svi = SVI(vae.model, vae.guide, Adam({"lr": 3.0e-3}), loss=Trace_ELBO())
generator = torch.Generator().manual_seed(0)
for epoch in range(60):
    epoch_loss = 0.0
    for batch in torch.randperm(len(x_train), generator=generator).split(128):
        epoch_loss += svi.step(x_train[batch])
    if epoch % 10 == 9:
        print(f"epoch {epoch + 1:3d}  -ELBO per digit {epoch_loss / len(x_train):7.2f}")

# %%
# The site protocol at work
# -------------------------
# :func:`pyrobust.models.guide_loc_scale` reads :math:`(\mu(x), \sigma(x))` from a trace of the
# guide; :func:`pyrobust.models.model_mean` reads :math:`g(z)` as the ``.mean`` of the model's
# observed site. The reconstruction has the observed site's shape, ``(n, 64)``, not the input's.
x = x_test[:8]
with torch.no_grad():
    loc, scale = pr.models.guide_loc_scale(vae.guide, x, latent_site="latent")
    recon = pr.models.model_mean(vae.model, x, loc, latent_site="latent", obs_site="obs")
print(
    "mu(x):", tuple(loc.shape), " sigma(x):", tuple(scale.shape), " g(mu(x)):", tuple(recon.shape)
)

fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
for i in range(8):
    axes[0, i].imshow(x[i, 0], cmap="gray_r", vmin=0, vmax=1)
    axes[1, i].imshow(recon[i].reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
    axes[0, i].axis("off")
    axes[1, i].axis("off")
axes[0, 0].set_title("inputs", loc="left", fontsize=9)
axes[1, 0].set_title("reconstructions g(mu(x))", loc="left", fontsize=9)
fig.tight_layout()

# %%
# Probability of r-robustness along a perturbation curve
# ------------------------------------------------------
# For each input, perturbations :math:`\delta` drawn uniformly on spheres of radius ``eps``
# (``family="sphere"``) and 1,000 encoder draws each give :math:`p_r(x, \delta)` with an exact
# Clopper–Pearson interval ``ci`` (dim ``ci_bound``: lower, upper) and a three-valued
# ``decision``: 1 robust (interval above 1/2), -1 not robust (below), 0 undecided. The radius :math:`r = 1` is a quarter
# of a typical digit's norm (about 4 over 64 pixels). The encoder's noise alone already moves
# the reconstruction by about 0.6 (the degree of robustness at ``eps=0``).
tree = pr.r_robustness(
    vae.model,
    vae.guide,
    x,
    r=1.0,
    eps=[0.0, 0.5, 1.0, 2.0, 4.0],
    family="sphere",
    num_samples=1000,
    seed=0,
    latent_site="latent",
    obs_site="obs",
)
rob = tree["robustness"].dataset
table = rob[["probability", "decision"]].assign(
    ci_lower=rob["ci"].sel(ci_bound="lower", drop=True),
    ci_upper=rob["ci"].sel(ci_bound="upper", drop=True),
)
print(table.isel(obs_id=slice(0, 2)).to_dataframe().round(3))

# %%
# pyrobust's own plot of the curves: probability against :math:`\|\delta\|`, with the
# decision threshold :math:`\tfrac12`.
curve = pr.analysis.plot_robustness_curve(tree)

# %%
# Margins: the first-order bound and the worst case
# -------------------------------------------------
# The [CAM] bound :math:`R^r(x) \ge \min_i \sigma_i(x)\, \Phi^{-1}(p_A) / \|J(x)\|_F` needs the
# encoder's Jacobian, taken through the guide; with ``confidence=0.95`` it uses a lower
# confidence limit of :math:`p_A`, so it holds with probability at least 95%.
bound = pr.margin_bound(
    vae.model,
    vae.guide,
    x,
    r=1.0,
    confidence=0.95,
    seed=0,
    latent_site="latent",
    obs_site="obs",
)
print(bound["robustness"].dataset[["p_a", "min_scale", "jacobian_norm", "bound"]].to_dataframe())

# %%
# The maximum-damage attack looks for the perturbation of norm ``eps`` that moves the
# reconstruction furthest. Its damage is far above that of random perturbations of the same
# size: robustness to noise says little about robustness to an adversary.
attack = pr.max_damage_attack(
    vae.model,
    vae.guide,
    x,
    eps=[0.5, 1.0],
    r=1.0,
    steps=30,
    restarts=2,
    seed=0,
    latent_site="latent",
    obs_site="obs",
)
print(attack["robustness"].dataset[["damage", "probability", "decision"]].to_dataframe().head(6))
