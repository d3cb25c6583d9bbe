"""r_robustness against the analytic linear-Gaussian VAE (THEORY.md sections 1 and 7)."""

import arviz_stats
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr

from pyrobust._results import decode_attrs
from pyrobust.models.sites import Pair
from pyrobust.robustness import r_robustness
from pyrobust.robustness._sampling import make_generator, sample_distances
from tests.linear_gaussian import LinearGaussianVAE


@pytest.fixture
def lg():
    return LinearGaussianVAE()


def _inputs(lg, n=3, seed=1):
    return torch.randn(n, lg.d_x, generator=torch.Generator().manual_seed(seed), dtype=lg.dtype)


@pytest.mark.parametrize("reference", ["mean", "sample"])
def test_probability_matches_noncentral_chi_square(lg, reference):
    x = _inputs(lg)
    g = torch.Generator().manual_seed(2)
    scales = torch.tensor([0.0, 0.05, 0.1], dtype=lg.dtype).reshape(3, 1, 1)
    delta = scales * torch.randn(1, *x.shape, generator=g, dtype=lg.dtype)  # (3, n, d_x)
    r = [0.3, 0.5, 0.8]
    num_samples = 20000
    tree = r_robustness(
        lg.model,
        lg.guide,
        x,
        r=r,
        delta=delta,
        num_samples=num_samples,
        reference=reference,
        seed=3,
    )
    p = tree["robustness"]["probability"]
    assert p.dims == ("obs_id", "perturbation", "radius")
    exact = lg.p_robust(np.array(r), delta.movedim(0, 1).unsqueeze(-2), reference)  # (n, 3, 3)
    mc_error = np.sqrt(exact * (1 - exact) / num_samples)
    assert np.all(np.abs(p.values - exact) <= 4.5 * mc_error + 1e-4)
    assert ((exact > 0.05) & (exact < 0.95)).mean() > 0.6  # the check is not trivial
    # the exact interval brackets the estimate
    ci = tree["robustness"]["ci"]
    assert np.all(ci.sel(ci_bound="lower").values <= p.values)
    assert np.all(p.values <= ci.sel(ci_bound="upper").values)


def test_interval_coverage_over_repeated_runs(lg):
    # 600 independent repeats as 600 copies of the same input in one call (inputs draw
    # independent noise), for two radii and a perturbation: coverage of exact 95% intervals.
    repeats = 600
    x = _inputs(lg, n=1).expand(repeats, lg.d_x)
    delta = 0.05 * torch.ones_like(x)
    r = [0.45, 0.6, 0.8]
    tree = r_robustness(lg.model, lg.guide, x, r=r, delta=delta, num_samples=200, seed=4)
    exact = lg.p_robust(np.array(r), delta[:1])  # (3,): 0.38, 0.64, 0.88
    ci = tree["robustness"]["ci"]
    lo, hi = ci.sel(ci_bound="lower").values, ci.sel(ci_bound="upper").values
    covered = (lo <= exact) & (exact <= hi)
    assert covered.shape == (repeats, 3)
    assert covered.mean(0).min() >= 0.93
    # and the repeats are genuinely independent: the estimates spread as a binomial
    p_hat = tree["robustness"]["probability"].values
    np.testing.assert_allclose(p_hat.std(0), np.sqrt(exact * (1 - exact) / 200), rtol=0.15)


@pytest.mark.parametrize("reference", ["mean", "sample"])
def test_degree_is_the_analytic_median(lg, reference):
    x = _inputs(lg)
    delta = 0.3 * torch.ones_like(x)
    num_samples = 20000
    tree = r_robustness(
        lg.model,
        lg.guide,
        x,
        r=0.5,
        delta=delta,
        num_samples=num_samples,
        reference=reference,
        seed=5,
    )
    degree = tree["robustness"]["degree"]
    assert degree.dims == ("obs_id",)
    exact = lg.degree(delta, reference)
    # the CDF at the sample median is 1/2 up to the MC error of a quantile
    cdf = np.array(
        [lg.p_robust(m, d, reference) for m, d in zip(degree.values, delta, strict=True)]
    )
    assert np.all(np.abs(cdf - 0.5) <= 4 * 0.5 / np.sqrt(num_samples))
    np.testing.assert_allclose(degree.values, exact, rtol=0.03)
    # the degree is where the decision flips: at r = degree, p = 1/2 by construction
    # (same seed and shapes: the same draws)
    at_degree = r_robustness(
        lg.model,
        lg.guide,
        x,
        r=degree.values,
        delta=delta,
        num_samples=num_samples,
        reference=reference,
        seed=5,
    )
    p_at = np.diagonal(at_degree["robustness"]["probability"].values)
    np.testing.assert_allclose(p_at, 0.5, atol=1.0 / num_samples)


