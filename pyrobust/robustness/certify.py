r"""Certified margins of r-robustness for Lipschitz VAEs [1]_ (THEORY.md section 4).

Let :math:`a, b, c` be the l2 Lipschitz constants of the decoder mean :math:`g`, the encoder mean
:math:`\mu` and the encoder std :math:`\sigma`, :math:`s = \|\sigma(x)\|_2`, :math:`m = d_z`,
and compare two independent reconstructions (reference ``"sample"`` of [1]_)

.. math:: \Delta = g(\mu(x+\delta) + \eta\odot\sigma(x+\delta)) - g(\mu(x) + \eta'\odot\sigma(x)).

Then :math:`\|\Delta\| \le a(b\|\delta\| + \|\eta\odot\sigma(x+\delta) - \eta'\odot\sigma(x)\|)`,
and two bounds on :math:`p(\|\Delta\| \le r)` give radii :math:`R` such that every
:math:`\|\delta\| \le R` keeps :math:`p > 1/2`, for *every* such perturbation, before any attack:

* **Bound 1** (second moment, Markov):
  :math:`p \ge 1 - a^2(b^2\delta^2 + (2s + c\delta)^2)/r^2`, hence

  .. math:: R_1 = \frac{\sqrt{(b^2+c^2)\,r^2/(2a^2) - 4b^2s^2} - 2cs}{b^2+c^2},
     \quad R_1 > 0 \iff s < \frac{r}{2\sqrt2\,a}.

* **Bound 2** (chi-square tail): :math:`p \ge 1 - P(\chi^2_m \ge u)` with
  :math:`u = (r/a - b\delta)^2/(2\gamma^2)` for a fixed std :math:`\gamma` and
  :math:`u = (r/a - b\delta)^2/(c\delta + 2s)^2` for a learned std. The tail is bounded by
  Inglot's inequality [2]_ (:func:`chi2_tail_bound`) or computed exactly. With :math:`u^*` the
  smallest :math:`u` at which the tail is :math:`\le 1/2`, solving :math:`u(\delta) = u^*` gives

  .. math:: R_2^{\text{fixed}} = \frac{r/a - \gamma\sqrt{2u^*}}{b}, \qquad
     R_2^{\text{learned}} = \frac{r/a - 2s\sqrt{u^*}}{b + c\sqrt{u^*}} .

The certified margin is :math:`\max(R_1, R_2, 0)`. Every expression is closed form, so the margin
is computed for all inputs and radii at once, on the inputs' device.

References
----------
.. [1] Barrett, Camuto, Willetts, Rainforth. *Certifiably Robust Variational Autoencoders*.
   AISTATS 2022, arXiv:2102.07559.
.. [2] Inglot. *Inequalities for quantiles of the chi-square distribution*. Probability and
   Mathematical Statistics 30(2), 2010.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
from scipy import optimize, stats

from pyrobust._results import make_tree, to_numpy
from pyrobust.models.sites import Pair
from pyrobust.robustness._sampling import build_pair, event_dims
from pyrobust.robustness._validation import check_inputs, check_radius, check_site_name

__all__ = ["LipschitzDesign", "certified_margin", "chi2_tail_bound", "design_lipschitz"]

_TAILS = ("inglot", "exact")


# --------------------------------------------------------------------------------------------
# the chi-square tail
# --------------------------------------------------------------------------------------------
def _check_m(m, tail: str) -> int:
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
        raise ValueError(
            f"`latent_dim` (the latent dimension m) must be a positive integer; got {m!r}."
        )
    if tail == "inglot" and m < 2:
        raise ValueError(
            f"Inglot's chi-square tail bound (Bound 2) needs `latent_dim` m >= 2; got m={m}. "
            "Use tail='exact' (the exact chi-square tail), or rely on Bound 1."
        )
    return int(m)


def _check_tail(tail) -> str:
    if tail not in _TAILS:
        raise ValueError(f"`tail` must be one of {_TAILS}; got {tail!r}.")
    return tail


def _log_inglot(u: np.ndarray | float, m: int):
    log_c = 0.5 * (m - (m - 1) * math.log(m)) - 0.5 * math.log(math.pi)
    return log_c + 0.5 * m * np.log(u) - 0.5 * u - np.log(u - m + 2)


def chi2_tail_bound(u, m: int):
    r"""Inglot's upper bound on the chi-square tail :math:`P(\chi^2_m \ge u)` [2]_.

    .. math::
        P(\chi^2_m \ge u) \le \frac{C_m\, u^{m/2} e^{-u/2}}{u - m + 2}, \qquad
        C_m = \frac{\exp\left((m - (m-1)\ln m)/2\right)}{\sqrt\pi},
        \qquad m \ge 2,\ u > m - 2 .

    Where the inequality does not apply (:math:`u \le m - 2`) or exceeds 1, the trivial bound 1 is
    returned, so the result is a valid upper bound of the tail for every :math:`u \ge 0`.

    Parameters
    ----------
    u : float, array or torch.Tensor
        Thresholds, :math:`u \ge 0`.
    m : int
        Degrees of freedom, :math:`m \ge 2`.

    Returns
    -------
    Same type as ``u`` (a float for a number): the bound, in :math:`(0, 1]`.

    Examples
    --------
    >>> from scipy import stats
    >>> bool(chi2_tail_bound(20.0, 5) >= stats.chi2.sf(20.0, 5))
    True
    """
    m = _check_m(m, "inglot")
    is_tensor = isinstance(u, torch.Tensor)
    arr = u.detach().double().cpu().numpy() if is_tensor else np.asarray(u, dtype=np.float64)
    if np.any(~(arr >= 0)):
        raise ValueError(f"`u` must be non-negative (a chi-square threshold); got {u!r}.")
    valid = arr > m - 2
    out = np.where(valid, np.exp(_log_inglot(np.where(valid, arr, float(m)), m)), 1.0)
    out = np.minimum(out, 1.0)
    if is_tensor:
        dtype = u.dtype if u.dtype.is_floating_point else torch.float64
        return torch.as_tensor(out, dtype=dtype, device=u.device)
    return float(out) if arr.ndim == 0 else out


@lru_cache(maxsize=256)
def _u_star(m: int, tail: str) -> float:
    r"""Smallest :math:`u` with tail :math:`\le 1/2`: the chi-square median or Inglot's root."""
    if tail == "exact":
        return float(stats.chi2.median(m))
    # log-bound is strictly decreasing on (m - 2, inf) and -> +inf at m - 2
    lo = m - 2 + 1e-12 * max(m, 1)
    hi = float(m) + 10.0
    while _log_inglot(hi, m) > math.log(0.5):
        hi *= 2.0
    return float(optimize.brentq(lambda u: _log_inglot(u, m) - math.log(0.5), lo, hi, xtol=1e-13))


