r"""Adversarial attacks on variational autoencoders.

Three attacks, each a query on a Pyro ``(model, guide)`` pair through the site protocol
(:mod:`pyrobust.models.sites`: every guide site replayed into the model, as
``pyro.infer.Predictive`` does):

* :func:`max_damage_attack` -- the untargeted maximum-damage attack of [1]_,

  .. math::

     \delta^\star = \operatorname*{arg\,max}_{\|\delta\| \le \epsilon,\; x+\delta \in [l, h]}
     \mathbb{E}_{\eta \sim \mathcal N(0, I)}
     \bigl\| g\bigl(\mu(x+\delta) + \eta \odot \sigma(x+\delta)\bigr) - g(\mu(x)) \bigr\|_2 ,

  solved by batched projected gradient ascent with expectation over the encoder noise
  (EOT) and random restarts, or by the paper's L-BFGS-B;
* :func:`latent_attack` -- the targeted latent-space attack of [2]_ and [3]_,
  :math:`\min_d D(q(z|x+d) \,\|\, q(z|x_t)) + \lambda \|d\|_2` (soft) or
  :math:`\min_{\|d\| \le \epsilon} D(\cdot)` (hard), with :math:`D` the closed-form KL
  divergence or the squared 2-Wasserstein distance between diagonal Gaussians;
* :func:`output_attack` -- the targeted output attack of [4]_,
  :math:`\min_d -\mathrm{ELBO}(x_t; q(z|x+d)) + \lambda \|d\|_2`.

Every attack is batched: inputs, restarts, budgets and trade-off weights are folded into the
data dimension of one call of the guide and the model, so a GPU runs one program per step.

References
----------
.. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
   the Robustness of Variational Autoencoders*. AISTATS 2021.
.. [2] Tabacof, Tavares, Valle. *Adversarial Images for Variational Autoencoders*.
   NIPS Workshop on Adversarial Training, 2016.
.. [3] Gondim-Ribeiro, Tabacof, Valle. *Adversarial Attacks on Variational Autoencoders*.
   LatinX in AI Workshop, 2018. arXiv:1806.04646.
.. [4] Kos, Fischer, Song. *Adversarial Examples for Generative Models*. IEEE S&P Workshops,
   2018.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
from pyro.poutine.subsample_messenger import _Subsample
from scipy import optimize

from pyrobust._results import make_tree, to_numpy
from pyrobust.models.sites import Pair, _latents, per_row_log_prob
from pyrobust.robustness._sampling import (
    DEFAULT_MAX_BATCH,
    REFERENCES,
    build_pair,
    event_dims,
    joint_rng,
    make_generator,
    output_dims,
    resolve_seed,
    sample_distances,
)
from pyrobust.robustness._stats import binomial_summary
from pyrobust.robustness._validation import (
    check_choice,
    check_confidence,
    check_finite,
    check_inputs,
    check_positive_int,
    check_seed,
)

__all__ = ["latent_attack", "max_damage_attack", "output_attack"]

logger = logging.getLogger(__name__)

_NORMS = ("l2", "linf")
_METHODS = ("pgd", "lbfgs")
_DIVERGENCES = ("kl", "w2")
#: The protocol of [3]: 50 geometrically spaced trade-off weights in [2^-20, 2^20].
DEFAULT_LAMBDAS = tuple(float(v) for v in np.geomspace(2.0**-20, 2.0**20, 50))


# --------------------------------------------------------------------------------------------
# validation (private; shared with pyrobust.robustness.empirical)
# --------------------------------------------------------------------------------------------
def _check_x(x, fn: str) -> torch.Tensor:
    return check_inputs(x).detach()


def _check_positive(value, name: str, fn: str, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{fn}: {name} must be a positive number; got {value!r}.")
    return float(value)


def _check_grid(value, name: str, fn: str, x: torch.Tensor, *, positive: bool) -> torch.Tensor:
    """A scalar or 1-D grid of non-negative (or positive) finite numbers, on x's device."""
    try:
        grid = torch.as_tensor(value, dtype=x.dtype, device=x.device).detach()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{fn}: {name} must be a number or a 1-D sequence of numbers; got {value!r}."
        ) from err
    if grid.dim() > 1 or grid.numel() == 0:
        raise ValueError(
            f"{fn}: {name} must be a number or a non-empty 1-D grid; got shape {tuple(grid.shape)}."
        )
    bad = ~torch.isfinite(grid) | (grid <= 0 if positive else grid < 0)
    if bool(bad.any()):
        need = "> 0" if positive else ">= 0"
        raise ValueError(
            f"{fn}: every {name} must be finite and {need}; got {to_numpy(grid).tolist()}."
        )
    return grid.reshape(-1)


def _check_box(box, x: torch.Tensor, fn: str) -> tuple[float, float] | None:
    if box is None:
        return None
    try:
        lo, hi = (float(b) for b in box)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{fn}: box must be a pair (low, high) of numbers or None; got {box!r}."
        ) from err
    if not lo < hi:
        raise ValueError(f"{fn}: box must satisfy low < high; got {box!r}.")
    if bool(((x < lo) | (x > hi)).any()):
        raise ValueError(
            f"{fn}: x has values in [{x.min().item():.4g}, {x.max().item():.4g}] outside "
            f"box={box!r}. Pass the data range as box=(low, high), or box=None for "
            "unbounded inputs."
        )
    return lo, hi


def _check_target(target, x: torch.Tensor, fn: str) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor; got {type(target).__name__}.")
    event = tuple(x.shape[1:])
    if tuple(target.shape) == event:
        target = target.unsqueeze(0).expand_as(x)
    elif tuple(target.shape) != tuple(x.shape):
        raise ValueError(
            f"{fn}: target must have the input's event shape {event} (one target for every "
            f"input) or x's shape {tuple(x.shape)} (one per input); got "
            f"{tuple(target.shape)}."
        )
    target = target.detach().to(device=x.device, dtype=x.dtype)
    check_finite(target, "target")
    return target