def test_random_families_over_eps(lg):
    x = _inputs(lg, n=4)
    eps = [0.0, 0.2, 0.5]
    trees = {
        fam: r_robustness(
            lg.model, lg.guide, x, r=0.6, family=fam, eps=eps, num_samples=4000, seed=6
        )
        for fam in ("gaussian", "sphere", "linf")
    }
    for fam, tree in trees.items():
        delta = tree["constant_data"]["delta"]
        assert delta.dims == ("obs_id", "eps", "feature")
        np.testing.assert_allclose(tree["robustness"]["eps"].values, eps)
        norms = np.linalg.norm(delta.values, axis=-1)
        if fam == "sphere":
            np.testing.assert_allclose(norms, np.broadcast_to(eps, norms.shape), atol=1e-12)
        elif fam == "linf":
            assert np.all(np.abs(delta.values) <= np.reshape(eps, (1, 3, 1)) + 1e-15)
        # one direction per input shared over eps: delta(eps) = eps * u
        np.testing.assert_allclose(delta.values[:, 2], 2.5 * delta.values[:, 1], atol=1e-12)
        exact = lg.p_robust(0.6, torch.from_numpy(delta.values))
        p = tree["robustness"]["probability"].values
        assert np.all(np.abs(p - exact) <= 4.5 * np.sqrt(exact * (1 - exact) / 4000) + 1e-4)
    # isotropic Gaussian is scaled so that E||delta||^2 = eps^2
    g = trees["gaussian"]["constant_data"]["delta"].values
    big = r_robustness(
        lg.model,
        lg.guide,
        _inputs(lg, n=2000),
        r=0.6,
        family="gaussian",
        eps=[1.0],
        num_samples=1,
        seed=0,
    )
    sq = np.square(big["constant_data"]["delta"].values).sum(-1)
    assert sq.mean() == pytest.approx(1.0, abs=0.1)
    assert g.shape == (4, 3, lg.d_x)


def test_tree_layout_and_settings(lg):
    x = _inputs(lg)
    tree = r_robustness(lg.model, lg.guide, x, r=0.5, num_samples=50, seed=7, confidence=0.9)
    assert set(tree.children) >= {"posterior_predictive", "constant_data", "robustness"}
    d = tree["posterior_predictive"]["distance"]
    assert d.dims == ("chain", "draw", "obs_id") and d.shape == (1, 50, 3)
    rob = tree["robustness"]
    for name in ("probability", "decision", "degree", "num_inside", "num_draws"):
        assert rob[name].dims == ("obs_id",), name
    assert rob["ci"].dims == ("obs_id", "ci_bound")
    assert rob["ci"]["ci_bound"].values.tolist() == ["lower", "upper"]
    # the observed site's value is observed_data; the indicators are draws ArviZ reads
    torch.testing.assert_close(torch.from_numpy(tree["observed_data"]["x"].values), x)
    inside = tree["posterior_predictive"]["inside"]
    assert inside.dims == ("chain", "draw", "obs_id")
    np.testing.assert_allclose(inside.mean(("chain", "draw")).values, rob["probability"].values)
    assert len(attrs_model_hash := decode_attrs(tree.attrs)["model_hash"]) == 64
    assert attrs_model_hash == decode_attrs(rob.attrs)["model_hash"]
    np.testing.assert_array_equal(tree["constant_data"]["delta"].values, 0.0)
    assert "x" not in tree["constant_data"].data_vars  # x is observed: observed_data only
    attrs = decode_attrs(rob.attrs)
    assert attrs["num_samples"] == 50 and attrs["confidence"] == 0.9 and attrs["seed"] == 7
    assert attrs["reference"] == "mean" and attrs["family"] is None and attrs["r"] == 0.5
    # decision agrees with the interval
    dec = rob["decision"].values
    lo, hi = rob["ci"].sel(ci_bound="lower").values, rob["ci"].sel(ci_bound="upper").values
    np.testing.assert_array_equal(dec == 1, lo > 0.5)
    np.testing.assert_array_equal(dec == -1, hi < 0.5)
    assert rob["decision"].dtype == np.int8
    assert rob["decision"].attrs["flag_meanings"] == "not_robust undecided robust"