# --------------------------------------------------------------------------------------------
# the two bounds (torch, broadcasting)
# --------------------------------------------------------------------------------------------
def _bound1(r, s, a: float, b: float, c: float):
    """Closed-form Bound 1 radius (0 where vacuous)."""
    k = b * b + c * c
    rad = k * r * r / (2 * a * a) - 4 * b * b * s * s
    root = torch.sqrt(torch.clamp(rad, min=0.0))
    out = (root - 2 * c * s) / k
    return torch.where(rad > 0, out, torch.zeros_like(out)).clamp_min(0.0)


def _bound2(r, s, a: float, b: float, c: float, gamma: float | None, u_star: float):
    """Closed-form Bound 2 radius (0 where vacuous)."""
    q = math.sqrt(u_star)
    if gamma is not None:
        out = ((r / a - gamma * math.sqrt(2.0) * q) / b).expand(
            torch.broadcast_shapes(r.shape, s.shape)
        )
    else:
        out = (r / a - 2 * s * q) / (b + c * q)
    return out.clamp_min(0.0)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _constant(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number (a Lipschitz constant); got "
            f"{type(value).__name__} {value!r}."
        )
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"`{name}` must be a finite {need} number; got {value!r}. Lipschitz constants of a "
            "non-constant network are positive; read them with pyrobust.models.lipschitz_constants."
        )
    return value


