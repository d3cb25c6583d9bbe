r"""The margin bound of [1]_ (THEORY.md section 2): a perturbation size that provably keeps
r-robustness, from the encoder's Jacobian and noise scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr

from pyrobust._results import make_tree
from pyrobust.robustness._jacobian import encoder_jacobian
from pyrobust.robustness._sampling import (
    DEFAULT_MAX_BATCH,
    REFERENCES,
    build_pair,
    event_dims,
    resolve_seed,
    sample_distances,
)
from pyrobust.robustness._sequential import (
    auto_attrs,
    check_auto,
    indicator_draw,
    sequential_lower_bound,
)
from pyrobust.robustness._stats import clopper_pearson_lower, count_inside
from pyrobust.robustness._validation import (
    check_choice,
    check_confidence,
    check_inputs,
    check_positive_int,
    check_radius,
    check_seed,
    check_site_name,
)

__all__ = ["margin_bound"]

NORMS = ("frobenius", "spectral", "whitened")


def margin_bound(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    r: float | Any,
    num_samples: int | str = 1000,
    norm: str = "frobenius",
    confidence: float | None = None,
    reference: str = "mean",
    latent_site: str = "z",
    obs_site: str = "x",
    seed: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    precision: float | None = None,
    max_samples: int = 100_000,
) -> xr.DataTree:
    r"""Lower bound on the r-robustness margin from the encoder Jacobian [1]_.

    Let :math:`p_A = p_r(x, 0)` be the probability of r-robustness before any perturbation,
    :math:`\sigma(x)` the encoder standard deviation and :math:`J(x) = \partial\mu/\partial x`
    the exact Jacobian of the encoder mean. To first order in :math:`\delta`, with
    :math:`\sigma(x+\delta) \approx \sigma(x)`, the Neyman–Pearson argument of [1]_ gives

    .. math::

        R^r(x) \;\ge\; \frac{\min_i \sigma_i(x)\; \Phi^{-1}(p_A)}{\|J(x)\|}

    for every :math:`\|\delta\|_2` below it, with :math:`\|\cdot\|` the Frobenius norm
    (``norm="frobenius"``, as in [1]_) or the spectral norm :math:`\|J\|_2 \le \|J\|_F`
    (``norm="spectral"``, a tighter, still valid bound). ``norm="whitened"`` keeps the theorem's
    own anisotropic form before it is relaxed by :math:`\min_i\sigma_i`: r-robustness holds
    while :math:`\|\Sigma^{-1/2} J \delta\| < \Phi^{-1}(p_A)`, and
    :math:`\|\Sigma^{-1/2} J \delta\| \le \|\Sigma^{-1/2} J\|_2 \|\delta\|`, so

    .. math::

        R^r(x) \;\ge\; \frac{\Phi^{-1}(p_A)}{\|\operatorname{diag}(\sigma(x))^{-1} J(x)\|_2}
        \;\ge\; \frac{\min_i \sigma_i(x)\, \Phi^{-1}(p_A)}{\|J(x)\|_2},

    the tightest of the three (equal to the spectral one for isotropic :math:`\sigma`; on
    mnist5k about 1.9x tighter, docs/RESULTS.md). The bound is **vacuous**, reported as 0,
    when :math:`p_A \le 1/2`. :math:`p_A` is estimated from ``num_samples`` draws,
    :math:`\hat p_A = k/n`; with ``confidence=c`` it is replaced by the one-sided Clopper–Pearson
    lower bound :math:`B^{-1}(1 - c;\, k,\, n-k+1)`, so the bound holds with probability at least
    :math:`c` over the sampling (as in randomized smoothing [2]_). Without ``confidence`` the
    point estimate is used, as in [1]_; then :math:`\hat p_A = 1` gives
    :math:`\Phi^{-1}(1) = \infty` and an infinite bound: pass ``confidence`` for a finite one.

    The Jacobian of all inputs is computed in one forward pass and :math:`d_z` vmapped backward
    passes (no loop over inputs or latent dims); :math:`p_A` by batched predictive sampling as
    in :func:`pyrobust.r_robustness`.

    Parameters
    ----------
    model, guide : callable
        Pyro model and guide following the site protocol. The encoder must map inputs
        independently (no batch-norm in training mode).
    x : torch.Tensor
        Inputs ``(n, *event)``, finite.
    r : float or 1-D array_like
        Output radius (radii, dim ``radius``), ``> 0``.
    num_samples : int or "auto", default 1000
        Draws used to estimate :math:`p_A`. ``"auto"``: draw in rounds (64, 128, ... up to
        ``max_samples``) and stop each input (and radius) at the first look where the estimate
        and its one-sided lower confidence limit differ by at most ``precision``; the limit is
        :math:`B^{-1}((1-c)/J;\, k, n-k+1)` over the :math:`J` looks, so it holds at level
        :math:`c` = ``confidence`` (default 0.95) at the data-dependent stop, and the bound
        uses it (docs/SEQUENTIAL.md).
    norm : {"frobenius", "spectral", "whitened"}, default "frobenius"
        Matrix norm of :math:`J(x)` (``"whitened"``: spectral norm of
        :math:`\operatorname{diag}(\sigma)^{-1} J`, with no :math:`\min_i\sigma_i` factor).
    confidence : float, optional
        If set, use the one-sided lower confidence bound of :math:`p_A` at this level.
    reference : {"mean", "sample"}, default "mean"
        Centre of the ball, as in :func:`pyrobust.r_robustness` ([1]_ uses ``"mean"``). The
        bound also holds for ``"sample"``: given the reference draw the argument above applies,
        and :math:`p \mapsto \Phi(\Phi^{-1}(p) - c)` is convex for :math:`c \ge 0`, so by
        Jensen's inequality it carries over to the average over reference draws.
    latent_site, obs_site : str
        Site names.
    seed : int, optional
        Seed of the local generator (stored in the attrs).
    max_batch : int, default 16384
        Most latent codes per model call; the Jacobian is computed in chunks of
        ``max_batch // d_z`` inputs.
    model_args, model_kwargs : tuple, dict, optional
        Extra arguments of ``model(x, *model_args, **model_kwargs)`` and of the guide.
    precision : float, optional
        With ``num_samples="auto"``: the largest accepted gap :math:`\hat p_A - p_{A,lo}`
        (default 0.01).
    max_samples : int, default 100000
        With ``num_samples="auto"``: the most draws per input and radius.

    Notes
    -----
    The theorem covers one diagonal-Gaussian latent site: a guide that samples other latent
    sites is refused by name (use :func:`pyrobust.r_robustness` or
    :func:`pyrobust.empirical_margin`, which replay every guide site).

    Returns
    -------
    xarray.DataTree
        * ``posterior_predictive/distance`` ``(chain, draw, obs_id)``: draws of
          :math:`\|\Delta(x, 0)\|`;
        * ``constant_data``: ``x``, ``r``;
        * ``robustness``: ``bound``, ``p_a``, ``num_inside``, ``vacuous`` and, with
          ``confidence``, ``p_a_lower`` (each ``(obs_id[, radius])``); ``min_scale``
          (:math:`\min_i\sigma_i(x)`) and ``jacobian_norm`` (``(obs_id,)``).

    Raises
    ------
    ValueError, TypeError
        For bad ``r``, ``num_samples``, ``confidence``, ``norm``, ``reference``, non-finite
        ``x``, missing sites, or an encoder mean that is not differentiable in ``x``.

    References
    ----------
    .. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
       the Robustness of Variational Autoencoders*. AISTATS 2021, main theorem.
    .. [2] Cohen, Rosenfeld, Kolter. *Certified Adversarial Robustness via Randomized
       Smoothing*. ICML 2019.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(2.0 * x, 0.1).to_event(1))
    >>> tree = margin_bound(model, guide, torch.zeros(3, 2), r=0.2, confidence=0.99, seed=0)
    >>> float(tree["robustness"]["jacobian_norm"][0])  # ||2 I||_F
    2.828...
    >>> bool((tree["robustness"]["bound"] > 0).all())
    True
    """
    x = check_inputs(x)
    r_t, r_scalar = check_radius(r, x)
    r_user = r.detach().cpu().to(torch.float64) if isinstance(r, torch.Tensor) else r
    r_user = np.atleast_1d(np.asarray(r_user, dtype=np.float64))  # coords/attrs as given
    if not isinstance(num_samples, str):
        num_samples = check_positive_int(num_samples, "num_samples")
    max_batch = check_positive_int(max_batch, "max_batch")
    norm = check_choice(norm, "norm", NORMS)
    reference = check_choice(reference, "reference", REFERENCES)
    confidence = check_confidence(confidence, allow_none=True)
    auto = check_auto(
        num_samples,
        confidence=0.95 if confidence is None else confidence,
        max_samples=max_samples,
        precision=precision,
        first_round=64,
    )  # None: a fixed design of num_samples draws
    if auto is not None:
        confidence = 0.95 if confidence is None else confidence
        auto["precision"] = 0.01 if auto["precision"] is None else auto["precision"]
    latent_site = check_site_name(latent_site, "latent_site")
    obs_site = check_site_name(obs_site, "obs_site")
    seed_used = resolve_seed(check_seed(seed))
    generator = torch.Generator(device=x.device).manual_seed(seed_used)

    pair = build_pair(model, guide, x, model_args, model_kwargs, latent_site, obs_site)
    pair.require_single_latent("margin_bound")
    with pair.session():
        _, scale, jac = encoder_jacobian(pair, x, max_batch=max_batch)
        with torch.no_grad():
            if auto is None:
                dist = sample_distances(
                    pair,
                    x,
                    None,
                    num_samples=num_samples,
                    reference=reference,
                    generator=generator,
                    max_batch=max_batch,
                )  # (S, n)
            else:  # sequential p_A: stop at the requested precision (docs/SEQUENTIAL.md)
                seq = sequential_lower_bound(
                    indicator_draw(
                        pair,
                        x,
                        None,
                        r_t,
                        reference=reference,
                        generator=generator,
                        max_batch=max_batch,
                    ),
                    x.shape[0] * r_t.numel(),
                    confidence=confidence,
                    precision=auto["precision"],
                    max_samples=auto["max_samples"],
                    first_round=auto["first_round"],
                    growth=auto["growth"],
                    device=x.device,
                )
    with torch.no_grad():
        if auto is None:
            k, _ = count_inside(dist, r_t)  # (n, R)
            n_draws = torch.full_like(k, num_samples)
            p_a = k.to(torch.float64) / num_samples
            p_used = (
                p_a if confidence is None else clopper_pearson_lower(k, num_samples, confidence)
            )
        else:
            cells = (x.shape[0], r_t.numel())
            k, n_draws, p_used = (t.reshape(cells) for t in (seq.k, seq.n, seq.lower))
            p_a = k.to(torch.float64) / n_draws
        jac_flat = jac.reshape(jac.shape[0], jac.shape[1], -1)
        if norm == "whitened":  # rows of J divided by sigma_i: Sigma^{-1/2} J
            jac_flat = jac_flat / scale.unsqueeze(-1)
        ord_ = "fro" if norm == "frobenius" else 2
        jac_norm = torch.linalg.matrix_norm(jac_flat, ord=ord_).to(torch.float64)  # (n,)
        min_scale = scale.min(dim=-1).values.to(torch.float64)  # (n,)
        bad = ~(torch.isfinite(jac_norm) & torch.isfinite(min_scale))
        if bool(bad.any()):
            raise ValueError(
                "The encoder's Jacobian or standard deviation is NaN/inf for input(s) obs_id="
                f"{torch.nonzero(bad).flatten().tolist()[:20]}; no margin can be certified "
                "there. Check the encoder's weights for NaN and its inputs' range."
            )
        vacuous = p_used <= 0.5
        numerator = torch.ones_like(min_scale) if norm == "whitened" else min_scale
        ratio = numerator.unsqueeze(-1) * torch.special.ndtri(p_used) / jac_norm.unsqueeze(-1)
        bound = torch.where(vacuous, torch.zeros_like(ratio), ratio)

    if r_scalar:
        k, p_a, p_used, vacuous, bound = (t[..., 0] for t in (k, p_a, p_used, vacuous, bound))
        n_draws = n_draws[..., 0]
    radius_dims: tuple[str, ...] = () if r_scalar else ("radius",)
    dims = ("obs_id", *radius_dims)
    coords: dict[str, Any] = {"obs_id": torch.arange(x.shape[0])}
    if not r_scalar:
        coords["radius"] = r_user
    summary = {
        "bound": (dims, bound),
        "p_a": (dims, p_a),
        "num_inside": (dims, k),
        "vacuous": (dims, vacuous),
        "min_scale": (("obs_id",), min_scale),
        "jacobian_norm": (("obs_id",), jac_norm),
    }
    if confidence is not None:
        summary["p_a_lower"] = (dims, p_used)
    if auto is not None:
        summary["num_draws"] = (dims, n_draws)
    attrs = {
        "query": "margin_bound",
        "r": float(r_user[0]) if r_scalar else r_user.tolist(),
        "num_samples": num_samples,
        "norm": norm,
        "confidence": confidence,
        "reference": reference,
        **pair.attrs(),
        "seed": seed_used,
        "max_batch": max_batch,
        "perturbation_norm": "l2",
    }
    groups: dict[str, dict[str, Any]] = {
        "constant_data": {"x": x, "r": r_user[0] if r_scalar else r_user}
    }
    observed, obs_dims = pair.observed(x)
    if observed:
        groups["observed_data"] = observed
    if pair.x_is_observed(x):  # x is the observed value: it lives in observed_data
        del groups["constant_data"]["x"]
    if auto is None:
        # the draws p_A is estimated from: mean of `inside` over (chain, draw) is p_a
        inside = dist.unsqueeze(-1) <= r_t.to(dist.dtype)
        if r_scalar:
            inside = inside[..., 0]
        groups["posterior_predictive"] = {
            "distance": dist.unsqueeze(0),
            "inside": inside.to(torch.float64).unsqueeze(0),
        }
    else:  # the draws summarised by their counts (num_inside of num_draws)
        attrs.update(auto_attrs(seq, auto))
        attrs["precision"] = auto["precision"]
        attrs["stopping_rule"] = (
            "stop at the first look where p_a - p_a_lower <= precision, or at max_samples"
        )
    tree = make_tree(
        groups,
        dims={
            "distance": ["obs_id"],
            "inside": list(dims),
            "x": ["obs_id", *event_dims(x.dim() - 1)],
            "r": list(radius_dims),
            **obs_dims,
        },
        coords=coords,
        summary={"robustness": summary},
        attrs=attrs,
    )
    rob = tree["robustness"]
    rob["bound"].attrs["long_name"] = (
        "l2 margin bound Phi^-1(p_A) / ||diag(sigma)^-1 J||_2 (0 when vacuous)"
        if norm == "whitened"
        else "l2 margin bound min_i sigma_i * Phi^-1(p_A) / ||J|| (0 when vacuous)"
    )
    rob["p_a"].attrs["long_name"] = "Monte-Carlo estimate of p_r(x, 0)"
    rob["vacuous"].attrs["long_name"] = "p_A <= 1/2: no margin certified"
    rob["min_scale"].attrs["long_name"] = "min_i sigma_i(x)"
    rob["jacobian_norm"].attrs["long_name"] = (
        "spectral norm of diag(sigma)^-1 d mu / d x"
        if norm == "whitened"
        else f"{norm} norm of d mu / d x"
    )
    if confidence is not None:
        rob["p_a_lower"].attrs["long_name"] = (
            f"one-sided Clopper-Pearson {confidence:g} lower bound"
            + ("" if auto is None else " (confidence sequence, at the stopping look)")
        )
    if auto is not None:
        rob["num_draws"].attrs["long_name"] = "draws used (sequential, to the precision)"
        return tree
    tree["posterior_predictive"]["distance"].attrs["long_name"] = "||Delta(x, 0)||_2"
    return tree
