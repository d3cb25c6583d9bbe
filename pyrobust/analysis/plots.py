r"""Plots of pyrobust results (matplotlib; PNG, SVG or PDF by the file extension).

Each function takes a result tree (or plain arrays), draws on a new
:class:`matplotlib.figure.Figure` (or on the ``ax`` given), saves it when ``path`` is given, and
returns the figure. Figures are built without :mod:`matplotlib.pyplot`, so nothing depends on the
interactive backend or leaks global figures, and matplotlib is imported only when a plot is made
(``import pyrobust`` never imports it).

* :func:`plot_robustness_curve` -- :math:`p_r(x, \delta)` against :math:`\lVert\delta\rVert_2`
  or :math:`\epsilon`, with the confidence band and the line :math:`p = 1/2` [CAM];
* :func:`plot_margin_scatter` -- the certified margin bound against the empirical margin, with
  :math:`y = x` and the Pearson correlation [CAM, Fig. 3];
* :func:`plot_against_beta` -- encoder :math:`\sigma`, :math:`\lVert J \rVert_F` and margins
  against :math:`\beta` [CAM, Fig. 2];
* :func:`plot_reconstructions` -- inputs, reconstructions, attacked inputs and their
  reconstructions;
* :func:`plot_latent_traversals` -- decoded images along each latent axis;
* :func:`plot_training_curves` -- the training history.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import xarray as xr

from pyrobust._results import decode_attrs, to_numpy
from pyrobust.analysis.io import as_tree, require_group

__all__ = [
    "plot_against_beta",
    "plot_latent_traversals",
    "plot_margin_scatter",
    "plot_reconstructions",
    "plot_robustness_curve",
    "plot_training_curves",
]

_SAVE_FORMATS = (".png", ".svg", ".pdf")
#: Groups holding a training log: ``fit``'s ``history``, or an ArviZ ``sample_stats``.
_TRAINING_GROUPS = ("history", "sample_stats")


def _figure(ax=None, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    """A new Figure with a grid of axes, or the figure of ``ax``."""
    if ax is not None:
        return ax.figure, np.array([[ax]])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _finish(fig, path: str | os.PathLike | None, dpi: int = 110):
    if path is not None:
        suffix = os.path.splitext(os.fspath(path))[1].lower()
        if suffix not in _SAVE_FORMATS:
            raise ValueError(
                f"path must end in one of {_SAVE_FORMATS} (the image format); got {os.fspath(path)!r}."
            )
        fig.savefig(path, dpi=dpi)
    return fig


def _pick(ds: xr.Dataset, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in ds.data_vars), None)


# --------------------------------------------------------------------------------------------
# robustness curve
# --------------------------------------------------------------------------------------------


def _delta_norm(tree: xr.DataTree, rob: xr.Dataset) -> xr.DataArray:
    if "delta_norm" in rob.data_vars:
        return rob["delta_norm"]
    if "constant_data" not in tree.children or "delta" not in tree["constant_data"].data_vars:
        raise ValueError(
            "plot_robustness_curve: the result has no sweep dim ('eps') and no perturbation to "
            "measure (constant_data/delta or robustness/delta_norm); pass the result of "
            "r_robustness(..., delta=...) or of a sweep over eps."
        )
    delta = tree["constant_data"]["delta"]
    keep = {"obs_id", "perturbation", "eps"}
    return np.sqrt((delta**2).sum([d for d in delta.dims if d not in keep]))


def _interval(rob: xr.Dataset, name: str = "ci") -> tuple[xr.DataArray | None, xr.DataArray | None]:
    """Interval limits from ``name`` on a ``ci_bound`` dim, or the older ``ci_lower``/``ci_upper``."""
    if name in rob.data_vars and "ci_bound" in rob[name].dims:
        ci = rob[name]
        return ci.sel(ci_bound="lower", drop=True), ci.sel(ci_bound="upper", drop=True)
    suffix = name[2:] if name.startswith("ci") else ""
    lo, hi = f"ci_lower{suffix}", f"ci_upper{suffix}"
    if lo in rob.data_vars and hi in rob.data_vars:
        return rob[lo], rob[hi]
    return None, None


#: Dims that tell models apart in a combined result.
_MODEL_DIMS = ("beta", "model")


def _model_dim(tree: xr.DataTree, da: xr.DataArray) -> str | None:
    combined = tree.attrs.get("combined_dim")
    if isinstance(combined, str) and combined in da.dims:
        return combined
    return next((d for d in _MODEL_DIMS if d in da.dims), None)


def _format_value(value: Any) -> str:
    value = np.asarray(value).item() if np.ndim(value) == 0 else value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_format_value(v) for v in np.ravel(value))
    return str(value)


def plot_robustness_curve(
    tree: xr.DataTree | str | os.PathLike,
    *,
    radius: int | None = 0,
    max_lines: int = 8,
    ax=None,
    path: str | os.PathLike | None = None,
):
    r"""Probability of r-robustness against the size of the perturbation.

    Plots :math:`\hat p_r(x, \delta) = \hat P(\lVert \Delta(x, \delta) \rVert_2 \le r)` with its
    exact interval (``ci`` on the ``ci_bound`` dim) against :math:`\epsilon` when the result
    sweeps an ``eps`` dim, otherwise against :math:`\lVert \delta \rVert_2` of each perturbation
    (points with interval bars). The dashed line :math:`p = 1/2` separates r-robust inputs
    (above) from the rest [CAM, Definition 1].

    A result combined over models (a ``beta`` or ``model`` dim, see
    :func:`pyrobust.analysis.combine`) is drawn as one line per model: the mean of
    :math:`\hat p_r` over inputs, with the band between the inputs' lower and upper quartiles
    (the spread over inputs, not an interval of the mean).

    Parameters
    ----------
    tree : xarray.DataTree or path
        A result with a ``robustness`` group holding ``probability`` (and optionally its
        interval ``ci``), e.g. from ``r_robustness`` or ``max_damage_attack``.
    radius : int or None, default 0
        Index along a ``radius`` dim, if the result has one; ``None`` draws every radius.
    max_lines : int, default 8
        At most this many inputs (or models) are drawn as separate curves.
    ax : matplotlib Axes, optional
    path : str or path-like, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    tree = as_tree(tree)
    rob = require_group(tree, "robustness", ["probability"], caller="plot_robustness_curve")
    r_value: Any = decode_attrs(tree.attrs).get("r", decode_attrs(rob.attrs).get("r"))
    if "radius" in rob.dims and radius is not None:
        rob = rob.isel(radius=radius)
        r_value = rob["radius"].values if "radius" in rob.coords else r_value
    lo_all, hi_all = _interval(rob)
    fig, axes = _figure(ax)
    axis = axes[0, 0]
    prob = rob["probability"]
    sweep = "eps" if "eps" in prob.dims else None
    model_dim = _model_dim(tree, prob)
    level = decode_attrs(rob.attrs).get("confidence")
    if model_dim is not None:
        if sweep is None:
            raise ValueError(
                "plot_robustness_curve: a result combined over "
                f"{model_dim!r} is drawn against eps; this one has no eps dim. Use "
                "plot_against_beta for a single perturbation per input."
            )
        other = [d for d in prob.dims if d not in (model_dim, "eps")]
        xs = prob["eps"].values
        for i, m in enumerate(prob[model_dim].values[:max_lines]):
            p = prob.sel({model_dim: m}).astype(np.float64)
            color = f"C{i % 10}"
            axis.plot(
                xs,
                p.mean(other).values if other else p.values,
                marker="o",
                ms=3,
                color=color,
                label=f"{model_dim} = {_format_value(m)}",
            )
            if other:
                q = p.quantile([0.25, 0.75], dim=other)
                axis.fill_between(xs, q[0].values, q[1].values, color=color, alpha=0.2, lw=0)
        ylabel = r"mean $\hat p_r$ over inputs (band: quartiles)"
    else:
        obs = prob["obs_id"].values[:max_lines] if "obs_id" in prob.dims else [None]
        if sweep is None:
            xnorm = _delta_norm(tree, rob)
        for i, o in enumerate(obs):
            sel = {"obs_id": o} if o is not None else {}
            p = prob.sel(sel)
            lo = lo_all.sel(sel) if lo_all is not None else None
            hi = hi_all.sel(sel) if hi_all is not None else None
            color = f"C{i % 10}"
            label = f"input {o}" if o is not None else None
            if sweep is not None:
                extra = [d for d in p.dims if d != "eps"]
                if extra:  # e.g. every radius: one line each, never a min/max envelope
                    p = p.isel({d: 0 for d in extra})
                    lo = lo.isel({d: 0 for d in extra}) if lo is not None else None
                    hi = hi.isel({d: 0 for d in extra}) if hi is not None else None
                xs = p["eps"].values
                axis.plot(xs, p.values, marker="o", ms=3, color=color, label=label)
                if lo is not None and hi is not None:
                    axis.fill_between(xs, lo.values, hi.values, color=color, alpha=0.2, lw=0)
            else:
                xs = np.ravel(xnorm.sel(sel).values)
                ys = np.ravel(p.values) * np.ones_like(xs)
                if lo is not None and hi is not None:
                    yerr = np.stack([ys - np.ravel(lo.values), np.ravel(hi.values) - ys])
                    axis.errorbar(
                        xs,
                        ys,
                        yerr=np.clip(yerr, 0, None),
                        fmt="o",
                        ms=4,
                        color=color,
                        capsize=2,
                        label=label,
                    )
                else:
                    axis.plot(xs, ys, "o", ms=4, color=color, label=label)
        ylabel = r"$\hat p_r(x, \delta)$"
        if lo_all is not None and isinstance(level, (int, float)):
            ylabel += f" ({level:.0%} interval)"
    axis.axhline(0.5, color="k", ls="--", lw=1, label="p = 1/2")
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel(
        r"perturbation size $\epsilon$ ($\ell_2$, input units)"
        if sweep
        else r"$\|\delta\|_2$ (input units)"
    )
    axis.set_ylabel(ylabel)
    title = "r-robustness"
    if r_value is not None:
        title += f", r = {_format_value(r_value)}"
    axis.set_title(title)
    axis.legend(fontsize=7, loc="best")
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------
# bound vs empirical margin
# --------------------------------------------------------------------------------------------