def _constants_from_vae(model, guide):
    """Verified constants of a VAE built from pyrobust's Lipschitz modules, or None.

    The VAE is the owner of the bound methods ``guide``/``model`` (e.g. ``vae.guide``). Its
    reconstruction ``decode(z)`` must be the Lipschitz decoder's mean, otherwise the decoder's
    constant is not the constant of g (e.g. logits fed to a Gaussian likelihood).
    """
    from pyrobust.models.lipschitz import LipschitzDecoder, lipschitz_constants

    for fn in (guide, model):
        owner = getattr(fn, "__self__", fn)
        enc, dec = getattr(owner, "encoder", None), getattr(owner, "decoder", None)
        if enc is None or dec is None:
            continue
        try:
            constants = lipschitz_constants(enc, dec)
        except TypeError:
            return None
        decode = getattr(owner, "decode", None)
        if callable(decode) and isinstance(dec, LipschitzDecoder):
            p = next(iter(dec.parameters()))
            z = torch.randn(
                3,
                dec.latent_dim,
                generator=torch.Generator(device=p.device).manual_seed(0),
                device=p.device,
                dtype=p.dtype,
            )
            with torch.no_grad():
                if not torch.allclose(decode(z), dec.mean(z), rtol=1e-4, atol=1e-6):
                    raise ValueError(
                        f"The VAE's reconstruction g(z) = decode(z) is not the mean of its "
                        f"LipschitzDecoder(output={dec.output!r}) (likelihood "
                        f"{type(getattr(owner, 'likelihood', None)).__name__}), so the decoder's "
                        "constant is not the constant a of g. Use output='logits' with a "
                        "Bernoulli likelihood and output='sigmoid' or 'identity' with a Gaussian "
                        "or Laplace one, or pass a yourself."
                    )
        return constants
    return None


def _resolve(model, guide, a, b, c, gamma):
    source = "given"
    if a is None or b is None or (c is None and gamma is None):
        derived = _constants_from_vae(model, guide)
        if derived is None:
            missing = [n for n, v in (("a", a), ("b", b), ("c", c)) if v is None]
            raise TypeError(
                f"certified_margin needs the Lipschitz constants {', '.join(missing)} (of the "
                "decoder mean, encoder mean and encoder std). Pass them as keywords, e.g. "
                "`**pyrobust.models.lipschitz_constants(encoder, decoder)._asdict()`, or pass the "
                "bound methods of a VAE built from LipschitzEncoder/LipschitzDecoder so they can "
                "be verified from its layers."
            )
        given = [n for n, v in (("a", a), ("b", b), ("c", c), ("gamma", gamma)) if v is not None]
        source = "verified from the VAE's layers (lipschitz_constants)"
        if given:
            source = f"{', '.join(given)} given; the rest {source}"
        a = derived.a if a is None else a
        b = derived.b if b is None else b
        if gamma is None and c is None:
            c, gamma = derived.c, derived.gamma
    a, b = _constant("a", a), _constant("b", b)
    if gamma is not None:
        gamma = _constant("gamma", gamma)
        c = 0.0 if c is None else _constant("c", c, allow_zero=True)
        if c != 0.0:
            raise ValueError(
                f"`gamma` (a fixed encoder std) was given with c={c}; a fixed std has c = 0. "
                "Pass c only for a learned std, gamma only for a fixed one."
            )
    else:
        c = _constant("c", c)
    return a, b, c, gamma, source


