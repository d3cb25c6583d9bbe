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
* :func:`sample_distances` ``(pair, x, delta=None, *, num_samples, reference="mean",
  generator=None, max_batch=DEFAULT_MAX_BATCH) -> Tensor`` of shape
  ``(num_samples, n_inputs, *perturbation_shape)``
* :func:`joint_rng` ``(pair, generator, device)``: seeds the guide's extra sites
* :func:`check_finite_distances` ``(dist, obs_site)``
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

import contextlib
import math

import pyro
import torch

from pyrobust.models.sites import Pair, _event_dims, _output_dims, seeded_rng

__all__ = [
    "DEFAULT_MAX_BATCH",
    "FAMILIES",
    "REFERENCES",
    "build_pair",
    "check_finite_distances",
    "event_dims",
    "joint_rng",
    "make_generator",
    "output_dims",
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


def event_dims(event_ndim: int) -> tuple[str, ...]:
    """ArviZ dim names of one input: ``feature``; ``row, col``; ``channel, row, col``."""
    return _event_dims(event_ndim)


def output_dims(
    obs_event: tuple[int, ...], x_event: tuple[int, ...], obs_site: str
) -> tuple[str, ...]:
    """ArviZ dim names of one value of the observed site.

    The input's names (``feature``; ``row, col``; ``channel, row, col``) when the observed
    site has the input's shape or a different rank; prefixed with the site's name
    (``x_feature``) when a name would clash with an input dim of another size.
    """
    return _output_dims(obs_event, x_event, obs_site)


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


def build_pair(model, guide, x, model_args, model_kwargs, latent_site, obs_site) -> Pair:
    """:meth:`Pair.build` after checking the site names: every query's first step."""
    from pyrobust.robustness._validation import check_site_name

    return Pair.build(
        model,
        guide,
        x,
        model_args=model_args,
        model_kwargs=model_kwargs,
        latent_site=check_site_name(latent_site, "latent_site"),
        obs_site=check_site_name(obs_site, "obs_site"),
    )


def joint_rng(pair: Pair, generator: torch.Generator | None, device: torch.device):
    """A context seeding torch's global RNG from ``generator`` for the guide's extra sites.

    Extra latent sites (discrete or continuous) are sampled by Pyro from torch's global
    generator; seeding it from the local one (inside ``torch.random.fork_rng``, so the caller's
    state is untouched) keeps "same seed, same bits". A no-op when the guide has no extra sites.
    """
    if pair.fast or generator is None:
        return contextlib.nullcontext()
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device).item())
    return seeded_rng(seed, device)


def check_finite_distances(dist: torch.Tensor, obs_site: str, n_inputs: int | None = None) -> None:
    """Refuse NaN/inf distances by naming the inputs (a NaN must never count as inside).

    ``dist`` is ``(S, rows, ...)``; row ``i`` belongs to input ``i % n_inputs`` (folded
    restarts and grids repeat the inputs).
    """
    bad = ~torch.isfinite(dist)
    if bool(bad.any()):
        inputs = bad.reshape(bad.shape[0], bad.shape[1], -1).any(-1).any(0)
        rows = torch.nonzero(inputs).flatten().tolist()
        ids = sorted({i % (n_inputs or len(inputs)) for i in rows})
        raise ValueError(
            f"The reconstruction (mean of the model's observed site {obs_site!r}) is NaN or "
            f"infinite for input(s) obs_id={ids[:20]}{' ...' if len(ids) > 20 else ''}: the "
            "distance to the reference is undefined there, so no probability can be given. "
            "Check the weights for NaN and use a likelihood whose mean is finite (a Cauchy's "
            "is not)."
        )


def _copy_rows(x: torch.Tensor, reps: int) -> torch.Tensor:
    return x.expand(reps, *x.shape).reshape(reps * x.shape[0], *x.shape[1:])


