"""A VAE written without any ``pyro.plate``: the whole batch is one event, ``.to_event(2)`` on
the latent and on the likelihood (a style seen in many user posts: the batch dim declared
dependent instead of independent). Same nets as the tutorial VAE, flat inputs ``(n, 64)``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from tests.clients._client import Client, randn
from tests.clients._data import batches, digits, query_inputs
from tests.clients.tutorial_vae import D, Decoder, Encoder


class PlatelessVAE(torch.nn.Module):
    def __init__(self, z_dim: int = 2, hidden: int = 32):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden)
        self.decoder = Decoder(z_dim, hidden)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(2))
        pyro.sample("x", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(2), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, scale = self.encoder(x)
        pyro.sample("z", dist.Normal(loc, scale).to_event(2))


def train(steps: int = 200, seed: int = 0) -> Client:
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    net = PlatelessVAE()
    data = digits(512)[0].reshape(-1, D)
    svi = SVI(net.model, net.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for idx in batches(steps, len(data), 64, gen):
        svi.step(data[idx])
    x = query_inputs(4)[0].reshape(-1, D)

    def draw(xp, num, g):
        loc, scale = net.encoder(xp)
        return net.decoder(loc + scale * randn((num, *loc.shape), g, loc))

    def reference(x0):
        return net.decoder(net.encoder(x0)[0])

    def log_lik(x_enc, x_clean):
        return dist.Bernoulli(reference(x_enc), validate_args=False).log_prob(x_clean).sum(-1)

    def neg_elbo(x_enc, target, num, g):  # per input: the joint factorises over rows
        loc, scale = net.encoder(x_enc)
        z = loc + scale * randn((num, *loc.shape), g, loc)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Bernoulli(
            net.decoder(z), validate_args=False
        ).log_prob(target).sum(-1)
        return log_q - log_p

    return Client(
        name="plateless",
        model=net.model,
        guide=net.guide,
        x=x,
        draw=draw,
        reference=reference,
        encode=net.encoder,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        obs_event=(D,),
        target=digits(1, offset=1790)[0].reshape(D),
        modules=(net,),
        r=0.45,
    )
