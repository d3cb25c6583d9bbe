r"""The importance-weighted log-likelihood bound (IWAE) of a Pyro model and guide."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

from pyrobust.inference._protocol import (
    _check_finite,
    _dtype_mismatch,
    _get_site,
    _model_dtype,
    _ModelArgs,
)
from pyrobust.models.sites import seeded_rng

__all__ = ["importance_log_likelihood"]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _per_row_log_prob(trace, rows: int, owner: str) -> torch.Tensor:
    """Sum the unscaled log-densities of every sample site per data row: shape ``(rows,)``."""
    total = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        lp = site["fn"].log_prob(site["value"])
        if site["mask"] is not None and site["mask"] is not True:
            lp = lp * site["mask"]
        dim = None
        for frame in site["cond_indep_stack"]:
            # a sizeless pyro.plate("data") has size -1: its length comes from broadcasting
            if frame.vectorized and frame.size in (rows, -1) and lp.dim() >= -frame.dim:
                if lp.shape[frame.dim] == rows:
                    dim = lp.dim() + frame.dim
                    break
        if dim is None or lp.shape[dim] != rows:
            raise ValueError(
                f"{owner}'s site {name!r} has log_prob of shape {tuple(lp.shape)}, with no data "
                f"plate of size {rows}; importance_log_likelihood needs every sample site "
                "inside the data plate (global latent variables have no per-input bound)."
            )
        lp = lp.movedim(dim, 0).reshape(rows, -1).sum(-1)
        total = lp if total is None else total + lp
    if total is None:
        raise ValueError(f"{owner} has no sample sites.")
    return total


def _fork_rng(seed: int | None, device: torch.device):
    """Seeded draws inside, the caller's generators untouched (none: the global stream)."""
    return contextlib.nullcontext() if seed is None else seeded_rng(seed, device)


def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int = 100,
    *,
    latent_site: str = "z",
    seed: int | None = None,
    max_batch: int | None = None,
    model_args=(),
    model_kwargs=None,
) -> torch.Tensor:
    r"""Importance-weighted lower bound on :math:`\log p(x)` per input (Burda et al. [1]_).

    .. math::
        \mathcal{L}_K(x) = \log \frac{1}{K} \sum_{k=1}^{K}
            \frac{p(x, z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x)

    :math:`E[\mathcal{L}_1(x)]` is the ELBO, :math:`E[\mathcal{L}_K(x)]` grows with :math:`K`
    and tends to :math:`\log p(x)`. The :math:`K` particles are folded into the data dim
    (inputs repeated :math:`K` times), so a model written for one batch dim works unchanged
    and all particles run in one pass (or in chunks of ``max_batch`` rows). Densities are
    unscaled: a subsampling plate's ``size`` does not enter.

    The model and guide are called as ``model(x, *model_args, **model_kwargs)``
    (:class:`pyro.infer.Predictive`'s convention); tensors in ``model_args`` /
    ``model_kwargs`` whose leading dim is ``len(x)`` are per input and are repeated with
    ``x`` for the particles, every other value passes through unchanged. A floating ``x``
    (and per-input floating tensors) is converted to the dtype of the parameters of the
    modules reachable from the model and guide (a bound method's owner and its
    attributes), so numpy's float64 inputs work with a float32 model; when no module is
    found and the dtypes clash, a ``TypeError`` names ``x``. Integer and bool inputs are
    converted to that dtype, or torch's default. NaN or infinite inputs are refused.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and guide following the site protocol; every sample site must be inside
        the data plate.
    x : torch.Tensor
        Inputs of shape ``(batch, *event)``.
    num_particles : int, default 100
        :math:`K`.
    latent_site : str, default "z"
        The latent site (checked to exist in the guide).
    seed : int, optional
        Seed for the draws; the global RNG state is left untouched when given.
    max_batch : int, optional
        Largest number of rows (particles x inputs) per pass; default all at once.
    model_args : tuple, default ()
        Extra positional arguments of the model and guide, after ``x``.
    model_kwargs : dict, optional
        Extra keyword arguments of the model and guide.

    Returns
    -------
    torch.Tensor
        :math:`\mathcal{L}_K(x)` of shape ``(batch,)``, on ``x``'s device, differentiable with
        respect to the parameters (wrap in ``torch.no_grad()`` for evaluation).

    References
    ----------
    .. [1] Burda, Grosse, Salakhutdinov. *Importance Weighted Autoencoders*. ICLR 2016.

    Examples
    --------
    >>> with torch.no_grad():  # doctest: +SKIP
    ...     ll = importance_log_likelihood(vae.model, vae.guide, x, num_particles=1000)
    """
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have a non-empty leading batch dim; got shape {tuple(x.shape)}.")
    if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
        raise TypeError(f"num_particles must be an int; got {num_particles!r}.")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1; got {num_particles}.")
    if max_batch is not None and (not isinstance(max_batch, numbers.Integral) or max_batch < 1):
        raise ValueError(f"max_batch must be a positive int or None; got {max_batch!r}.")
    if x.is_complex() or not (x.is_floating_point() or x.dtype in _INT_DTYPES):
        raise TypeError(f"x must hold real numbers; got dtype {x.dtype}.")
    dtype = _model_dtype(model, guide)
    if not x.is_floating_point():
        x = x.to(dtype or torch.get_default_dtype())
    elif dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    _check_finite(x, "x")
    batch = x.shape[0]
    args = _ModelArgs(model_args, model_kwargs, batch).to(x.device, dtype)
    chunk = num_particles if max_batch is None else max(1, int(max_batch) // batch)
    pieces = []
    with _fork_rng(seed, x.device):
        for start in range(0, num_particles, chunk):
            k = min(chunk, num_particles - start)
            rows = k * batch
            x_rep = x.unsqueeze(0).expand(k, *x.shape).reshape(rows, *x.shape[1:])
            a, kw = args.repeat(k)
            try:
                guide_trace = poutine.trace(guide).get_trace(x_rep, *a, **kw)
                if start == 0:
                    _get_site(
                        guide_trace, latent_site, "the latent site", "latent_site", "The guide"
                    )
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                    x_rep, *a, **kw
                )
            except RuntimeError as err:
                named = _dtype_mismatch(err, "x", x.dtype)
                if named is None:
                    raise
                raise named from err
            log_w = _per_row_log_prob(model_trace, rows, "The model") - _per_row_log_prob(
                guide_trace, rows, "The guide"
            )
            pieces.append(log_w.reshape(k, batch))
    log_w = torch.cat(pieces, 0)
    return torch.logsumexp(log_w, 0) - math.log(num_particles)
