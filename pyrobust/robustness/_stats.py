r"""Exact binomial intervals and the three-valued robustness decision (THEORY.md section 1).

With :math:`k` of :math:`n` Monte-Carlo draws inside the ball, :math:`\hat p = k/n`. The exact
Clopper–Pearson interval [1]_ at level :math:`1 - \alpha` is

.. math::

    p_{\mathrm{lo}} = B^{-1}\!\left(\tfrac{\alpha}{2};\, k,\, n-k+1\right), \qquad
    p_{\mathrm{hi}} = B^{-1}\!\left(1-\tfrac{\alpha}{2};\, k+1,\, n-k\right),

with :math:`p_{\mathrm{lo}} = 0` when :math:`k = 0` and :math:`p_{\mathrm{hi}} = 1` when
:math:`k = n`; :math:`B^{-1}(q; a, b)` is the Beta quantile. The one-sided lower bound at level
:math:`c`, used by the margin bound as in Cohen et al. [2]_, is
:math:`B^{-1}(1 - c;\, k,\, n-k+1)`.

Stable private API:

* :func:`clopper_pearson` ``(k, n, confidence) -> (lower, upper)``
* :func:`clopper_pearson_lower` ``(k, n, confidence) -> lower``
* :func:`count_inside` ``(distances, r) -> (k, median)``
* :func:`binomial_summary` ``(k, n, confidence, dims, suffix="")``: the result variables
* :func:`decide` ``(lower, upper) -> int8 codes`` and :func:`decision_labels` ``(codes)``
* :data:`ROBUST`, :data:`UNDECIDED`, :data:`NOT_ROBUST` (the codes) and :data:`DECISIONS`

The Beta quantile is :func:`scipy.special.betaincinv` (torch has no incomplete Beta function), so
the counts make one trip to the CPU; they are small summaries (inputs x radii), computed once after
the sampling, and the results are returned on the device of ``k``.

References
----------
.. [1] Clopper, Pearson. *The use of confidence or fiducial limits illustrated in the case of the
   binomial*. Biometrika 26 (1934).
.. [2] Cohen, Rosenfeld, Kolter. *Certified Adversarial Robustness via Randomized Smoothing*.
   ICML 2019.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import special

__all__ = [
    "DECISIONS",
    "NOT_ROBUST",
    "ROBUST",
    "UNDECIDED",
    "binomial_summary",
    "clopper_pearson",
    "clopper_pearson_lower",
    "count_inside",
    "decide",
    "decision_labels",
]

#: Decision codes: robust when the interval lies above 1/2, not robust when below, else undecided.
ROBUST, UNDECIDED, NOT_ROBUST = 1, 0, -1
#: Code -> label.
DECISIONS = {ROBUST: "robust", UNDECIDED: "undecided", NOT_ROBUST: "not robust"}


def _counts(k, n) -> tuple[np.ndarray, np.ndarray, torch.device]:
    device = k.device if isinstance(k, torch.Tensor) else torch.device("cpu")
    k_np = np.asarray(k.detach().cpu() if isinstance(k, torch.Tensor) else k, dtype=np.float64)
    n_np = np.asarray(n.detach().cpu() if isinstance(n, torch.Tensor) else n, dtype=np.float64)
    k_np, n_np = np.broadcast_arrays(k_np, n_np)
    if np.any(n_np < 1) or np.any(k_np < 0) or np.any(k_np > n_np):
        raise ValueError("Clopper-Pearson needs counts 0 <= k <= n with n >= 1.")
    return k_np, n_np, device


def clopper_pearson(k, n, confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact two-sided Clopper–Pearson interval for a binomial proportion.

    Parameters
    ----------
    k : torch.Tensor or array_like of int
        Successes (draws inside the ball), any shape.
    n : int or array_like
        Trials, broadcastable against ``k``.
    confidence : float or numpy.ndarray
        Level :math:`1 - \alpha` in (0, 1); an array (broadcastable against ``k``) gives each
        count its own level.

    Returns
    -------
    lower, upper : torch.Tensor
        ``float64`` tensors shaped like ``k`` on ``k``'s device, with
        :math:`P(p_{\mathrm{lo}} \le p \le p_{\mathrm{hi}}) \ge 1 - \alpha` for every :math:`p`.
    """
    k_np, n_np, device = _counts(k, n)
    alpha = 1.0 - np.asarray(confidence, dtype=np.float64)
    with np.errstate(all="ignore"):
        lower = special.betaincinv(np.maximum(k_np, 1.0), n_np - k_np + 1.0, alpha / 2.0)
        upper = special.betaincinv(k_np + 1.0, np.maximum(n_np - k_np, 1.0), 1.0 - alpha / 2.0)
    lower = np.where(k_np == 0, 0.0, lower)
    upper = np.where(k_np == n_np, 1.0, upper)
    return torch.as_tensor(lower, device=device), torch.as_tensor(upper, device=device)