def _check_obs_target(target, pair: Pair, fn: str, x: torch.Tensor) -> torch.Tensor:
    """A target in the observed site's shape: ``obs_event`` (shared) or ``(n, *obs_event)``,
    on ``x``'s device in the observed value's dtype (``x``'s when the site is not observed)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{fn}: target must be a torch.Tensor; got {type(target).__name__}.")
    dtype = pair.obs_value.dtype if pair.obs_value is not None else x.dtype
    target = target.detach().to(device=x.device, dtype=dtype)
    event = pair.obs_event
    if tuple(target.shape) == event:
        target = target.unsqueeze(0).expand(pair.n, *event)
    elif tuple(target.shape) != (pair.n, *event):
        raise ValueError(
            f"{fn}: target is the value the model's observed site {pair.obs_site!r} should score, "
            f"so it has that site's shape: {event} (one target for every input) or "
            f"{(pair.n, *event)} (one per input); got {tuple(target.shape)}."
        )
    check_finite(target, "target")
    return target.detach()


# --------------------------------------------------------------------------------------------
# geometry: norms, projections, steps
# --------------------------------------------------------------------------------------------
def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-element norm over the trailing event dims; ``delta`` is (B, *event)."""
    flat = delta.reshape(delta.shape[0], -1)
    return flat.abs().amax(-1) if norm == "linf" else flat.norm(dim=-1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))


def _project(delta, x, eps, norm, box):
    r"""Euclidean projection of ``delta`` onto :math:`\{\|d\| \le \epsilon\} \cap \{l \le x+d \le h\}`.

    For ``linf`` the set is a box and the projection a clamp. For ``l2`` the KKT conditions give
    :math:`d = \mathrm{clamp}(t\,\delta, l - x, h - x)` with the largest :math:`t \in [0, 1]`
    whose norm is at most :math:`\epsilon`. Coordinate :math:`i` saturates at
    :math:`t_i = c_i / \delta_i` (:math:`c_i` the bound it runs into), so with the :math:`t_i`
    sorted, :math:`f(t) = \|\mathrm{clamp}(t\delta)\|^2 = t^2 S_j + C_j` on the segment
    :math:`[t_{(j-1)}, t_{(j)})` (:math:`S_j` the squares of the free coordinates, :math:`C_j`
    those of the saturated bounds): one sort and two cumulative sums give the segment where
    :math:`f` crosses :math:`\epsilon^2` and :math:`t = \sqrt{(\epsilon^2 - C_j)/S_j}` exactly,
    for every element at once. A final radial rescale guards against rounding.
    ``delta``/``x`` are (B, *event), ``eps`` is (B,).
    """
    e = _bcast(eps, delta)
    if norm == "linf":
        low, high = -e, e
        if box is not None:
            low = torch.maximum(low, box[0] - x)
            high = torch.minimum(high, box[1] - x)
        return torch.minimum(torch.maximum(delta, low), high)
    if box is not None:
        low, high = box[0] - x, box[1] - x
        b = delta.shape[0]
        d = delta.reshape(b, -1)
        zero = torch.zeros_like(d)
        cap = torch.where(d > 0, high.reshape(b, -1), torch.where(d < 0, low.reshape(b, -1), zero))
        moving = d != 0
        t_sat = torch.where(moving, cap / torch.where(moving, d, 1.0), math.inf).clamp_min(0.0)
        t_sorted, order = t_sat.sort(dim=-1)
        d2, c2 = d.gather(-1, order).square(), cap.gather(-1, order).square()
        free = d2.flip(-1).cumsum(-1).flip(-1)  # S_j: coordinates j.. still free
        held = c2.cumsum(-1) - c2  # C_j: coordinates ..j-1 saturated
        over = t_sorted.square() * free + held > eps.square().unsqueeze(-1)
        j = torch.where(over.any(-1), over.to(torch.int8).argmax(-1), d.shape[1]).unsqueeze(-1)
        s_j = torch.cat([free, zero[:, :1]], -1).gather(-1, j).squeeze(-1)
        c_j = torch.cat([held, held[:, -1:] + c2[:, -1:]], -1).gather(-1, j).squeeze(-1)
        t = ((eps.square() - c_j).clamp_min(0.0) / s_j.clamp_min(torch.finfo(d.dtype).tiny)).sqrt()
        t = torch.where(s_j > 0, t, 1.0).clamp(max=1.0)
        delta = torch.minimum(torch.maximum(_bcast(t, delta) * delta, low), high)
    n = _norm(delta, "l2")
    # Scaling towards 0 keeps x + d in the (convex) box, since x itself is in it.
    return delta * _bcast(torch.clamp(eps / n.clamp_min(1e-30), max=1.0), delta)


def _step(grad, norm):
    """Steepest-ascent direction of unit ``norm`` size: normalised for l2, signed for linf."""
    if norm == "linf":
        return grad.sign()
    return grad / _bcast(_norm(grad, "l2").clamp_min(1e-30), grad)


def _random_start(shape, eps, norm, gen, x):
    """Uniform draws in the ``norm`` ball of radius ``eps`` (one per row of ``shape``)."""
    if norm == "linf":
        u = torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * _bcast(eps, u)
    g = torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype)
    dim = math.prod(shape[1:])
    rad = torch.rand(shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / dim)
    return _step(g, "l2") * _bcast(rad * eps, g)


# --------------------------------------------------------------------------------------------
# the quantities attacked
# --------------------------------------------------------------------------------------------
def _reference(pair: Pair, x: torch.Tensor) -> torch.Tensor:
    """The reference g(mu(x)) (extra sites at their centre) for (B, *event) inputs, no grad."""
    with torch.no_grad():
        return pair.centre(x)


def _repeat_rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """``t`` (B, ...) repeated ``k`` times along dim 0, as ``x.repeat(k, ...)``."""
    return t.repeat(k, *([1] * (t.dim() - 1))) if k > 1 else t


def _distances(pair: Pair, x, delta, ref, eta):
    r"""Distances :math:`\|g(\text{draw at } x+\delta) - \mathrm{ref}\|_2`, shape (K, B).

    ``x`` and ``delta`` are (B, *event), ``ref`` (B, *obs_event); ``eta`` is (K, B, d_z), the
    latent noise of K joint guide draws per row. Differentiable in ``delta``.
    """
    k, b = eta.shape[0], eta.shape[1]
    x_in = x + delta
    if pair.fast:
        loc, scale = pair.encode(x_in)
        z = (loc + eta * scale).reshape(k * b, -1)
        g = pair.decode(pair.rows_like(x_in, k), {pair.latent_site: z})
    else:
        g = pair.reconstruct(_repeat_rows(x_in, k), eta.reshape(k * b, -1))
    return (g.reshape(k, b, -1) - ref.reshape(-1, b, math.prod(ref.shape[1:]))).norm(dim=-1)


