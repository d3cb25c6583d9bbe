"""Tests of pyrobust/analysis/reproduce.py: the bound variants on an analytic VAE, the
bootstrap intervals and verdicts of the summary, and machine paths kept out of it."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from pyrobust._results import encode_attrs
from pyrobust.analysis import reproduce as rep
from pyrobust.analysis.experiment import Split
from tests.linear_gaussian import LinearGaussianVAE


class _Pair(LinearGaussianVAE):
    """The analytic VAE with the ``encode`` of pyrobust's VAE (what _evaluate reads)."""

    def encode(self, x):
        loc = x @ self.A.T
        return loc, self.s * torch.ones_like(loc)


def test_bound_variants_match_the_analytic_bounds_and_order():
    lg = _Pair(d_x=6, d_z=3, s=0.3, seed=1)
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    split = Split("lg", x, x)
    scale = rep.Scale(None, "mlp", 3, (8,), 1, 8, 5, 4000, 10, 1, 10, 0.5, 0)
    r = 0.7
    per_input, _ = rep._evaluate(lg, split, scale, r, seed=0)
    v = dict(zip(rep.BOUND_VARIANTS, np.moveaxis(per_input["bound_variant"], -1, 0), strict=True))
    # the library's bound is the Frobenius bound at the certified p_A
    np.testing.assert_array_equal(v["frobenius_certified"], per_input["bound"])
    # ||J||_2 <= ||J||_F: the spectral bound is larger; the certified p_A is smaller
    assert (v["spectral"] >= v["frobenius"]).all()
    assert (v["spectral_certified"] >= v["frobenius_certified"]).all()
    assert (v["frobenius_certified"] <= v["frobenius"]).all()
    np.testing.assert_allclose(per_input["jacobian_norm_spectral"], lg.spectral_norm, rtol=1e-6)
    # the point-estimate bounds agree with the exact ones to Monte-Carlo error (4000 draws)
    np.testing.assert_allclose(v["frobenius"], lg.bound(r), rtol=0.05)
    np.testing.assert_allclose(v["spectral"], lg.bound(r, norm="spectral"), rtol=0.05)
    # the certified bounds lie below the exact margin (linear encoder: the theorem is exact)
    assert (v["spectral_certified"] <= lg.true_margin(r)).all()
    assert per_input["broken"].all()
    assert (per_input["empirical_margin"] <= per_input["empirical_margin_upper"]).all()


def _tree(bound, emp, broken, *, seeds=1, betas=(1.0, 2.0, 4.0), settings=None):
    """A reproduction tree with given per-input arrays of shape (models, inputs)."""
    n_models, n_obs = bound.shape
    grid = [(o, b, s) for s in range(seeds) for o in ("beta-vae",) for b in betas]
    assert len(grid) == n_models
    variant = np.stack([bound, bound * 1.5, bound * 0.8, bound * 1.2], axis=-1)
    ds = xr.Dataset(
        {
            "bound": (("model", "obs_id"), bound),
            "bound_variant": (("model", "obs_id", "variant"), variant),
            "empirical_margin": (("model", "obs_id"), emp),
            "broken": (("model", "obs_id"), broken),
            "mean_scale": (("model", "obs_id"), bound),
            "jacobian_norm": (("model", "obs_id"), 1.0 / bound),
            "p_a": (("model", "obs_id"), np.full_like(bound, 0.9)),
            "likelihood_degradation": (("model", "obs_id"), emp),
            "val_loss": (("model",), np.ones(n_models)),
            "train_seconds": (("model",), np.ones(n_models)),
            "eval_seconds": (("model",), np.ones(n_models)),
        },
        coords={
            "model": [f"{o}/{b:g}/seed{s}" for o, b, s in grid],
            "objective": ("model", [o for o, _, _ in grid]),
            "beta": ("model", [b for _, b, _ in grid]),
            "seed": ("model", [s for _, _, s in grid]),
            "obs_id": np.arange(n_obs),
            "variant": list(rep.BOUND_VARIANTS),
        },
        attrs=encode_attrs(
            {"r": 1.0, "epochs": 1, "arch": "mlp", "latent_dim": 2, "attack_eps": 1.0,
             "bisection_steps": 14}
        ),
    )  # fmt: skip
    tree = xr.DataTree()
    tree["toy"] = xr.DataTree(ds)
    tree.attrs.update(
        encode_attrs({"quick": False, "seed": 0, "device": "cpu", "elapsed_seconds": 1.0,
                      "settings": settings or {}})
    )  # fmt: skip
    return tree


def _claims(text):
    return {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in text.splitlines()
        if line.startswith("| ") and line.count("|") == 5
    }