# --------------------------------------------------------------------------------------------
# the public functions
# --------------------------------------------------------------------------------------------
def certified_margin(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    r,
    a: float | None = None,
    b: float | None = None,
    c: float | None = None,
    gamma: float | None = None,
    tail: str = "inglot",
    latent_site: str = "z",
    obs_site: str = "x",
    model_args: tuple = (),
    model_kwargs: dict | None = None,
):
    r"""Certified margin of r-robustness of a Lipschitz VAE, per input and radius [1]_.

    For each input :math:`x` and radius :math:`r`, the largest :math:`R` such that *every*
    perturbation :math:`\|\delta\|_2 \le R` keeps :math:`p(\|\Delta\|_2 \le r) \ge 1/2`, with
    :math:`\Delta` the difference of two independent reconstructions (reference ``"sample"``):

    .. math:: R(x) = \max\left(R_1(x), R_2(x), 0\right),

    :math:`R_1` from the second-moment bound and :math:`R_2` from the chi-square tail (module
    docstring; THEORY.md section 4). Only :math:`s = \|\sigma(x)\|_2` is read from the model, via
    :func:`pyrobust.models.guide_loc_scale`; the rest is the constants. The certificate holds for
    *any* network with these constants, so it is a lower bound of the true margin: no attack can
    beat it (unlike :func:`pyrobust.margin_bound`, which is first-order).

    Where do the constants come from? Pass ``a, b, c`` (or ``a, b, gamma`` for a fixed-std
    encoder) yourself, e.g. ``**lipschitz_constants(encoder, decoder)._asdict()``. Any you leave
    out are *verified* from the layers (:func:`pyrobust.models.lipschitz_constants`, never the
    nominal targets) when ``guide``/``model`` are bound methods of a module with ``encoder`` and
    ``decoder`` attributes built from :mod:`pyrobust.models.lipschitz` (such as
    ``pyrobust.models.VAE``); otherwise a ``TypeError`` asks for them.

    Parameters
    ----------
    model, guide : callable
        The Pyro pair; only the guide is run, once, on ``x``.
    x : torch.Tensor
        Inputs of shape ``(n, *event)``.
    r : float or 1-D sequence/tensor
        Radius or radii of r-robustness, :math:`r > 0`.
    a, b, c : float, optional
        Lipschitz constants of :math:`g`, :math:`\mu`, :math:`\sigma` (positive).
    gamma : float, optional
        Fixed per-dimension encoder std :math:`\gamma` (then :math:`c = 0`, and the fixed-std
        Bound 2 applies). Checked against the guide's std.
    tail : {"inglot", "exact"}, default "inglot"
        Bound the chi-square tail with Inglot's inequality as in [1]_ (needs :math:`m \ge 2`), or
        use the exact chi-square median (tighter; still a valid certificate, since only the tail
        probability is bounded, not the distribution).
    latent_site : str, default "z"
        Name of the latent site.
    obs_site : str, default "x"
        Name of the observed site, recorded in the attrs (the certificate reads the decoder
        only through its Lipschitz constant ``a``), for the signature every query shares.
    model_args, model_kwargs : tuple, dict, optional
        Extra arguments of ``guide(x, *model_args, **model_kwargs)``.

    Notes
    -----
    The certificate covers a single diagonal-Gaussian latent site: a guide with other latent
    sites is refused by name. Only the guide is run (``model`` may be ``None`` when all
    constants are given).

    Returns
    -------
    xarray.DataTree
        Group ``robustness`` with ``certified_margin``, ``bound1``, ``bound2`` (dims
        ``(obs_id,)`` or ``(obs_id, radius)`` when ``r`` is a sequence), ``best_bound`` (1 or 2,
        0 where nothing is certified) and ``s`` (``(obs_id,)``); the constants, ``u_star``,
        ``latent_dim`` and the other settings in the attrs.

    Raises
    ------
    ValueError
        Non-positive constants or radii, ``gamma`` that does not match the guide's std, or
        ``m < 2`` with ``tail="inglot"``.
    TypeError
        Constants missing and not derivable from the model.

    Examples
    --------
    >>> import torch, pyro, pyro.distributions as dist
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x[:, :2], 0.05).to_event(1))
    >>> tree = certified_margin(None, guide, torch.zeros(3, 4), r=8.0, a=5.0, b=5.0, gamma=0.05)
    >>> float(tree["robustness"]["certified_margin"][0]) > 0
    True
    """
    tail = _check_tail(tail)
    x = check_inputs(x)
    latent_site = check_site_name(latent_site, "latent_site")
    obs_site = check_site_name(obs_site, "obs_site")
    a, b, c, gamma, source = _resolve(model, guide, a, b, c, gamma)
    if model is None:  # constants given: only the guide is needed
        pair = Pair.build_guide(
            guide, x, model_args=model_args, model_kwargs=model_kwargs, latent_site=latent_site
        )
    else:
        pair = build_pair(model, guide, x, model_args, model_kwargs, latent_site, obs_site)
    pair.require_single_latent("certified_margin")
    with torch.no_grad(), pair.session():
        _, scale = pair.encode(x)
        m = _check_m(scale.shape[-1], tail)
        dtype = scale.dtype if scale.dtype.is_floating_point else torch.float32
        rt, scalar = check_radius(r, scale.to(dtype))
        sweep = not scalar
        if gamma is not None and not torch.allclose(
            scale, torch.full_like(scale, gamma), rtol=1e-4, atol=1e-7
        ):
            raise ValueError(
                f"`gamma`={gamma} but the guide's std ranges over [{scale.min().item():.4g}, "
                f"{scale.max().item():.4g}]; gamma is for fixed-std encoders only. Pass c (the "
                "std's Lipschitz constant) instead."
            )
        s = torch.linalg.vector_norm(scale.reshape(scale.shape[0], -1), dim=-1)
        u_star = _u_star(m, tail)
        rr, ss = (rt[None, :], s[:, None]) if sweep else (rt, s)
        r1 = _bound1(rr, ss, a, b, c)
        r2 = _bound2(rr, ss, a, b, c, gamma, u_star)
        margin = torch.maximum(r1, r2)
        best = torch.where(r2 > r1, 2, 1) * (margin > 0)
    dims = ("obs_id", "radius") if sweep else ("obs_id",)
    coords = {"obs_id": np.arange(x.shape[0])}
    if sweep:  # the caller's values (float64), not the model's dtype
        coords["radius"] = np.asarray(to_numpy(r), dtype=np.float64)
    attrs = {
        "query": "certified_margin",
        "reference": "sample",
        "a": a,
        "b": b,
        "c": c,
        "gamma": gamma,
        "constants_source": source,
        "tail": tail,
        "u_star": u_star,
        "latent_dim": m,
        "latent_site": latent_site,
        "obs_site": obs_site,
        **pair.identity(),
        "paper": "Barrett et al. 2022, arXiv:2102.07559",
    }
    if not sweep:
        attrs["r"] = float(to_numpy(r))
    observed, obs_dims = pair.observed(x)
    groups = {"observed_data": observed} if observed else {}
    if not pair.x_is_observed(x):
        groups["constant_data"] = {"x": x}
    return make_tree(
        groups,
        dims={"x": ["obs_id", *event_dims(x.dim() - 1)], **obs_dims},
        coords=coords,
        summary={
            "robustness": {
                "certified_margin": (dims, margin),
                "bound1": (dims, r1),
                "bound2": (dims, r2),
                "best_bound": (dims, best.to(torch.int8)),
                "s": (("obs_id",), s),
            }
        },
        attrs=attrs,
    )


