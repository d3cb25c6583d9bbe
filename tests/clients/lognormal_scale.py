"""The issue's minimal case: a second continuous latent ``"s"`` (a LogNormal scale) that the guide
samples next to ``"z"``. No nets, no training: the answer is known in closed form.

With ``x = 1``: ``z ~ N(1, 0.1)``, ``s ~ LogNormal(0, 0.01)`` from the guide, ``g = s z``. The
reference holds ``s`` at its guide mean :math:`e^{0.01^2/2}` and ``z`` at 1, so
:math:`\\|\\Delta\\| = |s z - e^{0.00005}|` and :math:`p_{0.2} \\approx P(|N(0, 0.1)| \\le 0.2)
= 0.9545`. Drawing ``s`` from the prior LogNormal(0, 1) instead gives about 0.11-0.23.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from tests.clients._client import Client, randn

S_SCALE, Z_SCALE = 0.01, 0.1


def model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
        s = pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(s * z, 0.01).to_event(1), obs=x)


def guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), S_SCALE).to_event(1))
        pyro.sample("z", dist.Normal(x, Z_SCALE).to_event(1))


def build() -> Client:
    x = torch.ones(4, 1)

    def draw(xp, num, g):
        s = torch.exp(S_SCALE * randn((num, *xp.shape), g, xp))
        z = xp + Z_SCALE * randn((num, *xp.shape), g, xp)
        return s * z

    def reference(x0):
        return x0 * torch.exp(torch.tensor(S_SCALE**2 / 2))

    def encode(x0):
        return x0, torch.full_like(x0, Z_SCALE)

    def log_lik(x_enc, x_clean):
        return dist.Normal(reference(x_enc), 0.01).log_prob(x_clean).sum(-1)

    def neg_elbo(x_enc, target, num, g):
        s = torch.exp(S_SCALE * randn((num, *x_enc.shape), g, x_enc))
        z = x_enc + Z_SCALE * randn((num, *x_enc.shape), g, x_enc)
        log_q = (
            dist.LogNormal(0.0, S_SCALE).log_prob(s) + dist.Normal(x_enc, Z_SCALE).log_prob(z)
        ).sum(-1)
        log_p = (
            dist.Normal(0.0, 1.0).log_prob(z)
            + dist.LogNormal(0.0, 1.0).log_prob(s)
            + dist.Normal(s * z, 0.01).log_prob(target)
        ).sum(-1)
        return log_q - log_p

    return Client(
        name="lognormal_scale",
        model=model,
        guide=guide,
        x=x,
        draw=draw,
        reference=reference,
        encode=encode,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        other_sites=("s",),
        box=None,
        obs_event=(1,),
        target=torch.tensor([1.1]),
        r=0.2,
        eps=0.05,
    )


train = build
