"""pyroVED's ``iVAE`` (ziatdinovmax/pyroVED ``pyroved/models/ivae.py``) with no invariances,
re-typed small: 2-D images ``(n, h, w)``, ``model(x, y=None, **kwargs)`` and ``guide(x, y=None,
**kwargs)`` reading a KL weight ``scale_factor`` from the keyword arguments, latent site
``"latent"`` under ``poutine.scale``, and the observed site ``"obs"`` of shape ``(n, h*w)``
(``obs=x.view(-1, h*w)``). The nets are pyroVED's ``fcEncoderNet``/``fcDecoderNet`` (tanh
hidden layers, softplus scale, sigmoid output) and the sampler is its ``"gaussian"`` one,
``Normal(loc, decoder_sig)``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from tests.clients._client import Client, randn
from tests.clients._data import batches, digits, query_inputs

H = W = 8
SIG = 0.15


class fcEncoderNet(nn.Module):
    def __init__(self, latent_dim: int, hidden: int = 32):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(H * W, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.loc = nn.Linear(hidden, latent_dim)
        self.log_scale = nn.Linear(hidden, latent_dim)

    def forward(self, x):
        h = self.fc(x.reshape(-1, H * W))
        return self.loc(h), F.softplus(self.log_scale(h))


class fcDecoderNet(nn.Module):
    def __init__(self, latent_dim: int, hidden: int = 32):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, H * W),
        )

    def forward(self, z):
        return torch.sigmoid(self.fc(z)).reshape(-1, H, W)


class iVAE(nn.Module):
    def __init__(self, latent_dim: int = 2):
        super().__init__()
        self.encoder_z = fcEncoderNet(latent_dim)
        self.decoder = fcDecoderNet(latent_dim)
        self.z_dim = latent_dim

    def sampler_d(self, loc):
        return dist.Normal(loc, SIG)

    def model(self, x, y=None, **kwargs):
        pyro.module("decoder", self.decoder)
        beta = kwargs.get("scale_factor", 1.0)
        reshape_ = torch.prod(torch.tensor(x.shape[1:])).item()
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            with pyro.poutine.scale(scale=beta):
                z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc = self.decoder(z)
            pyro.sample(
                "obs", self.sampler_d(loc.view(-1, reshape_)).to_event(1), obs=x.view(-1, reshape_)
            )

    def guide(self, x, y=None, **kwargs):
        pyro.module("encoder_z", self.encoder_z)
        beta = kwargs.get("scale_factor", 1.0)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder_z(x)
            with pyro.poutine.scale(scale=beta):
                pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def train(steps: int = 200, seed: int = 0) -> Client:
    """pyroVED's SVItrainer passes ``**kwargs`` to every step; so do we (``scale_factor``)."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    net = iVAE()
    images = digits(512)[0].reshape(-1, H, W)
    svi = SVI(net.model, net.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for idx in batches(steps, len(images), 64, gen):
        svi.step(images[idx], scale_factor=1.0)
    x = query_inputs(4)[0].reshape(-1, H, W)

    def draw(xp, num, g):
        loc, scale = net.encoder_z(xp)
        z = loc + scale * randn((num, *loc.shape), g, loc)
        return net.decoder(z.reshape(-1, net.z_dim)).reshape(num, -1, H * W)

    def reference(x0):
        return net.decoder(net.encoder_z(x0)[0]).reshape(-1, H * W)

    def log_lik(x_enc, x_clean):
        return dist.Normal(reference(x_enc), SIG).log_prob(x_clean.reshape(-1, H * W)).sum(-1)

    def neg_elbo(x_enc, target, num, g):
        loc, scale = net.encoder_z(x_enc)
        z = loc + scale * randn((num, *loc.shape), g, loc)
        mean = net.decoder(z.reshape(-1, net.z_dim)).reshape(num, -1, H * W)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(mean, SIG).log_prob(
            target
        ).sum(-1)
        return log_q - log_p

    return Client(
        name="pyroved_ivae",
        model=net.model,
        guide=net.guide,
        x=x,
        model_kwargs={"scale_factor": 1.0},
        draw=draw,
        reference=reference,
        encode=net.encoder_z,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        latent_site="latent",
        obs_site="obs",
        obs_event=(H * W,),
        target=digits(1, offset=1790)[0].reshape(H * W),
        modules=(net,),
        r=0.2,
    )