def test_netcdf_round_trip_and_arviz_summary(lg, tmp_path):
    x = _inputs(lg)
    delta = 0.1 * torch.randn(2, *x.shape, dtype=lg.dtype)
    tree = r_robustness(lg.model, lg.guide, x, r=[0.4, 0.7], delta=delta, num_samples=101, seed=8)
    path = tmp_path / "r.nc"
    tree.to_netcdf(path, engine="h5netcdf")
    back = xr.open_datatree(path, engine="h5netcdf")
    try:
        for group in ("posterior_predictive", "constant_data", "robustness"):
            xr.testing.assert_identical(back[group].to_dataset(), tree[group].to_dataset())
        assert back["robustness"]["decision"].values.dtype == np.int8
        assert decode_attrs(back["robustness"].attrs)["r"] == [0.4, 0.7]
    finally:
        back.close()
    summary = arviz_stats.summary(
        tree,
        group="posterior_predictive",
        var_names=["distance"],
        kind="stats_median",
        fmt="xarray",
        round_to="none",
    )
    median = summary["distance"].sel(summary="median")
    xr.testing.assert_allclose(
        median.drop_vars("summary", errors="ignore"),
        tree["robustness"]["degree"].reset_coords(drop=True),
    )


def test_same_seed_same_answer_and_max_batch_invariance(lg):
    x = _inputs(lg)
    kw = {"r": [0.4, 0.6], "num_samples": 300}
    a = r_robustness(lg.model, lg.guide, x, seed=11, **kw)
    b = r_robustness(lg.model, lg.guide, x, seed=11, max_batch=7, **kw)  # many small chunks
    c = r_robustness(lg.model, lg.guide, x, seed=12, **kw)
    da, db = (t["posterior_predictive"]["distance"].values for t in (a, b))
    np.testing.assert_array_equal(da, db)
    assert not np.array_equal(da, c["posterior_predictive"]["distance"].values)
    # seed=None follows pyro.set_rng_seed and records the seed it used
    pyro.set_rng_seed(3)
    d1 = r_robustness(lg.model, lg.guide, x, **kw)
    pyro.set_rng_seed(3)
    d2 = r_robustness(lg.model, lg.guide, x, **kw)
    left, right = (d1["robustness"].to_dataset(), d2["robustness"].to_dataset())
    for ds in (left, right):
        ds.attrs.pop("created_at", None)  # a timestamp, not an answer
    xr.testing.assert_identical(left, right)
    seed = decode_attrs(d1["robustness"].attrs)["seed"]
    d3 = r_robustness(lg.model, lg.guide, x, seed=seed, **kw)
    np.testing.assert_array_equal(
        d1["posterior_predictive"]["distance"].values, d3["posterior_predictive"]["distance"].values
    )


def test_chunking_and_autograd_paths_agree(lg):
    # sample reference, a stack of perturbations, chunks of one draw, with and without autograd
    x = _inputs(lg)
    delta = 0.1 * torch.randn(
        2, *x.shape, generator=torch.Generator().manual_seed(0), dtype=lg.dtype
    )
    kw = {"num_samples": 40, "reference": "sample"}
    one = sample_distances(
        Pair.build(lg.model, lg.guide, x), x, delta, generator=make_generator(0, "cpu"), **kw
    )
    with torch.no_grad():
        chunked = sample_distances(
            Pair.build(lg.model, lg.guide, x),
            x,
            delta,
            generator=make_generator(0, "cpu"),
            max_batch=1,
            **kw,
        )
    torch.testing.assert_close(one, chunked)
    tree = r_robustness(lg.model, lg.guide, x, r=0.5, delta=delta.numpy(), seed=0, **kw)
    assert tree["robustness"]["probability"].dims == ("obs_id", "perturbation")
    single = r_robustness(lg.model, lg.guide, x, r=0.5, delta=delta[0].numpy(), seed=0, **kw)
    assert single["robustness"]["probability"].dims == ("obs_id",)


def test_common_random_numbers_make_curves_monotone(lg):
    x = _inputs(lg)
    tree = r_robustness(lg.model, lg.guide, x, r=np.linspace(0.2, 1.0, 9), num_samples=100, seed=0)
    p = tree["robustness"]["probability"].values
    assert np.all(np.diff(p, axis=-1) >= 0)


def test_sample_distances_gradient_and_shapes(lg):
    # the private building block used by attacks: differentiable in delta, shapes as announced
    x = _inputs(lg, n=2)
    delta = torch.zeros(4, 5, *x.shape, dtype=lg.dtype, requires_grad=True)
    d = sample_distances(
        Pair.build(lg.model, lg.guide, x),
        x,
        delta,
        num_samples=6,
        generator=make_generator(0, "cpu"),
    )
    assert d.shape == (6, 2, 4, 5)
    d.mean().backward()
    assert delta.grad is not None and torch.isfinite(delta.grad).all()


