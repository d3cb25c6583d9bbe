"""A scANVI/scVI-style count model (Pyro's scANVI example, ``examples/scanvi``; Lopez et al.
2018), re-typed and reduced to its two continuous latents: the cell state ``"z"`` and the
library size ``"l"``.

Digits play single cells: the 64 grey levels (0..16) are the gene counts. The guide encodes
``log1p(x)`` into ``z ~ Normal`` and ``l ~ LogNormal`` (one library size per cell); the model
draws ``l`` from a LogNormal prior centred on the data's mean log library size, ``z`` from
N(0, I), and observes the counts as ``Poisson(l * softmax(decoder(z)))`` (scANVI uses a
zero-inflated negative binomial with the same mean). The reconstruction therefore depends
on ``l``: drawing ``l`` from the prior instead of the guide changes every answer.
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

G = 64


class SCVI(nn.Module):
    def __init__(self, z_dim: int = 2, hidden: int = 32, l_loc: float = 0.0, l_scale: float = 1.0):
        super().__init__()
        self.z_dim, self.l_loc, self.l_scale = z_dim, l_loc, l_scale
        self.z_encoder = nn.Sequential(
            nn.Linear(G, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim)
        )
        self.l_encoder = nn.Sequential(nn.Linear(G, hidden), nn.Softplus(), nn.Linear(hidden, 2))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden), nn.Softplus(), nn.Linear(hidden, G))

    def encode_z(self, x):
        loc, log_scale = self.z_encoder(torch.log1p(x)).split(self.z_dim, -1)
        return loc, F.softplus(log_scale) + 1e-3

    def encode_l(self, x):
        loc, log_scale = self.l_encoder(torch.log1p(x)).split(1, -1)
        return loc, F.softplus(log_scale) + 1e-3

    def rate(self, z, lib):
        return lib * F.softmax(self.decoder(z), -1)

    def model(self, x):
        pyro.module("scvi", self)
        with pyro.plate("batch", len(x)):
            l_loc = x.new_full((len(x), 1), self.l_loc)
            lib = pyro.sample("l", dist.LogNormal(l_loc, self.l_scale).to_event(1))
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson(self.rate(z, lib)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("scvi", self)
        with pyro.plate("batch", len(x)):
            l_loc, l_scale = self.encode_l(x)
            pyro.sample("l", dist.LogNormal(l_loc, l_scale).to_event(1))
            z_loc, z_scale = self.encode_z(x)
            pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))


def train(steps: int = 200, seed: int = 0) -> Client:
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    images, _ = digits(512)
    counts = (images * 16).round().reshape(-1, G)
    log_lib = counts.sum(-1).log()
    net = SCVI(l_loc=float(log_lib.mean()), l_scale=float(log_lib.std()))
    svi = SVI(net.model, net.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for idx in batches(steps, len(counts), 64, gen):
        svi.step(counts[idx])
    x = (query_inputs(4)[0] * 16).round().reshape(-1, G)

    def draw(xp, num, g):
        l_loc, l_scale = net.encode_l(xp)
        z_loc, z_scale = net.encode_z(xp)
        lib = torch.exp(l_loc + l_scale * randn((num, *l_loc.shape), g, l_loc))
        z = z_loc + z_scale * randn((num, *z_loc.shape), g, z_loc)
        return net.rate(z, lib)

    def reference(x0):
        l_loc, l_scale = net.encode_l(x0)
        return net.rate(net.encode_z(x0)[0], torch.exp(l_loc + l_scale**2 / 2))

    def log_lik(x_enc, x_clean):
        return dist.Poisson(reference(x_enc)).log_prob(x_clean).sum(-1)

    def neg_elbo(x_enc, target, num, g):
        l_loc, l_scale = net.encode_l(x_enc)
        z_loc, z_scale = net.encode_z(x_enc)
        lib = torch.exp(l_loc + l_scale * randn((num, *l_loc.shape), g, l_loc))
        z = z_loc + z_scale * randn((num, *z_loc.shape), g, z_loc)
        log_q = dist.LogNormal(l_loc, l_scale).log_prob(lib).sum(-1) + dist.Normal(
            z_loc, z_scale
        ).log_prob(z).sum(-1)
        log_p = (
            dist.LogNormal(net.l_loc, net.l_scale).log_prob(lib).sum(-1)
            + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            + dist.Poisson(net.rate(z, lib)).log_prob(target).sum(-1)
        )
        return log_q - log_p

    return Client(
        name="scanvi_library",
        model=net.model,
        guide=net.guide,
        x=x,
        draw=draw,
        reference=reference,
        encode=net.encode_z,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        other_sites=("l",),
        box=(0.0, 16.0),
        obs_event=(G,),
        target=(digits(1, offset=1790)[0] * 16).round().reshape(G),
        modules=(net,),
        r=4.0,
        eps=1.0,
    )
