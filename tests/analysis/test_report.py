"""The HTML report: self-contained, with settings, tables and embedded plots; renders in Chromium."""

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest

from pyrobust.analysis import combine, mig, plot_latent_traversals, report, save
from tests.analysis._fixtures import margin_tree, robustness_tree, training_tree


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
    # one embedded PNG per plot: curve, scatter x2 (margin tree and the beta sweep), beta,
    # training, traversals
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 6
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
    return next(
        (shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None
    )


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's `chromium` is not installed (apt-get install chromium)")
    index = _build(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--screenshot={shot}",
            "--window-size=1200,3000",
            index.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
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
