"""Small Pyro VAEs written the way users write them, for the training tests.

* :class:`SSVAE`: the semi-supervised VAE M2 (Kingma et al. 2014) without labels: a discrete
  digit ``y`` (one-hot) and a style ``z``; the guide samples ``y`` from a classifier and
  ``z`` given ``(x, y)``. Broadcasts over an enumeration dim of ``y``.
* :class:`CondPair`: a conditional VAE called as ``model(x, y)`` (the Pyro CVAE example's
  shape), with a pass-through keyword argument; :meth:`CondPair.joint_model` is the same
  VAE written on the concatenation ``[x, y]``, an independent twin.
* :class:`KwargsPair`: pyroVED's style, ``model(x, **kwargs)`` with an unscaled
  ``pyro.plate("data", len(x))``; ``size`` is ignored.
* :class:`SizelessPair`: a sizeless ``pyro.plate("data")``.
"""

from __future__ import annotations

from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn


def _cat(*ts):
    """Concatenate on the last dim after broadcasting the batch dims."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in ts))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in ts], -1)


def _mlp(d_in, hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))


class SSVAE:
    def __init__(self, d_x=6, d_z=2, k=3, hidden=16, seed=0):
        torch.manual_seed(seed)
        self.d_z, self.k = d_z, k
        self.classify = _mlp(d_x, hidden, k)
        self.enc = _mlp(d_x + k, hidden, 2 * d_z)
        self.dec = _mlp(d_z + k, hidden, d_x)

    def model(self, x, size=None):
        pyro.module("ss_dec", self.dec)
        size = len(x) if size is None else size
        with pyro.plate("data", size, subsample=x):
            y = pyro.sample("y", dist.OneHotCategorical(logits=x.new_zeros(len(x), self.k)))
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.d_z), 1.0).to_event(1))
            logits = self.dec(_cat(z, y))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, size=None):
        pyro.module("ss_classify", self.classify)
        pyro.module("ss_enc", self.enc)
        size = len(x) if size is None else size
        with pyro.plate("data", size, subsample=x):
            y = pyro.sample("y", dist.OneHotCategorical(logits=self.classify(x)))
            loc, raw = self.enc(_cat(x, y)).chunk(2, -1)
            scale = nn.functional.softplus(raw) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class CondPair:
    """``model(x, y, size=None, *, offset=0.0)``: x given a per-point one-hot y."""

    def __init__(self, d_x=6, d_y=3, d_z=2, hidden=16, seed=0):
        torch.manual_seed(seed)
        self.d_x, self.d_z = d_x, d_z
        self.enc = _mlp(d_x + d_y, hidden, 2 * d_z)
        self.dec = _mlp(d_z + d_y, hidden, d_x)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.offsets: list = []

    def model(self, x, y, size=None, *, offset=0.0):
        pyro.module("c_dec", self.dec)
        self.seen.append((x, y))
        self.offsets.append(offset)
        size = len(x) if size is None else size
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.d_z), 1.0).to_event(1))
            logits = self.dec(torch.cat([z, y], -1)) + offset
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y, size=None, *, offset=0.0):
        pyro.module("c_enc", self.enc)
        size = len(x) if size is None else size
        with pyro.plate("data", size, subsample=x):
            loc, raw = self.enc(torch.cat([x, y], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    # the same VAE on inputs [x, y]
    def joint_model(self, xy, size=None):
        return self.model(xy[:, : self.d_x], xy[:, self.d_x :], size)

    def joint_guide(self, xy, size=None):
        return self.guide(xy[:, : self.d_x], xy[:, self.d_x :], size)


class KwargsPair:
    """pyroVED's way: ``model(x, **kwargs)``, ``pyro.plate("data", x.shape[0])``; with
    ``scale`` the likelihood and prior are scaled by ``poutine.scale`` instead."""

    def __init__(self, d_x=6, d_z=2, hidden=16, seed=0, scale=None):
        torch.manual_seed(seed)
        self.d_z = d_z
        self.enc = _mlp(d_x, hidden, 2 * d_z)
        self.dec = _mlp(d_z, hidden, d_x)
        self.scale = scale
        self.kwargs_seen: list[dict] = []

    def _scaled(self):
        return poutine.scale(scale=self.scale) if self.scale is not None else nullcontext()

    def model(self, x, **kwargs):
        self.kwargs_seen.append(kwargs)
        pyro.module("k_dec", self.dec)
        with self._scaled(), pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.d_z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x, **kwargs):
        pyro.module("k_enc", self.enc)
        with self._scaled(), pyro.plate("data", x.shape[0]):
            loc, raw = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


class SizelessPair(KwargsPair):
    """As :class:`KwargsPair` (same parameter names), with ``pyro.plate("data")``."""

    def __init__(self, *args, sized=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.sized = sized

    def _plate(self, x):
        return pyro.plate("data", len(x)) if self.sized else pyro.plate("data")

    def model(self, x):
        pyro.module("k_dec", self.dec)
        with self._plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.d_z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("k_enc", self.enc)
        with self._plate(x):
            loc, raw = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