def _guide_without_z(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("w", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": 0.0}, ValueError, r"`r` must be positive"),
        ({"r": [0.5, -1.0]}, ValueError, r"`r` must be positive"),
        ({"r": float("nan")}, ValueError, r"`r` must be positive and finite"),
        ({"r": [[0.5]]}, ValueError, r"`r` must be a scalar or a non-empty 1-D"),
        ({"num_samples": 0}, ValueError, r"`num_samples` must be >= 1"),
        ({"num_samples": 2.5}, TypeError, r"`num_samples` must be an integer"),
        ({"confidence": 1.0}, ValueError, r"`confidence` must lie strictly between 0 and 1"),
        ({"confidence": 95}, ValueError, r"`confidence`.*0.95"),
        ({"reference": "median"}, ValueError, r"Unknown `reference`='median'.*'mean', 'sample'"),
        ({"delta": torch.zeros(3, 5)}, ValueError, r"`delta` must be shaped like x, \(3, 6\)"),
        ({"delta": torch.zeros(2, 2, 6)}, ValueError, r"`delta` must be shaped like x"),
        ({"delta": torch.full((3, 6), float("nan"))}, ValueError, r"`delta` must be finite"),
        ({"delta": torch.full((3, 6), float("inf"))}, ValueError, r"`delta` must be finite"),
        ({"family": "cauchy", "eps": [0.1]}, ValueError, r"Unknown `family`='cauchy'"),
        ({"family": "sphere"}, ValueError, r"needs a grid of sizes `eps=`"),
        ({"eps": [0.1]}, ValueError, r"`eps` needs a random perturbation `family`"),
        ({"family": "sphere", "eps": [-0.1]}, ValueError, r"`eps` must be >= 0"),
        ({"family": "sphere", "eps": 0.1, "delta": torch.zeros(3, 6)}, ValueError, "not both"),
        ({"seed": -1}, TypeError, r"`seed` must be None or a non-negative integer"),
        ({"max_batch": 0}, ValueError, r"`max_batch` must be >= 1"),
        ({"latent_site": "w"}, ValueError, r"no sample site named 'w'.*latent_site="),
        ({"obs_site": "y"}, ValueError, r"no sample site named 'y'.*obs_site="),
        ({"guide": _guide_without_z}, ValueError, r"no sample site named 'z'.*\['w'\]"),
    ],
)
def test_bad_input_raises_naming_the_argument(lg, kwargs, error, match):
    kwargs = {"r": 0.5, **kwargs}
    guide = kwargs.pop("guide", lg.guide)
    x = torch.zeros(3, lg.d_x, dtype=lg.dtype)
    with pytest.raises(error, match=match):
        r_robustness(lg.model, guide, x, num_samples=kwargs.pop("num_samples", 10), **kwargs)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.tensor([[0.0, float("nan")]]), ValueError, r"`x` must be finite; it has 1 NaN/inf"),
        (torch.tensor([[float("inf"), 0.0]]), ValueError, r"`x` must be finite"),
        (torch.zeros(2), ValueError, r"`x` must have shape \(n_inputs, \*event\).*x\[None\]"),
        (torch.zeros(2, 2, dtype=torch.long), TypeError, r"`x` must be a floating-point"),
        (np.zeros((2, 2)), TypeError, r"`x` must be a torch.Tensor"),
    ],
)
def test_bad_x(x, error, match):
    def model(x):
        return None

    with pytest.raises(error, match=match):
        r_robustness(model, model, x, r=1.0)


@pytest.mark.gpu
def test_computes_on_the_device_of_x():
    cpu = LinearGaussianVAE()
    gpu = LinearGaussianVAE()
    gpu.A, gpu.W = gpu.A.cuda(), gpu.W.cuda()
    x = _inputs(cpu).cuda()
    delta = 0.05 * torch.ones_like(x)
    d = sample_distances(
        Pair.build(gpu.model, gpu.guide, x),
        x,
        delta,
        num_samples=10,
        generator=make_generator(0, "cuda"),
    )
    assert d.device == x.device
    tree = r_robustness(gpu.model, gpu.guide, x, r=0.6, delta=delta, num_samples=20000, seed=0)
    exact = cpu.p_robust(0.6, delta.cpu())
    p = tree["robustness"]["probability"].values
    assert np.all(np.abs(p - exact) <= 4.5 * np.sqrt(exact * (1 - exact) / 20000))