def _input_grad(value: torch.Tensor, delta: torch.Tensor, what: str) -> torch.Tensor:
    """d value / d delta, or a named refusal when ``value`` does not depend on the input."""
    grad = None
    if value.requires_grad:
        (grad,) = torch.autograd.grad(value, delta, allow_unused=True)
    if grad is None:
        raise ValueError(
            f"{what} has no gradient path to the input (e.g. pyro.deterministic(..., "
            "loc.detach()), a torch.no_grad() block or a detour through numpy), so a gradient "
            "attack cannot move it. Build it from the input with differentiable torch "
            "operations."
        )
    return grad


def _randn(k, b, d_z, gen, x):
    return torch.randn((k, b, d_z), generator=gen, device=x.device, dtype=x.dtype)


def _mean_damage(pair: Pair, x, delta, n, gen, max_batch, ref=None):
    """Monte-Carlo E ||g(draw at x+delta) - g(mu(x))|| with ``n`` fresh draws; (B,), no grad."""
    with torch.no_grad():
        d = sample_distances(
            pair, x, delta, num_samples=n, generator=gen, max_batch=max_batch, ref=ref
        )
    return d.mean(0)


def _robust_counts(pair: Pair, x, delta, r, *, num_samples, reference, gen, max_batch, ref=None):
    """k of ``num_samples`` draws with ||Delta(x, delta)|| <= r, per row of (B, *event); (B,).

    ``ref``: the reference g(mu(x)) when the caller has it (``reference="mean"``).
    """
    with torch.no_grad():
        d = sample_distances(
            pair,
            x,
            delta,
            num_samples=num_samples,
            reference=reference,
            generator=gen,
            max_batch=max_batch,
            ref=ref if reference == "mean" else None,
        )
    return (d <= r).sum(0)


# --------------------------------------------------------------------------------------------
# optimisers
# --------------------------------------------------------------------------------------------
def _projected_ascent(
    objective,
    x,
    eps,
    *,
    norm,
    box,
    steps,
    step_size,
    restarts,
    gen,
    what="The objective",
    stop=None,
    stop_at=frozenset(),
):
    r"""Batched projected gradient ascent of ``objective`` over restarts and inputs at once.

    ``objective(delta)`` maps (R*M, *event) perturbations to (R*M,) values to *maximise*
    (fresh noise inside it gives EOT). ``x`` is (M, *event), ``eps`` (M,) per-element budgets.
    Step ``t`` moves by :math:`\alpha_t = \alpha_0 (1 + \cos(\pi t / T)) / 2` with
    :math:`\alpha_0` = ``step_size * eps`` along the normalised (l2) or signed (linf) gradient
    and projects back onto the ball intersected with the box; the cosine decay lets the
    iterate settle on interior optima too (the path length stays :math:`\alpha_0 T / 2`).

    ``stop`` (optional) ends the ascent early for some inputs: before each step in
    ``stop_at`` it is called as ``stop(cand, keep)`` with ``keep`` (M',) the inputs still
    ascending and ``cand`` (M', *event) the iterate of each one's best restart (by the
    objective's last values) and returns a boolean mask (M',) of the inputs finished; every
    restart of a finished input is set to its ``cand``, and the objective is called as
    ``objective(delta, keep)`` on the remaining rows from then on. Returns the final
    perturbations, shape (R, M, *event).
    """
    m = x.shape[0]
    xb = x.repeat(restarts, *([1] * (x.dim() - 1)))
    eb = eps.repeat(restarts)
    delta = _project(_random_start(xb.shape, eb, norm, gen, x), xb, eb, norm, box)
    alpha = _bcast(step_size * eb, delta)
    keep, out, values = None, None, None
    for t in range(steps):
        if stop is not None and t in stop_at:
            keep = torch.arange(m, device=x.device) if keep is None else keep
            mk = keep.numel()
            grid = delta.detach().reshape(restarts, mk, *x.shape[1:])
            best = values.reshape(restarts, mk).argmax(0) if values is not None else 0
            cand = grid[best, torch.arange(mk, device=x.device)]
            done = stop(cand, keep)
            if bool(done.any()):
                out = grid.new_zeros((restarts, m, *x.shape[1:])) if out is None else out
                out[:, keep[done]] = cand[done]
                live = ~done
                keep = keep[live]
                sel = live.repeat(restarts)
                delta, xb, eb, alpha = delta.detach()[sel], xb[sel], eb[sel], alpha[sel]
                if not keep.numel():
                    return out
        delta.requires_grad_(True)
        value = objective(delta) if keep is None else objective(delta, keep)
        values = value.detach()
        grad = _input_grad(value.sum(), delta, what)
        with torch.no_grad():
            decay = 0.5 * (1.0 + math.cos(math.pi * t / steps))
            delta = _project(delta + decay * alpha * _step(grad, norm), xb, eb, norm, box)
    delta = delta.detach()
    if out is None:
        return delta.reshape(restarts, m, *x.shape[1:])
    out[:, keep] = delta.reshape(restarts, keep.numel(), *x.shape[1:])
    return out


def _lbfgs_one(objective, x, eps, norm, box, steps, gen, what="The objective"):
    """L-BFGS-B on one input (the reference method of [CAM]); ``objective`` as for PGD, M=1.

    The box and (for linf) the budget are L-BFGS-B bounds; for l2 the iterate is mapped
    radially into the ball, d -> d min(1, eps/||d||), inside the objective.
    """
    low = torch.full_like(x, -math.inf) if box is None else box[0] - x
    high = torch.full_like(x, math.inf) if box is None else box[1] - x
    # The l2 ball lies inside the linf ball of the same radius: bound every coordinate.
    low, high = torch.clamp(low, min=-eps.item()), torch.clamp(high, max=eps.item())
    start = _project(_random_start(x.shape, eps, norm, gen, x), x, eps, norm, box)

    def squash(d):
        if norm == "linf":
            return d
        return d * torch.clamp(eps / _norm(d, "l2").clamp_min(1e-30), max=1.0).reshape(
            (1,) * d.dim()
        )

    def fun(flat):
        # scipy may pass a read-only view (e.g. when all bounds are equal): copy it.
        d = torch.tensor(np.array(flat), dtype=x.dtype, device=x.device).reshape(x.shape)
        d.requires_grad_(True)
        val = -objective(squash(d)).sum()
        grad = _input_grad(val, d, what)
        return val.item(), to_numpy(grad).astype(np.float64).ravel()

    bounds = list(zip(to_numpy(low).ravel().tolist(), to_numpy(high).ravel().tolist(), strict=True))
    res = optimize.minimize(
        fun,
        to_numpy(start).astype(np.float64).ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": steps},
    )
    d = torch.tensor(np.array(res.x), dtype=x.dtype, device=x.device).reshape(x.shape)
    with torch.no_grad():
        return _project(squash(d), x, eps, norm, box)


