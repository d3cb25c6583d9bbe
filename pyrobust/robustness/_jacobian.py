r"""The exact encoder-mean Jacobian :math:`J(x) = \partial\mu(x)/\partial x`, batched over inputs.

One forward pass of the guide over all inputs, then :math:`d_z` vector-Jacobian products run as a
single vmapped backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) with the
cotangents :math:`e_j` broadcast over inputs: the row :math:`j` of every input's Jacobian comes
out at once, because the encoder maps each input independently. No Python loop over inputs or
latent dims; the guide sees the same batch it would in training, so a guide written for a single
batch dim works unchanged. (Only if an operation's backward cannot be vmapped does it fall back to
``d_z`` backward passes, each still over all inputs.)

Assumes the encoder treats inputs independently (true for MLP/conv encoders, and for batch norm
in eval mode; not for batch norm in training mode, whose statistics couple the batch).

Stable private API:

* :func:`encoder_jacobian` ``(pair, x, *, max_batch=DEFAULT_MAX_BATCH)
  -> (loc, scale, jacobian)`` with ``jacobian`` of shape ``(n, d_z, *event)``.
"""

from __future__ import annotations

import torch

from pyrobust.models.sites import Pair
from pyrobust.robustness._sampling import DEFAULT_MAX_BATCH

__all__ = ["encoder_jacobian"]


def _chunk_jacobian(pair, x):
    latent_site = pair.latent_site
    xg = x.detach().requires_grad_(True)
    loc, scale = pair.encode(xg)
    # A path from x to loc, not merely a loc that requires grad (module parameters do).
    if (
        not loc.requires_grad
        or torch.autograd.grad(loc.sum(), xg, retain_graph=True, allow_unused=True)[0] is None
    ):
        raise ValueError(
            f"The encoder mean (loc of the guide's latent site {latent_site!r}) does not depend "
            "differentiably on x: it was computed without gradients (torch.no_grad, .detach(), "
            "or a non-tensor path). margin_bound needs d loc / d x; build loc from x with torch "
            "operations."
        )
    n, d_z = loc.shape
    cotangents = torch.eye(d_z, dtype=loc.dtype, device=loc.device).unsqueeze(1).expand(d_z, n, d_z)
    try:
        (jac,) = torch.autograd.grad(
            loc,
            xg,
            grad_outputs=cotangents,
            is_grads_batched=True,
            retain_graph=True,
        )
    except RuntimeError:
        # Some backward formulas cannot run under vmap (e.g. custom autograd Functions without
        # a vmap rule). Fall back to d_z backward passes, each still batched over all inputs.
        jac = torch.stack(
            [
                torch.autograd.grad(
                    loc,
                    xg,
                    grad_outputs=cotangents[j],
                    retain_graph=True,
                )[0]
                for j in range(d_z)
            ]
        )
    return loc.detach(), scale.detach(), jac.movedim(0, 1)  # (n, d_z, *event)


def encoder_jacobian(
    pair: Pair,
    x: torch.Tensor,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Encoder statistics and the exact Jacobian of the encoder mean, for every input at once.

    .. math::

        J(x)_{j,k} = \frac{\partial \mu_j(x)}{\partial x_k}, \qquad j = 1..d_z,\ k = 1..d_x.

    Parameters
    ----------
    pair : pyrobust.models.sites.Pair
        The model/guide pair (its guide gives the encoder).
    x : torch.Tensor
        Inputs ``(n, *event)``; not modified.
    max_batch : int
        Inputs are processed in chunks of ``max(1, max_batch // d_z)`` (each chunk runs
        ``d_z`` vmapped backward passes), bounding memory.

    Returns
    -------
    loc, scale : torch.Tensor
        :math:`\mu(x), \sigma(x)` of shape ``(n, d_z)``, detached.
    jacobian : torch.Tensor
        :math:`J(x)` of shape ``(n, d_z, *event)`` on ``x``'s device.
    """
    chunk = max(1, int(max_batch) // pair.d_z)
    n = x.shape[0]
    with torch.enable_grad():
        parts = [
            _chunk_jacobian(
                pair if chunk >= n else pair.subset(slice(i, i + chunk)), x[i : i + chunk]
            )
            for i in range(0, n, chunk)
        ]
    if len(parts) == 1:
        return parts[0]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))
