"""ProdLDA (Srivastava & Sutton 2017) as Pyro's tutorial "Probabilistic Topic Modeling" writes
it, re-typed small: an encoder with Dropout and affine-free BatchNorm on its outputs, a decoder
with Dropout and BatchNorm, the latent ``"logtheta"`` and a Multinomial observed site ``"obs"``.

Digits play documents: the 64 grey levels (0..16) are word counts. The tutorial sets
``total_count = int(docs.sum(-1).max())`` per batch; here it is the training set's maximum (a
per-batch value would jump under perturbation). After training the modules are left in
**training mode**, as a user who forgets ``.eval()`` leaves them: every query must answer as
in eval mode, restore the caller's flags, and leave the running statistics alone.
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

V = 64


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, num_topics: int, hidden: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(vocab_size, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fcmu = nn.Linear(hidden, num_topics)
        self.fclv = nn.Linear(hidden, num_topics)
        self.bnmu = nn.BatchNorm1d(num_topics, affine=False)
        self.bnlv = nn.BatchNorm1d(num_topics, affine=False)

    def forward(self, inputs):
        h = F.softplus(self.fc1(inputs))
        h = F.softplus(self.fc2(h))
        h = self.drop(h)
        logtheta_loc = self.bnmu(self.fcmu(h))
        logtheta_logvar = self.bnlv(self.fclv(h))
        return logtheta_loc, (0.5 * logtheta_logvar).exp()


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, num_topics: int, dropout: float):
        super().__init__()
        self.beta = nn.Linear(num_topics, vocab_size, bias=False)
        self.bn = nn.BatchNorm1d(vocab_size, affine=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, inputs):
        inputs = self.drop(inputs)
        return F.softmax(self.bn(self.beta(inputs)), dim=1)


class ProdLDA(nn.Module):
    def __init__(self, total_count: int, num_topics: int = 4, hidden: int = 32, dropout=0.2):
        super().__init__()
        self.num_topics, self.total_count = num_topics, total_count
        self.encoder = Encoder(V, num_topics, hidden, dropout)
        self.decoder = Decoder(V, num_topics, dropout)

    def model(self, docs):
        pyro.module("decoder", self.decoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc = docs.new_zeros((docs.shape[0], self.num_topics))
            logtheta_scale = docs.new_ones((docs.shape[0], self.num_topics))
            logtheta = pyro.sample(
                "logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1)
            )
            theta = F.softmax(logtheta, -1)
            count_param = self.decoder(theta)
            pyro.sample("obs", dist.Multinomial(self.total_count, count_param), obs=docs)

    def guide(self, docs):
        pyro.module("encoder", self.encoder)
        with pyro.plate("documents", docs.shape[0]):
            logtheta_loc, logtheta_scale = self.encoder(docs)
            pyro.sample("logtheta", dist.Normal(logtheta_loc, logtheta_scale).to_event(1))


def train(steps: int = 150, seed: int = 0) -> Client:
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    docs = (digits(512)[0] * 16).round().reshape(-1, V)
    net = ProdLDA(total_count=int(docs.sum(-1).max()) + 64)
    svi = SVI(net.model, net.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    gen = torch.Generator().manual_seed(seed)
    for idx in batches(steps, len(docs), 64, gen):
        svi.step(docs[idx])
    x = (query_inputs(4)[0] * 16).round().reshape(-1, V)
    # left in training mode on purpose (see the module docstring)

    def mean(logtheta):
        flat = logtheta.reshape(-1, net.num_topics)
        return (net.total_count * net.decoder(F.softmax(flat, -1))).reshape(*logtheta.shape[:-1], V)

    def draw(xp, num, g):
        loc, scale = net.encoder(xp)
        return mean(loc + scale * randn((num, *loc.shape), g, loc))

    def reference(x0):
        return mean(net.encoder(x0)[0])

    def log_lik(x_enc, x_clean):
        probs = reference(x_enc) / net.total_count
        return dist.Multinomial(net.total_count, probs).log_prob(x_clean)

    def neg_elbo(x_enc, target, num, g):
        loc, scale = net.encoder(x_enc)
        lt = loc + scale * randn((num, *loc.shape), g, loc)
        probs = mean(lt) / net.total_count
        log_q = dist.Normal(loc, scale).log_prob(lt).sum(-1)
        log_p = dist.Normal(0.0, 1.0).log_prob(lt).sum(-1) + dist.Multinomial(
            net.total_count, probs
        ).log_prob(target)
        return log_q - log_p

    return Client(
        name="prodlda",
        model=net.model,
        guide=net.guide,
        x=x,
        draw=draw,
        reference=reference,
        encode=net.encoder,
        neg_elbo=neg_elbo,
        log_lik=log_lik,
        latent_site="logtheta",
        obs_site="obs",
        box=(0.0, 16.0),
        obs_event=(V,),
        target=(digits(1, offset=1790)[0] * 16).round().reshape(V),
        modules=(net,),
        r=8.0,
        eps=1.0,
    )
