"""Small plain-Pyro VAEs for the inference tests (no dependency on pyrobust.models.VAE)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class MLPPair:
    """A Bernoulli MLP VAE written directly in Pyro, following the site protocol."""

    def __init__(self, d_x=6, d_z=2, hidden=16, seed=0, name="t"):
        torch.manual_seed(seed)
        self.enc = nn.Sequential(nn.Linear(d_x, hidden), nn.Tanh(), nn.Linear(hidden, 2 * d_z))
        self.dec = nn.Sequential(nn.Linear(d_z, hidden), nn.Tanh(), nn.Linear(hidden, d_x))
        self.d_z = d_z
        self.name = name
        self.nan_after = None  # model call count after which the likelihood is NaN
        self.calls = 0

    def model(self, x, size=None):
        pyro.module(f"{self.name}_dec", self.dec)
        self.calls += 1
        size = x.shape[0] if size is None else size
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.d_z), 1.0).to_event(1))
            logits = self.dec(z)
            if self.nan_after is not None and self.calls > self.nan_after:
                logits = logits * torch.nan
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, size=None):
        pyro.module(f"{self.name}_enc", self.enc)
        size = x.shape[0] if size is None else size
        with pyro.plate("data", size, subsample=x):
            loc, raw = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def binary_data(n=64, d_x=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(4, d_x, generator=g) > 0.5).float()
    idx = torch.randint(0, 4, (n,), generator=g)
    flip = (torch.rand(n, d_x, generator=g) < 0.1).float()
    return (proto[idx] - flip).abs()
