"""The analysis tools on real pyrobust results (linear-Gaussian VAE of THEORY section 7, dSprites)."""

import arviz_stats
import numpy as np
import pytest
import torch
import xarray as xr

from pyrobust.analysis import (
    combine,
    factor_vae_score,
    load,
    mig,
    plot_against_beta,
    plot_margin_scatter,
    plot_robustness_curve,
    report,
    save,
)
from pyrobust.robustness import margin_bound, r_robustness
from tests.linear_gaussian import LinearGaussianVAE


@pytest.fixture(scope="module")
def setup():
    vae = LinearGaussianVAE()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    delta = 0.1 * torch.randn(
        3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    return vae, x, delta


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_r_robustness_result_round_trip_summary_plot(tmp_path, setup, suffix):
    vae, x, delta = setup
    tree = r_robustness(vae.model, vae.guide, x, r=0.5, delta=delta, num_samples=200, seed=0)
    back = load(save(tree, tmp_path / f"r{suffix}"))
    for g in tree.children:
        xr.testing.assert_identical(tree[g].to_dataset(), back[g].to_dataset())
    s = arviz_stats.summary(
        back, group="posterior_predictive", var_names=["distance"], kind="stats"
    )
    assert len(s) == 4 * 3
    fig = plot_robustness_curve(back, path=tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # x positions are ||delta|| of each (input, perturbation)
    xs = np.concatenate([np.ravel(ln.get_xdata()) for ln in fig.axes[0].get_lines()])
    norms = delta.norm(dim=-1).T.numpy()  # (obs_id, perturbation)
    assert all(np.isclose(xs, v).any() for v in norms.ravel())


def test_eps_sweep_curve(setup, tmp_path):
    vae, x, _ = setup
    tree = r_robustness(
        vae.model,
        vae.guide,
        x,
        r=0.5,
        eps=[0.0, 0.2, 0.5],
        family="gaussian",
        num_samples=100,
        seed=0,
    )
    fig = plot_robustness_curve(tree)
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_xdata(), [0.0, 0.2, 0.5])


def test_margin_bounds_combined_along_beta_and_reported(setup, tmp_path):
    _, x, _ = setup
    trees = []
    for s in (0.2, 0.4, 0.8):  # encoder std as the stand-in for beta
        vae = LinearGaussianVAE(s=s)
        t = margin_bound(vae.model, vae.guide, x, r=0.5, num_samples=200, seed=0)
        t.attrs["beta"] = s
        trees.append(t)
    sweep = combine(trees, dim="beta")
    np.testing.assert_allclose(
        sweep["robustness"]["min_scale"].mean("obs_id").values, [0.2, 0.4, 0.8]
    )
    fig = plot_against_beta(sweep)
    assert "min_scale" in [a.get_title() for a in fig.axes]
    emp = trees[0]["robustness"]["bound"].values * 2
    fig = plot_margin_scatter(trees[0], emp)
    assert fig.axes[0].get_title().startswith("Pearson r = 1.000 over 4 broken inputs")
    index = report([trees[0], sweep], tmp_path / "rep")
    text = index.read_text()
    assert text.count("data:image/png;base64,") == 1  # against beta (no empirical margins here)
    assert "min_scale" in text and "jacobian_norm" in text


def test_metrics_on_dsprites():
    from pyrobust.data.dsprites import DSprites

    data = DSprites()
    proj = torch.randn(64 * 64, 4, generator=torch.Generator().manual_seed(0))
    rep = lambda imgs: imgs.reshape(imgs.shape[0], -1) @ proj  # noqa: E731
    out = factor_vae_score(
        rep,
        data,
        batch_size=8,
        num_train=20,
        num_eval=20,
        num_variance_estimate=64,
        num_bootstrap=10,
    )
    assert 0.0 <= float(out["metrics"]["factor_vae"]) <= 1.0
    assert list(out["details"]["factor"].values) == list(data.factor_names)
    f = data.sample_factors(300, seed=0)
    res = mig(rep(data.images(f)), f, num_bootstrap=0, factor_names=data.factor_names)
    assert res["details"]["mutual_information"].shape == (4, data.num_factors)


def test_fit_history_round_trip_curves_and_summary(tmp_path):
    from pyrobust.analysis import plot_training_curves
    from pyrobust.inference import fit
    from tests.inference._models import MLPPair, binary_data

    tree = fit(MLPPair(), binary_data(32), epochs=2, batch_size=16, lr=1e-2)
    back = load(save(tree, tmp_path / "fit.nc"))
    xr.testing.assert_identical(tree["history"].to_dataset(), back["history"].to_dataset())
    fig = plot_training_curves(back)
    assert "loss" in [a.get_title() for a in fig.axes]
    # the history runs over `step`, not (chain, draw): name the sample dim for arviz_stats
    s = arviz_stats.summary(
        back, group="history", sample_dims=["step"], var_names=["loss"], kind="stats"
    )
    assert s.loc["loss", "mean"] == pytest.approx(float(back["history"]["loss"].mean()), rel=1e-2)


def test_report_of_real_queries_states_findings(setup, tmp_path):
    """r_robustness, margin_bound and empirical_margin of one model: headline and scatter."""
    from pyrobust.robustness import empirical_margin

    vae, x, _ = setup
    run = tmp_path / "run"
    run.mkdir()
    rob = r_robustness(
        vae.model, vae.guide, x, r=[0.5, 0.8], eps=[0.0, 0.5], family="sphere",
        num_samples=200, seed=0,
    )  # fmt: skip
    bound = margin_bound(vae.model, vae.guide, x, r=0.8, num_samples=200, seed=0)
    emp = empirical_margin(
        vae.model, vae.guide, x, r=0.8, radius_max=3.0, bisection_steps=4, steps=5,
        restarts=1, eot_samples=4, eval_samples=64, num_samples=200, box=None, seed=0,
    )  # fmt: skip
    paths = [save(t, run / f"{n}.nc") for n, t in (("r", rob), ("b", bound), ("e", emp))]
    text = report(paths, tmp_path / "out").read_text()
    findings = text[text.index("<h2>Findings</h2>") : text.index("<h3>Settings</h3>")]
    codes = rob["robustness"]["decision"]
    for eps in (0.0, 0.5):
        for r in (0.5, 0.8):
            c = codes.sel(eps=eps, radius=r).values
            cells = [eps, r, (c == 1).sum(), (c == -1).sum(), (c == 0).sum(), 4]
            assert "<tr>" + "".join(f"<td>{v:g}</td>" for v in cells) + "</tr>" in findings
    b = bound["robustness"]["bound"].values
    m = emp["robustness"]["margin"].values
    assert f"bound ≤ empirical on <b>{(b <= m).sum()} of 4</b>" in findings
    assert "alt='margin bound vs empirical margin'" in findings
