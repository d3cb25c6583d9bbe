"""The Pyro VAE tutorial (pyro-ppl/pyro ``examples/vae/vae.py``, tutorial "Variational
Autoencoders"), re-typed small: image-shaped inputs, the encoder flattens them with
``x.reshape(-1, D)`` and the model observes ``obs=x.reshape(-1, D)``.

So inputs are ``(n, 1, 8, 8)`` and the observed site ``"obs"`` is ``(n, 64)``; the latent site is
``"latent"``; the likelihood is a Bernoulli with ``validate_args=False`` on grey levels, exactly
as the tutorial does on MNIST.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from tests.clients._client import Client, randn
from tests.clients._data import batches, digits, query_inputs

D = 64


class Encoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(D, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, D)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, D)
        self.softplus = nn.Softplus()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return torch.sigmoid(self.fc21(hidden))


class VAE(nn.Module):
    def __init__(self, z_dim: int = 2, hidden_dim: int = 32):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, D),
            )

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def train(steps: int = 300, seed: int = 0) -> Client:
    """Train on 512 digits with SVI + Trace_ELBO, as the tutorial does."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    vae = VAE()
    data, _ = digits(512)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for idx in batches(steps, len(data), 64, gen):
        svi.step(data[idx])
    x, _ = query_inputs(4)

    def draw(xp, num, g):
        loc, scale = vae.encoder(xp)
        z = loc + randn((num, *loc.shape), g, loc) * scale
        return vae.decoder(z)

    def reference(x0):
        return vae.decoder(vae.encoder(x0)[0])

    def log_lik(x_enc, x_clean):
        probs = reference(x_enc)
        return dist.Bernoulli(probs, validate_args=False).log_prob(x_clean.reshape(-1, D)).sum(-1)

    def neg_elbo(x_enc, target, num, g):
        loc, scale = vae.encoder(x_enc)
        z = loc + randn((num, *loc.shape), g, loc) * scale
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        probs = vae.decoder(z)
        log_px = dist.Bernoulli(probs, validate_args=False).log_prob(target).sum(-1)
        return log_q - log_pz - log_px

    return Client(
        name="tutorial_vae",
        model=vae.model,
        guide=vae.guide,
        x=x,
        draw=draw,
        reference=reference,
        encode=vae.encoder,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        latent_site="latent",
        obs_site="obs",
        obs_event=(D,),
        target=digits(1, offset=1790)[0].reshape(D),
        modules=(vae,),
        r=0.45,
    )
