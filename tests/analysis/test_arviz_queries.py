"""The robustness queries' results in the ArviZ schema of DESIGN.md "Results as ArviZ DataTrees".

These tests state the target layout: indicator draws ``inside`` (float 0/1) and ``distance`` in
``posterior_predictive``, so that ``arviz_stats.summary``'s mean is the probability and its
``mcse_mean`` the Monte-Carlo error; the input in ``observed_data``; intervals as ``ci`` on a
``ci_bound`` dim; int8 decision codes with CF flag attrs; ArviZ's standard attrs on the root and
every group; and the model's identity in the attrs. They run every query on the linear-Gaussian
VAE of THEORY section 7 and check ArviZ's numbers against pyrobust's own.
"""

import arviz_stats
import numpy as np
import pytest
import torch
from scipy import stats

import pyrobust as pr
from pyrobust._results import STANDARD_ATTRS, decode_attrs
from tests.linear_gaussian import LinearGaussianVAE

S = 400


@pytest.fixture(scope="module")
def lg():
    vae = LinearGaussianVAE()
    x = torch.randn(4, vae.d_x, dtype=vae.dtype, generator=torch.Generator().manual_seed(0))
    return vae, x


def _check_schema(tree, x, obs_site="x"):
    """Layout rules every query result follows."""
    for node in [tree, *(tree[g] for g in tree.children)]:
        missing = set(STANDARD_ATTRS) - set(node.attrs)
        assert not missing, (node.name, missing)
        assert node.attrs["inference_library"] == "pyro"
        assert node.attrs["creation_library"] == "pyrobust"
    attrs = decode_attrs(tree.attrs)
    assert len(attrs["model_hash"]) == 64 and isinstance(attrs["model_name"], str)
    assert "observed_data" in tree.children
    obs = tree["observed_data"][obs_site]
    assert obs.dims[0] == "obs_id"
    np.testing.assert_array_equal(obs.values.reshape(len(x), -1), x.numpy().reshape(len(x), -1))
    if "constant_data" in tree.children:
        assert "x" not in tree["constant_data"].data_vars  # x is the observed value here
    rob = tree["robustness"].to_dataset()
    sequential = attrs.get("num_samples") == "auto"
    for name, var in rob.data_vars.items():
        assert var.dtype.kind not in "USO", f"{name} holds strings"
        assert not name.startswith(("ci_lower", "ci_upper")), f"{name}: use ci on ci_bound"
        if name == "ci" or name.startswith("ci_"):
            assert var.dims[-1] == "ci_bound", name
            assert rob["ci_bound"].values.tolist() == ["lower", "upper"]
        if name == "decision" or name.startswith("decision_"):
            assert var.dtype == np.int8, name
            flags = list(var.attrs["flag_values"])
            meanings = var.attrs["flag_meanings"].split()
            if sequential:  # num_samples="auto": "about 1/2" is a fourth code
                assert flags == [-1, 0, 1, 2], name
                assert meanings == ["not_robust", "undecided", "robust", "about_half"], name
            else:
                assert flags == [-1, 0, 1], name
                assert meanings == ["not_robust", "undecided", "robust"], name
            assert set(np.unique(var.values)) <= set(flags), name


