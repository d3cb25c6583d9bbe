"""What every client of the zoo hands to the tests, and the independent computations.

A *client* is a Pyro VAE re-typed from a public source (each in its own module of this package).
Besides its ``model`` and ``guide`` it exposes plain-torch functions that call its nets
directly, never through Pyro or pyrobust:

* ``draw(x, num, gen)``: ``num`` reconstructions per input, every guide site drawn jointly from
  the guide's nets at ``x`` (discrete sites too), shape ``(num, n, *obs_event)``;
* ``reference(x)``: :math:`g` with every guide site at its documented reference value (the
  latent site at the encoder mean; other continuous sites at their guide mean, discrete ones at
  their mode), shape ``(n, *obs_event)``;
* ``encode(x)``: :math:`(\\mu(x), \\sigma(x))` of the latent site (differentiable in ``x``);
* ``log_lik(x_enc, x_clean)``: :math:`\\log p(x_{obs} \\mid w)` with every guide site at its
  reference value at ``x_enc`` and the observed value of the clean input, shape ``(n,)``;
* ``neg_elbo(x_enc, target, num, gen)``: per-draw terms of
  :math:`\\log q(\\cdot|x_{enc}) - \\log p(\\cdot, x_t)` (full guide and full model log joint),
  shape ``(num, n)``, whose mean over draws is :math:`-\\mathrm{ELBO}(x_t; q(\\cdot|x_{enc}))`.

The helpers below turn those into the numbers every query must agree with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Client:
    """A Pyro VAE of the zoo with its independent plain-torch counterparts."""

    name: str
    model: Callable
    guide: Callable
    x: torch.Tensor
    draw: Callable
    reference: Callable
    encode: Callable
    neg_elbo: Callable | None = None
    log_lik: Callable | None = None
    model_args: tuple = ()
    model_kwargs: dict = field(default_factory=dict)
    latent_site: str = "z"
    obs_site: str = "x"
    other_sites: tuple[str, ...] = ()
    box: tuple[float, float] | None = (0.0, 1.0)
    obs_event: tuple[int, ...] = ()
    target: torch.Tensor | None = None  # an output_attack target, in the observed site's shape
    modules: tuple[nn.Module, ...] = ()
    r: float = 1.0  # a radius at which p_r is neither 0 nor 1 on ``x``
    eps: float = 0.5  # an l2 perturbation size that moves the answers
    extras: dict = field(default_factory=dict)  # client-specific handles (nets)

    @property
    def sites(self) -> dict:
        """The site-protocol keyword arguments of every query."""
        kw = {"latent_site": self.latent_site, "obs_site": self.obs_site}
        if self.model_args:
            kw["model_args"] = self.model_args
        if self.model_kwargs:
            kw["model_kwargs"] = self.model_kwargs
        return kw


def fold(t: torch.Tensor, num: int) -> torch.Tensor:
    """``(n, ...) -> (num * n, ...)``: ``num`` copies stacked along the first dim."""
    return t.unsqueeze(0).expand(num, *t.shape).reshape(num * t.shape[0], *t.shape[1:])


@contextlib.contextmanager
def eval_mode(modules):
    """Switch modules to eval for the independent computation; restore their flags after."""
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.train(flag)


def distances(client: Client, x, delta=None, *, num: int = 4000, seed: int = 12345):
    r"""Independent draws of :math:`\|\Delta(x, \delta)\|`, shape ``(num, n)`` (reference "mean")."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), eval_mode(client.modules):
        xp = x if delta is None else x + delta
        recon = client.draw(xp, num, gen)
        ref = client.reference(x)
        return (recon - ref).reshape(num, x.shape[0], -1).norm(dim=-1)


def probability(client: Client, x, r, delta=None, *, num: int = 4000, seed: int = 12345):
    """Independent Monte-Carlo estimate of :math:`p_r(x, \\delta)`, shape ``(n,)``."""
    return (distances(client, x, delta, num=num, seed=seed) <= r).double().mean(0)


def assert_binomial_close(p1, n1: int, p2, n2: int, *, z: float = 4.5):
    """Two Monte-Carlo probabilities agree within ``z`` standard errors of their difference."""
    p1 = torch.as_tensor(p1, dtype=torch.float64).reshape(-1)
    p2 = torch.as_tensor(p2, dtype=torch.float64).reshape(-1)
    pbar = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = (pbar * (1 - pbar) * (1 / n1 + 1 / n2)).sqrt()
    tol = z * se + 1.5 / min(n1, n2)
    bad = (p1 - p2).abs() > tol
    assert not bool(bad.any()), f"p {p1.tolist()} vs {p2.tolist()} (tolerance {tol.tolist()})"


def mean_damage(client: Client, x, delta, *, num: int = 4000, seed: int = 999):
    r"""Independent :math:`E_\eta\|g(\mu(x+d)+\eta\sigma(x+d)) - g(\mu(x))\|` and the
    standard deviation of one draw (for Monte-Carlo tolerances)."""
    d = distances(client, x, delta, num=num, seed=seed)
    return d.mean(0), d.std(0)


def jacobian(client: Client, x):
    """Per-input Jacobian of the encoder mean by ``torch.autograd.functional.jacobian``,
    shape ``(n, d_z, *x.shape[1:])``; and the encoder scale ``(n, d_z)``."""
    with eval_mode(client.modules):
        rows = []
        for i in range(x.shape[0]):

            def loc_i(xi, i=i):
                xs = torch.cat([x[:i], xi.unsqueeze(0), x[i + 1 :]])
                return client.encode(xs)[0][i]

            rows.append(torch.autograd.functional.jacobian(loc_i, x[i]))
        with torch.no_grad():
            _, scale = client.encode(x)
    return torch.stack(rows), scale


def neg_elbo(client: Client, x_enc, target, *, num: int = 4000, seed: int = 777):
    """Independent :math:`-\\mathrm{ELBO}(x_t; q(\\cdot|x_{enc}))` per input and the standard
    deviation of one draw (for Monte-Carlo tolerances)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad(), eval_mode(client.modules):
        terms = client.neg_elbo(x_enc, target, num, gen)
    return terms.mean(0), terms.std(0)


def gauss_kl(loc, scale, loc_t, scale_t):
    """KL(N(loc, scale^2) || N(loc_t, scale_t^2)) summed over the last dim, by hand."""
    ratio = scale / scale_t
    return (0.5 * (ratio**2 + ((loc - loc_t) / scale_t) ** 2 - 1) - ratio.log()).sum(-1)


def randn(shape, gen, like):
    return torch.randn(shape, generator=gen, dtype=like.dtype).to(like.device)


def log_likelihoods(client: Client, x, delta):
    """Independent :math:`\\log p(x_{obs}|w)` at the clean and at the perturbed input's guide
    centre (the observed value always that of the clean input), each ``(n,)``."""
    with torch.no_grad(), eval_mode(client.modules):
        return client.log_lik(x, x), client.log_lik(x + delta, x)
