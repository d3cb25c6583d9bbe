"""A self-contained HTML report of one or more pyrobust results.

:func:`report` writes ``index.html``: first the **findings** of each run (how many inputs are
robust, not robust or undecided at each r and eps; the median margin bound and empirical
margin; on how many inputs the bound stays below the empirical margin, their correlation and
the scatter of one against the other), then for each result its settings, summary tables of
every group and the plots that fit its groups, embedded as base64 PNG so the single file opens
in any browser with nothing beside it.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pyrobust._results import decode_attrs, strip_standard_attrs
from pyrobust.analysis.io import _check_path, as_tree, result_kind, settings, write_atomic

__all__ = ["report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #446; padding-bottom: .2em; }
h2 { margin-top: 2em; color: #335; } h3 { color: #446; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1em; }
th, td { border: 1px solid #ccd; padding: 3px 8px; text-align: right; }
th { background: #eef; } td.k { text-align: left; font-family: monospace; }
img { max-width: 100%; border: 1px solid #dde; margin: .5em 0; }
.note { color: #a33; font-size: 13px; } .small { color: #666; font-size: 12px; }
.tbl { overflow-x: auto; max-width: 100%; } td.k { word-break: break-all; }
#findings { background: #f7f8fc; border: 1px solid #dde; padding: .2em 1.2em 1em; }
ul.findings li { margin: .4em 0; line-height: 1.4; } img.scatter { max-width: 440px; }
"""

_SAMPLE_GROUPS = ("posterior", "posterior_predictive", "sample_stats", "bootstrap", "prior")
_MAX_ROWS = 30


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table_settings(values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td class='k'>{html.escape(str(k))}</td>"
        f"<td class='k'>{html.escape(_short(v))}</td></tr>"
        for k, v in values.items()
    )
    return f"<div class='tbl'><table><tr><th>setting</th><th>value</th></tr>{rows}</table></div>"


def _short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PIXEL_DIMS = {"channel", "row", "col", "feature"}


def _dataset_table(ds: xr.Dataset) -> str:
    """A table of a summary group: scalars in one row, else one row per coordinate tuple."""
    ds = ds.drop_attrs() if hasattr(ds, "drop_attrs") else ds
    scalars = {k: v for k, v in ds.data_vars.items() if v.ndim == 0}
    out = ""
    if scalars:
        cells = "".join(f"<th>{html.escape(str(k))}</th>" for k in scalars)
        vals = "".join(f"<td>{_fmt(v.values)}</td>" for v in scalars.values())
        out += f"<div class='tbl'><table><tr>{cells}</tr><tr>{vals}</tr></table></div>"
    # One table per set of dims: variables on different dims (e.g. per-step and per-epoch
    # training curves) must not be cross-joined into one frame.
    # Images and other per-pixel arrays are listed by shape, not printed value by value.
    by_dims: dict[tuple, list] = {}
    arrays = []
    for k, v in ds.data_vars.items():
        if k in scalars:
            continue
        if _PIXEL_DIMS & set(v.dims):
            shape = ", ".join(f"{d}: {n}" for d, n in v.sizes.items())
            arrays.append(f"<li><code>{html.escape(str(k))}</code> ({html.escape(shape)})</li>")
        else:
            by_dims.setdefault(v.dims, []).append(k)
    if arrays:
        out += f"<p class='small'>arrays:</p><ul class='small'>{''.join(arrays)}</ul>"
    for names in by_dims.values():
        frame = ds[names].to_dataframe()[names]
        note = ""
        if len(frame) > _MAX_ROWS:
            note = f"<p class='small'>first {_MAX_ROWS} of {len(frame)} rows</p>"
            frame = frame.head(_MAX_ROWS)
        table = frame.to_html(float_format=lambda v: f"{v:.4g}", border=0)
        out += f"<div class='tbl'>{table}</div>{note}"
    return out


def _fmt(value: Any) -> str:
    value = np.asarray(value).item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _sample_table(tree: xr.DataTree, group: str, ci_prob: float | None = None) -> str:
    import arviz_stats

    frame = arviz_stats.summary(tree, group=group, kind="stats", ci_prob=ci_prob)
    note = ""
    if len(frame) > _MAX_ROWS:
        note = f"<p class='small'>first {_MAX_ROWS} of {len(frame)} rows</p>"
        frame = frame.head(_MAX_ROWS)
    table = frame.to_html(float_format=lambda v: f"{v:.4g}", border=0)
    return f"<div class='tbl'>{table}</div>{note}"