def test_summary_says_yes_only_when_the_interval_excludes_the_opposite_sign():
    rng = np.random.default_rng(0)
    n = 60
    base = rng.uniform(0.1, 1.0, n)
    # beta grows the bound clearly; the empirical margin is 4x the bound plus noise
    bound = np.stack([base * k for k in (1.0, 2.0, 4.0)])
    emp = 4.0 * bound * rng.uniform(0.9, 1.1, bound.shape)
    tree = _tree(bound, emp, np.ones_like(bound, dtype=bool))
    claims = _claims(rep.summarize(tree, num_bootstrap=200))
    key = "the bound grows with β (β-VAE, Spearman over β of the medians)"
    assert claims[key] == "yes"
    assert claims["‖J‖_F shrinks with β (β-VAE, Spearman over β of the medians)"] == "yes"
    assert claims["every bound below its empirical margin"] == "yes"
    assert claims["empirical margin about 3-5x the bound"].startswith("yes")
    assert claims[next(k for k in claims if k.startswith("Pearson"))].startswith("positive: yes")
    # noise only: no trend, and the verdict is not "yes"
    noise = rng.uniform(0.1, 1.0, (3, n))
    tree = _tree(noise, 4.0 * noise, np.ones_like(noise, dtype=bool))
    claims = _claims(rep.summarize(tree, num_bootstrap=200))
    assert claims[key] != "yes"


def test_unbroken_inputs_are_left_out_of_correlation_and_ratio():
    rng = np.random.default_rng(1)
    bound = rng.uniform(0.1, 1.0, (3, 40))
    emp = 3.0 * bound
    broken = np.ones_like(bound, dtype=bool)
    # unbroken inputs: the empirical margin is the bracket's upper end, unrelated to the bound
    broken[:, :10] = False
    emp[:, :10] = 8.0
    a = rep._arrays(_tree(bound, emp, broken)["toy"].to_dataset())
    assert rep._pearson(a) == pytest.approx(1.0)
    assert rep._median_ratio(a) == pytest.approx(3.0)
    # a bound above an unbroken input's search limit is not a violation
    bound[0, 0] = 9.0
    text = rep.summarize(_tree(bound, emp, broken), num_bootstrap=200)
    assert "0 of 90 broken inputs above" in text and "1 unbroken inputs" in text


def test_bootstrap_resamples_seeds_and_inputs():
    rng = np.random.default_rng(2)
    bound = rng.uniform(0.5, 1.0, (6, 30))
    tree = _tree(bound, 2 * bound, np.ones_like(bound, dtype=bool), seeds=2)
    a = rep._arrays(tree["toy"].to_dataset())
    est, lo, hi = rep._bootstrap(a, lambda d: float(np.mean(d["bound"])))
    assert lo < est < hi
    # the mean over inputs of n iid U(0.5, 1) values: sd 0.144 / sqrt(n); the interval is about
    # +-1.96 sd of the mean of 6 x 30 values pooled... within a factor 2 of the normal interval
    sd = np.std(bound.mean(0)) / np.sqrt(30)
    assert 0.5 * 1.96 * sd < (hi - lo) / 2 < 2.0 * 1.96 * sd
    # the same seed gives the same interval
    assert rep._bootstrap(a, lambda d: float(np.mean(d["bound"]))) == (est, lo, hi)


@pytest.mark.parametrize(
    ("lo", "hi", "sign", "verdict"),
    [
        (0.1, 0.5, +1, "yes"),
        (-0.5, -0.1, -1, "yes"),
        (-0.1, 0.5, +1, "undecided (interval contains 0)"),
        (-0.5, -0.1, +1, "no (opposite sign)"),
        (float("nan"), 0.3, +1, "undecided (no interval)"),
    ],
)
def test_verdict(lo, hi, sign, verdict):
    assert rep._verdict(lo, hi, sign) == verdict


def test_no_machine_paths_in_the_summary():
    settings = {"out": "/home/someone/runs/repro", "datasets": ["mnist5k"], "cfg": "~/x.toml"}
    bound = np.ones((3, 5))
    text = rep.summarize(_tree(bound, 2 * bound, bound > 0, settings=settings), num_bootstrap=200)
    line = next(s for s in text.splitlines() if s.startswith("Settings:"))
    recorded = json.loads(line.split("`")[1])
    assert recorded == {"out": "repro", "datasets": ["mnist5k"], "cfg": "x.toml"}
    assert "/home" not in text and "~" not in text


def test_seeds_are_validated():
    with pytest.raises(ValueError, match=r"seeds must be an int in 1\.\.100"):
        rep.reproduce("unused", seeds=0)