def _margin_values(obj: Any, names: Sequence[str], argname: str) -> np.ndarray:
    if isinstance(obj, (xr.DataTree, str, os.PathLike)):
        tree = as_tree(obj, argname)
        rob = require_group(tree, "robustness", caller="plot_margin_scatter")
        name = _pick(rob, names)
        if name is None:
            raise ValueError(
                f"plot_margin_scatter: {argname}'s robustness group has none of {list(names)} "
                f"(has {sorted(map(str, rob.data_vars))})."
            )
        return np.ravel(rob[name].values).astype(np.float64)
    return np.ravel(to_numpy(obj)).astype(np.float64)


def _broken_flags(obj: Any, size: int) -> np.ndarray:
    """``robustness/broken`` of an empirical-margin tree, else all True."""
    if isinstance(obj, (xr.DataTree, str, os.PathLike)):
        tree = as_tree(obj, "empirical")
        if "robustness" in tree.children and "broken" in tree["robustness"].data_vars:
            flags = np.ravel(tree["robustness"]["broken"].values).astype(bool)
            if flags.size == size:
                return flags
    return np.ones(size, dtype=bool)


def margin_agreement(bound: np.ndarray, empirical: np.ndarray, broken: np.ndarray) -> dict:
    r"""How a margin bound compares with the empirical margin, input by input.

    The bound is a lower bound on the true margin; the empirical margin :math:`R_{lo}` (the
    largest radius the attack did not break) is an upper bound on it where the attack broke
    the input, and a lower bound (the search limit) where it did not.

    Returns
    -------
    dict
        ``n`` (inputs with both values finite), ``consistent`` (bound :math:`\le R_{lo}`),
        ``broken`` (inputs the attack broke), ``pearson`` (correlation over the broken inputs,
        NaN with fewer than 2), ``median_bound`` and ``median_empirical`` (over all ``n``).
    """
    b, m, brk = (np.asarray(v, dtype=np.float64).ravel() for v in (bound, empirical, broken))
    brk = brk.astype(bool)
    ok = np.isfinite(b) & np.isfinite(m)
    both = ok & brk
    if both.sum() > 1 and np.std(b[both]) > 0 and np.std(m[both]) > 0:
        rho = float(np.corrcoef(b[both], m[both])[0, 1])
    else:
        rho = float("nan")
    return {
        "n": int(ok.sum()),
        "consistent": int((b[ok] <= m[ok]).sum()),
        "broken": int(both.sum()),
        "pearson": rho,
        "median_bound": float(np.median(b[ok])) if ok.any() else float("nan"),
        "median_empirical": float(np.median(m[ok])) if ok.any() else float("nan"),
    }


