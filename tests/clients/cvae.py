"""The conditional VAE of Pyro's ``examples/cvae`` (Sohn et al. 2015), re-typed small and called
as ``model(x, y)`` / ``guide(x, y)``.

As in the example, the input ``x`` is a digit with all but one quadrant masked to ``-1`` and
``y`` is the full image. The recognition net sees ``x`` with the masked pixels filled in from
``y``; the *prior* net (the model's ``p(z | x)``) sees ``x`` alone; the generation net decodes
``z`` into a Bernoulli image. Differences from the example, to fit the robustness protocol:
the mask is a fixed quadrant (the example finds it with ``x == -1``, which a perturbation of
``x`` would break), the observed site ``"y"`` is the whole image ``(n, 64)`` rather than the
masked pixels, and there is no pre-trained baseline net. The data plates are sizeless
(``pyro.plate("data")``) as in the example.
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
#: True where the pixel is hidden from the input: all but the top-left 4x4 quadrant.
MASK = torch.ones(1, 8, 8, dtype=torch.bool)
MASK[:, :4, :4] = False


def masked(images):
    """The example's input: the visible quadrant, -1 elsewhere."""
    return torch.where(MASK, torch.full_like(images, -1.0), images)


class Encoder(nn.Module):
    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(D, hidden)
        self.fc31 = nn.Linear(hidden, z_dim)
        self.fc32 = nn.Linear(hidden, z_dim)

    def forward(self, x, y=None):
        xc = x if y is None else torch.where(MASK, y.reshape(x.shape), x)
        hidden = torch.relu(self.fc1(xc.reshape(-1, D)))
        return self.fc31(hidden), torch.exp(self.fc32(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden)
        self.fc3 = nn.Linear(hidden, D)

    def forward(self, z):
        return torch.sigmoid(self.fc3(torch.relu(self.fc1(z))))


class CVAE(nn.Module):
    def __init__(self, z_dim: int = 2, hidden: int = 32):
        super().__init__()
        self.prior_net = Encoder(z_dim, hidden)
        self.generation_net = Decoder(z_dim, hidden)
        self.recognition_net = Encoder(z_dim, hidden)

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        with pyro.plate("data"):
            prior_loc, prior_scale = self.prior_net(xs)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                pyro.sample(
                    "y", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=ys.reshape(-1, D)
                )
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                loc, scale = self.prior_net(xs)
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def train(steps: int = 200, seed: int = 0) -> Client:
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    net = CVAE()
    images, _ = digits(512)
    inputs = masked(images)
    svi = SVI(net.model, net.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for idx in batches(steps, len(images), 64, gen):
        svi.step(inputs[idx], images[idx])
    full = query_inputs(4)[0]
    x, y = masked(full), full

    def draw(xp, num, g):
        loc, scale = net.recognition_net(xp, y)
        z = loc + randn((num, *loc.shape), g, loc) * scale
        return net.generation_net(z)

    def reference(x0):
        return net.generation_net(net.recognition_net(x0, y)[0])

    def encode(x0):
        return net.recognition_net(x0, y)

    def log_lik(x_enc, x_clean):  # the observed value at the clean input is y
        probs = reference(x_enc)
        return dist.Bernoulli(probs, validate_args=False).log_prob(y.reshape(-1, D)).sum(-1)

    def neg_elbo(x_enc, target, num, g):
        # the model runs on the perturbed input too: p(z | x+d) p(target | z)
        loc, scale = net.recognition_net(x_enc, y)
        z = loc + randn((num, *loc.shape), g, loc) * scale
        p_loc, p_scale = net.prior_net(x_enc)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_pz = dist.Normal(p_loc, p_scale).log_prob(z).sum(-1)
        probs = net.generation_net(z)
        log_py = dist.Bernoulli(probs, validate_args=False).log_prob(target).sum(-1)
        return log_q - log_pz - log_py

    return Client(
        name="cvae",
        model=net.model,
        guide=net.guide,
        x=x,
        model_args=(y,),
        draw=draw,
        reference=reference,
        encode=encode,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        obs_site="y",
        box=(-1.0, 1.0),
        obs_event=(D,),
        target=digits(1, offset=1790)[0].reshape(D),
        modules=(net,),
        extras={"net": net, "y": y},
        r=0.4,
    )
