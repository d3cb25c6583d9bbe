r"""Batched predictive sampling of reconstruction distances (THEORY.md section 1).

For inputs :math:`x`, perturbations :math:`\delta` and encoder noise :math:`\eta \sim N(0, I)`,

.. math::

    \Delta(x, \delta) = g\big(\mu(x+\delta) + \eta \odot \sigma(x+\delta)\big) - \mathrm{ref}(x),

with :math:`\mathrm{ref}(x) = g(\mu(x))` (``reference="mean"``, [1]_) or
:math:`g(\mu(x) + \eta' \odot \sigma(x))` for an independent :math:`\eta'` (``"sample"``, [2]_).
:math:`\mu, \sigma` are read from the guide and :math:`g` from the model through the site
protocol (:func:`pyrobust.models.guide_loc_scale`, :func:`pyrobust.models.model_mean`), so any
Pyro model/guide pair works. All samples, inputs and perturbations go through the model as one
batch (the sample dims are folded into the data plate, as ``Predictive(parallel=True)`` does),
chunked over samples so at most ``max_batch`` latent codes are decoded per model call.

Stable private API (used by ``query``, ``margin``, ``attacks`` and ``empirical``):

* :func:`resolve_seed` ``(seed) -> int`` and :func:`make_generator` ``(seed, device)``
* :func:`encoder_stats` ``(guide, x, *, latent_site="z") -> (loc, scale)``
* :func:`sample_distances` ``(model, guide, x, delta=None, *, num_samples, reference="mean",
  generator=None, max_batch=DEFAULT_MAX_BATCH, latent_site="z", obs_site="x") -> Tensor``
  of shape ``(num_samples, n_inputs, *perturbation_shape)``
* :func:`random_perturbations` ``(x, eps, family, *, generator=None) -> Tensor`` of shape
  ``(len(eps), *x.shape)``
* :func:`event_dims` ``(event_ndim) -> tuple[str, ...]``: ArviZ dim names of one input

References
----------
.. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of the
   Robustness of Variational Autoencoders*. AISTATS 2021.
.. [2] Barrett, Camuto, Willetts, Rainforth. *Certifiably Robust Variational Autoencoders*.
   AISTATS 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch

from pyrobust.models.sites import guide_loc_scale, model_mean

__all__ = [
    "DEFAULT_MAX_BATCH",
    "FAMILIES",
    "REFERENCES",
    "encoder_stats",
    "event_dims",
    "make_generator",
    "random_perturbations",
    "resolve_seed",
    "sample_distances",
]

#: Default cap on the number of latent codes decoded in one model call.
DEFAULT_MAX_BATCH = 16384
#: Reference conventions for the distance.
REFERENCES = ("mean", "sample")
#: Random perturbation families for robustness curves.
FAMILIES = ("gaussian", "sphere", "linf")


def resolve_seed(seed: int | None) -> int:
    """``seed`` itself, or with ``None`` a seed drawn from torch's global generator.

    Drawing from the global generator keeps ``pyro.set_rng_seed`` effective; functions store the
    resolved seed in their result attrs so any call can be repeated exactly.
    """
    return int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A local ``torch.Generator`` on ``device`` seeded with :func:`resolve_seed` ``(seed)``."""
    return torch.Generator(device=torch.device(device)).manual_seed(resolve_seed(seed))


def encoder_stats(
    guide: Callable, x: torch.Tensor, *, latent_site: str = "z"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Encoder mean and standard deviation :math:`(\mu(x), \sigma(x))`, each ``(n, d_z)``.

    A thin alias of :func:`pyrobust.models.guide_loc_scale` (one trace of the guide).
    """
    return guide_loc_scale(guide, x, latent_site=latent_site)


def event_dims(event_ndim: int) -> tuple[str, ...]:
    """ArviZ dim names of one input: ``feature``; ``row, col``; ``channel, row, col``."""
    names = {0: (), 1: ("feature",), 2: ("row", "col"), 3: ("channel", "row", "col")}
    return names.get(event_ndim, tuple(f"event_dim_{i}" for i in range(event_ndim)))


def random_perturbations(
    x: torch.Tensor,
    eps: torch.Tensor,
    family: str,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Random perturbations of sizes ``eps``, one random direction per input shared over ``eps``.

    With :math:`d` the number of entries of one input and :math:`u` the direction,

    * ``"gaussian"``: :math:`u \sim N(0, I_d / d)`, so :math:`E\|\epsilon u\|_2^2 = \epsilon^2`;
    * ``"sphere"``: :math:`u` uniform on the unit :math:`\ell_2` sphere,
      :math:`\|\epsilon u\|_2 = \epsilon` exactly;
    * ``"linf"``: :math:`u` uniform in :math:`[-1, 1]^d`, so :math:`\epsilon u` is uniform in the
      :math:`\ell_\infty` ball of radius :math:`\epsilon`.

    Sharing the direction over the grid makes a curve over ``eps`` a ray, not independent noise.

    Parameters
    ----------
    x : torch.Tensor
        Inputs ``(n, *event)``.
    eps : torch.Tensor
        1-D tensor of sizes.
    family : {"gaussian", "sphere", "linf"}
    generator : torch.Generator, optional
        On ``x``'s device.

    Returns
    -------
    torch.Tensor
        ``(len(eps), *x.shape)`` on ``x``'s device.
    """
    n, d = x.shape[0], math.prod(x.shape[1:])
    kw = {"generator": generator, "device": x.device, "dtype": x.dtype}
    if family == "linf":
        u = torch.rand(n, d, **kw).mul_(2).sub_(1)
    else:
        u = torch.randn(n, d, **kw)
        if family == "sphere":
            u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        else:
            u = u / math.sqrt(d)
    eps = eps.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1)
    return (eps * u).reshape(-1, *x.shape)