def clopper_pearson_lower(k, n, confidence: float) -> torch.Tensor:
    r"""One-sided Clopper–Pearson lower bound :math:`B^{-1}(1 - c;\, k,\, n-k+1)`.

    :math:`P(p \ge p_{\mathrm{lo}}) \ge c`; zero when :math:`k = 0`. Same shapes and device
    conventions as :func:`clopper_pearson`.
    """
    k_np, n_np, device = _counts(k, n)
    with np.errstate(all="ignore"):
        lower = special.betaincinv(
            np.maximum(k_np, 1.0), n_np - k_np + 1.0, 1.0 - float(confidence)
        )
    lower = np.where(k_np == 0, 0.0, lower)
    return torch.as_tensor(lower, device=device)


def decide(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    r"""Three-valued decision from an interval for :math:`p_r` (THEORY.md section 1).

    Returns ``int8`` codes: :data:`ROBUST` (1) when :math:`p_{\mathrm{lo}} > 1/2`,
    :data:`NOT_ROBUST` (-1) when :math:`p_{\mathrm{hi}} < 1/2`, :data:`UNDECIDED` (0) otherwise
    (more samples needed).
    """
    lower, upper = torch.as_tensor(lower), torch.as_tensor(upper)
    codes = torch.full(
        torch.broadcast_shapes(lower.shape, upper.shape), UNDECIDED, dtype=torch.int8
    )
    codes = codes.to(lower.device)
    codes = torch.where(lower > 0.5, torch.full_like(codes, ROBUST), codes)
    return torch.where(upper < 0.5, torch.full_like(codes, NOT_ROBUST), codes)


def decision_labels(codes) -> np.ndarray:
    """Map decision codes to the strings ``"robust"``, ``"undecided"``, ``"not robust"``."""
    codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes)
    out = np.full(codes.shape, DECISIONS[UNDECIDED], dtype="<U10")
    out[codes == ROBUST] = DECISIONS[ROBUST]
    out[codes == NOT_ROBUST] = DECISIONS[NOT_ROBUST]
    return out


def binomial_summary(
    k: torch.Tensor, n, confidence: float, dims: tuple[str, ...], *, suffix: str = ""
) -> dict[str, tuple[tuple[str, ...], object]]:
    r"""The summary variables of a Monte-Carlo probability, laid out as every result has them.

    ``probability`` :math:`k/n`, ``ci`` (dims ``(*dims, "ci_bound")``, the exact
    Clopper–Pearson limits), ``num_inside`` :math:`k`, ``num_draws`` :math:`n` and ``decision``
    (int8 codes: 1 robust, 0 undecided, -1 not robust; :func:`pyrobust._results.make_tree`
    attaches the CF ``flag_values``/``flag_meanings``), each name followed by ``suffix``.
    """
    from pyrobust._results import ci_bound

    n_t = torch.as_tensor(n, device=k.device).expand_as(k)
    lower, upper = clopper_pearson(k, n_t, confidence)
    return {
        f"probability{suffix}": (dims, k.to(torch.float64) / n_t),
        f"ci{suffix}": ((*dims, "ci_bound"), ci_bound(lower, upper)),
        f"num_inside{suffix}": (dims, k),
        f"num_draws{suffix}": (dims, n_t),
        f"decision{suffix}": (dims, decide(lower, upper)),
    }


def count_inside(distances: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draws inside each radius, and the median distance, from one sort of the draws.

    Parameters
    ----------
    distances : torch.Tensor
        Draws of :math:`\|\Delta\|` of shape ``(S, *batch)`` (samples first).
    r : torch.Tensor
        1-D tensor of ``R`` radii.

    Returns
    -------
    k : torch.Tensor
        ``int64`` counts :math:`k = \#\{s : \|\Delta_s\| \le r\}` of shape ``(*batch, R)``.
    median : torch.Tensor
        The sample median over ``S`` (mean of the two middle order statistics when ``S`` is
        even), shape ``batch``: the degree of robustness.
    """
    num_samples = distances.shape[0]
    ordered = distances.sort(dim=0).values
    median = 0.5 * (ordered[(num_samples - 1) // 2] + ordered[num_samples // 2])
    seq = ordered.movedim(0, -1).contiguous()
    radii = r.to(seq.dtype).expand(*seq.shape[:-1], r.numel()).contiguous()
    return torch.searchsorted(seq, radii, right=True), median