class LipschitzDesign(NamedTuple):
    r"""Constants and std cap that certify a target margin (:func:`design_lipschitz`).

    Attributes
    ----------
    a, b, c : float
        Lipschitz constants of :math:`g`, :math:`\mu`, :math:`\sigma` to build with.
    max_scale_norm : float
        The cap :math:`\bar s` on :math:`\|\sigma(x)\|_2` (``LipschitzEncoder(max_scale_norm=)``).
    gamma : float or None
        For a fixed-std design, the per-dimension std :math:`\gamma = \bar s/\sqrt m`.
    margin : float
        The margin these values certify for every input (>= the target).
    bound : int
        Which bound certifies it (1 or 2).
    """

    a: float
    b: float
    c: float
    max_scale_norm: float
    gamma: float | None
    margin: float
    bound: int


def _margin_at(r, R_s, a, b, c, fixed, m, u_star):
    """(margin, bound) for scalar settings; R_s is the std norm s."""
    t = torch.tensor([float(r)], dtype=torch.float64)
    s = torch.tensor([float(R_s)], dtype=torch.float64)
    gamma = float(R_s) / math.sqrt(m) if fixed else None
    r1 = _bound1(t, s, a, b, c).item()
    r2 = _bound2(t, s, a, b, c, gamma, u_star).item()
    return max(r1, r2), (2 if r2 > r1 else 1)


