"""The HTML report: self-contained, with settings, tables and embedded plots; renders in Chromium."""

import base64
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from pyrobust.analysis import combine, mig, plot_latent_traversals, report, save
from tests.analysis._fixtures import (
    bound_tree,
    empirical_tree,
    margin_tree,
    robustness_tree,
    schema_robustness_tree,
    training_tree,
)


def _build(tmp_path):
    path = save(robustness_tree(), tmp_path / "robust.nc")
    f = np.random.default_rng(0).integers(0, 4, size=(200, 2))
    sweep = combine(
        [margin_tree(seed=i, beta=b) for i, b in enumerate([1.0, 4.0, 16.0])], dim="beta"
    )
    extra = plot_latent_traversals(np.random.default_rng(0).random((2, 3, 5, 5)))
    return report(
        [path, margin_tree(), training_tree(), mig(f, f, num_bootstrap=10), sweep],
        tmp_path / "out",
        title="test run",
        figures=[("traversals", extra)],
    )


def test_report_is_self_contained_with_tables_and_plots(tmp_path):
    index = _build(tmp_path)
    assert index.name == "index.html" and index.parent.name == "out"
    text = index.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<title>test run</title>" in text
    # settings of the saved result, including decoded JSON values
    assert "robust" in text and "<td class='k'>reference</td>" in text
    assert "<td class='k'>max_batch</td><td class='k'>None</td>" in text
    # summary tables for robustness, metrics and the arviz_stats summary of sample groups
    assert "Group <code>robustness</code>" in text and "probability" in text
    assert "mig_histogram" in text and "Group <code>bootstrap</code>" in text
    # one embedded PNG per plot: the findings' scatter (the margin tree holds a bound and an
    # empirical margin), then curve, scatter x2 (margin tree and the beta sweep), beta,
    # training, traversals
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 7
    for img in images:
        assert base64.b64decode(img).startswith(b"\x89PNG")
    # nothing else is referenced: no external files or URLs
    assert "http://" not in text and "https://" not in text and "src='data:" in text
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.html"]


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        report([], tmp_path)
    with pytest.raises(ValueError, match="one entry per result"):
        report([training_tree()], tmp_path, names=["a", "b"])
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a pyrobust result"):
        report(bad, tmp_path / "out")


def _chromium():
    names = ("chromium-headless-shell", "chromium", "chromium-browser")
    return next((shutil.which(b) for b in names if shutil.which(b)), None)


def _screenshot(browser, index, shot, height=3000):
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            f"--window-size=1200,{height}",
            index.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    return imread(shot)[..., :3]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")
    index = _build(tmp_path)
    pixels = _screenshot(browser, index, tmp_path / "shot.png")
    assert pixels.shape[0] >= 1000
    # non-trivial: many distinct colours (text and plots), and plenty of non-white area
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50
    assert (pixels.mean(-1) < 0.9).mean() > 0.02


def test_tables_keep_dims_apart_and_list_images_by_shape(tmp_path):
    import xarray as xr

    steps, epochs = 40, 4
    ds = xr.Dataset(
        {
            "loss": (("step",), np.arange(steps, dtype=float)),
            "val_loss": (("epoch",), np.arange(epochs, dtype=float)),
            "x": (("obs_id", "row", "col"), np.zeros((3, 8, 8))),
        }
    )
    tree = xr.DataTree()
    tree["history"] = xr.DataTree(ds)
    text = report(tree, tmp_path / "out").read_text()
    # per-step and per-epoch curves are separate tables, not a 40 x 4 cross join
    assert f"of {steps * epochs} rows" not in text and f"of {steps} rows" in text
    assert "<code>x</code> (obs_id: 3, row: 8, col: 8)" in text


def _run_dir(root, name, seed):
    run = root / name
    run.mkdir()
    save(schema_robustness_tree(seed=seed), run / "robustness.nc")
    save(bound_tree(seed=seed), run / "margin.nc")
    save(empirical_tree(seed=seed), run / "empirical_margin.nc")
    return sorted(run.glob("*.nc"))