def plot_margin_scatter(
    bound: Any,
    empirical: Any = None,
    *,
    broken: Any = None,
    ax=None,
    path: str | os.PathLike | None = None,
):
    r"""Certified margin bound against the empirical margin, per input.

    The bound of [CAM] is a lower bound on the true margin, and the empirical margin (the
    largest radius at which the attack left the input r-robust) an upper bound on it where the
    attack broke the input, so those points lie on or above :math:`y = x`. Inputs the attack
    did not break within its search limit have an empirical margin of *at least* that limit:
    they are drawn as upward triangles with an arrow (lower bounds), not as points, and are left
    out of the Pearson correlation :math:`\rho = \mathrm{cov}(b, m) / (s_b s_m)` in the title
    (the figure of [CAM, Fig. 3]).

    Parameters
    ----------
    bound : xarray.DataTree, path or array
        Margin bounds: ``robustness/bound`` of ``margin_bound`` (or ``certified_margin``), or an
        array.
    empirical : xarray.DataTree, path or array, optional
        Empirical margins: ``robustness/margin`` of ``empirical_margin``, or an array. Default:
        read from the same tree as ``bound``.
    broken : array of bool, optional
        Whether the attack broke each input; default ``robustness/broken`` of ``empirical``
        when it has one, else all True.
    ax : matplotlib Axes, optional
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    b = _margin_values(bound, ["bound", "certified_margin"], "bound")
    source = bound if empirical is None else empirical
    m = _margin_values(source, ["margin", "empirical_margin"], "empirical")
    if b.shape != m.shape:
        raise ValueError(
            f"bound and empirical must hold one margin per input: got {b.size} bounds and "
            f"{m.size} empirical margins."
        )
    brk = _broken_flags(source, m.size) if broken is None else np.ravel(to_numpy(broken))
    if brk.shape != m.shape:
        raise ValueError(
            f"broken must hold one flag per input: got {brk.size} for {m.size} inputs."
        )
    brk = brk.astype(bool)
    stats = margin_agreement(b, m, brk)
    ok = np.isfinite(b) & np.isfinite(m)
    fig, axes = _figure(ax, size=(4.4, 4.2))
    axis = axes[0, 0]
    pts, low = ok & brk, ok & ~brk
    axis.scatter(b[pts], m[pts], s=16, alpha=0.8, label="attack broke the input")
    top = float(max(b[ok].max(initial=0.0), m[ok].max(initial=0.0))) * 1.12 or 1.0
    if low.any():
        axis.scatter(
            b[low],
            m[low],
            s=30,
            marker="^",
            facecolors="none",
            edgecolors="C1",
            label="not broken: empirical margin ≥ search limit",
        )
        for xb, ym in zip(b[low], m[low], strict=True):
            axis.annotate(
                "",
                xy=(xb, min(ym + 0.08 * top, top)),
                xytext=(xb, ym),
                arrowprops={"arrowstyle": "->", "color": "C1", "lw": 0.8},
            )
    axis.plot([0, top], [0, top], "k--", lw=1, label="y = x")
    axis.set_xlim(0, top)
    axis.set_ylim(0, top)
    axis.set_xlabel(r"margin bound ($\ell_2$ norm of $\delta$, input units)")
    axis.set_ylabel(r"empirical margin ($\ell_2$, input units)")
    axis.set_title(
        f"Pearson r = {stats['pearson']:.3f} over {stats['broken']} broken inputs;\n"
        f"bound ≤ empirical on {stats['consistent']} of {stats['n']}",
        fontsize=9,
    )
    axis.legend(fontsize=7, loc="lower right")  # below y = x, where no point can be
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------
# against beta
# --------------------------------------------------------------------------------------------


def plot_against_beta(
    tree: xr.DataTree | str | os.PathLike,
    variables: Sequence[str] = (
        "min_scale",
        "jacobian_norm",
        "bound",
        "margin",
        "empirical_margin",
        "certified_margin",
    ),
    *,
    dim: str = "beta",
    path: str | os.PathLike | None = None,
):
    r"""Summaries of robustness quantities against :math:`\beta` (or another model dim).

    For each variable found in the tree (any group), draws the mean over inputs with a 5-95 %
    band against ``dim``: the minimum encoder standard deviation
    :math:`\min_i \sigma_i(x)` (``min_scale``), the encoder Jacobian norm
    :math:`\lVert J_\mu(x) \rVert_F` (``jacobian_norm``), the margin bound and the empirical
    margin -- the trends of [CAM, Fig. 2] (larger :math:`\beta`: larger :math:`\sigma`, smaller
    :math:`\lVert J \rVert`, larger margins).

    Parameters
    ----------
    tree : xarray.DataTree or path
        Results combined along ``dim`` (see :func:`pyrobust.analysis.combine`).
    variables : sequence of str
        Variables to draw; missing ones are skipped (at least one must exist).
    dim : str, default "beta"
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    tree = as_tree(tree)
    found: dict[str, xr.DataArray] = {}
    for node in tree.subtree:
        for name in variables:
            if name in node.data_vars and name not in found and dim in node[name].dims:
                found[name] = node[name]
    if not found:
        raise ValueError(
            f"plot_against_beta: none of {list(variables)} has a {dim!r} dim in this tree; "
            f"combine results along {dim!r} first: pyrobust.analysis.combine(trees, dim={dim!r})."
        )
    fig, axes = _figure(None, ncols=len(found), size=(3.6, 3.2))
    for axis, (name, da) in zip(axes[0], found.items(), strict=True):
        other = [d for d in da.dims if d != dim]
        da = da.astype(np.float64)
        xs = da[dim].values
        mean = da.mean(other) if other else da
        axis.plot(xs, mean.values, "o-", label="mean")
        if other:
            q = da.quantile([0.05, 0.95], dim=other)
            axis.fill_between(
                xs,
                q.isel(quantile=0).values,
                q.isel(quantile=1).values,
                alpha=0.25,
                lw=0,
                label="5-95 %",
            )
        if np.issubdtype(np.asarray(xs).dtype, np.number) and np.all(np.asarray(xs) > 0):
            if np.max(xs) / np.min(xs) > 20:
                axis.set_xscale("log")
        axis.set_xlabel(dim)
        axis.set_title(name)
        axis.legend(fontsize=7)
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def _as_images(value: Any, argname: str) -> np.ndarray:
    """(n, H, W) or (n, H, W, 3) arrays from (n, [C], H, W) or flat square (n, H*W)."""
    arr = to_numpy(value).astype(np.float64)
    if arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1]:
            raise ValueError(
                f"{argname} with flat features must have a square number of them; got {arr.shape[1]}."
            )
        return arr.reshape(arr.shape[0], side, side)
    if arr.ndim == 3:
        return arr
    if arr.ndim == 4 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim == 4 and arr.shape[1] == 3:
        return np.clip(arr.transpose(0, 2, 3, 1), 0, 1)
    raise ValueError(
        f"{argname} must be images of shape (n, [1 or 3,] H, W) or (n, H*W); got {arr.shape}."
    )