def _attack_core(
    pair,
    x,
    ref,
    eps,
    *,
    norm,
    method,
    steps,
    step_size,
    restarts,
    eot_samples,
    eval_samples,
    box,
    gen,
    max_batch,
    stop=None,
    stop_at=frozenset(),
):
    """Max-damage attack on (M, *event) inputs with per-input budgets ``eps`` (M,).

    Returns the best perturbation over restarts (M, *event) and its damage (M,), estimated
    with ``eval_samples`` fresh draws of the encoder noise. ``stop`` (PGD only) may end the
    ascent early for some inputs before the steps in ``stop_at`` (see
    :func:`_projected_ascent`); their perturbation is the iterate ``stop`` accepted.
    """
    m, d_z = x.shape[0], pair.d_z
    logger.info(
        "max-damage attack: %d rows (inputs x budgets) x %d restarts, %s, %d steps",
        m,
        restarts,
        method,
        steps,
    )
    what = f"The reconstruction (mean of the model's observed site {pair.obs_site!r})"
    if method == "lbfgs" and not pair.fast:
        raise ValueError(
            f"method='lbfgs' needs a deterministic objective, but the guide's extra latent "
            f"site(s) {list(pair.extra)} are redrawn at every evaluation. Use method='pgd' "
            "(expectation over transformation handles them)."
        )
    with pair.session(), joint_rng(pair, gen, x.device):
        if method == "pgd":
            live = {"keep": None, "pair": pair, "x": _repeat_rows(x, restarts)}
            live["ref"] = _repeat_rows(ref, restarts)

            def objective(delta, keep=None):
                if keep is not live["keep"]:  # inputs finished early (stop): restrict once
                    live.update(
                        keep=keep,
                        pair=pair.subset(keep),
                        x=_repeat_rows(x[keep], restarts),
                        ref=_repeat_rows(ref[keep], restarts),
                    )
                eta = _randn(eot_samples, delta.shape[0], d_z, gen, x)
                return _distances(live["pair"], live["x"], delta, live["ref"], eta).mean(0)

            cands = _projected_ascent(
                objective,
                x,
                eps,
                norm=norm,
                box=box,
                steps=steps,
                step_size=step_size,
                restarts=restarts,
                gen=gen,
                what=what,
                stop=stop,
                stop_at=stop_at,
            )
        else:
            # Common random numbers per input keep the objective deterministic for L-BFGS-B.
            rows = []
            for i in range(m):
                xi, refi, ei = x[i : i + 1], ref[i : i + 1], eps[i : i + 1]
                eta_i = _randn(eot_samples, 1, d_z, gen, x)
                pair_i = pair.subset(torch.tensor([i]))

                def objective(delta, xi=xi, refi=refi, eta_i=eta_i, pair_i=pair_i):
                    return _distances(pair_i, xi, delta, refi, eta_i).mean(0)

                rows.append(
                    torch.stack(
                        [
                            _lbfgs_one(objective, xi, ei, norm, box, steps, gen, what)[0]
                            for _ in range(restarts)
                        ]
                    )
                )
            cands = torch.stack(rows, dim=1)  # (R, M, *event)
        flat = cands.reshape(restarts * m, *x.shape[1:])
        x_r = _repeat_rows(x, restarts)
        dmg = _mean_damage(
            pair, x_r, flat, eval_samples, gen, max_batch, ref=_repeat_rows(ref, restarts)
        ).reshape(restarts, m)
    best = dmg.argmax(0)
    idx = torch.arange(m, device=x.device)
    return cands[best, idx], dmg[best, idx]


