r"""r-robustness of a VAE as a probabilistic query answered by predictive sampling.

Implements the r-robustness of [1]_ (THEORY.md section 1) for any Pyro model/guide pair that
follows the site protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from pyrobust._results import ci_bound, make_tree
from pyrobust.models.sites import Pair
from pyrobust.robustness._sampling import (
    DEFAULT_MAX_BATCH,
    FAMILIES,
    REFERENCES,
    build_pair,
    event_dims,
    random_perturbations,
    resolve_seed,
    sample_distances,
)
from pyrobust.robustness._sequential import (
    auto_attrs,
    check_auto,
    indicator_draw,
    pert_shape,
    sequential_decide,
    sequential_decision_attrs,
)
from pyrobust.robustness._stats import (
    clopper_pearson,
    count_inside,
    decide,
)
from pyrobust.robustness._validation import (
    check_choice,
    check_confidence,
    check_finite,
    check_inputs,
    check_perturbation,
    check_positive_int,
    check_radius,
    check_seed,
    check_site_name,
)

__all__ = ["r_robustness"]


def _check_eps(eps: Any, x: torch.Tensor) -> torch.Tensor:
    try:
        t = torch.as_tensor(
            eps.detach() if isinstance(eps, torch.Tensor) else eps, dtype=torch.float64
        )
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"`eps` must be a number or 1-D array of perturbation sizes; got {type(eps).__name__}."
        ) from err
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(
            f"`eps` must be a scalar or non-empty 1-D array; got shape {tuple(t.shape)}."
        )
    check_finite(t, "eps")
    if bool((t < 0).any()):
        raise ValueError(f"`eps` must be >= 0 (perturbation sizes); got {t.tolist()}.")
    return t.reshape(-1).to(device=x.device, dtype=x.dtype)


def r_robustness(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    r: float | Any,
    delta: torch.Tensor | None = None,
    num_samples: int | str = 1000,
    reference: str = "mean",
    confidence: float = 0.95,
    latent_site: str = "z",
    obs_site: str = "x",
    seed: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    eps: float | Any | None = None,
    family: str | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    error: float | None = None,
    max_samples: int = 100_000,
    tolerance: float | None = None,
    return_sites: Sequence[str] | None = None,
) -> xr.DataTree:
    r"""Probability that the reconstruction of :math:`x + \delta` stays within ``r`` [1]_.

    With encoder :math:`q(z \mid x) = N(\mu(x), \operatorname{diag}\sigma(x)^2)` (the guide),
    decoder mean :math:`g` (the model's observed site) and :math:`\eta \sim N(0, I)`,

    .. math::

        \Delta(x, \delta) = g\big(\mu(x+\delta) + \eta \odot \sigma(x+\delta)\big)
            - \mathrm{ref}(x), \qquad
        p_r(x, \delta) = P\big(\|\Delta(x, \delta)\|_2 \le r\big),

    where :math:`\mathrm{ref}(x) = g(\mu(x))` (``reference="mean"``, [1]_) or an independent
    draw :math:`g(\mu(x) + \eta'\odot\sigma(x))` (``"sample"``, [2]_), and the norm runs over all
    event dims. The model is **r-robust** at :math:`x` to :math:`\delta` iff
    :math:`p_r > 1/2`. With :math:`k` of :math:`n` draws inside the ball,
    :math:`\hat p = k/n`, reported with the exact Clopper–Pearson interval [3]_
    :math:`[B^{-1}(\alpha/2; k, n-k+1),\, B^{-1}(1-\alpha/2; k+1, n-k)]`,
    :math:`\alpha = 1 - \text{confidence}`, and a three-valued decision: robust (code 1) when
    the interval lies above 1/2, not robust (-1) when below, undecided (0) otherwise. The
    **degree of robustness** (the smallest ``r`` for which the criterion holds) is the median of
    :math:`\|\Delta\|`.

    All draws, inputs, perturbations and radii are computed in one batched program on the device
    of ``x``: samples are folded into the model's data plate, at most ``max_batch`` latent codes
    per model call, with Pyro validation off while decoding.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and guide following the site protocol: the guide samples ``latent_site``
        from ``dist.Normal(loc, scale).to_event(1)``; the model's ``obs_site`` distribution has
        ``.mean`` = :math:`g(z)`.
    x : torch.Tensor
        Inputs of shape ``(n, *event)``, finite.
    r : float or 1-D array_like
        Radius (radii) of the output ball, ``> 0``. A 1-D array gives a curve over dim
        ``radius``.
    delta : torch.Tensor, optional
        A fixed perturbation shaped like ``x``, or a stack ``(m, *x.shape)`` (dim
        ``perturbation``). Default: no perturbation (:math:`\delta = 0`).
    num_samples : int or "auto", default 1000
        Monte-Carlo draws of the encoder noise per input (shared across the perturbations and
        radii of an input: common random numbers). ``"auto"``: **sequential decisions**, as
        few draws as each cell (input, perturbation, radius) needs: draws in rounds at
        cumulative sizes 16, 32, 64, ... up to ``max_samples``, only for the cells still
        undecided, and stops a cell when its Clopper–Pearson confidence sequence (level
        :math:`1 - \text{error}/J` at each of the :math:`J` looks, so :math:`1 - \text{error}`
        over all of them) lies above or below 1/2. The probability of a wrong decision is at
        most ``error`` for every true :math:`p` (docs/SEQUENTIAL.md).
    reference : {"mean", "sample"}, default "mean"
        The centre of the ball, see above.
    confidence : float, default 0.95
        Level of the Clopper–Pearson interval, in (0, 1).
    latent_site, obs_site : str
        Names of the latent and observed sample sites.
    seed : int, optional
        Seed of a local ``torch.Generator`` on ``x``'s device: same seed, same answer. By
        default drawn from torch's global generator (so ``pyro.set_rng_seed`` applies); the seed
        used is stored in the attrs.
    max_batch : int, default 16384
        Most latent codes decoded in one model call (bounds memory).
    eps : float or 1-D array_like, optional
        Sizes of random perturbations from ``family`` (dim ``eps``); requires ``family``.
    family : {"gaussian", "sphere", "linf"}, optional
        A random perturbation family, one direction :math:`u` per input shared over ``eps``:
        ``"gaussian"`` :math:`u \sim N(0, I/d)` (so :math:`E\|\epsilon u\|^2 = \epsilon^2`),
        ``"sphere"`` uniform on the unit l2 sphere, ``"linf"`` uniform in :math:`[-1, 1]^d`.
        Mutually exclusive with ``delta``.
    model_args, model_kwargs : tuple, dict, optional
        Extra arguments: model and guide are called as ``model(x, *model_args,
        **model_kwargs)``, as by ``pyro.infer.Predictive``. Tensors whose leading dim is
        ``len(x)`` follow their input when draws are folded into the data plate.
    error : float, optional
        With ``num_samples="auto"``: the probability of a wrong decision per cell (default
        ``1 - confidence``, i.e. 0.05).
    max_samples : int, default 100000
        With ``num_samples="auto"``: draws after which a cell is left ``"undecided"``.
    return_sites : sequence of str, optional
        Guide latent sites whose draws at the perturbed inputs to keep in a ``posterior``
        group, dims ``(chain, draw, obs_id[, perturbation | eps], ...)`` (``latent`` for the
        latent site, ``<site>_dim_<i>`` for others). Fixed designs only.
    tolerance : float, optional
        With ``num_samples="auto"``: an indifference zone; a cell whose interval lies inside
        :math:`1/2 \pm` ``tolerance`` stops with the decision ``"about 1/2"``.

    Notes
    -----
    Every latent site of the guide is drawn jointly from the guide at :math:`x + \delta` and
    replayed into the model (the semantics of ``pyro.infer.Predictive(model, guide=guide)``);
    nothing comes from the model's prior. With ``reference="mean"`` the reference holds the
    guide's other latent sites at their mean (continuous) or mode (discrete). Modules in
    training mode run in evaluation mode for the query (their flags are restored after).

    Returns
    -------
    xarray.DataTree
        * ``posterior_predictive``: ``distance`` ``(chain, draw, obs_id[, perturbation |
          eps])``, the draws of :math:`\|\Delta\|`, and ``inside`` (the same dims
          ``[, radius]``), the 0/1 indicators :math:`\|\Delta\| \le r`: their mean over
          ``(chain, draw)`` is ``probability``, and ``arviz_stats.summary``/``mcse`` on them give
          its Monte-Carlo error;
        * ``observed_data/<obs_site>``: the observed site's value at ``x`` (its own dims);
        * ``constant_data``: ``x`` ``(obs_id, *event)``, ``delta``
          ``(obs_id[, perturbation | eps], *event)`` and ``r``;
        * ``robustness``: ``probability``, ``ci`` (with a ``ci_bound`` dim, ``"lower"``,
          ``"upper"``), ``num_inside``, ``num_draws`` and ``decision`` (int8 codes 1 robust,
          0 undecided, -1 not robust, with CF ``flag_values``/``flag_meanings`` attrs), each
          ``(obs_id[, perturbation | eps][, radius])``; ``degree``
          ``(obs_id[, perturbation | eps])``.
        * with ``num_samples="auto"`` the draws are summarised by their counts: no
          ``posterior_predictive`` group and no ``degree``; ``num_draws`` holds the draws
          used per cell, ``decision`` may be 2 (about 1/2, with ``tolerance``), and the attrs
          record ``sequential_method``, ``error``, ``looks``, ``rounds`` and ``total_draws``.

        Event dims are named ``feature`` (1-D inputs), ``row, col`` or ``channel, row, col``;
        the observed site's dims likewise (prefixed with the site's name where a name would
        clash with an input dim of another size). Every setting and the model's identity
        (``model_hash``, ``model_name``) are in the attrs.

    Raises
    ------
    ValueError, TypeError
        For a non-positive ``r``, ``num_samples < 1``, ``confidence`` outside (0, 1), a
        ``delta`` of the wrong shape, NaN/inf in ``x`` or ``delta``, an unknown ``reference``
        or ``family``, or a guide/model without the named sites.

    See Also
    --------
    pyrobust.margin_bound : a certified lower bound on the perturbation size that keeps
        r-robustness.

    References
    ----------
    .. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
       the Robustness of Variational Autoencoders*. AISTATS 2021.
    .. [2] Barrett, Camuto, Willetts, Rainforth. *Certifiably Robust Variational Autoencoders*.
       AISTATS 2022.
    .. [3] Clopper, Pearson. *The use of confidence or fiducial limits illustrated in the case
       of the binomial*. Biometrika 26 (1934).

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x, 0.1).to_event(1))
    >>> x = torch.zeros(3, 2)
    >>> tree = r_robustness(model, guide, x, r=[0.1, 0.3], delta=0.05 * torch.ones(3, 2), seed=0)
    >>> tree["robustness"]["probability"].dims
    ('obs_id', 'radius')
    >>> int(tree["robustness"]["decision"].sel(radius=0.3)[0])  # 1: robust
    1

    As few draws as each answer needs (sequential, error 0.05 per cell):

    >>> tree = r_robustness(model, guide, x, r=[0.1, 0.3], num_samples="auto", seed=0)
    >>> rob = tree["robustness"]
    >>> rob["decision"].values[0].tolist(), rob["num_draws"].values[0].tolist()
    ([-1, 1], [512, 16])
    """
    x = check_inputs(x)
    r_t, r_scalar = check_radius(r, x)
    r_user = r.detach().cpu().to(torch.float64) if isinstance(r, torch.Tensor) else r
    r_user = np.atleast_1d(np.asarray(r_user, dtype=np.float64))  # coords/attrs as given
    if not isinstance(num_samples, str):
        num_samples = check_positive_int(num_samples, "num_samples")
    max_batch = check_positive_int(max_batch, "max_batch")
    reference = check_choice(reference, "reference", REFERENCES)
    confidence = check_confidence(confidence)
    latent_site = check_site_name(latent_site, "latent_site")
    obs_site = check_site_name(obs_site, "obs_site")
    seed_used = resolve_seed(check_seed(seed))
    generator = torch.Generator(device=x.device).manual_seed(seed_used)
    auto = check_auto(
        num_samples,
        error=error,
        confidence=confidence,
        max_samples=max_samples,
        tolerance=tolerance,
    )  # None: a fixed design of num_samples draws

    eps_t = None
    if family is not None or eps is not None:
        if family is None:
            raise ValueError(
                "`eps` needs a random perturbation `family` ('gaussian', 'sphere' or 'linf'); "
                "for a fixed perturbation pass `delta=` instead."
            )
        family = check_choice(family, "family", FAMILIES)
        if delta is not None:
            raise ValueError(
                "Pass either `delta` (fixed perturbations) or `family`/`eps` (random ones), "
                "not both."
            )
        if eps is None:
            raise ValueError(f"`family={family!r}` needs a grid of sizes `eps=`.")
        eps_t = _check_eps(eps, x)
        eps_user = eps.detach().cpu().to(torch.float64) if isinstance(eps, torch.Tensor) else eps
        eps_user = np.atleast_1d(np.asarray(eps_user, dtype=np.float64))
        delta_t = random_perturbations(x, eps_t, family, generator=generator)
        pert_dims: tuple[str, ...] = ("eps",)
    elif delta is not None:
        delta_t = check_perturbation(delta, x)  # (m, *x.shape)
        single = np.ndim(delta) == x.dim()  # shaped like x, not a stack
        pert_dims = () if single else ("perturbation",)
        if single:
            delta_t = delta_t[0]
    else:
        delta_t, pert_dims = None, ()

    pair = build_pair(model, guide, x, model_args, model_kwargs, latent_site, obs_site)
    sites = _check_return_sites(return_sites, pair, auto)
    site_dims: dict[str, list[str]] = {}
    with torch.no_grad(), pair.session():
        if auto is None:
            kept = {name: [] for name in sites}
            dist = sample_distances(
                pair,
                x,
                delta_t,
                num_samples=num_samples,
                reference=reference,
                generator=generator,
                max_batch=max_batch,
                return_sites=kept,
            )  # (S, n, *pert)
            k, degree = count_inside(dist, r_t)  # (n, *pert, R), (n, *pert)
            lower, upper = clopper_pearson(k, num_samples, confidence)
            codes = decide(lower, upper)
            n_draws = torch.full_like(k, num_samples)
        else:  # sequential: rounds for the undecided cells only (docs/SEQUENTIAL.md)
            cells = (x.shape[0], *pert_shape(delta_t, x), r_t.numel())
            seq = sequential_decide(
                indicator_draw(
                    pair,
                    x,
                    delta_t,
                    r_t,
                    reference=reference,
                    generator=generator,
                    max_batch=max_batch,
                ),
                math.prod(cells),
                error=auto["error"],
                max_samples=auto["max_samples"],
                first_round=auto["first_round"],
                growth=auto["growth"],
                tolerance=auto["tolerance"],
                device=x.device,
            )
            k, n_draws, lower, upper, codes = (
                t.reshape(cells) for t in (seq.k, seq.n, seq.lower, seq.upper, seq.decision_codes)
            )

    radius_dims: tuple[str, ...] = () if r_scalar else ("radius",)
    if r_scalar:
        k, lower, upper, codes = k[..., 0], lower[..., 0], upper[..., 0], codes[..., 0]
        n_draws = n_draws[..., 0]
    prob_dims = ("obs_id", *pert_dims, *radius_dims)
    ev_dims = event_dims(x.dim() - 1)
    if delta_t is None:
        delta_out = torch.zeros_like(x)
    else:
        delta_out = delta_t.movedim(0, 1) if pert_dims else delta_t
    n = x.shape[0]
    coords: dict[str, Any] = {"obs_id": torch.arange(n)}
    if not r_scalar:
        coords["radius"] = r_user
    if pert_dims == ("eps",):
        coords["eps"] = eps_user
    elif pert_dims:
        coords["perturbation"] = torch.arange(delta_t.shape[0])
    attrs = {
        "query": "r_robustness",
        "r": r_user.tolist() if not r_scalar else float(r_user[0]),
        "num_samples": num_samples,
        "reference": reference,
        "confidence": confidence,
        **pair.attrs(),
        "seed": seed_used,
        "max_batch": max_batch,
        "perturbation": "none" if delta_t is None else (family or "fixed"),
        "family": family,
        "eps": None if eps_t is None else eps_user.tolist(),
        "distance": "l2 norm over the observed site's event dims",
        "decision_rule": "1 (robust) if ci lower > 1/2; -1 (not robust) if ci upper < 1/2; "
        "else 0 (undecided)",
    }
    observed, obs_dims = pair.observed(x)
    groups: dict[str, dict[str, Any]] = {
        "constant_data": {"x": x, "delta": delta_out, "r": r_user[0] if r_scalar else r_user}
    }
    if observed:
        groups["observed_data"] = observed
    if pair.x_is_observed(x):  # x is the observed value: it lives in observed_data
        del groups["constant_data"]["x"]
    summary: dict[str, Any] = {
        "probability": (prob_dims, k.to(torch.float64) / n_draws),
        "ci": ((*prob_dims, "ci_bound"), ci_bound(lower, upper)),
        "num_inside": (prob_dims, k),
        "num_draws": (prob_dims, n_draws),
        "decision": (prob_dims, codes.to(torch.int8)),
    }
    if auto is None:
        # The draws every answer is computed from, where ArviZ looks for them: the mean of
        # `inside` over (chain, draw) is the probability, its mcse the Monte-Carlo error.
        inside = dist.unsqueeze(-1) <= r_t.to(dist.dtype)  # (S, n, *pert, R)
        if r_scalar:
            inside = inside[..., 0]
        if kept:
            groups["posterior"] = {k: v.unsqueeze(0) for k, v in kept.items()}
            site_dims = {
                k: ["obs_id", *pert_dims]
                + (
                    ["latent"]
                    if k == latent_site
                    else [f"{k}_dim_{i}" for i in range(v.dim() - 2 - len(pert_dims))]
                )
                for k, v in kept.items()
            }
        groups["posterior_predictive"] = {
            "distance": dist.unsqueeze(0),
            "inside": inside.to(torch.float64).unsqueeze(0),
        }
        summary["degree"] = (("obs_id", *pert_dims), degree)
    else:  # the draws summarised by their counts; what was done goes to the attrs
        attrs.update(auto_attrs(seq, auto))
        attrs["confidence"] = 1.0 - auto["error"]
        attrs["decision_rule"] = (
            "sequential: stop at the first look where ci_lower > 1/2 (robust), ci_upper < 1/2 "
            "(not robust)"
            + ("" if auto["tolerance"] is None else ", or both inside 1/2 +- tolerance (about 1/2)")
            + "; undecided when max_samples draws are spent; P(wrong decision) <= error per cell"
        )
    tree = make_tree(
        groups,
        dims={
            "distance": ["obs_id", *pert_dims],
            "inside": list(prob_dims),
            "x": ["obs_id", *ev_dims],
            "delta": ["obs_id", *pert_dims, *ev_dims],
            "r": list(radius_dims),
            **obs_dims,
            **site_dims,
        },
        coords=coords,
        summary={"robustness": summary},
        attrs=attrs,
    )
    _describe(tree, confidence, auto)
    return tree


def _check_return_sites(return_sites, pair: Pair, auto) -> tuple[str, ...]:
    if return_sites is None:
        return ()
    if isinstance(return_sites, str) or not all(isinstance(v, str) for v in return_sites):
        raise TypeError(
            f"`return_sites` must be a list of site names, e.g. [{pair.latent_site!r}]; got "
            f"{return_sites!r}."
        )
    known = (pair.latent_site, *pair.extra)
    unknown = [v for v in return_sites if v not in known]
    if unknown:
        raise ValueError(
            f"`return_sites` names {unknown}, which the guide does not sample; its latent sites "
            f"are {list(known)}."
        )
    if auto is not None and return_sites:
        raise ValueError(
            "`return_sites` keeps every draw, which a sequential design (num_samples='auto') "
            "summarises by counts; pass a fixed num_samples to keep the draws."
        )
    return tuple(dict.fromkeys(return_sites))


def _describe(tree: xr.DataTree, confidence: float, auto: dict | None = None) -> None:
    """Per-variable descriptions (CF ``long_name``) in the robustness group."""
    rob = tree["robustness"]
    rob["probability"].attrs["long_name"] = "Monte-Carlo estimate of p(||Delta|| <= r)"
    level = f"{confidence:g}" if auto is None else "1 - error/J (per look; 1 - error jointly)"
    rob["ci"].attrs["long_name"] = f"exact Clopper-Pearson {level} interval"
    rob["num_inside"].attrs["long_name"] = "number of draws with ||Delta|| <= r"
    if auto is not None:
        rob["num_draws"].attrs["long_name"] = "draws used (sequential design)"
        rob["decision"].attrs.update(sequential_decision_attrs())
        return
    rob["num_draws"].attrs["long_name"] = "draws per cell (fixed design)"
    rob["degree"].attrs["long_name"] = "degree of robustness: median of ||Delta||"
    pp = tree["posterior_predictive"]
    pp["distance"].attrs["long_name"] = "||Delta(x, delta)||_2"
    pp["inside"].attrs["long_name"] = "indicator ||Delta(x, delta)||_2 <= r"