def sample_distances(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    delta: torch.Tensor | None = None,
    *,
    num_samples: int,
    reference: str = "mean",
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    latent_site: str = "z",
    obs_site: str = "x",
) -> torch.Tensor:
    r"""Monte-Carlo draws of :math:`\|\Delta(x, \delta)\|_2`, the l2 norm over all event dims.

    Inputs are not validated here (callers validate at their public boundary); Pyro validation
    is switched off while decoding. Differentiable with respect to ``x`` and ``delta`` (attacks
    use it with gradients); wrap in ``torch.no_grad()`` when only the values are needed.

    Parameters
    ----------
    model, guide : callable
        Pyro model and guide following the site protocol.
    x : torch.Tensor
        Inputs ``(n, *event)``.
    delta : torch.Tensor, optional
        Perturbations of shape ``(*perturbation_shape, n, *event)`` (``()`` leading dims for one
        perturbation per input). ``None`` means :math:`\delta = 0`.
    num_samples : int
        Draws of the encoder noise :math:`\eta` per input. The same :math:`\eta` is used for
        every perturbation of an input (common random numbers: curves over perturbations are
        smooth), independent across inputs.
    reference : {"mean", "sample"}
        :math:`g(\mu(x))` or an independent draw :math:`g(\mu(x) + \eta'\sigma(x))`.
    generator : torch.Generator, optional
        Source of :math:`\eta` (on ``x``'s device); all noise is drawn up front, so the result
        does not depend on ``max_batch``.
    max_batch : int
        Most latent codes decoded per model call (and most inputs per guide call); sample
        chunks hold ``max(1, max_batch // codes_per_sample)`` samples.
    latent_site, obs_site : str
        Site names.

    Returns
    -------
    torch.Tensor
        Distances of shape ``(num_samples, n, *perturbation_shape)`` on ``x``'s device.
    """
    n, event = x.shape[0], tuple(x.shape[1:])
    if delta is None:
        pert_shape: tuple[int, ...] = ()
        x_all = x
    else:
        pert_shape = tuple(delta.shape[: delta.dim() - x.dim()])
        x_all = torch.cat([x, (x + delta).reshape(-1, *event)])
    n_pert = math.prod(pert_shape)
    stats = [
        guide_loc_scale(guide, xc, latent_site=latent_site) for xc in x_all.split(int(max_batch))
    ]
    loc_all = torch.cat([loc for loc, _ in stats]) if len(stats) > 1 else stats[0][0]
    scale_all = torch.cat([scale for _, scale in stats]) if len(stats) > 1 else stats[0][1]
    d_z = loc_all.shape[-1]
    loc0, scale0 = loc_all[:n], scale_all[:n]
    loc = loc_all[-n_pert * n :].reshape(n_pert, n, d_z)
    scale = scale_all[-n_pert * n :].reshape(n_pert, n, d_z)
    x_pert = x_all[-n_pert * n :]

    sample_ref = reference == "sample"
    kw = {"generator": generator, "device": x.device, "dtype": loc_all.dtype}
    eta = torch.randn(num_samples, 2 if sample_ref else 1, n, d_z, **kw)
    codes_per_sample = n * (n_pert + (1 if sample_ref else 0))
    chunk = min(num_samples, max(1, int(max_batch) // codes_per_sample))
    size = math.prod(event)

    with pyro.validation_enabled(False):
        if sample_ref:
            x_dec = torch.cat([x_pert, x])
        else:
            x_dec = x_pert
            ref = model_mean(
                model, x, loc0.unsqueeze(0), latent_site=latent_site, obs_site=obs_site
            )
            ref = ref.reshape(1, 1, n, size)
        # The inputs repeated for a full chunk, built once: the model sees every code's own
        # input row in its data plate (what model_mean does per call, without a copy per chunk).
        x_rep = x_dec.expand(chunk, *x_dec.shape).reshape(chunk * x_dec.shape[0], *event)
        # Without autograd, differences go to one reused buffer (no allocation per chunk).
        reuse, buf = not torch.is_grad_enabled(), None
        out = []
        for start in range(0, num_samples, chunk):
            e = eta[start : start + chunk]
            s = e.shape[0]
            z = loc + e[:, :1] * scale  # (s, n_pert, n, d_z)
            z = z.reshape(s, n_pert * n, d_z)
            if sample_ref:
                z = torch.cat([z, loc0 + e[:, 1] * scale0], dim=1)
            rows = s * z.shape[1]
            g = model_mean(
                model,
                x_rep[:rows],
                z.reshape(rows, d_z),
                latent_site=latent_site,
                obs_site=obs_site,
            )
            g = g.reshape(s, -1, n, size)
            if sample_ref:
                g, ref = g[:, :n_pert], g[:, n_pert:]
            if reuse:
                if buf is None:
                    buf = g.new_empty(chunk, n_pert, n, size)
                diff = torch.sub(g, ref, out=buf[:s])
            else:
                diff = g - ref
            out.append(torch.linalg.vector_norm(diff, dim=-1))  # (s, n_pert, n)
    dist = torch.cat(out) if len(out) > 1 else out[0]
    return dist.reshape(num_samples, *pert_shape, n).movedim(-1, 1)