# --------------------------------------------------------------------------------------------
# public: maximum-damage attack
# --------------------------------------------------------------------------------------------
def max_damage_attack(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *,
    eps,
    norm: str = "l2",
    steps: int = 100,
    step_size: float | None = None,
    restarts: int = 4,
    eot_samples: int = 16,
    eval_samples: int = 256,
    box: tuple[float, float] | None = (0.0, 1.0),
    method: str = "pgd",
    r: float | None = None,
    num_samples: int = 1000,
    confidence: float = 0.95,
    reference: str = "mean",
    max_batch: int = DEFAULT_MAX_BATCH,
    seed: int | None = None,
    latent_site: str = "z",
    obs_site: str = "x",
    model_args: tuple = (),
    model_kwargs: dict | None = None,
):
    r"""The maximum-damage attack of [CAM] on every input and every budget at once.

    Solves, for each input :math:`x` and budget :math:`\epsilon`,

    .. math::

       \delta^\star = \operatorname*{arg\,max}_{\|\delta\|_p \le \epsilon,\;
       l \le x + \delta \le h}
       \mathbb{E}_{\eta \sim \mathcal N(0, I)}
       \bigl\| g\bigl(\mu(x+\delta) + \eta \odot \sigma(x+\delta)\bigr) - g(\mu(x)) \bigr\|_2

    with :math:`p \in \{2, \infty\}`. ``method="pgd"`` runs projected gradient ascent
    (normalised l2 steps or signed linf steps of cosine-decaying length, then the exact
    Euclidean projection onto the ball intersected with the box), estimating the gradient
    with ``eot_samples`` fresh encoder draws per step (expectation over transformation), from
    ``restarts`` random starts; inputs, restarts and the ``eps`` grid are folded into one batch.
    ``method="lbfgs"`` mirrors the paper's L-BFGS-B, one input at a time with fixed noise draws.
    The best restart is chosen, and the damage reported, with ``eval_samples`` fresh draws.

    Parameters
    ----------
    model, guide : callable
        A Pyro VAE pair following the site protocol (see :mod:`pyrobust.models.sites`).
    x : torch.Tensor
        Inputs of shape ``(batch, *event)``; the attack runs on their device and dtype.
    eps : float or sequence of float
        Budget(s) :math:`\epsilon \ge 0`; a 1-D grid adds an ``eps`` dim to the result.
    norm : {"l2", "linf"}, default "l2"
        The norm of the budget.
    steps : int, default 100
        Gradient steps (PGD) or maximum iterations (L-BFGS-B); at least 1.
    step_size : float, optional
        Initial PGD step length as a fraction of ``eps``, decayed to 0 by a cosine schedule;
        default ``8 / steps`` (a path of four times the budget: enough to travel half way
        round the ball's sphere).
    restarts : int, default 4
        Random starts, uniform in the budget ball; the best is kept.
    eot_samples : int, default 16
        Encoder draws per gradient (PGD) or fixed draws per input (L-BFGS-B).
    eval_samples : int, default 256
        Fresh encoder draws to estimate the achieved damage of each restart.
    box : (float, float) or None, default (0, 1)
        Pixel range :math:`[l, h]` kept by ``x + delta``; ``x`` must lie inside it.
    method : {"pgd", "lbfgs"}, default "pgd"
    r : float, optional
        If given, also estimate the probability of r-robustness at the attacked input,
        :math:`p_r(x, \delta^\star) = P(\|\Delta(x, \delta^\star)\| \le r)`, from
        ``num_samples`` draws, with its Clopper-Pearson interval at ``confidence`` and the
        three-valued decision of THEORY section 1.
    num_samples : int, default 1000
    confidence : float, default 0.95
    reference : {"mean", "sample"}, default "mean"
        Reference reconstruction for the probability (the attack itself always uses
        :math:`g(\mu(x))`, as [CAM]).
    max_batch : int, default 16384
        Rows (draws x inputs) per model call when estimating damage and probabilities.
    seed : int, optional
        Seed of a local ``torch.Generator`` on ``x``'s device; same seed, same answer.
    latent_site, obs_site : str
        Site names of the protocol.
    model_args, model_kwargs : tuple, dict, optional
        Extra arguments: model and guide are called as ``model(x, *model_args,
        **model_kwargs)`` (``pyro.infer.Predictive``'s convention); per-input tensors follow
        their input through restarts and grids.

    Notes
    -----
    Every draw replays all guide sites (Predictive semantics). Gradients flow through the
    latent site and other reparameterisable guide sites; discrete guide sites are resampled
    per step without a score-function term (a heuristic ascent direction: the reported damage
    is an unbiased estimate at the returned ``delta`` either way).

    Returns
    -------
    xarray.DataTree
        ``constant_data``: ``x`` and the best ``delta`` (dims ``obs_id, eps, *pixel``);
        ``observed_data``: the observed site's value at ``x``; ``robustness``: ``damage``
        (achieved mean distance) and ``delta_norm``, and with ``r`` also ``probability``,
        ``ci`` (dim ``ci_bound``), ``num_inside``, ``num_draws`` and ``decision`` (int8 codes
        1 robust, 0 undecided, -1 not robust; CF flag attrs), dims ``obs_id, eps``, computed
        from the draws ``posterior_predictive/distance`` and ``inside`` (``chain, draw,
        obs_id, eps``) at the attacked inputs, as in :func:`pyrobust.r_robustness`.

    Raises
    ------
    ValueError
        If ``eps < 0``, ``norm``/``method``/``reference`` is unknown, ``steps < 1``, or ``x``
        lies outside ``box``.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> A = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x @ A.T, 0.1).to_event(1))
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)
    >>> tree = max_damage_attack(model, guide, torch.zeros(1, 2), eps=1.0, box=None, seed=0)
    >>> d = tree.constant_data["delta"].values[0, 0]
    >>> bool(abs(d[0]) > 0.99)  # the attack finds the direction A stretches most
    True
    """
    fn = "max_damage_attack"
    x = _check_x(x, fn)
    eps_grid = _check_grid(eps, "eps", fn, x, positive=False)
    norm = check_choice(norm, "norm", _NORMS)
    method = check_choice(method, "method", _METHODS)
    reference = check_choice(reference, "reference", REFERENCES)
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    eot_samples = check_positive_int(eot_samples, "eot_samples")
    eval_samples = check_positive_int(eval_samples, "eval_samples")
    num_samples = check_positive_int(num_samples, "num_samples")
    max_batch = check_positive_int(max_batch, "max_batch")
    step_size = _check_positive(step_size, "step_size", fn)
    step_size = 8.0 / steps if step_size is None else step_size
    if r is not None:
        _check_positive(r, "r", fn, allow_none=False)
    confidence = check_confidence(confidence)
    box = _check_box(box, x, fn)
    seed = resolve_seed(check_seed(seed))  # recorded, so any call can be repeated exactly
    gen = make_generator(seed, x.device)

    n, e = x.shape[0], eps_grid.shape[0]
    event = tuple(x.shape[1:])
    pair = build_pair(model, guide, x, model_args, model_kwargs, latent_site, obs_site)
    with pair.session():
        ref = _reference(pair, x)
    # Fold the eps grid into the batch: row (j, i) is input i under budget eps_j.
    xe = _repeat_rows(x, e)
    refe = _repeat_rows(ref, e)
    epse = eps_grid.repeat_interleave(n)
    delta, damage = _attack_core(
        pair,
        xe,
        refe,
        epse,
        norm=norm,
        method=method,
        steps=steps,
        step_size=step_size,
        restarts=restarts,
        eot_samples=eot_samples,
        eval_samples=eval_samples,
        box=box,
        gen=gen,
        max_batch=max_batch,
    )
    dnorm = _norm(delta, norm)
    summary = {
        "damage": (("obs_id", "eps"), damage.reshape(e, n).T),
        "delta_norm": (("obs_id", "eps"), dnorm.reshape(e, n).T),
    }
    observed, obs_dims = pair.observed(x)
    groups: dict = {"observed_data": observed} if observed else {}
    if r is not None:
        with pair.session(), torch.no_grad():
            d = sample_distances(
                pair,
                xe,
                delta,
                num_samples=num_samples,
                reference=reference,
                generator=gen,
                max_batch=max_batch,
            )
        d = d.reshape(num_samples, e, n).transpose(1, 2)  # (S, n, eps)
        inside = d <= float(r)
        summary.update(binomial_summary(inside.sum(0), num_samples, confidence, ("obs_id", "eps")))
        groups["posterior_predictive"] = {
            "distance": d.unsqueeze(0),
            "inside": inside.to(torch.float64).unsqueeze(0),
        }
    pix = list(event_dims(len(event)))
    delta_out = delta.reshape(e, n, *event).transpose(0, 1)
    constant = {"x": x}
    if r is not None:
        constant["r"] = np.asarray(float(r))
    constant["delta"] = delta_out
    if pair.x_is_observed(x):  # x is the observed value: it lives in observed_data
        del constant["x"]
    groups["constant_data"] = constant
    return make_tree(
        groups,
        dims={
            "x": ["obs_id", *pix],
            "delta": ["obs_id", "eps", *pix],
            "r": [],
            "distance": ["obs_id", "eps"],
            "inside": ["obs_id", "eps"],
            **obs_dims,
        },
        coords={"obs_id": np.arange(n), "eps": eps_grid},
        summary={"robustness": summary},
        attrs={
            "query": "max_damage_attack",
            "norm": norm,
            "method": method,
            "steps": steps,
            "step_size": step_size,
            "restarts": restarts,
            "eot_samples": eot_samples,
            "eval_samples": eval_samples,
            "box": box,
            "r": r,
            "num_samples": num_samples,
            "confidence": confidence,
            "reference": reference,
            "seed": seed,
            **pair.attrs(),
        },
        name="max_damage_attack",
    )