def _check_indicators(tree, num_samples, confidence):
    """inside draws -> probability, mcse, Clopper-Pearson ci and decision codes."""
    rob = tree["robustness"]
    inside = tree["posterior_predictive"]["inside"]
    assert inside.dims[:3] == ("chain", "draw", "obs_id") and inside.sizes["draw"] == num_samples
    assert inside.dtype.kind == "f" and set(np.unique(inside.values)) <= {0.0, 1.0}
    assert inside.dims[2:] == rob["probability"].dims
    # kind="stats": arviz_stats' MCSE of the sd divides by zero when p = 0 or 1
    s = arviz_stats.summary(
        tree, group="posterior_predictive", var_names=["inside"], kind="stats", round_to="none"
    )
    np.testing.assert_allclose(s["mean"].to_numpy(), rob["probability"].values.ravel())
    p = rob["probability"].values.ravel()
    ess = arviz_stats.ess(tree, group="posterior_predictive", var_names=["inside"])["inside"]
    mcse = arviz_stats.mcse(tree, group="posterior_predictive", var_names=["inside"])
    mcse = mcse["inside"].values.ravel()
    ok = (p > 0) & (p < 1)
    # independent draws: the MCSE of the mean is sqrt(p (1 - p) / ESS), ESS about n
    np.testing.assert_allclose(mcse[ok], np.sqrt(p * (1 - p) / ess.values.ravel())[ok], rtol=0.05)
    k = rob["num_inside"].values
    n = int(rob["num_draws"]) if rob["num_draws"].ndim == 0 else rob["num_draws"].values
    np.testing.assert_array_equal(k, inside.sum(("chain", "draw")).values)
    a = 1 - confidence
    lower = np.where(k > 0, stats.beta.ppf(a / 2, k, n - k + 1), 0.0)
    upper = np.where(k < n, stats.beta.ppf(1 - a / 2, k + 1, n - k), 1.0)
    np.testing.assert_allclose(rob["ci"].sel(ci_bound="lower").values, lower, rtol=1e-9)
    np.testing.assert_allclose(rob["ci"].sel(ci_bound="upper").values, upper, rtol=1e-9)
    np.testing.assert_array_equal(
        rob["decision"].values, (lower > 0.5).astype(int) - (upper < 0.5).astype(int)
    )


def test_r_robustness(lg):
    vae, x = lg
    tree = pr.r_robustness(
        vae.model,
        vae.guide,
        x,
        r=[0.4, 0.7],
        eps=[0.0, 0.3],
        family="gaussian",
        num_samples=S,
        seed=0,
        confidence=0.9,
        return_sites=["z"],
    )
    _check_schema(tree, x)
    _check_indicators(tree, S, 0.9)
    pp = tree["posterior_predictive"]
    assert pp["inside"].dims == ("chain", "draw", "obs_id", "eps", "radius")
    assert pp["distance"].dims == ("chain", "draw", "obs_id", "eps")
    # inside is the distance draw against each radius
    np.testing.assert_array_equal(
        pp["inside"].values, (pp["distance"].values[..., None] <= np.array([0.4, 0.7])) * 1.0
    )
    assert {"delta", "r"} <= set(tree["constant_data"].data_vars)
    assert tree["posterior"]["z"].dims[:3] == ("chain", "draw", "obs_id")
    rob = tree["robustness"]
    assert rob["degree"].dims == ("obs_id", "eps")
    # the exact answer lies in the interval for (nearly) every cell at delta = 0
    exact = vae.p_robust(np.array([0.4, 0.7]), torch.zeros(vae.d_x, dtype=vae.dtype))
    ci0 = rob["ci"].sel(eps=0.0)
    inside = (ci0.sel(ci_bound="lower") <= exact) & (exact <= ci0.sel(ci_bound="upper"))
    assert float(inside.mean()) >= 0.75


def test_r_robustness_arviz_plots(lg, tmp_path):
    pytest.importorskip("matplotlib")
    import arviz_plots

    vae, x = lg
    tree = pr.r_robustness(vae.model, vae.guide, x, r=0.5, num_samples=200, seed=1)
    arviz_plots.plot_forest(
        tree, group="posterior_predictive", var_names=["inside"], backend="matplotlib"
    )
    pc = arviz_plots.plot_dist(
        tree, group="posterior_predictive", var_names=["distance"], backend="matplotlib"
    )
    pc.savefig(tmp_path / "dist.png")
    hdi = arviz_stats.hdi(tree, group="posterior_predictive", var_names=["distance"], prob=0.9)
    assert hdi["distance"].dims == ("obs_id", "ci_bound")