def _show(axis, img: np.ndarray, vmin=None, vmax=None):
    axis.imshow(
        img, cmap="gray" if img.ndim == 2 else None, vmin=vmin, vmax=vmax, interpolation="nearest"
    )
    axis.set_xticks([])
    axis.set_yticks([])


def plot_reconstructions(
    x: Any,
    x_attacked: Any,
    recon: Any = None,
    recon_attacked: Any = None,
    *,
    reconstruct: Callable[[Any], Any] | None = None,
    max_images: int = 8,
    path: str | os.PathLike | None = None,
):
    r"""Inputs and reconstructions beside attacked inputs and their reconstructions.

    Rows: :math:`x`, :math:`g(\mu(x))`, :math:`x + \delta`, :math:`g(\mu(x + \delta))`, the
    picture of an adversarial attack on a VAE [CAM, Fig. 1].

    Parameters
    ----------
    x, x_attacked : array or tensor, shape (n, [C,] H, W) or (n, H*W)
        Clean and attacked inputs (e.g. ``x`` and ``x + delta`` from an attack result's
        ``constant_data``).
    recon, recon_attacked : array or tensor, optional
        Their reconstructions; computed with ``reconstruct`` when not given.
    reconstruct : callable, optional
        ``reconstruct(inputs) -> reconstructions``, e.g. ``vae.reconstruct``.
    max_images : int, default 8
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if recon is None or recon_attacked is None:
        if reconstruct is None:
            raise ValueError(
                "plot_reconstructions needs recon and recon_attacked, or reconstruct= (a "
                "callable such as vae.reconstruct) to compute them."
            )
        recon = reconstruct(x) if recon is None else recon
        recon_attacked = reconstruct(x_attacked) if recon_attacked is None else recon_attacked
    rows = [
        ("input", _as_images(x, "x")),
        ("reconstruction", _as_images(recon, "recon")),
        ("attacked input", _as_images(x_attacked, "x_attacked")),
        ("its reconstruction", _as_images(recon_attacked, "recon_attacked")),
    ]
    n = rows[0][1].shape[0]
    for name, imgs in rows:
        if imgs.shape[0] != n:
            raise ValueError(
                f"plot_reconstructions: every row needs the same number of images; input has {n}, "
                f"{name} has {imgs.shape[0]}."
            )
    n = min(n, max_images)
    # one grey scale for all rows, so an attack's change is not hidden by per-image rescaling
    vmin = min(float(imgs[:n].min()) for _, imgs in rows)
    vmax = max(float(imgs[:n].max()) for _, imgs in rows)
    fig, axes = _figure(None, ncols=n, nrows=4, size=(1.2, 1.25))
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            _show(axes[r, c], imgs[c], vmin=vmin, vmax=vmax)
        axes[r, 0].set_ylabel(name, fontsize=7)
    return _finish(fig, path)


def plot_latent_traversals(
    decode: Callable[[Any], Any] | Any,
    z: Any = None,
    *,
    values: Sequence[float] | np.ndarray = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0),
    latents: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
):
    r"""Decoded images along each latent axis.

    Row :math:`j`, column :math:`t` shows :math:`g(z + (v_t - z_j) e_j)`: the code ``z`` with its
    :math:`j`-th coordinate set to ``values[t]``. All rows are decoded in one batched call.

    Parameters
    ----------
    decode : callable or array
        ``decode(codes) -> images`` for codes of shape (m, L) (e.g. ``vae.decode``), or already
        decoded images of shape (L, T, [C,] H, W).
    z : array or tensor, shape (L,), optional
        The base code (default zeros); needed to know L when ``decode`` is a callable.
    values : sequence of float, default ``linspace(-3, 3, 9)``
    latents : sequence of int, optional
        Latent coordinates to traverse (default all).
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if callable(decode):
        if z is None:
            raise ValueError(
                "plot_latent_traversals needs z= (the base code, shape (L,)) with a decoder."
            )
        import torch

        base = z.detach() if isinstance(z, torch.Tensor) else torch.as_tensor(np.asarray(z))
        base = base.reshape(-1)
        L = base.shape[0]
        rows = list(range(L)) if latents is None else [int(j) for j in latents]
        vals = torch.as_tensor(np.asarray(values), dtype=base.dtype, device=base.device)
        codes = base.repeat(len(rows), len(vals), 1)  # (R, T, L)
        codes[torch.arange(len(rows)), :, torch.as_tensor(rows)] = vals
        with torch.no_grad():
            imgs = decode(codes.reshape(-1, L))
        imgs = _as_images(imgs, "decode(codes)")
        imgs = imgs.reshape(len(rows), len(vals), *imgs.shape[1:])
    else:
        arr = to_numpy(decode)
        if arr.ndim < 4:
            raise ValueError(f"images must have shape (L, T, [C,] H, W); got {arr.shape}.")
        R, T = arr.shape[:2]
        imgs = _as_images(arr.reshape(R * T, *arr.shape[2:]), "images")
        imgs = imgs.reshape(R, T, *imgs.shape[1:])
        rows = list(range(R)) if latents is None else [int(j) for j in latents]
        imgs = imgs[rows]
        vals = np.asarray(values)[:T] if len(values) >= T else np.arange(T)
    R, T = imgs.shape[:2]
    fig, axes = _figure(None, ncols=T, nrows=R, size=(0.9, 0.95))
    vals = to_numpy(vals)
    for r in range(R):
        for t in range(T):
            _show(axes[r, t], imgs[r, t], vmin=0.0, vmax=max(1.0, float(imgs.max())))
        axes[r, 0].set_ylabel(f"z[{rows[r]}]", fontsize=7)
    for t in range(T):
        axes[-1, t].set_xlabel(f"{float(vals[t]):.3g}", fontsize=7)
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def plot_training_curves(
    history: xr.DataTree | str | os.PathLike,
    variables: Sequence[str] | None = None,
    *,
    group: str | None = None,
    path: str | os.PathLike | None = None,
):
    """Training curves: each variable of the training log against its step dim.

    Parameters
    ----------
    history : xarray.DataTree or path
        The result of ``pyrobust.inference.fit``: a ``history`` group whose variables run over
        ``step`` or ``epoch`` (or an ArviZ ``sample_stats`` group over ``draw`` with ``chain``
        of length 1); other dims are averaged.
    variables : sequence of str, optional
        Variables to draw (default: every numeric variable of the group).
    group : str, optional
        Default: ``"history"`` if present, else ``"sample_stats"``.
    path : str or path-like, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    tree = as_tree(history, "history")
    if group is None:
        group = next((g for g in _TRAINING_GROUPS if g in tree.children), _TRAINING_GROUPS[0])
    ds = require_group(tree, group, variables or (), caller="plot_training_curves")
    names = (
        list(variables)
        if variables
        else [
            str(n) for n, v in ds.data_vars.items() if np.issubdtype(v.dtype, np.number) and v.ndim
        ]
    )
    if not names:
        raise ValueError(f"plot_training_curves: group {group!r} holds no numeric series.")
    fig, axes = _figure(None, ncols=min(3, len(names)), nrows=-(-len(names) // 3), size=(3.6, 2.8))
    flat = axes.ravel()
    for axis, name in zip(flat, names, strict=False):
        da = ds[name]
        if "chain" in da.dims:
            da = da.mean("chain")
        step = next((d for d in ("epoch", "step", "iteration", "draw") if d in da.dims), da.dims[0])
        other = [d for d in da.dims if d != step]
        da = da.mean(other) if other else da
        axis.plot(da[step].values, da.values, lw=1.2)
        axis.set_xlabel(step)
        axis.set_title(name, fontsize=9)
        values = da.values[np.isfinite(da.values)]
        if values.size and values.min() > 0 and values.max() / values.min() > 100:
            axis.set_yscale("log")
    for axis in flat[len(names) :]:
        axis.set_visible(False)
    return _finish(fig, path)