# --------------------------------------------------------------------------------------------
# targeted attacks: latent-space [Tabacof, Gondim-Ribeiro] and output [Kos]
# --------------------------------------------------------------------------------------------
def _divergence(loc, scale, loc_t, scale_t, divergence):
    r"""KL(N(loc, scale^2) || N(loc_t, scale_t^2)) or W2^2 between diagonal Gaussians, (B,)."""
    if divergence == "w2":
        return (loc - loc_t).pow(2).sum(-1) + (scale - scale_t).pow(2).sum(-1)
    ratio = scale / scale_t
    return (0.5 * (ratio.pow(2) + ((loc - loc_t) / scale_t).pow(2) - 1.0) - torch.log(ratio)).sum(
        -1
    )


def _latent_values(trace) -> dict[str, torch.Tensor]:
    return {k: site["value"] for k, site in _latents(trace).items()}


def _log_density(trace, rows: int, owner: str, *, sites=None) -> torch.Tensor:
    """Unscaled log-density of a trace's sample sites (all, or ``sites``) per row, (rows,)."""
    total = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        if sites is not None and name not in sites:
            continue
        lp = per_row_log_prob(site, rows, owner)
        total = lp if total is None else total + lp
    if total is None:
        raise ValueError(f"{owner} has no sample sites to score.")
    return total


def _negative_elbo(pair: Pair, x_in, target, eta):
    r"""Per-row :math:`-\mathrm{ELBO}` of ``target`` with the guide fed ``x_in``, shape (B,).

    ``eta`` (K, B, d_z) drives K joint guide draws per row. The log joint is that of the whole
    model trace (every sample site: priors, observed sites, ``pyro.factor`` terms) with the
    guide's sites replayed and the observed site scoring ``target``; the log-density of the
    guide is that of all its sites.
    """
    k, b = eta.shape[0], eta.shape[1]
    rows = k * b
    x_rows = _repeat_rows(x_in, k)
    guide_tr = pair.draw(x_rows, eta.reshape(rows, -1))
    values = _latent_values(guide_tr)
    log_q = _log_density(guide_tr, rows, "The guide", sites=set(values))
    model_tr = pair._model_trace(x_rows, {**values, pair.obs_site: _repeat_rows(target, k)})
    log_p = _log_density(model_tr, rows, "The model")
    return (log_q - log_p).reshape(k, b).mean(0)


def _soft_descent(objective, x, *, steps, lr, box, what="The objective"):
    """Minimise ``objective(delta) -> (B,)`` by Adam with a cosine-annealed learning rate,
    keeping ``x + delta`` in the box; returns the better of the result and ``delta = 0``."""
    delta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * t / steps))
        # autograd.grad, not backward(): no gradient is left on the model's parameters
        delta.grad = _input_grad(objective(delta).sum(), delta, what)
        opt.step()
        if box is not None:
            with torch.no_grad():
                delta.copy_(torch.clamp(x + delta, box[0], box[1]) - x)
    delta = delta.detach()
    with torch.no_grad():
        keep = objective(delta) <= objective(torch.zeros_like(delta))
    return torch.where(_bcast(keep, delta), delta, torch.zeros_like(delta))


def _smooth_l2(delta):
    return (delta.reshape(delta.shape[0], -1).pow(2).sum(-1) + 1e-24).sqrt()


