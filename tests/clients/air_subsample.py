"""A guide that subsamples its own data plate, as Pyro's AIR example does
(``examples/air/main.py``: ``pyro.plate("data", N, subsample_size=B)`` inside model and guide,
``batch = data[ix]``). The model and guide take the *whole* data set and pick a minibatch
themselves, so the rows of a trace are not the rows of ``x``: pyrobust must refuse this guide
by name instead of pairing encoder statistics with the wrong inputs.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from tests.clients._client import Client
from tests.clients._data import digits, query_inputs
from tests.clients.tutorial_vae import D, Decoder, Encoder

BATCH = 2


class SubsamplingVAE(torch.nn.Module):
    def __init__(self, z_dim: int = 2, hidden: int = 32, batch_size: int = BATCH):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden)
        self.decoder = Decoder(z_dim, hidden)
        self.z_dim, self.batch_size = z_dim, batch_size

    def model(self, data):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", data.size(0), subsample_size=self.batch_size) as ix:
            batch = data[ix]
            z = pyro.sample("z", dist.Normal(batch.new_zeros(len(ix), self.z_dim), 1.0).to_event(1))
            pyro.sample(
                "x", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1), obs=batch
            )

    def guide(self, data):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", data.size(0), subsample_size=self.batch_size) as ix:
            loc, scale = self.encoder(data[ix])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def train(steps: int = 50, seed: int = 0) -> Client:
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    net = SubsamplingVAE(batch_size=64)
    data = digits(512)[0].reshape(-1, D)
    svi = SVI(net.model, net.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    for _ in range(steps):
        svi.step(data)
    net.batch_size = BATCH  # queries see 4 inputs; the guide still picks 2 of them
    x = query_inputs(4)[0].reshape(-1, D)

    def unsupported(*args, **kwargs):
        raise AssertionError("the subsampling guide has no independent answer: it is refused")

    return Client(
        name="air_subsample",
        model=net.model,
        guide=net.guide,
        x=x,
        draw=unsupported,
        reference=unsupported,
        encode=unsupported,
        obs_event=(D,),
        target=digits(1, offset=1790)[0].reshape(D),
        modules=(net,),
    )
