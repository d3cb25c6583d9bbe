r"""The site protocol: how any Pyro VAE plugs into pyrobust.

A VAE is a pair of Pyro callables ``model(x)`` and ``guide(x)``:

* the guide samples a **latent site** (default ``"z"``) from a diagonal Normal,
  ``dist.Normal(loc, scale).to_event(1)``, inside a data plate;
* the model samples the same latent site from its prior and an **observed site**
  (default ``"x"``) whose distribution's ``.mean`` is the deterministic reconstruction
  :math:`g(z)` of [1]_.

:func:`guide_loc_scale` reads :math:`\mu(x), \sigma(x)` from a trace of the guide, and
:func:`model_mean` reads :math:`g(z)` from a trace of the model with the latent site
conditioned on given values. Every robustness function is built on these two, so a
hand-written model works with no wrapper class.

References
----------
.. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
   the Robustness of Variational Autoencoders*. AISTATS 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

__all__ = ["guide_loc_scale", "model_mean"]


def _sample_sites(trace) -> list[str]:
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not isinstance(s["fn"], _Subsample)
    ]


def _get_site(trace, name: str, role: str, arg: str, owner: str) -> dict:
    site = trace.nodes.get(name)
    if site is None or site["type"] != "sample" or isinstance(site["fn"], _Subsample):
        raise ValueError(
            f"{owner} has no sample site named {name!r} ({role}); its sample sites are "
            f"{_sample_sites(trace)}. Pass the right name with `{arg}=`."
        )
    return site


def _diag_normal(fn, latent_site: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = fn
    while isinstance(base, (dist.Independent, dist.MaskedDistribution)) or (
        isinstance(base, torch.distributions.Independent)
    ):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        raise ValueError(
            f"The guide's latent site {latent_site!r} must be a diagonal Normal, "
            f"dist.Normal(loc, scale).to_event(1); found {type(fn).__name__} "
            f"(base distribution {type(base).__name__}). pyrobust needs the encoder mean and "
            "standard deviation; rewrite the guide's latent site as a diagonal Normal."
        )
    loc, scale = torch.broadcast_tensors(base.loc, base.scale)
    return loc, scale


def guide_loc_scale(
    guide: Callable, x: torch.Tensor, *, latent_site: str = "z"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Encoder statistics :math:`(\mu(x), \sigma(x))` read from a trace of ``guide(x)``.

    Parameters
    ----------
    guide : callable
        A Pyro guide whose latent site is ``dist.Normal(loc, scale).to_event(1)``.
    x : torch.Tensor
        A batch of inputs, shaped as the guide expects (leading dim = data).
    latent_site : str, default "z"
        Name of the latent sample site.

    Returns
    -------
    loc, scale : torch.Tensor
        Tensors of shape ``(batch, d_z)``, differentiable with respect to ``x``.

    Raises
    ------
    ValueError
        If the guide has no site ``latent_site`` or it is not a diagonal Normal.
    """
    trace = poutine.trace(guide).get_trace(x)
    site = _get_site(trace, latent_site, "the latent site", "latent_site", "The guide")
    return _diag_normal(site["fn"], latent_site)


def model_mean(
    model: Callable,
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    latent_site: str = "z",
    obs_site: str = "x",
) -> torch.Tensor:
    r"""The reconstruction :math:`g(z)`: the mean of the model's observed site given ``z``.

    The model is run on ``x`` with the latent site conditioned on ``z``; the observed site's
    distribution ``.mean`` is returned (never a sample: sampling costs 3x and is noise the
    robustness definitions do not include).

    Parameters
    ----------
    model : callable
        A Pyro model with a latent site and an observed site.
    x : torch.Tensor
        Inputs of shape ``(batch, *event)``; only their shape and the observed value matter.
    z : torch.Tensor
        Latent codes of shape ``(*sample, batch, d_z)``. Leading sample dims are folded into
        the data dim, so a model written for a single batch dim works unchanged.
    latent_site, obs_site : str
        Site names.

    Returns
    -------
    torch.Tensor
        :math:`g(z)` of shape ``(*sample, batch, *event)``, differentiable with respect to ``z``.
    """
    batch = x.shape[0]
    if z.dim() < 2 or z.shape[-2] != batch:
        raise ValueError(
            f"z must have shape (*sample, batch={batch}, d_z) to match x of shape "
            f"{tuple(x.shape)}; got {tuple(z.shape)}."
        )
    sample_shape = z.shape[:-2]
    n = math.prod(sample_shape)
    if n == 1:
        x_rep, z_flat = x, z.reshape(batch, z.shape[-1])
    else:
        x_rep = x.unsqueeze(0).expand(n, *x.shape).reshape(n * batch, *x.shape[1:])
        z_flat = z.reshape(n * batch, z.shape[-1])
    conditioned = poutine.condition(model, data={latent_site: z_flat})
    trace = poutine.trace(conditioned).get_trace(x_rep)
    _get_site(trace, latent_site, "the latent site", "latent_site", "The model")
    site = _get_site(trace, obs_site, "the observed site", "obs_site", "The model")
    try:
        mean = site["fn"].mean
    except NotImplementedError as err:
        raise ValueError(
            f"The model's observed site {obs_site!r} has distribution "
            f"{type(site['fn']).__name__}, whose mean is not implemented; pyrobust reads the "
            "reconstruction g(z) as that mean. Use a likelihood with a mean."
        ) from err
    event = x.shape[1:]
    if event and tuple(mean.shape[-len(event) :]) != tuple(event):
        raise ValueError(
            f"The mean of observed site {obs_site!r} has shape {tuple(mean.shape)}, which does "
            f"not end in the input's event shape {tuple(event)}."
        )
    mean = mean.expand(n * batch, *event) if mean.shape[0] != n * batch else mean
    return mean.reshape(*sample_shape, batch, *event)
