r"""Disentanglement metrics with the definitions and defaults of ``disentanglement_lib``.

Five scores of how well a representation :math:`r(x) \in \mathbb{R}^L` separates the ground-truth
factors :math:`v \in \mathbb{N}^K` of a dataset (THEORY.md section 6):

* :func:`beta_vae_score` [1]_ and :func:`factor_vae_score` [2]_ intervene on the factors, so they
  take a representation function and a ground-truth dataset (procedural dSprites,
  :class:`pyrobust.data.DSprites`, or any object with ``num_factors``, ``factor_sizes``,
  ``sample_factors(n, seed)`` and ``images(factors)``);
* :func:`mig` [3]_ (``"histogram"`` as disentanglement_lib, ``"sampled"`` as Chen et al. with
  the full :math:`q(z \mid x)`), :func:`sap` [4]_ and :func:`dci` [5]_ take plain
  ``(codes, factors)`` arrays, so they also serve data that is not a full factor grid.

Defaults follow ``disentanglement_lib/config/unsupervised_study_v1/metric_configs`` (batch size 64,
10 000 training and 5 000 evaluation points, 20 histogram bins, ``LinearSVC(C=0.01)`` for SAP,
gradient boosted trees for DCI). Each function returns an ``xarray.DataTree`` with

* a ``metrics`` group: the point estimates and, for each resampled one, an ``<name>_ci``
  interval over ``ci_bound = ["lower", "upper"]`` at ``confidence`` (see *Notes*); with
  ``num_bootstrap=0`` the ``_ci`` variables are there but NaN;
* a ``bootstrap`` group (ArviZ sample group, ``(chain, draw)``, absent when
  ``num_bootstrap=0``) with the centred replicates whose equal-tailed interval is ``_ci``, so
  ``arviz_stats.summary(tree, group="bootstrap")`` and ``arviz_stats.eti`` agree with it;
* the intermediate matrices (mutual information, SAP score matrix, DCI importance matrix) in a
  ``details`` group with dims ``(latent, factor)``.

Notes
-----
**Intervals.** A naive percentile bootstrap (resample all rows with replacement, take
quantiles of the recomputed metric) does not work for these metrics: its intervals often miss the point estimate
altogether. The metrics are biased, non-smooth statistics (plug-in mutual information of a
histogram, squared correlations, gaps between the two largest of several noisy scores,
classifiers scored on their own training rows), and a resample is a *noisier* data set than the
sample: duplicated rows add spurious co-occurrences to histogram cells and are memorised by
classifiers, fewer distinct rows make every score noisier and the top-two gaps larger. The
replicates therefore sit systematically above (or below) the estimate, and their percentiles
describe that shifted distribution. Instead, each metric here

1. resamples only what is random in its definition: rows without a fitted model
   (:func:`mig` ``"histogram"``, :func:`sap` with continuous factors) or the training rows of
   the refitted classifiers (:func:`dci`) by **half-sampling** -- ``n // 2`` distinct rows drawn
   without replacement, so no duplicates -- with deviations rescaled by
   :math:`\sqrt{m/(n-m)}` (:math:`=1` at :math:`m = n/2`), the finite-population factor that
   gives a subsample mean's deviation :math:`\bar x_m - \bar x_n` the variance of
   :math:`\bar x_n` (the usual :math:`\sqrt{m/n}` of m-out-of-n subsampling is its
   :math:`m \ll n` limit, and at :math:`m = n/2` it would halve the variance); and evaluation
   rows scored by a classifier fitted once (SAP test rows, DCI test rows, BetaVAE and FactorVAE
   evaluation points) or Monte Carlo draws (:func:`mig` ``"sampled"``) by the ordinary
   bootstrap with replacement, which is unbiased for such means of per-row outcomes (a
   duplicated row is just a weight; nothing is refitted on it);
2. centres the replicates :math:`T^\ast_b` on their own median and reflects the deviations
   around the point estimate :math:`T` (basic bootstrap),
   :math:`[T - q_{1-\alpha/2}(d),\ T - q_{\alpha/2}(d)]` with
   :math:`d_b = s\,(T^\ast_b - \operatorname{med} T^\ast)`, clipped to the metric's range
   :math:`[0, 1]`. Centring removes the resampling-induced shift of step 1, so the interval
   always contains :math:`T`.

The interval describes the sampling variability of the metric *as computed by this protocol at
this sample size*: its target is the centre (median) of the estimator's sampling distribution at
the given ``N``. It does not remove the finite-sample bias of the estimators themselves (e.g.
MIG and SAP of independent codes are slightly positive at finite ``N``, and plug-in MIG of
informative codes slightly low), so compare models at equal ``N`` and settings, as
disentanglement_lib does. Intervals conditional on a fitted classifier (SAP, BetaVAE, FactorVAE)
leave out the variability of the training sample. The interval's ends are order statistics of
``num_bootstrap`` replicates: use about 100 or more for a 95 % interval (DCI's default of 10,
kept because each replicate refits the classifiers, gives only a rough range).

References
----------
.. [1] Higgins et al., "beta-VAE: Learning basic visual concepts with a constrained variational
   framework", ICLR 2017.
.. [2] Kim & Mnih, "Disentangling by factorising", ICML 2018 (arXiv 1802.05983).
.. [3] Chen et al., "Isolating sources of disentanglement in VAEs", NeurIPS 2018
   (arXiv 1802.04942).
.. [4] Kumar et al., "Variational inference of disentangled latent concepts from unlabeled
   observations", ICLR 2018 (arXiv 1711.00848).
.. [5] Eastwood & Williams, "A framework for the quantitative evaluation of disentangled
   representations", ICLR 2018.
.. [6] Locatello et al., "Challenging common assumptions in the unsupervised learning of
   disentangled representations", ICML 2019 (google-research/disentanglement_lib).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from pyrobust._results import make_tree, to_numpy

__all__ = ["beta_vae_score", "dci", "factor_vae_score", "mig", "sap"]

Representation = Callable[[Any], Any]


# --------------------------------------------------------------------------------------------
# validation and shared helpers
# --------------------------------------------------------------------------------------------


def _as_2d(value: Any, argname: str) -> np.ndarray:
    arr = to_numpy(value)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(
            f"{argname} must be a 2-D array of shape (num_points, num_{argname}); "
            f"got shape {arr.shape}."
        )
    if arr.shape[0] < 2:
        raise ValueError(f"{argname} needs at least 2 points; got {arr.shape[0]}.")
    return arr


def _check_pair(
    codes: Any, factors: Any, codes_name: str = "codes"
) -> tuple[np.ndarray, np.ndarray]:
    c = _as_2d(codes, codes_name).astype(np.float64)
    f = _as_2d(factors, "factors")
    if c.shape[0] != f.shape[0]:
        raise ValueError(
            f"{codes_name} and factors must have the same number of points (rows): "
            f"{codes_name} has {c.shape[0]}, factors has {f.shape[0]}. Pass the codes of "
            f"exactly the inputs whose factors you pass, in the same order."
        )
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{codes_name} contains NaN or infinite values.")
    return c, f


def _discrete_factors(factors: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Map each factor column to integer labels ``0..V_k-1``."""
    if factors.dtype.kind == "f" and not np.all(np.equal(np.mod(factors, 1), 0)):
        raise ValueError(
            "factors must be discrete (integer-valued) for this metric; got non-integer values. "
            "Pass factor indices (e.g. DSprites.index_to_factors), or for SAP use "
            "continuous_factors=True."
        )
    labels = np.empty(factors.shape, dtype=np.int64)
    sizes = []
    for k in range(factors.shape[1]):  # loop over factors (a handful), not points
        _, labels[:, k] = np.unique(factors[:, k], return_inverse=True)
        sizes.append(int(labels[:, k].max()) + 1)
    return labels, sizes


