"""Smoke tests of the runnable examples, with tiny arguments (as pyro's tests/test_examples.py)."""

import argparse
import importlib.util
import math
from pathlib import Path

import pyro.distributions as dist
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_vae(capsys):
    pytest.importorskip("sklearn")
    example = _load("custom_vae")
    args = argparse.Namespace(
        steps=5, batch_size=16, latent_dim=2, hidden=8, lr=1e-2, num_test=6, seed=0,
        num_query=3, r=4.0, num_samples=50,
    )  # fmt: skip
    out = example.main(args)
    assert "| SVI steps | 5 |" in capsys.readouterr().out
    assert len(out["losses"]) == 5 and all(math.isfinite(v) for v in out["losses"])
    x = out["x_test"]
    assert x.shape == (6, 64)
    # The site protocol read the hand-written guide's encoder and model's likelihood mean.
    loc, scale = out["encoder"](x)
    assert torch.equal(out["loc"], loc) and torch.equal(out["scale"], scale)
    expected = dist.ContinuousBernoulli(logits=out["decoder"](loc)).mean
    torch.testing.assert_close(out["recon"], expected)
    assert out["rmse"] == pytest.approx((expected - x).pow(2).mean().sqrt().item())
    # Robustness queries ran on the hand-written pair.
    rob = out["robustness"]["robustness"]
    assert rob["probability"].sizes == {"obs_id": 3}
    lower, upper = rob["ci"].sel(ci_bound="lower"), rob["ci"].sel(ci_bound="upper")
    assert ((lower <= rob["probability"]) & (rob["probability"] <= upper)).all()
    assert (out["margin"]["robustness"]["bound"] >= 0).all()


def test_arviz_workflow(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np

    example = _load("arviz_workflow")
    args = argparse.Namespace(
        betas=[1.0, 4.0], epochs=1, batch_size=256, latent_dim=2, hidden=16, lr=1e-2,
        num_query=3, r=1.0, eps_max=1.0, num_eps=2, num_samples=40, seed=0, out=str(tmp_path),
    )  # fmt: skip
    out = example.main(args)
    text = capsys.readouterr().out
    assert "| beta | mean p_r at eps = 0 |" in text and "elpd_loo" in text
    tree = out["tree"]
    inside = tree["posterior_predictive"]["inside"]
    assert inside.sizes == {"beta": 2, "chain": 1, "draw": 40, "obs_id": 3, "eps": 2}
    np.testing.assert_array_equal(tree["robustness"]["beta"].values, [1.0, 4.0])
    # ArviZ's mean of the indicator draws is pyrobust's probability
    np.testing.assert_allclose(
        out["summary"]["mean"].to_numpy(), tree["robustness"]["probability"].values.ravel()
    )
    assert (tmp_path / "forest.png").stat().st_size > 1000
    for name, loo in out["loo"].items():
        assert loo.elpd_i.shape == (3,), name
        assert np.isfinite(float(loo.elpd))
    dims = out["converted"]["beta=1"]["posterior_predictive"]["x"].dims
    assert dims == ("chain", "draw", "obs_id", "channel", "row", "col")
