"""Plots write non-empty images, draw what they claim, and reject trees that lack a group."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pyrobust._results import make_tree
from pyrobust.analysis import (
    combine,
    plot_against_beta,
    plot_latent_traversals,
    plot_margin_scatter,
    plot_reconstructions,
    plot_robustness_curve,
    plot_training_curves,
    save,
)
from tests.analysis._fixtures import history_tree, margin_tree, robustness_tree, training_tree

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _written(path):
    data = path.read_bytes()
    assert len(data) > 1000
    if path.suffix == ".png":
        assert data.startswith(PNG_MAGIC)
    else:
        assert b"<svg" in data[:2000]
    return data


def test_importing_pyrobust_does_not_import_matplotlib():
    code = "import sys, pyrobust, pyrobust.analysis; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_robustness_curve_against_delta_norm(tmp_path, suffix):
    tree = robustness_tree()
    fig = plot_robustness_curve(tree, path=tmp_path / f"curve{suffix}")
    _written(tmp_path / f"curve{suffix}")
    axis = fig.axes[0]
    # the 1/2 line is drawn
    assert any(np.allclose(line.get_ydata(), 0.5) for line in axis.get_lines())
    # x positions are ||delta||_2 of each input
    delta = tree["constant_data"]["delta"].values.reshape(6, -1)
    xs = np.concatenate([np.ravel(ln.get_xdata()) for ln in axis.get_lines()])
    for d in delta:
        assert np.isclose(xs, np.linalg.norm(d)).any()


def test_robustness_curve_over_eps_with_band_from_saved_file(tmp_path):
    eps = np.linspace(0.0, 1.0, 5)
    p = np.clip(1 - eps[None, :] * np.arange(1, 4)[:, None] / 2, 0, 1)
    tree = make_tree(
        summary={
            "robustness": {
                "probability": (["obs_id", "eps"], p),
                "ci_lower": (["obs_id", "eps"], np.clip(p - 0.1, 0, 1)),
                "ci_upper": (["obs_id", "eps"], np.clip(p + 0.1, 0, 1)),
            }
        },
        coords={"obs_id": np.arange(3), "eps": eps},
        attrs={"r": 0.5},
    )
    path = save(tree, tmp_path / "sweep.nc")
    fig = plot_robustness_curve(path, path=tmp_path / "sweep.png")
    _written(tmp_path / "sweep.png")
    lines = fig.axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_xdata(), eps)
    np.testing.assert_allclose(lines[0].get_ydata(), p[0])
    assert len(fig.axes[0].collections) == 3  # one band per input


def test_margin_scatter_reports_pearson(tmp_path):
    tree = margin_tree()
    fig = plot_margin_scatter(tree, path=tmp_path / "scatter.png")
    _written(tmp_path / "scatter.png")
    rob = tree["robustness"]
    b, m = rob["bound"].values, rob["empirical_margin"].values
    rho = np.corrcoef(b, m)[0, 1]
    assert fig.axes[0].get_title().startswith(f"Pearson r = {rho:.3f} over 6 broken inputs")
    assert fig.axes[0].get_title().endswith(f"bound ≤ empirical on {(b <= m).sum()} of 6")
    # arrays work too; y = x is drawn
    fig = plot_margin_scatter(np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.4, 0.5]))
    assert any(np.allclose(ln.get_xdata(), ln.get_ydata()) for ln in fig.axes[0].get_lines())
    rho = np.corrcoef([0.1, 0.2, 0.3], [0.2, 0.4, 0.5])[0, 1]
    assert fig.axes[0].get_title().startswith(f"Pearson r = {rho:.3f} over 3")


def test_margin_scatter_draws_unbroken_inputs_as_lower_bounds():
    b = np.array([0.1, 0.2, 0.3, 0.25, 0.05])
    m = np.array([0.3, 0.5, 0.7, 1.0, 1.0])  # the last two hit the search limit 1.0
    broken = np.array([True, True, True, False, False])
    fig = plot_margin_scatter(b, m, broken=broken)
    axis = fig.axes[0]
    points, lower = axis.collections[:2]
    np.testing.assert_allclose(points.get_offsets(), np.c_[b[:3], m[:3]])
    np.testing.assert_allclose(lower.get_offsets(), np.c_[b[3:], m[3:]])
    arrows = [c for c in axis.get_children() if type(c).__name__ == "Annotation"]
    assert len(arrows) == 2  # one upward arrow per unbroken input
    # the correlation is over the broken inputs only
    rho = np.corrcoef(b[:3], m[:3])[0, 1]
    assert axis.get_title().startswith(f"Pearson r = {rho:.3f} over 3 broken inputs")
    assert "input units" in axis.get_xlabel()


def _eps_tree(beta, seed=0, r=(0.5, 1.0)):
    eps = np.array([0.0, 0.5, 1.0])
    rng = np.random.default_rng(seed)
    p = np.clip(1 - eps[None, :, None] * rng.random((4, 1, len(r))) * beta, 0, 1)
    lo, hi = np.clip(p - 0.05, 0, 1), np.clip(p + 0.05, 0, 1)
    return make_tree(
        summary={
            "robustness": {
                "probability": (["obs_id", "eps", "radius"], p),
                "ci": (["obs_id", "eps", "radius", "ci_bound"], np.stack([lo, hi], -1)),
            }
        },
        coords={"obs_id": np.arange(4), "eps": eps, "radius": np.array(r)},
        attrs={"query": "r_robustness", "r": list(r), "beta": beta, "confidence": 0.95,
               "model_hash": f"{seed:064d}"},
    )  # fmt: skip


def test_curve_of_a_combined_tree_draws_one_line_per_beta_and_labels_r():
    tree = combine([_eps_tree(b, seed=i) for i, b in enumerate([1.0, 2.0])], dim="beta")
    fig = plot_robustness_curve(tree, radius=1)
    axis = fig.axes[0]
    lines = [ln for ln in axis.get_lines() if ln.get_label().startswith("beta")]
    assert [ln.get_label() for ln in lines] == ["beta = 1", "beta = 2"]
    for ln, b in zip(lines, [1.0, 2.0], strict=True):
        expected = tree["robustness"]["probability"].sel(beta=b).isel(radius=1).mean("obs_id")
        np.testing.assert_allclose(ln.get_ydata(), expected.values)
    # the band is the quartiles over inputs of each model, not an envelope over models
    assert len(axis.collections) == 2
    for band, b in zip(axis.collections, [1.0, 2.0], strict=True):
        ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
        p = tree["robustness"]["probability"].sel(beta=b).isel(radius=1).values
        q = np.quantile(p, [0.25, 0.75], axis=0)
        assert np.isclose(ys.min(), q[0].min()) and np.isclose(ys.max(), q[1].max())
    assert axis.get_title() == "r-robustness, r = 1"  # the selected radius, no json: prefix
    assert "json" not in axis.get_ylabel()


def test_curve_reads_the_ci_bound_interval():
    tree = _eps_tree(1.0)
    fig = plot_robustness_curve(tree)
    axis = fig.axes[0]
    band = axis.collections[0]
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    ci = tree["robustness"]["ci"].isel(obs_id=0, radius=0)
    assert np.isclose(ys.min(), ci.sel(ci_bound="lower").min()) and np.isclose(
        ys.max(), ci.sel(ci_bound="upper").max()
    )
    assert "95% interval" in axis.get_ylabel() and axis.get_title() == "r-robustness, r = 0.5"


def test_against_beta(tmp_path):
    betas = [1.0, 4.0, 16.0, 64.0]
    tree = combine([margin_tree(seed=i, beta=b) for i, b in enumerate(betas)], dim="beta")
    fig = plot_against_beta(tree, path=tmp_path / "beta.svg")
    _written(tmp_path / "beta.svg")
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["min_scale", "jacobian_norm", "bound", "empirical_margin"]
    mean = fig.axes[1].get_lines()[0].get_ydata()
    np.testing.assert_allclose(mean, tree["robustness"]["jacobian_norm"].mean("obs_id").values)
    assert fig.axes[0].get_xscale() == "log"


def test_reconstructions_and_traversals(tmp_path):
    x = torch.rand(5, 1, 8, 8)
    delta = 0.1 * torch.randn(5, 1, 8, 8)
    fig = plot_reconstructions(
        x, x + delta, reconstruct=lambda v: v.clamp(0, 1), path=tmp_path / "recon.png"
    )
    _written(tmp_path / "recon.png")
    assert len(fig.axes) == 4 * 5
    decode = lambda z: torch.sigmoid(z.sum(-1, keepdim=True) * torch.ones(z.shape[0], 64))  # noqa: E731
    fig = plot_latent_traversals(
        decode, torch.zeros(3), values=np.linspace(-2, 2, 5), path=tmp_path / "trav.png"
    )
    _written(tmp_path / "trav.png")
    assert len(fig.axes) == 3 * 5
    # row j, column t decodes z with z_j = values[t]: mean pixel is sigmoid(values[t])
    img = fig.axes[0 * 5 + 4].get_images()[0].get_array()
    assert float(img.mean()) == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))), abs=1e-6)
    images = np.random.default_rng(0).random((2, 4, 1, 6, 6))
    fig = plot_latent_traversals(images, path=tmp_path / "trav2.svg")
    _written(tmp_path / "trav2.svg")


def test_training_curves(tmp_path):
    tree = training_tree()
    fig = plot_training_curves(tree, path=tmp_path / "train.png")
    _written(tmp_path / "train.png")
    assert {a.get_title() for a in fig.axes if a.get_visible()} == {"loss", "kl"}
    np.testing.assert_allclose(
        fig.axes[0].get_lines()[0].get_ydata(), tree["sample_stats"]["loss"].values[0]
    )


def test_training_curves_of_fit_history(tmp_path):
    tree = history_tree()
    fig = plot_training_curves(tree, path=tmp_path / "fit.svg")
    _written(tmp_path / "fit.svg")
    axes = {a.get_title(): a for a in fig.axes if a.get_visible()}
    assert set(axes) == {"loss", "lr", "epoch_loss"}
    assert axes["epoch_loss"].get_xlabel() == "epoch"
    np.testing.assert_allclose(axes["epoch_loss"].get_lines()[0].get_xdata(), [1, 2, 3, 4])


def test_missing_group_or_variable_raises_clearly(tmp_path):
    with pytest.raises(ValueError, match="no 'robustness' group"):
        plot_robustness_curve(training_tree())
    with pytest.raises(ValueError, match="no 'history' group"):
        plot_training_curves(margin_tree())
    with pytest.raises(ValueError, match="none of"):
        plot_margin_scatter(robustness_tree())
    with pytest.raises(ValueError, match="combine results along 'beta'"):
        plot_against_beta(margin_tree())
    with pytest.raises(ValueError, match="reconstruct="):
        plot_reconstructions(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="path must end"):
        plot_training_curves(training_tree(), path=tmp_path / "x.txt")
    with pytest.raises(TypeError, match="DataTree or a path"):
        plot_robustness_curve({"robustness": 1})


def test_arviz_plots_work_on_results_without_conversion(tmp_path):
    arviz_plots = pytest.importorskip("arviz_plots")
    from pyrobust.analysis import mig

    pc = arviz_plots.plot_dist(
        robustness_tree(), group="posterior_predictive", backend="matplotlib"
    )
    pc.savefig(tmp_path / "dist.png")
    _written(tmp_path / "dist.png")
    f = np.random.default_rng(0).integers(0, 4, (200, 2))
    pc = arviz_plots.plot_forest(
        mig(f, f, num_bootstrap=50), group="bootstrap", backend="matplotlib"
    )
    pc.savefig(tmp_path / "forest.png")
    _written(tmp_path / "forest.png")
    import matplotlib.pyplot as plt

    plt.close("all")
