r"""Write your own VAE in plain Pyro and ask pyrobust about it.

pyrobust needs no wrapper class: any pair of Pyro callables ``model(x)`` and ``guide(x)``
follows its *site protocol* when

* the guide samples a latent site (here ``"z"``) from a diagonal Normal,
  ``dist.Normal(loc, scale).to_event(1)``, inside a ``pyro.plate("data", ...)``;
* the model samples the same site from its prior and an observed site (here ``"x"``) whose
  distribution's ``.mean`` is the reconstruction :math:`g(z)`.

This script writes such a VAE from scratch (two small ``nn.Module`` nets, a ``model`` and a
``guide`` function, a continuous-Bernoulli likelihood), trains it briefly on scikit-learn's
8x8 digits, then reads its encoder statistics :math:`(\mu(x), \sigma(x))` and its
reconstructions :math:`g(\mu(x))` through :func:`pyrobust.models.guide_loc_scale` and
:func:`pyrobust.models.model_mean`, the two helpers every robustness query is built on.

Run ``python examples/custom_vae.py --steps 1500``.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, TraceMeanField_ELBO
from sklearn.datasets import load_digits
from torch import nn

import pyrobust as pr
from pyrobust.models import guide_loc_scale, model_mean


class Encoder(nn.Module):
    """x -> (loc, scale) of q(z | x); scale = softplus + a floor, so always positive."""

    def __init__(self, d_x: int, d_z: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(d_x, hidden)
        self.loc = nn.Linear(hidden, d_z)
        self.scale = nn.Linear(hidden, d_z)

    def forward(self, x):
        h = F.relu(self.fc(x))
        return self.loc(h), F.softplus(self.scale(h)) + 1e-3


class Decoder(nn.Module):
    """z -> logits of the continuous Bernoulli likelihood."""

    def __init__(self, d_z: int, d_x: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(d_z, hidden)
        self.out = nn.Linear(hidden, d_x)

    def forward(self, z):
        return self.out(F.relu(self.fc(z)))


def make_vae(d_x: int, d_z: int, hidden: int):
    """A VAE as two plain Pyro functions (and the nets they close over)."""
    encoder, decoder = Encoder(d_x, d_z, hidden), Decoder(d_z, d_x, hidden)

    def model(x, size=None):
        pyro.module("decoder", decoder)
        # size = dataset size N: a minibatch of B inputs is scaled by N / B.
        with pyro.plate("data", size or len(x), subsample=x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), d_z), 1.0).to_event(1))
            # The observed site's .mean is the reconstruction g(z) that pyrobust reads.
            pyro.sample("x", dist.ContinuousBernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x, size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", size or len(x), subsample=x):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return model, guide, encoder, decoder


def load_data(num_test: int):
    """sklearn digits scaled to [0, 1]: (train, test) float tensors of shape (n, 64)."""
    x = torch.as_tensor(load_digits().data / 16.0, dtype=torch.float32)
    return x[:-num_test], x[-num_test:]


def train(model, guide, x, *, steps: int, batch_size: int, lr: float, seed: int):
    """Minibatch SVI; returns the per-input loss (-ELBO / N) of every step."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), TraceMeanField_ELBO())
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = x[torch.randint(len(x), (batch_size,), generator=g)]
        losses.append(svi.step(batch, size=len(x)) / len(x))
    return losses


def main(args):
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    x_train, x_test = load_data(args.num_test)
    model, guide, encoder, decoder = make_vae(x_train.shape[1], args.latent_dim, args.hidden)
    losses = train(
        model,
        guide,
        x_train,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )

    # The site protocol: encoder statistics from the guide, reconstructions from the model.
    with torch.no_grad():
        loc, scale = guide_loc_scale(guide, x_test)
        recon = model_mean(model, x_test, loc)  # g(mu(x)) for each test input
    rmse = (recon - x_test).pow(2).mean().sqrt().item()

    # Robustness queries take the hand-written pair as it is, like pyro.infer.Predictive.
    x_query = x_test[: args.num_query]
    robustness = pr.r_robustness(
        model, guide, x_query, r=args.r, num_samples=args.num_samples, seed=args.seed
    )
    margin = pr.margin_bound(
        model, guide, x_query, r=args.r, num_samples=args.num_samples, confidence=0.95,
        seed=args.seed,
    )  # fmt: skip
    rob = robustness["robustness"]

    print("| quantity | value |\n|---|---|")
    print(f"| SVI steps | {args.steps} |")
    print(f"| -ELBO per input, first / last step | {losses[0]:.2f} / {losses[-1]:.2f} |")
    print(f"| mean encoder std sigma(x) | {scale.mean().item():.3f} |")
    print(f"| reconstruction RMSE g(mu(x)) vs x | {rmse:.3f} |")
    print(f"| mean p(r-robust at r={args.r}) | {rob['probability'].mean().item():.3f} |")
    print(f"| mean margin bound (95%) | {margin['robustness']['bound'].mean().item():.3f} |")
    return {
        "robustness": robustness,
        "margin": margin,
        "model": model,
        "guide": guide,
        "encoder": encoder,
        "decoder": decoder,
        "x_test": x_test,
        "losses": losses,
        "loc": loc,
        "scale": scale,
        "recon": recon,
        "rmse": rmse,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="SVI steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--num-test", type=int, default=100, help="held-out inputs")
    parser.add_argument("--num-query", type=int, default=16, help="inputs to query")
    parser.add_argument("--r", type=float, default=0.5, help="radius of r-robustness")
    parser.add_argument("--num-samples", type=int, default=1000, help="encoder draws")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