def _check_common(num_bootstrap: int, confidence: float) -> None:
    if not isinstance(num_bootstrap, (int, np.integer)) or num_bootstrap < 0:
        raise ValueError(f"num_bootstrap must be an int >= 0; got {num_bootstrap!r}.")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}.")


def _check_positive_int(value: Any, argname: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{argname} must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _interval(replicates: np.ndarray, confidence: float) -> np.ndarray:
    """Equal-tailed interval of the (already centred) replicates; NaN when there are none."""
    if replicates.size == 0:
        return np.full(2, np.nan)
    alpha = (1.0 - confidence) / 2.0
    return np.quantile(replicates, [alpha, 1.0 - alpha])


def _centred(
    point: float,
    replicates: np.ndarray,
    *,
    scale: float = 1.0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    r"""Replicates turned into draws whose equal-tailed interval is the metric's interval.

    The deviations :math:`d_b = s\,(T^\ast_b - \operatorname{med}_b T^\ast_b)` stand for
    :math:`T - \operatorname{med} T`, the spread of the estimator around the centre of its
    sampling distribution (``scale`` :math:`s` rescales subsample deviations to the full
    sample size). Centring on the replicates' own median removes the shift that resampling
    itself gives a biased or non-smooth statistic (a resample is a noisier data set: plug-in
    mutual information, squared correlations and top-two gaps all grow with noise). Returns
    :math:`\operatorname{clip}(T - d_b)`, the basic-bootstrap reflection: their quantiles are
    :math:`[T - q_{1-\alpha/2}(d),\ T - q_{\alpha/2}(d)]`, which always contain :math:`T`
    because :math:`q_{\alpha/2}(d) \le 0 \le q_{1-\alpha/2}(d)`; clipping to the metric's
    range keeps that. Empty in, empty out (``num_bootstrap=0``).
    """
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.size == 0:
        return reps
    return np.clip(point - scale * (reps - np.median(reps)), *bounds)


def _half_samples(
    pool: np.ndarray, num_bootstrap: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    r"""``num_bootstrap`` subsamples of ``m = n // 2`` rows of ``pool`` drawn without replacement.

    Returns the (B, m) row indices and the factor :math:`\sqrt{m / (n - m)}` that rescales
    subsample deviations to the variance of the full-sample estimator: for a mean,
    :math:`\operatorname{Var}(\bar x_m - \bar x_n) = s^2 (1/m - 1/n)` exactly (finite-population
    correction), so :math:`\frac{m}{n-m}\operatorname{Var}(\bar x_m - \bar x_n) = s^2/n`. (The
    textbook :math:`\sqrt{m/n}` of m-out-of-n subsampling is its :math:`m \ll n` limit; at
    :math:`m = n/2` it would halve the variance.)
    """
    n = pool.shape[0]
    if n < 4:
        raise ValueError(
            f"too few points ({n}) for a subsampling interval (needs at least 4); "
            "pass num_bootstrap=0 for the point estimate alone."
        )
    m = n // 2
    idx = rng.permuted(np.broadcast_to(np.arange(n), (num_bootstrap, n)), axis=1)[:, :m]
    return pool[idx], math.sqrt(m / (n - m))


def _resample_rows(n: int, num_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap row indices (B, n), with replacement: only for means of per-row outcomes."""
    return rng.integers(0, n, size=(num_bootstrap, n))


def _result(
    point: Mapping[str, float],
    replicates: Mapping[str, np.ndarray],
    *,
    confidence: float,
    details: Mapping[str, tuple[Sequence[str], Any]] | None = None,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any],
) -> xr.DataTree:
    """``replicates`` are centred (:func:`_centred`); an empty array gives a NaN interval."""
    metrics: dict[str, tuple[Sequence[str], Any]] = {}
    for name, value in point.items():
        metrics[name] = ((), np.float64(value))
        if name in replicates:
            reps = np.asarray(replicates[name], dtype=np.float64)
            metrics[f"{name}_ci"] = (("ci_bound",), _interval(reps, confidence))
    summary = {"metrics": metrics}
    if details:
        summary["details"] = dict(details)
    groups = None
    if replicates and all(np.size(r) > 0 for r in replicates.values()):
        groups = {
            "bootstrap": {k: np.asarray(v, dtype=np.float64)[None] for k, v in replicates.items()}
        }
    return make_tree(
        groups,
        coords={"ci_bound": np.array(["lower", "upper"]), **(coords or {})},
        summary=summary,
        attrs={"confidence": float(confidence), **attrs},
    )


def _factor_coords(num_factors: int, names: Sequence[str] | None) -> np.ndarray:
    if names is None:
        return np.arange(num_factors)
    names = [str(n) for n in names]
    if len(names) != num_factors:
        raise ValueError(
            f"factor_names must have one name per factor: expected {num_factors}, got {len(names)}."
        )
    return np.array(names)


def _split(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
    perm = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    if n - n_test < 2:
        raise ValueError(f"too few points ({n}) to split into train and test sets.")
    return perm[n_test:], perm[:n_test]


# --------------------------------------------------------------------------------------------
# MIG
# --------------------------------------------------------------------------------------------


def _histogram_discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    """disentanglement_lib ``_histogram_discretize``: ``np.digitize(c, np.histogram(c, bins)[1][:-1])``.

    Vectorised over codes; returns labels in ``0..num_bins-1`` (the library's ``1..num_bins``
    shifted, which changes no mutual information).
    """
    lo = codes.min(axis=0)
    hi = codes.max(axis=0)
    same = lo == hi
    lo = np.where(same, lo - 0.5, lo)  # np.histogram's rule for a constant input
    hi = np.where(same, hi + 0.5, hi)
    edges = np.linspace(lo, hi, num_bins + 1, axis=-1)  # (L, num_bins + 1), as np.histogram
    return (codes[:, :, None] >= edges[None, :, :-1]).sum(-1) - 1


def _discrete_mi(
    a: np.ndarray, b: np.ndarray, na: int, nb: int, max_elems: int = 1 << 22
) -> np.ndarray:
    r"""Plug-in mutual information (nats) between every column of ``a`` and of ``b``.

    ``a``: (B, N, L) labels in ``0..na-1``; ``b``: (B, N, K) labels in ``0..nb-1``. Returns
    (B, L, K) with :math:`I = \sum_{ab} p_{ab} \log \frac{p_{ab}}{p_a p_b}` (the value of
    ``sklearn.metrics.mutual_info_score``), all pairs and replicates from one ``bincount``.
    """
    B, N, L = a.shape
    K = b.shape[2]
    cells = L * K * na * nb
    out = np.empty((B, L, K))
    chunk = max(1, max_elems // max(1, N * L * K))
    for s in range(0, B, chunk):  # memory chunks over bootstrap replicates
        aa, bb = a[s : s + chunk], b[s : s + chunk]
        c = aa.shape[0]
        pair = (np.arange(L)[:, None] * K + np.arange(K)[None, :]) * (na * nb)  # (L, K)
        idx = (
            np.arange(c)[:, None, None, None] * cells
            + pair[None, None]
            + aa[:, :, :, None] * nb
            + bb[:, :, None, :]
        )
        joint = np.bincount(idx.ravel(), minlength=c * cells).reshape(c, L, K, na, nb) / N
        pa = joint.sum(-1, keepdims=True)
        pb = joint.sum(-2, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(joint > 0, joint * np.log(joint / (pa * pb)), 0.0)
        out[s : s + c] = terms.sum((-1, -2))
    return np.maximum(out, 0.0)


def _entropy_counts(labels: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Plug-in entropy (nats) of each column of ``labels`` ((B, N, K)) -> (B, K)."""
    B, N, K = labels.shape
    h = np.empty((B, K))
    for k, size in enumerate(sizes):  # loop over factors
        idx = np.arange(B)[:, None] * size + labels[:, :, k]
        p = np.bincount(idx.ravel(), minlength=B * size).reshape(B, size) / N
        with np.errstate(divide="ignore", invalid="ignore"):
            h[:, k] = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    return h


def _gap(mi: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Mean over factors of the normalised gap between the two most informative codes."""
    top = np.sort(mi, axis=-2)
    gap = top[..., -1, :] - (top[..., -2, :] if mi.shape[-2] > 1 else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(h > 0, gap / h, 0.0)
    return ratio.mean(-1)


def mig(
    codes: Any,
    factors: Any,
    *,
    estimator: str = "histogram",
    scale: Any = None,
    num_bins: int = 20,
    num_samples: int = 10000,
    max_batch: int = 1 << 24,
    factor_names: Sequence[str] | None = None,
    num_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataTree:
    r"""Mutual information gap (MIG) [3]_.

    .. math::

        \mathrm{MIG} = \frac{1}{K} \sum_{k=1}^K \frac{1}{H(v_k)}
            \Big( I(z_{j^{(k)}}; v_k) - \max_{j \ne j^{(k)}} I(z_j; v_k) \Big),
        \qquad j^{(k)} = \arg\max_j I(z_j; v_k).

    Two estimators of :math:`I(z_j; v_k)`, named apart in the result:

    ``"histogram"`` (variable ``mig_histogram``)
        disentanglement_lib: each code (the encoder mean) is discretised into ``num_bins``
        equal-width bins over its range and :math:`I` is the plug-in discrete mutual
        information (``sklearn.metrics.mutual_info_score``); :math:`H(v_k)` the plug-in entropy.
    ``"sampled"`` (variable ``mig_sampled``)
        Chen et al. with the full :math:`q(z \mid x) = \mathcal N(\mu(x), \sigma(x)^2)`
        (``codes`` are the means, ``scale`` the standard deviations):
        :math:`I(z_j; v_k) = H(z_j) - H(z_j \mid v_k)` with
        :math:`H(z_j) = -\mathbb E \log \frac1N \sum_n q(z_j \mid x_n)` and
        :math:`H(z_j \mid v_k) = -\mathbb E \log \frac{1}{N_v} \sum_{n: v_k(x_n) = v} q(z_j \mid x_n)`,
        the expectations over ``num_samples`` draws :math:`z \sim q(z \mid x_n)` at random
        inputs :math:`x_n`. Computed in torch on the device of ``codes``, in chunks of
        ``max_batch`` log-densities.

    Parameters
    ----------
    codes : array or tensor, shape (N, L)
        Representations (encoder means) of N inputs.
    factors : array, shape (N, K)
        Discrete ground-truth factors of the same inputs.
    estimator : {"histogram", "sampled"}
    scale : array or tensor, shape (N, L), optional
        Encoder standard deviations; required for ``"sampled"``.
    num_bins : int, default 20
        Histogram bins (``"histogram"``).
    num_samples : int, default 10000
        Monte Carlo draws (``"sampled"``).
    max_batch : int
        Maximum number of log-densities held at once (``"sampled"``).
    factor_names : sequence of str, optional
        Coordinates of the ``factor`` dim.
    num_bootstrap : int, default 100
        Replicates for ``mig_<estimator>_ci`` (module *Notes*). ``"histogram"``: half-samples
        of the rows without replacement (bins fixed from the full sample), because duplicated
        rows inflate plug-in mutual information; ``"sampled"``: bootstrap of the Monte Carlo
        draws (their per-draw log-densities are averaged, so duplicates only weight them); this
        interval covers the Monte Carlo error only, as the N inputs define the mixture and are
        not resampled.
        Either way the replicates are median-centred deviations reflected around the estimate,
        so the interval contains it. ``0``: no ``bootstrap`` group and a NaN interval.
    confidence : float, default 0.95
    seed : int, default 0

    Returns
    -------
    xarray.DataTree
        ``metrics/mig_<estimator>``, its ``_ci``, ``bootstrap``, and ``details`` with
        ``mutual_information (latent, factor)`` and ``factor_entropy (factor)``.

    Examples
    --------
    >>> import numpy as np
    >>> from pyrobust.analysis import mig
    >>> f = np.random.default_rng(0).integers(0, 5, size=(1000, 2))
    >>> round(float(mig(f, f, num_bootstrap=0)["metrics"]["mig_histogram"]), 2)
    1.0
    """
    if estimator not in ("histogram", "sampled"):
        raise ValueError(f"estimator must be 'histogram' or 'sampled'; got {estimator!r}.")
    _check_common(num_bootstrap, confidence)
    c, f = _check_pair(codes, factors)
    labels, sizes = _discrete_factors(f)
    N, L = c.shape
    K = labels.shape[1]
    rng = np.random.default_rng(seed)
    attrs = {
        "metric": "mig",
        "estimator": estimator,
        "num_points": N,
        "seed": seed,
        "num_bootstrap": int(num_bootstrap),
    }
    if estimator == "histogram":
        num_bins = _check_positive_int(num_bins, "num_bins")
        disc = _histogram_discretize(c, num_bins)
        mi = _discrete_mi(disc[None], labels[None], num_bins, max(sizes))[0]
        h = _entropy_counts(labels[None], sizes)[0]
        point = float(_gap(mi, h))
        reps = np.empty(0)
        if num_bootstrap:
            idx, rescale = _half_samples(np.arange(N), num_bootstrap, rng)
            lb = labels[idx]
            raw = _gap(
                _discrete_mi(disc[idx], lb, num_bins, max(sizes)), _entropy_counts(lb, sizes)
            )
            reps = _centred(point, raw, scale=rescale)
            attrs["interval"] = "half-sampling without replacement, median-centred deviations"
        attrs["num_bins"] = num_bins
    else:
        if scale is None:
            raise ValueError(
                "estimator='sampled' needs scale=, the encoder standard deviations sigma(x) "
                "of shape (N, L) matching codes (e.g. from pyrobust.models.sites.guide_loc_scale)."
            )
        num_samples = _check_positive_int(num_samples, "num_samples")
        mi, h, per_marg, per_cond = _sampled_mi(
            codes, scale, labels, sizes, num_samples=num_samples, max_batch=max_batch, seed=seed
        )
        point = float(_gap(mi, h))
        reps = np.empty(0)
        if num_bootstrap:
            M = per_marg.shape[0]
            idx = rng.integers(0, M, size=(num_bootstrap, M))
            mi_b = per_marg[idx].mean(1)[:, :, None] - per_cond[idx].mean(1)  # (B, L, K)
            reps = _centred(point, _gap(np.maximum(mi_b, 0.0), h[None]))
            attrs["interval"] = "bootstrap of Monte Carlo draws, median-centred deviations"
        attrs["num_samples"] = num_samples
    name = f"mig_{estimator}"
    return _result(
        {name: point},
        {name: reps},
        confidence=confidence,
        details={
            "mutual_information": (("latent", "factor"), mi),
            "factor_entropy": (("factor",), h),
        },
        coords={"latent": np.arange(L), "factor": _factor_coords(K, factor_names)},
        attrs=attrs,
    )


def _sampled_mi(loc, scale, labels, sizes, *, num_samples, max_batch, seed):
    """Chen et al. estimator; returns MI (L, K), H(v) (K,), per-draw -log q(z_j) (M, L) and
    per-draw -log q(z_j | v_k) (M, L, K)."""
    import torch

    loc_t = loc if isinstance(loc, torch.Tensor) else torch.as_tensor(np.asarray(loc))
    loc_t = loc_t.detach().to(torch.float64)
    device = loc_t.device
    scale_t = torch.as_tensor(to_numpy(scale) if not isinstance(scale, torch.Tensor) else scale)
    scale_t = scale_t.detach().to(device=device, dtype=torch.float64)
    if loc_t.ndim == 1:
        loc_t = loc_t[:, None]
    if scale_t.ndim == 1:
        scale_t = scale_t[:, None]
    if scale_t.shape != loc_t.shape:
        raise ValueError(
            f"scale must have the shape of codes: expected {tuple(loc_t.shape)}, "
            f"got {tuple(scale_t.shape)}."
        )
    if not bool((scale_t > 0).all()):
        raise ValueError("scale must be strictly positive (encoder standard deviations).")
    N, L = loc_t.shape
    lab = torch.as_tensor(labels, device=device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    M = num_samples
    if num_samples <= N:
        src = torch.randperm(N, generator=gen, device=device)[:M]
    else:
        src = torch.randint(0, N, (M,), generator=gen, device=device)
    eps = torch.randn(M, L, generator=gen, device=device, dtype=torch.float64)
    z = loc_t[src] + scale_t[src] * eps  # (M, L)
    counts = [torch.bincount(lab[:, k], minlength=s).to(torch.float64) for k, s in enumerate(sizes)]
    neg_marg = torch.empty(M, L, dtype=torch.float64, device=device)
    neg_cond = torch.empty(M, L, len(sizes), dtype=torch.float64, device=device)
    log_scale = scale_t.log()
    chunk = max(1, int(max_batch) // max(1, N * L))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    for s in range(0, M, chunk):  # memory chunks over Monte Carlo draws
        zc = z[s : s + chunk]  # (m, L)
        logq = (
            -0.5 * ((zc[:, None, :] - loc_t[None]) / scale_t[None]) ** 2
            - log_scale[None]
            - half_log_2pi
        )  # (m, N, L)
        # One shift per (draw, code) serves the marginal and every factor's group sums. A
        # group never underflows: it holds the draw's own input n_m, whose log-density is
        # within log(sigma_max / sigma_min) + eps^2 / 2 nats of the shift, far below the
        # ~700 nats float64 can span.
        shift = logq.amax(dim=1, keepdim=True)  # (m, 1, L)
        w = (logq - shift).exp()
        neg_marg[s : s + chunk] = -(w.sum(1).log() + shift[:, 0] - math.log(N))
        own = lab[src[s : s + chunk]]  # (m, K)
        for k in range(len(sizes)):  # loop over factors
            mask = lab[None, :, k] == own[:, k, None]  # (m, N): same value of factor k
            group = torch.einsum("mn,mnl->ml", mask.to(w.dtype), w)
            lse = group.log() + shift[:, 0]
            neg_cond[s : s + chunk, :, k] = -(lse - counts[k][own[:, k]].log()[:, None])
    per_marg = neg_marg.cpu().numpy()
    per_cond = neg_cond.cpu().numpy()
    mi = np.maximum(per_marg.mean(0)[:, None] - per_cond.mean(0), 0.0)
    h = _entropy_counts(labels[None], sizes)[0]
    return mi, h, per_marg, per_cond


# --------------------------------------------------------------------------------------------
# SAP
# --------------------------------------------------------------------------------------------


def _sap_continuous(c: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Squared correlation of every (code, factor) pair, 0 for a constant code: (..., L, K)."""
    cc = c - c.mean(-2, keepdims=True)
    ff = f - f.mean(-2, keepdims=True)
    n = c.shape[-2]
    cov = np.einsum("...nl,...nk->...lk", cc, ff) / (n - 1)
    var_c = (cc**2).sum(-2) / (n - 1)
    var_f = (ff**2).sum(-2) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = cov**2 / (var_c[..., :, None] * var_f[..., None, :])
    return np.where((var_c[..., :, None] > 1e-12) & (var_f[..., None, :] > 0), score, 0.0)


def _sap_discrete(c_tr, f_tr, c_te, f_te) -> np.ndarray:
    """Per-test-row correctness (L, K, n_test) of one ``LinearSVC`` per (code, factor) pair."""
    from sklearn.svm import LinearSVC

    L, K = c_tr.shape[1], f_tr.shape[1]
    correct = np.zeros((L, K, c_te.shape[0]), dtype=bool)
    for i in range(L):  # one 1-D classifier per (code, factor) pair, as disentanglement_lib
        for k in range(K):
            if np.unique(f_tr[:, k]).size < 2:
                correct[i, k] = f_te[:, k] == f_tr[0, k]
                continue
            clf = LinearSVC(C=0.01, class_weight="balanced")
            clf.fit(c_tr[:, i : i + 1], f_tr[:, k])
            correct[i, k] = clf.predict(c_te[:, i : i + 1]) == f_te[:, k]
    return correct


def _weighted_accuracy(correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Accuracies of ``correct`` (..., n) on each bootstrap row set ``idx`` (B, n) -> (B, ...)."""
    n = correct.shape[-1]
    counts = np.stack([np.bincount(row, minlength=n) for row in idx])  # (B, n)
    return np.moveaxis(correct.astype(np.float64) @ counts.T, -1, 0) / idx.shape[1]


def _top_two(score: np.ndarray) -> np.ndarray:
    s = np.sort(score, axis=-2)
    return (
        (s[..., -1, :] - s[..., -2, :]).mean(-1) if score.shape[-2] > 1 else s[..., -1, :].mean(-1)
    )


def sap(
    codes: Any,
    factors: Any,
    *,
    continuous_factors: bool = False,
    test_fraction: float = 1 / 3,
    factor_names: Sequence[str] | None = None,
    num_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataTree:
    r"""Separated attribute predictability (SAP) [4]_.

    A score matrix :math:`S_{jk}` says how well code :math:`z_j` alone predicts factor
    :math:`v_k`; SAP is the mean over factors of the gap between the two best codes:

    .. math::

        \mathrm{SAP} = \frac1K \sum_k \big( S_{(1)k} - S_{(2)k} \big).

    Discrete factors (the disentanglement_lib default): :math:`S_{jk}` is the test accuracy of
    ``LinearSVC(C=0.01, class_weight="balanced")`` trained on :math:`z_j` alone, with a random
    ``test_fraction`` of the points held out (disentanglement_lib: 10 000 train, 5 000 test,
    i.e. one third). Continuous factors: :math:`S_{jk} = \mathrm{Cov}(z_j, v_k)^2 /
    (\mathrm{Var}\, z_j\, \mathrm{Var}\, v_k)` on all points (0 if :math:`\mathrm{Var}\, z_j
    \le 10^{-12}`).

    With discrete factors the second-best code still predicts :math:`v_k` at chance accuracy
    (about :math:`1/V_k` with balanced classes), so even a perfect code scores at most about
    :math:`1 - 1/V_k`; the continuous variant reaches 1.

    Parameters
    ----------
    codes : array, shape (N, L)
    factors : array, shape (N, K)
    continuous_factors : bool, default False
    test_fraction : float, default 1/3
    factor_names : sequence of str, optional
    num_bootstrap : int, default 100
        Replicates for ``sap_ci`` (module *Notes*). Discrete factors: the ``L * K`` classifiers
        fitted for the estimate are kept and the test rows are bootstrapped (refitting on a
        resample with duplicated rows, and scoring the top-two gap of noisier classifiers,
        shifts every replicate upward). Continuous factors: half-samples of the rows without
        replacement (squared correlations are biased upward on small samples). Either way the
        replicates are median-centred deviations reflected around the estimate, so the
        interval contains it; the discrete interval is conditional on the fitted classifiers.
        ``0``: no ``bootstrap`` group and a NaN interval.
    confidence : float, default 0.95
    seed : int, default 0

    Returns
    -------
    xarray.DataTree
        ``metrics/sap``, ``sap_ci``; ``details/score_matrix (latent, factor)``.
    """
    _check_common(num_bootstrap, confidence)
    c, f = _check_pair(codes, factors)
    if c.shape[1] < 2:
        raise ValueError(
            f"codes must be 2-D (num_points, num_latents) with at least 2 latent dims: SAP is "
            f"the gap between the two most predictive latents; got shape {to_numpy(codes).shape}."
        )
    rng = np.random.default_rng(seed)
    N, L = c.shape
    K = f.shape[1]
    if continuous_factors:
        fv = f.astype(np.float64)
        score = _sap_continuous(c, fv)
        point = float(_top_two(score))
        reps = np.empty(0)
        if num_bootstrap:
            idx, rescale = _half_samples(np.arange(N), num_bootstrap, rng)
            reps = _centred(point, _top_two(_sap_continuous(c[idx], fv[idx])), scale=rescale)
        interval = "half-sampling without replacement, median-centred deviations"
    else:
        labels, _ = _discrete_factors(f)
        tr, te = _split(N, test_fraction, rng)
        correct = _sap_discrete(c[tr], labels[tr], c[te], labels[te])
        score = correct.mean(-1)
        point = float(_top_two(score))
        reps = np.empty(0)
        if num_bootstrap:  # the fitted classifiers are kept; only the test rows are resampled
            raw = _top_two(_weighted_accuracy(correct, _resample_rows(te.size, num_bootstrap, rng)))
            reps = _centred(point, raw)
        interval = "bootstrap of the test rows (classifiers fixed), median-centred deviations"
    return _result(
        {"sap": point},
        {"sap": reps},
        confidence=confidence,
        details={"score_matrix": (("latent", "factor"), score)},
        coords={"latent": np.arange(L), "factor": _factor_coords(K, factor_names)},
        attrs={
            "metric": "sap",
            "interval": interval,
            "continuous_factors": bool(continuous_factors),
            "test_fraction": float(test_fraction),
            "num_points": N,
            "seed": seed,
            "num_bootstrap": int(num_bootstrap),
        },
    )


# --------------------------------------------------------------------------------------------
# DCI
# --------------------------------------------------------------------------------------------


def _entropy_base(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """``scipy.stats.entropy(p, base=base, axis=axis)``: normalises ``p`` first."""
    p = p / p.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=axis)
    return h / np.log(base) if base > 1 else np.zeros_like(h)


def dci_from_importance(importance: Any) -> dict[str, float]:
    r"""Disentanglement and completeness of an importance matrix :math:`R` (codes x factors) [5]_.

    With :math:`P_{jk} = R_{jk} / \sum_{k'} R_{jk'}` and :math:`\tilde P_{jk} = R_{jk} /
    \sum_{j'} R_{j'k}`,

    .. math::

        D = \sum_j \rho_j \big(1 - H_K(P_{j\cdot})\big), \quad
        \rho_j = \frac{\sum_k R_{jk}}{\sum_{jk} R_{jk}}; \qquad
        C = \sum_k \tilde\rho_k \big(1 - H_L(\tilde P_{\cdot k})\big), \quad
        \tilde\rho_k = \frac{\sum_j R_{jk}}{\sum_{jk} R_{jk}},

    with entropies in base K and L; ``1e-11`` is added to :math:`R` inside the entropies, as in
    disentanglement_lib.
    """
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or np.any(r < 0):
        raise ValueError(
            f"importance must be a non-negative (num_codes, num_factors) matrix; got shape {r.shape}."
        )
    L, K = r.shape
    per_code = 1.0 - _entropy_base(r + 1e-11, K, axis=1)
    per_factor = 1.0 - _entropy_base(r + 1e-11, L, axis=0)
    w = r if r.sum() > 0 else np.ones_like(r)
    code_w = w.sum(1) / w.sum()
    factor_w = w.sum(0) / w.sum()
    return {
        "disentanglement": float(np.sum(per_code * code_w)),
        "completeness": float(np.sum(per_factor * factor_w)),
    }


def _importance_gbt(c_tr, f_tr, c_te, f_te, model_kwargs):
    """Importances (L, K) and per-row correctness on the training rows (K, n_train) and the test
    rows (K, n_test) of one classifier per factor."""
    from sklearn.ensemble import GradientBoostingClassifier

    L, K = c_tr.shape[1], f_tr.shape[1]
    imp = np.zeros((L, K))
    correct_tr = np.zeros((K, c_tr.shape[0]), dtype=bool)
    correct_te = np.zeros((K, c_te.shape[0]), dtype=bool)
    for k in range(K):  # one classifier per factor, as disentanglement_lib
        if np.unique(f_tr[:, k]).size < 2:
            correct_tr[k] = True
            correct_te[k] = f_te[:, k] == f_tr[0, k]
            continue
        model = GradientBoostingClassifier(**model_kwargs)
        model.fit(c_tr, f_tr[:, k])
        imp[:, k] = np.abs(model.feature_importances_)
        correct_tr[k] = model.predict(c_tr) == f_tr[:, k]
        correct_te[k] = model.predict(c_te) == f_te[:, k]
    return imp, correct_tr, correct_te


def dci(
    codes: Any,
    factors: Any,
    *,
    test_fraction: float = 1 / 3,
    model_kwargs: Mapping[str, Any] | None = None,
    factor_names: Sequence[str] | None = None,
    num_bootstrap: int = 10,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataTree:
    r"""Disentanglement, completeness and informativeness (DCI) [5]_.

    One gradient boosted tree classifier per factor (``sklearn``'s
    ``GradientBoostingClassifier``, as disentanglement_lib; its defaults unless
    ``model_kwargs`` says otherwise, e.g. ``{"n_estimators": 20}`` to be cheaper) predicts
    :math:`v_k` from all codes; its impurity feature importances form :math:`R_{jk}`, scored by
    :func:`dci_from_importance`. Informativeness is the mean classification accuracy on the
    training rows (``informativeness_train``) and on the held-out ``test_fraction``
    (``informativeness_test``).

    Parameters
    ----------
    codes : array, shape (N, L)
    factors : array, shape (N, K)
        Discrete factors.
    test_fraction : float, default 1/3
    model_kwargs : mapping, optional
        Keyword arguments of ``GradientBoostingClassifier`` (``random_state`` defaults to
        ``seed``).
    factor_names : sequence of str, optional
    num_bootstrap : int, default 10
        Replicates for the ``_ci`` intervals (module *Notes*), each refitting the K
        classifiers on a half-sample of the training rows drawn without replacement (a
        bootstrap resample's duplicated rows are memorised by the trees, which inflates the
        training accuracy and changes the importances). Disentanglement, completeness and
        ``informativeness_train`` are functions of the training set alone and take their
        deviations from these refits; ``informativeness_test`` adds those of the classifiers
        fitted for the estimate, scored on bootstrap resamples of the test rows (the test set
        never shares rows with the training set). Deviations are median-centred and
        reflected around the estimate, so each interval contains it. 10 replicates give only a
        rough range; use more where the refits are affordable. ``0``: no ``bootstrap`` group
        and NaN intervals.
    confidence : float, default 0.95
    seed : int, default 0

    Returns
    -------
    xarray.DataTree
        ``metrics/{disentanglement, completeness, informativeness_train,
        informativeness_test}`` with ``_ci``; ``details/importance (latent, factor)``.
    """
    _check_common(num_bootstrap, confidence)
    c, f = _check_pair(codes, factors)
    labels, _ = _discrete_factors(f)
    rng = np.random.default_rng(seed)
    N, L = c.shape
    K = labels.shape[1]
    kwargs = {"random_state": seed, **(model_kwargs or {})}
    tr, te = _split(N, test_fraction, rng)

    imp, correct_tr, correct_te = _importance_gbt(c[tr], labels[tr], c[te], labels[te], kwargs)
    point = dci_from_importance(imp)
    point["informativeness_train"] = float(correct_tr.mean())
    point["informativeness_test"] = float(correct_te.mean())
    reps: dict[str, np.ndarray] = {k: np.empty(0) for k in point}
    if num_bootstrap:
        # training-set variability: refit the K classifiers on half-samples of the training rows
        sub, rescale = _half_samples(tr, num_bootstrap, rng)
        raw = {k: np.empty(num_bootstrap) for k in point}
        for b in range(num_bootstrap):  # each replicate refits the K classifiers
            imp_b, ctr_b, cte_b = _importance_gbt(
                c[sub[b]], labels[sub[b]], c[te], labels[te], kwargs
            )
            for k, v in dci_from_importance(imp_b).items():
                raw[k][b] = v
            raw["informativeness_train"][b] = ctr_b.mean()
            raw["informativeness_test"][b] = cte_b.mean()
        dev = {k: rescale * (v - np.median(v)) for k, v in raw.items()}
        # test-set variability of the test accuracy: the fitted classifiers scored on bootstrap
        # resamples of the test rows (a mean of per-row outcomes), independent of the above
        test = _weighted_accuracy(correct_te, _resample_rows(te.size, num_bootstrap, rng)).mean(-1)
        dev["informativeness_test"] = dev["informativeness_test"] + test - np.median(test)
        reps = {k: _centred(point[k], point[k] + d) for k, d in dev.items()}
    return _result(
        point,
        reps,
        confidence=confidence,
        details={"importance": (("latent", "factor"), imp)},
        coords={"latent": np.arange(L), "factor": _factor_coords(K, factor_names)},
        attrs={
            "metric": "dci",
            "interval": (
                "half-sampling of the training rows (refits), plus for informativeness_test a "
                "bootstrap of the test rows (classifiers fixed); median-centred deviations"
            ),
            "importance_model": "GradientBoostingClassifier",
            "model_kwargs": dict(kwargs),
            "test_fraction": float(test_fraction),
            "num_points": N,
            "seed": seed,
            "num_bootstrap": int(num_bootstrap),
        },
    )


# --------------------------------------------------------------------------------------------
# intervention-based scores on a ground-truth dataset
# --------------------------------------------------------------------------------------------


def _check_dataset(dataset: Any) -> int:
    needed = ("num_factors", "sample_factors", "images")
    missing = [a for a in needed if not hasattr(dataset, a)]
    if missing:
        raise TypeError(
            f"dataset must be a ground-truth dataset with {needed} (e.g. pyrobust.data.DSprites()); "
            f"{type(dataset).__name__} lacks {missing}."
        )
    return int(dataset.num_factors)


def _sample_factors(dataset, n: int, rng: np.random.Generator) -> np.ndarray:
    out = to_numpy(dataset.sample_factors(n, int(rng.integers(0, 2**31 - 1))))
    if out.shape[0] != n:
        raise ValueError(
            f"dataset.sample_factors({n}, seed) returned {out.shape[0]} rows; expected {n}."
        )
    return np.array(out, copy=True)


def _represent(
    representation: Representation, dataset, factors: np.ndarray, max_batch: int
) -> np.ndarray:
    """Codes of the observations of ``factors``, in chunks of ``max_batch`` images."""
    chunks = []
    for s in range(0, factors.shape[0], max_batch):  # memory chunks
        codes = to_numpy(representation(dataset.images(factors[s : s + max_batch])))
        if codes.ndim != 2 or codes.shape[0] != min(max_batch, factors.shape[0] - s):
            raise ValueError(
                "representation(images) must return one code vector per image, shape "
                f"(num_images, num_codes); got shape {codes.shape} for "
                f"{min(max_batch, factors.shape[0] - s)} images."
            )
        chunks.append(codes.astype(np.float64))
    return np.concatenate(chunks)


def _beta_vae_points(representation, dataset, K, batch_size, n, rng, max_batch):
    index = rng.integers(0, K, size=n)
    f1 = _sample_factors(dataset, n * batch_size, rng).reshape(n, batch_size, K)
    f2 = _sample_factors(dataset, n * batch_size, rng).reshape(n, batch_size, K)
    f2[np.arange(n), :, index] = f1[np.arange(n), :, index]
    codes = _represent(
        representation, dataset, np.concatenate([f1, f2]).reshape(2 * n * batch_size, K), max_batch
    ).reshape(2, n, batch_size, -1)
    return np.abs(codes[0] - codes[1]).mean(1), index


def beta_vae_score(
    representation: Representation,
    dataset: Any,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    max_batch: int = 4096,
    num_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataTree:
    r"""BetaVAE score [1]_, as disentanglement_lib.

    Each training point fixes one factor :math:`k \sim \mathcal U\{1..K\}` across two batches of
    ``batch_size`` random factor vectors, :math:`v^{(1)}_b, v^{(2)}_b` with
    :math:`v^{(1)}_{bk} = v^{(2)}_{bk}`, and forms the feature

    .. math::

        \phi = \frac{1}{B} \sum_{b=1}^{B} \big| r(x(v^{(1)}_b)) - r(x(v^{(2)}_b)) \big|
        \in \mathbb{R}^L,

    labelled :math:`k`. A ``sklearn`` ``LogisticRegression`` is fitted on ``num_train`` such
    points; the score is its accuracy on ``num_eval`` fresh points (chance level :math:`1/K`).

    Parameters
    ----------
    representation : callable
        ``representation(images) -> codes`` of shape (n, L) (array or tensor), e.g. the encoder
        mean ``lambda x: vae.encode(x)[0]``. It receives images as ``dataset.images`` returns
        them (CPU tensors for dSprites) in chunks of ``max_batch``; move them to the model's
        device inside, e.g. ``lambda x: vae.encode(x.to("cuda"))[0]``.
    dataset : ground-truth dataset
        ``num_factors``, ``sample_factors(n, seed)`` and ``images(factors)`` (e.g.
        :class:`pyrobust.data.DSprites`).
    batch_size, num_train, num_eval : int
        disentanglement_lib defaults 64, 10 000, 5 000.
    max_batch : int, default 4096
        Images passed to ``representation`` at once.
    num_bootstrap : int, default 100
        Replicates for ``beta_vae_ci``: bootstrap of the evaluation points with the classifier
        fixed (a mean of per-point outcomes; median-centred and reflected as in the module
        *Notes*), so the interval is conditional on the fitted classifier. ``beta_vae_train``
        has no interval. ``0``: no ``bootstrap`` group and a NaN interval.
    confidence : float, default 0.95
    seed : int, default 0

    Returns
    -------
    xarray.DataTree
        ``metrics/{beta_vae_train, beta_vae}`` (train and evaluation accuracy) with ``_ci``.
    """
    from sklearn.linear_model import LogisticRegression

    K = _check_dataset(dataset)
    _check_common(num_bootstrap, confidence)
    batch_size = _check_positive_int(batch_size, "batch_size")
    num_train = _check_positive_int(num_train, "num_train", 2)
    num_eval = _check_positive_int(num_eval, "num_eval")
    max_batch = _check_positive_int(max_batch, "max_batch")
    rng = np.random.default_rng(seed)
    x_tr, y_tr = _beta_vae_points(representation, dataset, K, batch_size, num_train, rng, max_batch)
    if np.unique(y_tr).size < 2:
        raise ValueError("num_train is too small: the training points hold a single factor label.")
    model = LogisticRegression(max_iter=1000, random_state=seed)
    model.fit(x_tr, y_tr)
    train_acc = float(np.mean(model.predict(x_tr) == y_tr))
    x_ev, y_ev = _beta_vae_points(representation, dataset, K, batch_size, num_eval, rng, max_batch)
    correct = (model.predict(x_ev) == y_ev).astype(np.float64)
    point = float(correct.mean())
    raw = correct[_resample_rows(num_eval, num_bootstrap, rng)].mean(1)
    return _result(
        {"beta_vae": point, "beta_vae_train": train_acc},
        {"beta_vae": _centred(point, raw)},
        confidence=confidence,
        attrs={
            "metric": "beta_vae",
            "interval": "bootstrap of the evaluation points (classifier fixed)",
            "batch_size": batch_size,
            "num_train": num_train,
            "num_eval": num_eval,
            "chance_level": 1.0 / K,
            "seed": seed,
            "num_bootstrap": int(num_bootstrap),
        },
    )


def _factor_vae_votes(
    representation, dataset, K, batch_size, n, rng, max_batch, global_var, active
):
    index = rng.integers(0, K, size=n)
    f = _sample_factors(dataset, n * batch_size, rng).reshape(n, batch_size, K)
    f[np.arange(n), :, index] = f[np.arange(n), :1, index]
    codes = _represent(representation, dataset, f.reshape(n * batch_size, K), max_batch)
    local = codes.reshape(n, batch_size, -1).var(1, ddof=1)
    ratio = np.where(active[None], local / np.where(active, global_var, 1.0)[None], np.inf)
    return index, ratio.argmin(1)


def factor_vae_accuracy(votes: Any, classifier: Any = None) -> float:
    r"""Majority-vote accuracy of a FactorVAE vote matrix ``votes[k, j]`` (factor x code).

    .. math::

        \mathrm{acc} = \frac{\sum_j V_{c(j) j}}{\sum_{kj} V_{kj}}, \qquad
        c(j) = \arg\max_k V_{kj} \text{ (or the given classifier)}.
    """
    v = np.asarray(votes, dtype=np.float64)
    cls = v.argmax(0) if classifier is None else np.asarray(classifier)
    return float(v[cls, np.arange(v.shape[1])].sum() / v.sum())


def factor_vae_score(
    representation: Representation,
    dataset: Any,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
    max_batch: int = 4096,
    num_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
) -> xr.DataTree:
    r"""FactorVAE score [2]_, as disentanglement_lib.

    Codes are scaled by their global standard deviation :math:`s_j` (from
    ``num_variance_estimate`` random inputs); codes with :math:`s_j <` ``prune_threshold`` are
    ignored (collapsed to the prior). Each vote fixes a random factor :math:`k` in a batch of
    ``batch_size`` inputs and votes for the code of least normalised variance,

    .. math::

        j^\ast = \arg\min_{j \text{ active}} \frac{\widehat{\mathrm{Var}}_b\, r_j(x_b)}{s_j^2},

    filling a vote matrix :math:`V_{kj}`. The majority-vote classifier
    :math:`c(j) = \arg\max_k V_{kj}` is learned on ``num_train`` votes and scored on
    ``num_eval`` fresh ones (:func:`factor_vae_accuracy`; chance level about :math:`1/K`).
    Unlike disentanglement_lib, whose vote index counts only active codes, votes here index the
    original code, so pruning never mislabels a code.

    Parameters
    ----------
    representation : callable
        ``representation(images) -> codes`` of shape (n, L).
    dataset : ground-truth dataset
        As :func:`beta_vae_score`.
    batch_size, num_train, num_eval, num_variance_estimate : int
        disentanglement_lib defaults 64, 10 000, 5 000, 10 000.
    prune_threshold : float, default 0.05
        disentanglement_lib's ``prune_dims.threshold`` in its metric configs.
    max_batch : int, default 4096
    num_bootstrap : int, default 100
        Replicates for ``factor_vae_ci``: bootstrap of the evaluation votes with the
        majority-vote classifier fixed (median-centred and reflected as in the module
        *Notes*), so the interval is conditional on the classifier. ``0``, or no active code:
        no ``bootstrap`` group and a NaN interval.
    confidence : float, default 0.95
    seed : int, default 0

    Returns
    -------
    xarray.DataTree
        ``metrics/{factor_vae_train, factor_vae, num_active_dims}``; ``details/votes
        (factor, latent)`` of the training votes.
    """
    K = _check_dataset(dataset)
    _check_common(num_bootstrap, confidence)
    batch_size = _check_positive_int(batch_size, "batch_size", 2)
    num_train = _check_positive_int(num_train, "num_train")
    num_eval = _check_positive_int(num_eval, "num_eval")
    num_variance_estimate = _check_positive_int(num_variance_estimate, "num_variance_estimate", 2)
    max_batch = _check_positive_int(max_batch, "max_batch")
    rng = np.random.default_rng(seed)
    codes = _represent(
        representation, dataset, _sample_factors(dataset, num_variance_estimate, rng), max_batch
    )
    global_var = codes.var(0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    L = global_var.shape[0]
    attrs = {
        "metric": "factor_vae",
        "interval": "bootstrap of the evaluation votes (classifier fixed)",
        "batch_size": batch_size,
        "num_train": num_train,
        "num_eval": num_eval,
        "num_variance_estimate": num_variance_estimate,
        "prune_threshold": float(prune_threshold),
        "chance_level": 1.0 / K,
        "seed": seed,
        "num_bootstrap": int(num_bootstrap),
    }
    votes = np.zeros((K, L))
    if not active.any():
        point = {"factor_vae": 0.0, "factor_vae_train": 0.0, "num_active_dims": 0.0}
        reps: dict[str, np.ndarray] = {"factor_vae": np.empty(0)}  # no votes: NaN interval
    else:
        k_tr, j_tr = _factor_vae_votes(
            representation, dataset, K, batch_size, num_train, rng, max_batch, global_var, active
        )
        np.add.at(votes, (k_tr, j_tr), 1.0)
        classifier = votes.argmax(0)
        k_ev, j_ev = _factor_vae_votes(
            representation, dataset, K, batch_size, num_eval, rng, max_batch, global_var, active
        )
        correct = (classifier[j_ev] == k_ev).astype(np.float64)
        point = {
            "factor_vae": float(correct.mean()),
            "factor_vae_train": factor_vae_accuracy(votes),
            "num_active_dims": float(active.sum()),
        }
        raw = correct[_resample_rows(num_eval, num_bootstrap, rng)].mean(1)
        reps = {"factor_vae": _centred(point["factor_vae"], raw)}
    return _result(
        point,
        reps,
        confidence=confidence,
        details={"votes": (("factor", "latent"), votes)},
        coords={
            "latent": np.arange(L),
            "factor": _factor_coords(K, getattr(dataset, "factor_names", None)),
        },
        attrs=attrs,
    )