def test_margin_bound(lg):
    vae, x = lg
    tree = pr.margin_bound(vae.model, vae.guide, x, r=0.7, num_samples=S, seed=0)
    _check_schema(tree, x)
    pp = tree["posterior_predictive"]
    assert pp["distance"].dims == ("chain", "draw", "obs_id")
    np.testing.assert_array_equal(pp["inside"].values, (pp["distance"].values <= 0.7) * 1.0)
    s = arviz_stats.summary(
        tree, group="posterior_predictive", var_names=["inside"], kind="stats", round_to="none"
    )
    np.testing.assert_allclose(s["mean"].to_numpy(), tree["robustness"]["p_a"].values)


def test_max_damage_attack(lg):
    vae, x = lg
    tree = pr.max_damage_attack(
        vae.model, vae.guide, x, eps=[0.1, 0.3], box=None, steps=5, restarts=1,
        eot_samples=4, eval_samples=32, r=0.7, num_samples=S, seed=0,
    )  # fmt: skip
    _check_schema(tree, x)
    _check_indicators(tree, S, 0.95)
    assert tree["posterior_predictive"]["inside"].dims == ("chain", "draw", "obs_id", "eps")


def test_empirical_margin(lg):
    vae, x = lg
    tree = pr.empirical_margin(
        vae.model, vae.guide, x, r=0.7, radius_max=2.0, bisection_steps=3, steps=5,
        restarts=1, eot_samples=4, eval_samples=32, num_samples=200, box=None, seed=0,
    )  # fmt: skip
    _check_schema(tree, x)
    rob = tree["robustness"]
    assert rob["margin"].dims == ("obs_id",) and rob["broken"].dtype == bool


def test_empirical_margin_auto_reads_in_arviz(lg):
    # The sequential margin: the same schema; ArviZ summarises and plots the margins over inputs.
    vae, x = lg
    tree = pr.empirical_margin(
        vae.model, vae.guide, x, r=0.7, radius_max=2.0, bisection_steps=3, steps=5,
        restarts=1, eot_samples=4, eval_samples=32, num_samples="auto", box=None, seed=0,
    )  # fmt: skip
    _check_schema(tree, x)
    rob = tree["robustness"]
    s = arviz_stats.summary(
        tree, group="robustness", var_names=["margin", "margin_upper"], kind="stats",
        sample_dims=["obs_id"], round_to="none",
    )  # fmt: skip
    np.testing.assert_allclose(s["mean"].to_numpy()[0], rob["margin"].values.mean(), rtol=1e-6)
    pytest.importorskip("matplotlib")
    import arviz_plots

    arviz_plots.plot_forest(
        tree, group="robustness", var_names=["margin", "margin_upper"], sample_dims=["obs_id"],
        backend="matplotlib",
    )  # fmt: skip


def test_latent_attack(lg):
    vae, x = lg
    tree = pr.latent_attack(vae.model, vae.guide, x, x.flip(0), eps=0.5, steps=5, box=None, seed=0)
    _check_schema(tree, x)


def test_combined_queries_of_two_models(lg):
    """Two models (different weights), one query each: combine along beta, summarise per beta."""
    _, x = lg
    trees = []
    for seed in (0, 1):
        vae = LinearGaussianVAE(seed=seed)
        tree = pr.r_robustness(vae.model, vae.guide, x, r=0.7, num_samples=200, seed=0)
        trees.append(tree)
    combined = pr.analysis.combine(trees, dim="beta", coords=[1.0, 4.0])
    s = arviz_stats.summary(
        combined, group="posterior_predictive", var_names=["inside"], kind="stats",
        round_to="none",
    )  # fmt: skip
    np.testing.assert_allclose(
        s["mean"].to_numpy(), combined["robustness"]["probability"].values.ravel()
    )


def test_output_attack(lg):
    vae, x = lg
    tree = pr.output_attack(vae.model, vae.guide, x, x.flip(0), eps=0.3, steps=3, box=None, seed=0)
    _check_schema(tree, x)


def test_certified_margin(lg):
    vae, x = lg
    tree = pr.certified_margin(vae.model, vae.guide, x, r=1.0, a=vae.spectral_norm, b=1e-6, c=1.0)
    _check_schema(tree, x)
    assert tree["robustness"]["certified_margin"].dims == ("obs_id",)