def _targeted(
    fn,
    model,
    guide,
    x,
    target,
    *,
    kind,
    make_objective,
    lam,
    eps,
    norm,
    steps,
    step_size,
    lr,
    restarts,
    box,
    seed,
    latent_site,
    obs_site,
    model_args,
    model_kwargs,
    attrs,
):
    """Shared driver of the targeted attacks: validation, folding, result tree.

    ``kind="latent"``: ``target`` is an input (encoded by the guide); ``kind="output"``:
    ``target`` is a value of the observed site (scored by the model's likelihood).
    """
    x = _check_x(x, fn)
    pair = build_pair(model, guide, x, model_args, model_kwargs, latent_site, obs_site)
    event = tuple(x.shape[1:])
    if kind == "latent":
        pair.require_single_latent(fn)
        target = _check_target(target, x, fn)
        encodable = True
    else:
        if pair.obs_deterministic:
            raise ValueError(
                f"{fn}: the model's observed site {obs_site!r} is a pyro.deterministic site: it "
                "has no likelihood, so the ELBO of a target is undefined. Observe the data "
                "with a distribution, e.g. pyro.sample(..., dist.Bernoulli(probs), obs=x)."
            )
        target = _check_obs_target(target, pair, fn, x)
        # The target can be encoded too (for the divergence report) when it is an input.
        encodable = pair.fast and pair.obs_event == event and target.is_floating_point()
    what = (
        f"The encoder mean (loc of the guide's latent site {pair.latent_site!r})"
        if kind == "latent"
        else "The ELBO of the target (the guide fed x + d)"
    )
    norm = check_choice(norm, "norm", _NORMS)
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    step_size = _check_positive(step_size, "step_size", fn)
    step_size = 8.0 / steps if step_size is None else step_size
    lr = _check_positive(lr, "lr", fn)
    box = _check_box(box, x, fn)
    if lam is not None and eps is not None:
        raise ValueError(f"{fn}: pass either lam= (soft attack) or eps= (hard attack), not both.")
    if eps is None:
        grid = _check_grid(DEFAULT_LAMBDAS if lam is None else lam, "lam", fn, x, positive=True)
        mode, dim = "soft", "lam"
    else:
        grid = _check_grid(eps, "eps", fn, x, positive=False)
        mode, dim = "hard", "eps"
    if lr is None:
        scale = (box[1] - box[0]) if box is not None else float(x.abs().max().clamp_min(1e-3))
        lr = 0.05 * scale
    seed = resolve_seed(check_seed(seed))  # recorded, so any call can be repeated exactly
    gen = make_generator(seed, x.device)

    n, g_len = x.shape[0], grid.shape[0]
    xe = _repeat_rows(x, g_len)
    te = _repeat_rows(target, g_len)
    ge = grid.repeat_interleave(n)
    logger.info("%s: %d inputs x %d %s values, %s, %d steps", fn, n, g_len, dim, mode, steps)
    with pair.session(), joint_rng(pair, gen, x.device):
        loc_t = scale_t = None
        if encodable:
            with torch.no_grad():
                loc_t, scale_t = pair.encode(te)
        if mode == "soft":
            cost = make_objective(pair, xe, te, loc_t, scale_t, gen, 1)

            def soft(delta):
                return cost(delta) + ge * _smooth_l2(delta)

            delta = _soft_descent(soft, xe, steps=steps, lr=lr, box=box, what=what)
        else:
            cost = make_objective(pair, xe, te, loc_t, scale_t, gen, restarts)
            cands = _projected_ascent(
                lambda d: -cost(d),
                xe,
                ge,
                norm=norm,
                box=box,
                steps=steps,
                step_size=step_size,
                restarts=restarts,
                gen=gen,
                what=what,
            )
            with torch.no_grad():
                vals = cost(cands.reshape(restarts * xe.shape[0], *event)).reshape(restarts, -1)
            best = vals.argmin(0)
            delta = cands[best, torch.arange(xe.shape[0], device=x.device)]
        with torch.no_grad():
            recon = pair.centre(xe + delta)
            obj = make_objective(pair, xe, te, loc_t, scale_t, gen, 1)(delta)
            if encodable:
                loc, scale = pair.encode(xe + delta)
                div = _divergence(loc, scale, loc_t, scale_t, attrs.get("divergence", "kl"))
                recon_t = pair.centre(te) if kind == "latent" else None

    def by_input(v):
        return v.reshape(g_len, n).T

    def flat_norm(v):
        return v.reshape(v.shape[0], -1).norm(dim=-1)

    distortion = _norm(delta, norm)
    summary = {
        "distortion": (("obs_id", dim), by_input(distortion)),
        "objective": (("obs_id", dim), by_input(obj)),
    }
    # ||g(mu(x+d)) - x_t||: the target in the observed site's shape (output attack), or an input
    # target when the observed site has the input's shape (latent attack).
    curve = None
    if kind == "output" or pair.obs_event == event:
        curve = flat_norm(recon - te.reshape(recon.shape))
        summary["target_distance"] = (("obs_id", dim), by_input(curve))
    if encodable:
        summary["divergence"] = (("obs_id", dim), by_input(div))
    if kind == "latent":
        recon_distance = flat_norm(recon - recon_t)
        summary["recon_distance"] = (("obs_id", dim), by_input(recon_distance))
        curve = recon_distance if curve is None else curve
    if g_len > 1:
        dist_c, dist_t = by_input(distortion), by_input(curve)
        order = dist_c.argsort(dim=-1)
        summary["auc"] = (
            ("obs_id",),
            torch.trapezoid(dist_t.gather(-1, order), dist_c.gather(-1, order), dim=-1),
        )
    pix = list(event_dims(len(event)))
    t_dims = pix if kind == "latent" else list(output_dims(pair.obs_event, event, obs_site))
    observed, obs_dims = pair.observed(x)
    constant = {"x": x, "target": target, "delta": delta.reshape(g_len, n, *event).transpose(0, 1)}
    if pair.x_is_observed(x):  # x is the observed value: it lives in observed_data
        del constant["x"]
    groups = {"constant_data": constant}
    if observed:
        groups["observed_data"] = observed
    return make_tree(
        groups,
        dims={
            "x": ["obs_id", *pix],
            "target": ["obs_id", *t_dims],
            "delta": ["obs_id", dim, *pix],
            **obs_dims,
        },
        coords={"obs_id": np.arange(n), dim: grid},
        summary={"robustness": summary},
        attrs={
            **attrs,
            "mode": mode,
            "norm": norm,
            "steps": steps,
            "step_size": step_size,
            "lr": lr,
            "restarts": restarts,
            "box": box,
            "seed": seed,
            **pair.attrs(),
        },
        name=attrs["query"],
    )


_TARGETED_RETURNS = r"""
    Returns
    -------
    xarray.DataTree
        ``constant_data``: ``x``, ``target`` and the perturbations ``delta`` (dims
        ``obs_id, lam|eps, *pixel``); ``robustness`` (dims ``obs_id, lam|eps``):
        ``distortion`` :math:`\|d\|`, ``divergence`` :math:`D(q(z|x+d), q(z|x_t))`,
        ``objective`` (the attacked term without the penalty), ``target_distance``
        :math:`\|g(\mu(x+d)) - x_t\|_2`, ``recon_distance``
        :math:`\|g(\mu(x+d)) - g(\mu(x_t))\|_2`, and for a grid ``auc``: the area under the
        curve of ``target_distance`` against ``distortion`` (trapezoid rule over the grid
        points sorted by distortion; smaller means a more vulnerable model), the summary of [3]_.
"""


