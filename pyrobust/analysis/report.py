"""A self-contained HTML report of one or more pyrobust results.

:func:`report` writes ``index.html``: for each result, its settings, summary tables of every
group and the plots that fit its groups, embedded as base64 PNG so the single file opens in any
browser with nothing beside it.
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
    return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


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
        out += f"<table><tr>{cells}</tr><tr>{vals}</tr></table>"
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
        out += frame.to_html(float_format=lambda v: f"{v:.4g}", border=0) + note
    return out


def _fmt(value: Any) -> str:
    value = np.asarray(value).item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _sample_table(tree: xr.DataTree, group: str) -> str:
    import arviz_stats

    frame = arviz_stats.summary(tree, group=group, kind="stats")
    note = ""
    if len(frame) > _MAX_ROWS:
        note = f"<p class='small'>first {_MAX_ROWS} of {len(frame)} rows</p>"
        frame = frame.head(_MAX_ROWS)
    return frame.to_html(float_format=lambda v: f"{v:.4g}", border=0) + note


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


def _section(name: str, tree: xr.DataTree) -> str:
    parts = [
        f"<h2>{html.escape(name)} <span class='small'>({html.escape(result_kind(tree))})</span></h2>"
    ]
    parts.append("<h3>Settings</h3>" + _table_settings(settings(tree)))
    for group in tree.children:
        ds = tree[group].to_dataset()
        if not ds.data_vars:
            continue
        try:
            if group in _SAMPLE_GROUPS and {"chain", "draw"} <= set(ds.dims):
                body = _sample_table(tree, group)
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
        raise ValueError("report needs at least one result tree or path; got an empty sequence.")
    if names is not None and len(names) != len(items):
        raise ValueError(
            f"names must have one entry per result: {len(items)} results, {len(names)} names."
        )
    sections = []
    for i, item in enumerate(items):
        tree = as_tree(item, f"trees_or_paths[{i}]")
        if names is not None:
            name = names[i]
        elif isinstance(item, (str, os.PathLike)):
            name = Path(item).stem
        else:
            name = tree.name or f"result {i + 1}"
        sections.append(_section(str(name), tree))
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