def _plots_for(tree: xr.DataTree) -> list[tuple[str, Any]]:
    """(title, figure factory) for every plot this tree's groups support."""
    from pyrobust.analysis import plots

    found: list[tuple[str, Any]] = []
    rob = tree["robustness"].to_dataset() if "robustness" in tree.children else None
    if rob is not None and "probability" in rob.data_vars:
        found.append(("r-robustness curve", lambda: plots.plot_robustness_curve(tree)))
    if (
        rob is not None
        and "bound" in rob.data_vars
        and ("margin" in rob.data_vars or "empirical_margin" in rob.data_vars)
    ):
        found.append(("margin bound vs empirical margin", lambda: plots.plot_margin_scatter(tree)))
    if any("beta" in node.dims for node in tree.subtree):
        found.append(("against beta", lambda: plots.plot_against_beta(tree)))
    if "history" in tree.children or "sample_stats" in tree.children:
        found.append(("training curves", lambda: plots.plot_training_curves(tree)))
    return found


def _section(name: str, tree: xr.DataTree, ci_prob: float | None = None) -> str:
    parts = [
        f"<h2>{html.escape(name)} <span class='small'>({html.escape(result_kind(tree))})</span></h2>"
    ]
    parts.append("<h3>Settings</h3>" + _table_settings(strip_standard_attrs(settings(tree))))
    for group in tree.children:
        ds = tree[group].to_dataset()
        if not ds.data_vars:
            continue
        try:
            if group in _SAMPLE_GROUPS and {"chain", "draw"} <= set(ds.dims):
                body = _sample_table(tree, group, ci_prob)
            else:
                body = _dataset_table(ds)
        except (ValueError, TypeError, KeyError) as err:  # a table must not sink the report
            body = f"<p class='note'>table unavailable: {html.escape(str(err))}</p>"
        parts.append(f"<h3>Group <code>{html.escape(group)}</code></h3>{body}")
    for title, factory in _plots_for(tree):
        try:
            img = f"<img alt='{html.escape(title)}' src='data:image/png;base64,{_png(factory())}'/>"
        except (ValueError, TypeError, KeyError) as err:  # report the reason, keep the rest
            img = f"<p class='note'>plot unavailable: {html.escape(str(err))}</p>"
        parts.append(f"<h3>{html.escape(title)}</h3>{img}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# findings: what the results say, stated before the data
# --------------------------------------------------------------------------------------------

_DECISION_NAMES = {1: "robust", -1: "not robust", 0: "undecided"}


def _decision_codes(rob: xr.Dataset, name: str = "decision") -> xr.DataArray | None:
    """Decision codes (1 robust, -1 not robust, 0 undecided) from codes, labels or the interval."""
    if name in rob.data_vars:
        da = rob[name]
        if da.dtype.kind in "iu":
            return da.astype(np.int8)
        if da.dtype.kind in "UOS":
            labels = {v: k for k, v in _DECISION_NAMES.items()}
            codes = np.vectorize(lambda s: labels.get(str(s), 0), otypes=[np.int8])(da.values)
            return da.copy(data=codes)
    from pyrobust.analysis.plots import _interval

    lo, hi = _interval(rob)
    if lo is None:
        return None
    return ((lo > 0.5).astype(np.int8) - (hi < 0.5).astype(np.int8)).astype(np.int8)


def _decision_table(codes: xr.DataArray) -> tuple[str, list[str]]:
    """HTML table of decision counts over inputs per remaining coordinate, and sentences."""
    counts = xr.Dataset(
        {
            label: (codes == code).sum("obs_id")
            for code, label in ((1, "robust"), (-1, "not robust"), (0, "undecided"))
        }
    )
    counts["inputs"] = xr.full_like(counts["robust"], codes.sizes["obs_id"])
    for d in list(counts.dims):
        if d not in counts.coords:
            counts = counts.assign_coords({d: np.arange(counts.sizes[d])})
    rows = [d for d in codes.dims if d != "obs_id"]  # the query's own dim order
    if rows:
        frame = counts.to_dataframe(dim_order=rows)[["robust", "not robust", "undecided", "inputs"]]
        records = frame.reset_index().to_dict("records")
    else:
        records = [{k: int(counts[k]) for k in ("robust", "not robust", "undecided", "inputs")}]
    head = "".join(f"<th>{html.escape('r' if d == 'radius' else d)}</th>" for d in rows)
    head += "<th>robust</th><th>not robust</th><th>undecided</th><th>inputs</th>"
    body, sentences = "", []
    for rec in records:
        where = ", ".join(f"{'r' if d == 'radius' else d} = {_num(rec[d])}" for d in rows)
        cells = "".join(f"<td>{html.escape(_num(rec[d]))}</td>" for d in rows)
        cells += "".join(
            f"<td>{int(rec[k])}</td>" for k in ("robust", "not robust", "undecided", "inputs")
        )
        body += f"<tr>{cells}</tr>"
        sentences.append(
            (f"{where}: " if where else "")
            + f"{int(rec['robust'])} of {int(rec['inputs'])} inputs robust, "
            f"{int(rec['not robust'])} not robust, {int(rec['undecided'])} undecided"
        )
    return f"<div class='tbl'><table><tr>{head}</tr>{body}</table></div>", sentences


def _num(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _run_key(item: Any, tree: xr.DataTree) -> tuple[str, str]:
    """(key, display name) of the run a result belongs to."""
    attrs = decode_attrs(tree.attrs)
    run_dir = attrs.get("run_dir")
    if isinstance(run_dir, str) and run_dir:
        return f"dir:{Path(run_dir).resolve()}", Path(run_dir).name or run_dir
    if isinstance(item, (str, os.PathLike)):
        parent = Path(item).resolve().parent
        return f"dir:{parent}", parent.name or str(parent)
    model_hash = attrs.get("model_hash")
    if isinstance(model_hash, str):
        name = attrs.get("model_name", "model")
        return f"hash:{model_hash}", f"{name} {model_hash[:8]}"
    return "run", "results"


def _confidence_levels(trees: Sequence[xr.DataTree]) -> list[float]:
    levels = set()
    for tree in trees:
        for node in tree.subtree:
            value = decode_attrs(node.attrs).get("confidence")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                levels.add(float(value))
    return sorted(levels)


def _margin_pair(results: list[tuple[str, xr.DataTree]]):
    """(bound, empirical, broken, r) arrays when a run holds both a bound and an empirical margin."""
    bound = empirical = None
    for _, tree in results:
        if "robustness" not in tree.children:
            continue
        rob = tree["robustness"].to_dataset()
        for name in ("bound", "certified_margin"):
            if bound is None and name in rob.data_vars and "beta" not in rob[name].dims:
                da = rob[name]
                if "radius" in da.dims:
                    da = da.isel(radius=0)
                bound = (da, decode_attrs(tree.attrs).get("r"))
        for name in ("margin", "empirical_margin"):
            if empirical is None and name in rob.data_vars and "beta" not in rob[name].dims:
                brk = rob["broken"] if "broken" in rob.data_vars else xr.ones_like(rob[name])
                empirical = (rob[name], brk.astype(bool), decode_attrs(tree.attrs).get("r"))
    if bound is None or empirical is None:
        return None
    b, m = np.ravel(bound[0].values), np.ravel(empirical[0].values)
    if b.shape != m.shape:
        return None
    return b, m, np.ravel(empirical[1].values), bound[1], empirical[2]


def _headline(name: str | None, results: list[tuple[str, xr.DataTree]], level: str) -> str:
    """The findings of one run: decisions, margins, their agreement and the scatter."""
    from pyrobust.analysis.plots import margin_agreement, plot_margin_scatter

    parts: list[str] = []
    items: list[str] = []
    for label, tree in sorted(results, key=_finding_order):
        if "robustness" not in tree.children:
            continue
        rob = tree["robustness"].to_dataset()
        attrs = decode_attrs(tree.attrs)
        query = attrs.get("query", result_kind(tree))
        codes = _decision_codes(rob) if "probability" in rob.data_vars else None
        if codes is not None and "obs_id" in codes.dims:
            table, sentences = _decision_table(codes)
            r = attrs.get("r")
            r_text = f" (r = {_plain(r)} in output units)" if r is not None else ""
            head = (
                f"<li><b>{html.escape(label)}</b> — {html.escape(str(query))}{r_text}, "
                f"inputs decided from exact {level} intervals"
            )
            if len(sentences) <= 2:
                items.append(head + ": " + "; ".join(html.escape(s) for s in sentences) + "</li>")
            else:
                items.append(head + f":{table}</li>")
        for var, what in (("bound", "margin bound"), ("certified_margin", "certified margin")):
            if var in rob.data_vars:
                values = rob[var].values.astype(np.float64)
                vac = int((values <= 0).sum())
                items.append(
                    f"<li><b>{html.escape(label)}</b> — median {what} "
                    f"{_num(np.nanmedian(values))} (ℓ2 norm of δ, input units); "
                    f"vacuous (0) on {vac} of {values.size}</li>"
                )
        for var in ("margin", "empirical_margin"):
            if var in rob.data_vars:
                values = rob[var].values.astype(np.float64)
                text = (
                    f"<li><b>{html.escape(label)}</b> — median empirical margin "
                    f"{_num(np.nanmedian(values))} (ℓ2, input units)"
                )
                if "broken" in rob.data_vars:
                    unbroken = int((~rob["broken"].values.astype(bool)).sum())
                    limit = attrs.get("radius_max")
                    limit_text = "" if limit is None else f" {_plain(limit)}"
                    text += (
                        f"; {unbroken} of {values.size} inputs not broken within the search "
                        f"limit{limit_text} (their margin is at least that)"
                    )
                items.append(text + "</li>")
    for label, tree in results:
        if "metrics" in tree.children:
            met = tree["metrics"].to_dataset()
            for var, da in met.data_vars.items():
                if da.ndim or var.endswith("_ci"):
                    continue
                ci = met.get(f"{var}_ci")
                ci_text = ""
                if ci is not None and np.all(np.isfinite(ci.values)):
                    lo, hi = ci.sel(ci_bound="lower").item(), ci.sel(ci_bound="upper").item()
                    ci_text = f" [{lo:.3g}, {hi:.3g}]"
                items.append(
                    f"<li><b>{html.escape(label)}</b> — {html.escape(str(var))} = "
                    f"{_num(da.item())}{ci_text}</li>"
                )
    pair = _margin_pair(results)
    scatter = ""
    if pair is not None:
        b, m, brk, r_b, r_m = pair
        stats = margin_agreement(b, m, brk)
        same_r = r_b is None or r_m is None or np.allclose(np.ravel(r_b)[0], np.ravel(r_m)[0])
        items.append(
            f"<li><b>bound vs empirical margin</b>: bound ≤ empirical on "
            f"<b>{stats['consistent']} of {stats['n']}</b> inputs; Pearson correlation "
            f"<b>{_num(stats['pearson'])}</b> over the {stats['broken']} inputs the attack "
            f"broke; median bound {_num(stats['median_bound'])}, median empirical "
            f"{_num(stats['median_empirical'])} (input units)"
            + ("" if same_r else " <span class='note'>(computed at different r)</span>")
            + "</li>"
        )
        try:
            fig = plot_margin_scatter(b, m, broken=brk)
            scatter = (
                "<img class='scatter' alt='margin bound vs empirical margin' "
                f"src='data:image/png;base64,{_png(fig)}'/>"
            )
        except (ValueError, TypeError) as err:  # pragma: no cover - defensive
            scatter = f"<p class='note'>scatter unavailable: {html.escape(str(err))}</p>"
    if not items:
        items.append("<li class='small'>no robustness, margin or metric results</li>")
    if name is not None:
        parts.append(f"<h3>Run <code>{html.escape(name)}</code></h3>")
    parts.append(f"<ul class='findings'>{''.join(items)}</ul>{scatter}")
    return "".join(parts)


def _finding_order(item: tuple[str, xr.DataTree]) -> int:
    """Decisions first, then bounds, then empirical margins."""
    rob = item[1]["robustness"].data_vars if "robustness" in item[1].children else {}
    if "probability" in rob:
        return 0
    if "bound" in rob or "certified_margin" in rob:
        return 1
    return 2


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return _num(value)


def _findings(runs: dict[str, tuple[str, list[tuple[str, xr.DataTree]]]], level: str) -> str:
    multi = len(runs) > 1
    body = "".join(
        _headline(name if multi else None, results, level) for name, results in runs.values()
    )
    return (
        "<section id='findings'><h2>Findings</h2>"
        "<p class='small'>Distances r and degrees are ℓ2 norms between reconstructions "
        "(output units); margins and ε are ℓ2 norms of the perturbation δ (input units). "
        f"Intervals are {level} throughout.</p>"
        f"{body}</section>"
    )


def report(
    trees_or_paths: xr.DataTree | str | os.PathLike | Sequence[xr.DataTree | str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    title: str = "pyrobust report",
    names: Sequence[str] | None = None,
    figures: Sequence[tuple[str, Any]] = (),
) -> Path:
    """Write a self-contained HTML report of pyrobust results.

    For each result: its settings (root attrs, decoded), a table per group (``arviz_stats``
    summaries of sample groups; the values of summary groups such as ``robustness`` and
    ``metrics``), and the plots its groups support (robustness curve, bound vs empirical margin,
    quantities against beta, training curves), all embedded as base64 PNG.

    Parameters
    ----------
    trees_or_paths : DataTree, path, or a sequence of them
        Results, or files written by :func:`pyrobust.analysis.save`.
    out_dir : str or path-like
        Directory for ``index.html`` (created if missing).
    title : str, default "pyrobust report"
    names : sequence of str, optional
        Section titles (default: file stems, tree names, or ``result 1``, ...).
    figures : sequence of (title, matplotlib Figure), optional
        Extra figures to embed (e.g. :func:`pyrobust.analysis.plot_reconstructions`).

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.
    """
    items = (
        [trees_or_paths]
        if isinstance(trees_or_paths, (xr.DataTree, str, os.PathLike))
        else list(trees_or_paths)
    )
    if not items:
        raise ValueError(
            "`trees_or_paths` must hold at least one result tree or path; got an empty sequence."
        )
    if names is not None and len(names) != len(items):
        raise ValueError(
            f"names must have one entry per result: {len(items)} results, {len(names)} names."
        )
    loaded: list[tuple[str, str, xr.DataTree]] = []  # (run key, label, tree)
    runs: dict[str, tuple[str, list[tuple[str, xr.DataTree]]]] = {}
    for i, item in enumerate(items):
        tree = as_tree(item, f"trees_or_paths[{i}]")
        if names is not None:
            name = names[i]
        elif isinstance(item, (str, os.PathLike)):
            name = Path(item).stem
        else:
            name = tree.name or f"result {i + 1}"
        key, run_name = _run_key(item, tree)
        runs.setdefault(key, (run_name, []))[1].append((str(name), tree))
        loaded.append((key, str(name), tree))
    levels = _confidence_levels([t for _, _, t in loaded])
    ci_prob = levels[0] if len(levels) == 1 else None
    level = f"{levels[0]:.0%}" if len(levels) == 1 else "at the levels each result states"
    sections = [_findings(runs, level)]
    if len(levels) > 1:
        sections.append(
            f"<p class='note'>the results use different interval levels {levels}; "
            "rerun them with one confidence= to compare intervals.</p>"
        )
    for key, name, tree in loaded:
        heading = f"{runs[key][0]} / {name}" if len(runs) > 1 else name
        sections.append(_section(heading, tree, ci_prob))
    for fig_title, fig in figures:
        sections.append(
            f"<h2>{html.escape(fig_title)}</h2>"
            f"<img alt='{html.escape(fig_title)}' src='data:image/png;base64,{_png(fig)}'/>"
        )
    from pyrobust.analysis.io import _version

    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='small'>pyrobust {html.escape(_version())}; {len(items)} result(s)</p>"
        + "\n".join(sections)
        + "</body></html>"
    )
    out = _check_path(out_dir, "out_dir")
    if os.path.lexists(out) and not out.is_dir():
        raise ValueError(
            f"out_dir {str(out)!r} exists and is not a directory; pass a directory for index.html."
        )
    out.mkdir(parents=True, exist_ok=True)
    # a temporary file from mkstemp (no predictable name, O_EXCL: a planted symlink is never
    # followed), renamed over index.html; temp files of killed runs are removed
    return write_atomic(out / "index.html", doc.encode("utf-8"))
