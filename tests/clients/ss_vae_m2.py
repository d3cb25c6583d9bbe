"""The semi-supervised VAE "M2" of Kingma et al. 2014 as Pyro's ``examples/vae/ss_vae_M2.py``
writes it, re-typed small.

The guide first samples the digit ``"y" ~ OneHotCategorical(alpha(x))`` and then the style
``"z" ~ Normal(loc(x, y), scale(x, y))``; the model decodes ``(z, y)`` into a Bernoulli image
``"x"`` (flattened, ``(n, 64)``). Trained with ``TraceEnum_ELBO`` and the guide enumerated in
parallel (``config_enumerate``), alternating labelled and unlabelled minibatches, as the
example does. For the robustness queries the model and guide run unsupervised
(``model(x)``), so "y" is a second, discrete latent site of the guide.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

from tests.clients._client import Client, fold, randn
from tests.clients._data import batches, digits, query_inputs

D, K = 64, 10


def _cat(a, b):
    """Concatenate along the last dim, broadcasting the others (enumerated y has extra dims)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1)


class SSVAE(nn.Module):
    def __init__(self, z_dim: int = 2, hidden: int = 32, eps: float = 1e-7):
        super().__init__()
        self.z_dim, self.eps = z_dim, eps
        self.encoder_y = nn.Sequential(nn.Linear(D, hidden), nn.Softplus(), nn.Linear(hidden, K))
        self.encoder_z = nn.Sequential(nn.Linear(D + K, hidden), nn.Softplus())
        self.z_loc = nn.Linear(hidden, z_dim)
        self.z_log_scale = nn.Linear(hidden, z_dim)
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + K, hidden), nn.Softplus(), nn.Linear(hidden, D)
        )

    # the nets, as plain functions (the "clipped" softmax/sigmoid of the example)
    def alpha(self, xs):
        return F.softmax(self.encoder_y(xs), -1).clamp(self.eps, 1 - self.eps)

    def loc_scale(self, xs, ys):
        h = self.encoder_z(_cat(xs, ys))
        return self.z_loc(h), torch.exp(self.z_log_scale(h))

    def decode(self, zs, ys):
        return torch.sigmoid(self.decoder(_cat(zs, ys))).clamp(self.eps, 1 - self.eps)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            prior_loc = xs.new_zeros([batch_size, self.z_dim])
            prior_scale = xs.new_ones([batch_size, self.z_dim])
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = xs.new_ones([batch_size, K]) / K
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            loc = self.decode(zs, ys)
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.alpha(xs)))
            loc, scale = self.loc_scale(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def train(steps: int = 200, seed: int = 0) -> Client:
    """Semi-supervised training: every 4th minibatch labelled; unlabelled ones with
    TraceEnum_ELBO and y enumerated in parallel."""
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    net = SSVAE()
    images, labels = digits(512)
    data, onehot = images.reshape(-1, D), F.one_hot(labels, K).float()
    guide = config_enumerate(net.guide, "parallel", expand=False)
    optim = Adam({"lr": 1e-2})
    unsup = SVI(net.model, guide, optim, loss=TraceEnum_ELBO(max_plate_nesting=1))
    # a labelled batch has nothing to enumerate: the plain ELBO (TraceEnum_ELBO would warn)
    sup = SVI(net.model, net.guide, optim, loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for i, idx in enumerate(batches(steps, len(data), 64, gen)):
        if i % 4 == 1:
            sup.step(data[idx], onehot[idx])
        else:
            unsup.step(data[idx])
    x = query_inputs(4)[0].reshape(-1, D)

    def draw(xp, num, g):
        alpha = net.alpha(xp)  # (n, K)
        y_idx = torch.multinomial(alpha.repeat(num, 1), 1, generator=g).reshape(num, -1)
        ys = F.one_hot(y_idx, K).to(xp.dtype)  # (num, n, K)
        loc, scale = net.loc_scale(fold(xp, num).reshape(num, -1, D), ys)
        z = loc + randn(loc.shape, g, loc) * scale
        return net.decode(z, ys)

    def mode(x0):
        return F.one_hot(net.alpha(x0).argmax(-1), K).to(x0.dtype)

    def reference(x0):
        ys = mode(x0)
        return net.decode(net.loc_scale(x0, ys)[0], ys)

    def encode(x0):  # z's statistics with y held at the guide's mode
        return net.loc_scale(x0, mode(x0))

    def log_lik(x_enc, x_clean):
        return dist.Bernoulli(reference(x_enc), validate_args=False).log_prob(x_clean).sum(-1)

    def neg_elbo(x_enc, target, num, g):
        alpha = net.alpha(x_enc)
        y_idx = torch.multinomial(alpha.repeat(num, 1), 1, generator=g).reshape(num, -1)
        ys = F.one_hot(y_idx, K).to(x_enc.dtype)
        loc, scale = net.loc_scale(x_enc.expand(num, *x_enc.shape), ys)
        z = loc + randn(loc.shape, g, loc) * scale
        log_q = dist.OneHotCategorical(alpha).log_prob(ys) + dist.Normal(loc, scale).log_prob(
            z
        ).sum(-1)
        log_p = (
            dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
            + dist.OneHotCategorical(torch.full_like(alpha, 1.0 / K)).log_prob(ys)
            + dist.Bernoulli(net.decode(z, ys), validate_args=False).log_prob(target).sum(-1)
        )
        return log_q - log_p

    return Client(
        name="ss_vae_m2",
        model=net.model,
        guide=net.guide,
        x=x,
        draw=draw,
        reference=reference,
        encode=encode,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        other_sites=("y",),
        obs_event=(D,),
        target=digits(1, offset=1790)[0].reshape(D),
        modules=(net,),
        r=0.1,
    )