def _max_cap(r, R, a, b, c, fixed, m, u_star) -> float:
    """Largest s = ||sigma||_2 with certified margin >= R (may be <= 0: none)."""
    q = math.sqrt(u_star)
    rad = r * r / (2 * a * a) - b * b * R * R
    cap1 = (math.sqrt(rad) - c * R) / 2 if rad > 0 else -math.inf
    cap2 = (r / a - b * R - c * R * q) / (2 * q)
    if fixed:  # s = gamma sqrt(m); bound 2 uses 2 gamma^2
        cap2 = (r / a - b * R) / math.sqrt(2 * u_star) * math.sqrt(m)
    return max(cap1, cap2)


def design_lipschitz(
    r: float,
    margin: float,
    latent_dim: int,
    *,
    a: float | None = None,
    b: float | None = None,
    c: float | None = None,
    max_scale_norm: float | None = None,
    fixed_std: bool = False,
    tail: str = "inglot",
) -> LipschitzDesign:
    r"""Lipschitz constants and std cap that certify margin ``margin`` at radius ``r`` [1]_.

    The certified margin :math:`\max(R_1, R_2)` of :func:`certified_margin` decreases in each of
    :math:`a, b, c` and :math:`s = \|\sigma(x)\|_2`; capping :math:`s \le \bar s` (the encoder's
    ``max_scale_norm``) makes the certificate hold for *every* input. Two questions are answered:

    * all of ``a, b, c`` given: the largest cap :math:`\bar s` with
      :math:`\max(R_1, R_2) \ge` ``margin``, in closed form from

      .. math:: \bar s = \max\left(\tfrac12\left(\sqrt{r^2/(2a^2) - b^2R^2} - cR\right),\
                \frac{r/a - bR - cR\sqrt{u^*}}{2\sqrt{u^*}}\right);

    * ``max_scale_norm`` given: the constants left as ``None`` share one value :math:`L`, the
      largest that certifies the margin (found by root-finding; e.g. ``a = b = c = L`` as in the
      experiments of [1]_ when none is given).

    Parameters
    ----------
    r : float
        Radius of r-robustness.
    margin : float
        Target certified margin :math:`R > 0`.
    latent_dim : int
        :math:`m = d_z`.
    a, b, c : float, optional
        Constants to hold fixed.
    max_scale_norm : float, optional
        Cap :math:`\bar s` to hold fixed.
    fixed_std : bool, default False
        Design a fixed-std encoder (:math:`c = 0`, std :math:`\gamma = \bar s/\sqrt m`, the
        fixed-std Bound 2).
    tail : {"inglot", "exact"}, default "inglot"
        As in :func:`certified_margin`.

    Returns
    -------
    LipschitzDesign

    Raises
    ------
    ValueError
        When no design exists under the values held fixed (the message says which limit is hit
        and what would be needed), or on invalid input.

    Examples
    --------
    >>> d = design_lipschitz(8.0, 0.139, 10, a=5.0, b=5.0, c=5.0)
    >>> round(d.max_scale_norm, 2)
    0.1
    """
    tail = _check_tail(tail)
    m = _check_m(latent_dim, tail)
    r = _constant("r", r)
    R = _constant("margin", margin)
    if not isinstance(fixed_std, bool):
        raise TypeError(f"`fixed_std` must be a bool; got {fixed_std!r}.")
    a = None if a is None else _constant("a", a)
    b = None if b is None else _constant("b", b)
    if fixed_std:
        if c not in (None, 0, 0.0):
            raise ValueError(f"A fixed-std design has c = 0; got c={c!r}. Leave c out.")
        c = 0.0
    elif c is not None:
        c = _constant("c", c)
    u_star = _u_star(m, tail)

    def result(a_, b_, c_, cap):
        got, which = _margin_at(r, cap, a_, b_, c_, fixed_std, m, u_star)
        gamma = cap / math.sqrt(m) if fixed_std else None
        return LipschitzDesign(a_, b_, c_, cap, gamma, got, which)

    unknown = [n for n, v in (("a", a), ("b", b), ("c", c)) if v is None]
    if not unknown:
        if max_scale_norm is not None:
            cap = _constant("max_scale_norm", max_scale_norm)
            design = result(a, b, c, cap)
            if design.margin < R * (1 - 1e-12):
                raise ValueError(
                    f"With a={a}, b={b}, c={c} and ||sigma|| <= {cap} the certified margin at "
                    f"r={r} is {design.margin:.4g} < the target {R}. Leave max_scale_norm out "
                    "to get the largest cap that works, or leave constants out to solve for them."
                )
            return design
        cap = _max_cap(r, R, a, b, c, fixed_std, m, u_star)
        if cap <= 0:
            best, _ = _margin_at(r, 0.0, a, b, c, fixed_std, m, u_star)
            raise ValueError(
                f"No cap on ||sigma|| certifies margin {R} at r={r} with a={a}, b={b}, c={c}: "
                f"even a deterministic encoder (s = 0) certifies only {best:.4g}. Lower a*b "
                f"(the margin scales as r/(a b)), or raise r, or lower the target margin."
            )
        return result(a, b, c, cap)

    if max_scale_norm is None:
        raise ValueError(
            f"design_lipschitz solves for one thing at a time: with {', '.join(unknown)} left "
            "out, give max_scale_norm (the cap on ||sigma||_2) and the missing constants are "
            "solved for as one common value; or give all of a, b, c to get the largest cap."
        )
    cap = _constant("max_scale_norm", max_scale_norm)

    def constants(L):
        return (a if a is not None else L, b if b is not None else L, c if c is not None else L)

    def excess(log_l):
        return _margin_at(r, cap, *constants(math.exp(log_l)), fixed_std, m, u_star)[0] - R

    lo, hi = -60.0, 0.0
    if excess(lo) <= 0:
        limit = _max_cap(r, 0.0, a or 1.0, 1.0, 1.0, fixed_std, m, u_star)
        raise ValueError(
            f"No {', '.join(unknown)} certify margin {R} at r={r} with ||sigma||_2 <= {cap} and "
            f"the constants given (a={a}, b={b}, c={c}): the encoder noise alone uses up the "
            f"radius. Lower max_scale_norm below {limit:.4g} (u* = {u_star:.4g}), or lower a."
        )
    while excess(hi) > 0:
        lo, hi = hi, hi + 10.0
    log_l = optimize.brentq(excess, lo, hi, xtol=1e-12)
    # step just below the root so the certified margin is >= the target despite rounding
    L = math.exp(log_l) * (1 - 1e-9)
    return result(*constants(L), cap)