def sample_distances(
    pair: Pair,
    x: torch.Tensor,
    delta: torch.Tensor | None = None,
    *,
    num_samples: int,
    reference: str = "mean",
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    check: bool = True,
    return_sites: dict[str, list] | None = None,
    ref: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Monte-Carlo draws of :math:`\|\Delta(x, \delta)\|_2` over the observed site's event dims.

    Inputs are not validated here (callers validate at their public boundary); Pyro validation
    is switched off while decoding. Differentiable with respect to ``x`` and ``delta`` (attacks
    use it with gradients); wrap in ``torch.no_grad()`` when only the values are needed.

    For a guide with the latent site only (``pair.fast``), :math:`\mu, \sigma` are computed once
    per input and every draw is decoded; otherwise every draw runs the guide at its input
    (all guide sites drawn jointly, the latent site as ``loc + eta * scale``) and the model
    replays them, as ``pyro.infer.Predictive(model, guide=guide)`` does.

    Parameters
    ----------
    pair : Pair
        The model/guide pair (:meth:`pyrobust.models.sites.Pair.build`).
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
        :math:`g(\mu(x))` (extra sites at their mean/mode) or an independent joint draw.
    generator : torch.Generator, optional
        Source of :math:`\eta` (on ``x``'s device); all latent noise is drawn up front, so the
        fast path does not depend on ``max_batch``.
    max_batch : int
        Most latent codes decoded per model call (and most inputs per guide call).
    check : bool
        Refuse non-finite distances by naming the inputs.
    ref : torch.Tensor, optional
        The reference :math:`g(\mu(x))` ``(n, *obs_event)`` when the caller has it already
        (``reference="mean"`` only); computed otherwise.
    return_sites : dict, optional
        ``{site: []}`` for guide latent sites whose draws at the perturbed inputs to keep:
        each value is replaced by a tensor ``(num_samples, n, *perturbation_shape, *site)``.

    Returns
    -------
    torch.Tensor
        Distances of shape ``(num_samples, n, *perturbation_shape)`` on ``x``'s device.
    """
    n, event = x.shape[0], tuple(x.shape[1:])
    if delta is None:
        pert_shape: tuple[int, ...] = ()
        x_pert = x
    else:
        pert_shape = tuple(delta.shape[: delta.dim() - x.dim()])
        x_pert = (x + delta).reshape(-1, *event)
    n_pert = math.prod(pert_shape)
    sample_ref = reference == "sample"
    d_z = pair.d_z
    dtype = x.dtype
    blocks = max(1, int(max_batch) // n)  # whole blocks of n rows keep per-input args aligned

    with pyro.validation_enabled(False), joint_rng(pair, generator, x.device):
        if pair.fast:
            x_enc = torch.cat([x, x_pert]) if sample_ref else x_pert
            stats = [pair.encode(xc) for xc in x_enc.split(blocks * n)]
            loc_all = torch.cat([s[0] for s in stats]) if len(stats) > 1 else stats[0][0]
            scale_all = torch.cat([s[1] for s in stats]) if len(stats) > 1 else stats[0][1]
            dtype = loc_all.dtype
            loc = loc_all[-n_pert * n :].reshape(n_pert, n, d_z)
            scale = scale_all[-n_pert * n :].reshape(n_pert, n, d_z)
            if sample_ref:
                loc0, scale0 = loc_all[:n], scale_all[:n]
        kw = {"generator": generator, "device": x.device, "dtype": dtype}
        eta = torch.randn(num_samples, 2 if sample_ref else 1, n, d_z, **kw)
        codes_per_sample = n * (n_pert + (1 if sample_ref else 0))
        chunk = min(num_samples, max(1, int(max_batch) // codes_per_sample))
        if sample_ref:
            x_dec = torch.cat([x_pert, x])
        else:
            x_dec = x_pert
            ref = (pair.centre(x) if ref is None else ref).reshape(1, 1, n, -1)
        # The inputs repeated for a full chunk, built once: the model sees every code's own
        # input row in its data plate (what model_mean does per call, without a copy per chunk).
        x_rep = pair.rows_like(x_dec, chunk) if pair.fast else _copy_rows(x_dec, chunk)
        # Without autograd, differences go to one reused buffer (no allocation per chunk).
        reuse, buf = not torch.is_grad_enabled(), None
        out = []
        for start in range(0, num_samples, chunk):
            e = eta[start : start + chunk]
            s = e.shape[0]
            rows = s * x_dec.shape[0]
            drawn: dict[str, torch.Tensor] = {}
            if pair.fast:
                z = (loc + e[:, :1] * scale).reshape(s, n_pert * n, d_z)
                if sample_ref:
                    z = torch.cat([z, loc0 + e[:, 1] * scale0], dim=1)
                drawn[pair.latent_site] = z.reshape(rows, d_z)
                g = pair.decode(x_rep[:rows], drawn)
            else:
                e_rows = e[:, :1].expand(s, n_pert, n, d_z).reshape(s, n_pert * n, d_z)
                if sample_ref:
                    e_rows = torch.cat([e_rows, e[:, 1]], dim=1)
                g = pair.reconstruct(x_rep[:rows], e_rows.reshape(rows, d_z), drawn)
            for name in return_sites or ():
                v = drawn[name].reshape(s, -1, *drawn[name].shape[1:])[:, : n_pert * n]
                return_sites[name].append(v.detach())
            g = g.reshape(s, -1, n, math.prod(g.shape[1:]))
            if sample_ref:
                g, ref = g[:, :n_pert], g[:, n_pert:]
            if reuse:
                if buf is None or buf.shape[-1] != g.shape[-1]:
                    buf = g.new_empty(chunk, n_pert, n, g.shape[-1])
                diff = torch.sub(g, ref, out=buf[:s])
            else:
                diff = g - ref
            out.append(torch.linalg.vector_norm(diff, dim=-1))  # (s, n_pert, n)
    dist = torch.cat(out) if len(out) > 1 else out[0]
    dist = dist.reshape(num_samples, *pert_shape, n).movedim(-1, 1)
    for name in return_sites or ():
        v = torch.cat(return_sites[name])  # (S, n_pert * n, *site)
        v = v.reshape(num_samples, *pert_shape, n, *v.shape[2:])
        return_sites[name] = v.movedim(len(pert_shape) + 1, 1)
    if check:
        check_finite_distances(dist.detach(), pair.obs_site, pair.n)
    return dist