def test_findings_come_first_with_counts_margins_and_scatter(tmp_path):
    paths = _run_dir(tmp_path, "run", 0)
    text = report(paths, tmp_path / "out").read_text()
    assert text.index("<h2>Findings</h2>") < text.index("<h3>Settings</h3>")
    findings = text[text.index("<h2>Findings</h2>") : text.index("<h3>Settings</h3>")]
    # decisions at each r and eps, counted from the codes: one table row per (eps, r)
    codes = schema_robustness_tree(seed=0)["robustness"]["decision"]
    for eps in (0.0, 0.5):
        for r in (0.5, 1.0):
            c = codes.sel(eps=eps, radius=r).values
            cells = [eps, r, (c == 1).sum(), (c == -1).sum(), (c == 0).sum(), 6]
            row = "<tr>" + "".join(f"<td>{v:g}</td>" for v in cells) + "</tr>"
            assert row in findings, row
    assert "exact 95% intervals" in findings and "Intervals are 95% throughout" in findings
    # with one r and no sweep the headline is a sentence
    one = report(schema_robustness_tree(seed=0, eps=(0.0,), radii=(1.0,)), tmp_path / "one")
    c = schema_robustness_tree(seed=0, eps=(0.0,), radii=(1.0,))["robustness"]["decision"].values
    assert (
        f"eps = 0, r = 1: {(c == 1).sum()} of 6 inputs robust, {(c == -1).sum()} not robust, "
        f"{(c == 0).sum()} undecided"
    ) in one.read_text()
    # margins: medians, vacuous and unbroken counts, agreement and correlation
    b = bound_tree(seed=0)["robustness"]["bound"].values
    emp = empirical_tree(seed=0)["robustness"]
    m, broken = emp["margin"].values, emp["broken"].values
    assert f"median margin bound {np.median(b):.4g}" in findings
    assert "vacuous (0) on 2 of 12" in findings
    assert f"median empirical margin {np.median(m):.4g}" in findings
    assert "3 of 12 inputs not broken within the search limit 3" in findings
    assert f"bound ≤ empirical on <b>{(b <= m).sum()} of 12</b>" in findings
    rho = np.corrcoef(b[broken], m[broken])[0, 1]
    assert f"Pearson correlation <b>{rho:.4g}</b> over the 9 inputs" in findings
    assert "alt='margin bound vs empirical margin'" in findings
    # units are stated; one run: no run headings
    assert "output units" in findings and "input units" in findings
    assert "Run <code>" not in findings


def test_multi_run_report_names_runs_and_wraps_tables(tmp_path):
    paths = _run_dir(tmp_path, "beta1", 0) + _run_dir(tmp_path, "beta4", 1)
    text = report(paths, tmp_path / "out").read_text()
    assert "Run <code>beta1</code>" in text and "Run <code>beta4</code>" in text
    assert "<h2>beta1 / robustness <span" in text and "<h2>beta4 / margin <span" in text
    # every table sits in a horizontally scrolling box
    assert text.count("<table") == text.count("<div class='tbl'><table")
    # ArviZ bookkeeping is not listed as a setting
    assert "<td class='k'>creation_library</td>" not in text


@pytest.mark.slow
def test_report_screenshot_shows_findings_and_scatter(tmp_path):
    """Render a two-run report in headless Chromium; keep the screenshot for a human to look at.

    Set PYROBUST_SCREENSHOT_DIR to keep ``report.png`` there.
    """
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")
    paths = _run_dir(tmp_path, "beta1", 0) + _run_dir(tmp_path, "beta4", 1)
    index = report(paths, tmp_path / "out", title="two runs")
    shot = tmp_path / "report.png"
    pixels = _screenshot(browser, index, shot, height=2200)
    keep = os.environ.get("PYROBUST_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, os.path.join(keep, "report.png"))
    assert pixels.shape[:2] == (2200, 1200)
    # the findings box (light blue-grey background) is at the top of the page
    top = pixels[:900]
    box = np.all(np.abs(top * 255 - np.array([247, 248, 252])) < 2, axis=-1)
    assert box.mean() > 0.1
    # the scatter of run 1 is drawn inside the first 2200 px: many non-grey (plot) colours
    blue = np.all(np.abs(pixels * 255 - np.array([31, 119, 180])) < 40, axis=-1)  # C0 points
    assert blue.sum() > 100