def latent_attack(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    divergence: str = "kl",
    lam=None,
    eps=None,
    norm: str = "l2",
    steps: int = 200,
    step_size: float | None = None,
    lr: float | None = None,
    restarts: int = 1,
    box: tuple[float, float] | None = (0.0, 1.0),
    seed: int | None = None,
    latent_site: str = "z",
    obs_site: str = "x",
    model_args: tuple = (),
    model_kwargs: dict | None = None,
):
    r"""Targeted latent-space attack of Tabacof et al. [2]_ and Gondim-Ribeiro et al. [3]_.

    Moves the encoding of :math:`x + d` onto that of a target :math:`x_t`:

    .. math::

       \min_d\; D\bigl(q(z|x+d) \,\|\, q(z|x_t)\bigr) + \lambda \|d\|_2 \quad\text{(soft)},
       \qquad
       \min_{\|d\| \le \epsilon}\; D\bigl(q(z|x+d) \,\|\, q(z|x_t)\bigr) \quad\text{(hard)},

    always with :math:`x + d` in ``box``. For diagonal Gaussians
    :math:`\mathrm{KL} = \sum_i \log\frac{\sigma_{t,i}}{\sigma_i}
    + \frac{\sigma_i^2 + (\mu_i - \mu_{t,i})^2}{2\sigma_{t,i}^2} - \frac12` and
    :math:`W_2^2 = \|\mu - \mu_t\|^2 + \|\sigma - \sigma_t\|^2`.
    With neither ``lam`` nor ``eps`` the protocol of [3]_ runs: 50 geometrically spaced
    :math:`\lambda \in [2^{-20}, 2^{20}]`, all in one batch, and the area under the
    distortion-distance curve summarises the model's vulnerability.

    The soft problem is solved by Adam (cosine-annealed ``lr``) and the result is kept only
    if it beats :math:`d = 0`; the hard problem by projected gradient descent as in
    :func:`max_damage_attack` (``steps``, ``step_size``, ``restarts``).

    Parameters
    ----------
    model, guide : callable
        A Pyro VAE pair following the site protocol.
    x : torch.Tensor
        Inputs, shape ``(batch, *event)``.
    target : torch.Tensor
        One target of shape ``event`` for all inputs, or one per input, shape ``x.shape``.
    divergence : {"kl", "w2"}, default "kl"
    lam : float or sequence of float, optional
        Trade-off weight(s) :math:`\lambda > 0` of the soft attack (a ``lam`` dim).
    eps : float or sequence of float, optional
        Budget(s) of the hard attack (an ``eps`` dim); exclusive with ``lam``.
    norm : {"l2", "linf"}, default "l2"
        Norm of the hard budget and of the reported distortion.
    steps : int, default 200
    step_size : float, optional
        Initial PGD step as a fraction of ``eps`` (hard attack); default ``8 / steps``.
    lr : float, optional
        Adam learning rate (soft attack); default 5% of the box width (without a box, of
        the largest ``|x|``).
    restarts : int, default 1
        Random starts of the hard attack.
    box : (float, float) or None, default (0, 1)
    seed : int, optional
    latent_site, obs_site : str
    model_args, model_kwargs : tuple, dict, optional
        Extra arguments: model and guide are called as ``model(x, *model_args,
        **model_kwargs)`` (``pyro.infer.Predictive``'s convention).

    Notes
    -----
    The divergence is between the latent site's distributions; a guide with other latent
    sites is refused by name (the attack's objective has no term for them).
    ``target_distance`` is reported when the observed site has the input's shape.
    """
    fn = "latent_attack"
    divergence = check_choice(divergence, "divergence", _DIVERGENCES)

    def make_objective(pair, xe, te, loc_t, scale_t, gen, reps):
        x_r = _repeat_rows(xe, reps)
        lt, st = _repeat_rows(loc_t, reps), _repeat_rows(scale_t, reps)

        def cost(delta):
            loc, scale = pair.encode(x_r + delta)
            return _divergence(loc, scale, lt, st, divergence)

        return cost

    return _targeted(
        fn,
        model,
        guide,
        x,
        target,
        kind="latent",
        make_objective=make_objective,
        lam=lam,
        eps=eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        lr=lr,
        restarts=restarts,
        box=box,
        seed=seed,
        latent_site=latent_site,
        obs_site=obs_site,
        model_args=model_args,
        model_kwargs=model_kwargs,
        attrs={"query": "latent_attack", "divergence": divergence},
    )


def output_attack(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    lam=None,
    eps=None,
    norm: str = "l2",
    elbo_samples: int = 8,
    steps: int = 200,
    step_size: float | None = None,
    lr: float | None = None,
    restarts: int = 1,
    box: tuple[float, float] | None = (0.0, 1.0),
    seed: int | None = None,
    latent_site: str = "z",
    obs_site: str = "x",
    model_args: tuple = (),
    model_kwargs: dict | None = None,
):
    r"""Targeted output attack of Kos et al. [4]_: make the VAE reconstruct a target.

    .. math::

       \min_d\; -\mathrm{ELBO}\bigl(x_t;\, q(\cdot|x+d)\bigr) + \lambda \|d\|_2, \qquad
       -\mathrm{ELBO} = \mathbb{E}_{q(w|x+d)}\bigl[\log q(w|x+d) - \log p(x_t, w)\bigr],

    i.e. the guide is fed the perturbed input while the model scores the target :math:`x_t`
    at its observed site. :math:`w` are all the guide's latent sites (drawn jointly, the latent
    site reparameterised), and :math:`\log p(x_t, w)` is the log joint of the **whole** model
    trace: every prior, observed site and ``pyro.factor`` term (priors written as observed
    sites, hierarchical priors and all), unscaled. The expectation uses ``elbo_samples``
    fresh draws per step. ``eps`` gives the hard version :math:`\min_{\|d\| \le \epsilon}`.
    The protocol sweep, solvers and result are those of :func:`latent_attack`.

    Parameters
    ----------
    model, guide, x, lam, eps, norm, steps, step_size, lr, restarts, box, seed, latent_site,
    obs_site, model_args, model_kwargs
        As in :func:`latent_attack`.
    target : torch.Tensor
        The value the model's observed site should score, **in the observed site's shape**:
        ``obs_event`` (one target for all inputs) or ``(len(x), *obs_event)``. For the Pyro
        tutorial's VAE, whose observed site is ``x.reshape(-1, 784)``, a target image is
        passed flattened.
    elbo_samples : int, default 8
        Joint guide draws per ELBO estimate.

    Notes
    -----
    A ``pyro.deterministic`` observed site has no likelihood and is refused. ``divergence``
    (the KL to the target's encoding) and ``recon_distance`` are reported when the target can
    also be encoded, i.e. the observed site has the input's shape and the guide has no other
    latent sites.
    """
    fn = "output_attack"
    elbo_samples = check_positive_int(elbo_samples, "elbo_samples")

    def make_objective(pair, xe, te, loc_t, scale_t, gen, reps):
        x_r = _repeat_rows(xe, reps)
        t_r = _repeat_rows(te, reps)

        def cost(delta):
            eta = _randn(elbo_samples, x_r.shape[0], pair.d_z, gen, x_r)
            return _negative_elbo(pair, x_r + delta, t_r, eta)

        return cost

    return _targeted(
        fn,
        model,
        guide,
        x,
        target,
        kind="output",
        make_objective=make_objective,
        lam=lam,
        eps=eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        lr=lr,
        restarts=restarts,
        box=box,
        seed=seed,
        latent_site=latent_site,
        obs_site=obs_site,
        model_args=model_args,
        model_kwargs=model_kwargs,
        attrs={"query": "output_attack", "elbo_samples": elbo_samples},
    )


latent_attack.__doc__ += _TARGETED_RETURNS
output_attack.__doc__ += _TARGETED_RETURNS
