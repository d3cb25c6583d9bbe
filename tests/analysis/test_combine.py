"""combine: xr.concat of DataTrees with checks (kind, settings, real coordinates, distinct models)."""

import arviz_stats
import numpy as np
import pytest

from pyrobust._results import STANDARD_ATTRS, decode_attrs, make_tree
from pyrobust.analysis import combine, settings


def _run(beta, *, seed=0, n=4, draws=200, query="r_robustness", where="attr", **extra):
    """A robustness result of one model: indicator draws and their probability."""
    rng = np.random.default_rng(seed)
    p = np.linspace(0.2, 0.9, n) * min(1.0, 2.0 / beta)
    inside = (rng.random((1, draws, n)) < p).astype(np.float64)
    attrs = {"query": query, "r": 0.5, "num_samples": draws, "seed": seed, **extra}
    attrs["model_hash"] = f"{seed:02d}" * 32
    if where == "attr":
        attrs["beta"] = beta
    elif where == "coefficients":
        attrs["objective"] = "BetaELBO"
        attrs["coefficients"] = {"beta": beta}
    return make_tree(
        {"posterior_predictive": {"inside": inside}},
        dims={"inside": ["obs_id"]},
        coords={"obs_id": np.arange(n)},
        summary={"robustness": {"probability": (("obs_id",), inside.mean((0, 1)))}},
        attrs=attrs,
    )


BETAS = [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("where", ["attr", "coefficients"])
def test_real_beta_values_from_the_attrs(where):
    trees = [_run(b, seed=i, where=where) for i, b in enumerate(BETAS)]
    out = combine(trees, dim="beta")
    for group in ("posterior_predictive", "robustness"):
        np.testing.assert_array_equal(out[group]["beta"].values, BETAS)
    for i, (b, t) in enumerate(zip(BETAS, trees, strict=True)):
        np.testing.assert_array_equal(
            out["robustness"]["probability"].sel(beta=b).values,
            t["robustness"]["probability"].values,
        )
        assert settings(out)["combined_settings"][i]["seed"] == i
    attrs = decode_attrs(out.attrs)
    assert attrs["combined_dim"] == "beta" and attrs["combined_kind"] == "r_robustness"
    assert attrs["r"] == 0.5 and "seed" not in attrs  # agreeing settings kept, differing dropped
    for node in [out, *(out[g] for g in out.children)]:
        assert set(STANDARD_ATTRS) <= set(node.attrs)
    # arviz_stats on the combined tree: per (beta, obs_id) the mean of the indicators is p
    s = arviz_stats.summary(out, group="posterior_predictive", var_names=["inside"], kind="stats")
    assert len(s) == len(BETAS) * 4
    np.testing.assert_allclose(
        s["mean"].to_numpy(),
        out["robustness"]["probability"].values.ravel(),
        atol=0.005,  # summary rounds to 2 decimals
    )


def test_explicit_coords_and_model_labels():
    trees = [_run(1.0, seed=i, where=None) for i in range(2)]
    out = combine(trees, dim="beta", coords=[1, 16])
    assert out["robustness"]["beta"].values.tolist() == [1, 16]
    named = [_run(1.0, seed=i, where=None, model_name=f"vae{i}") for i in range(2)]
    # model_name differs, which is what dim="model" labels by; other settings agree
    out = combine(named, dim="model")
    assert out["robustness"]["model"].values.tolist() == ["vae0", "vae1"]


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match=r"different kinds: \['r_robustness', 'margin_bound'\]"):
        combine([_run(1.0), _run(2.0, seed=1, query="margin_bound")], dim="beta")
    with pytest.raises(ValueError, match=r"settings other than 'beta' differ \(r: \[0.5, 0.9\]"):
        combine([_run(1.0), _run(2.0, seed=1, r=0.9)], dim="beta")
    out = combine([_run(1.0), _run(2.0, seed=1, r=0.9)], dim="beta", allow_differing=["r"])
    assert "r" not in out.attrs
    with pytest.raises(ValueError, match=r"do not record 'beta'.*coords=\[1, 2, 4, 8\]"):
        combine([_run(1.0, where=None), _run(1.0, seed=1, where=None)], dim="beta")
    with pytest.raises(ValueError, match="must be distinct"):
        combine([_run(1.0), _run(2.0, seed=1)], dim="beta", coords=[3, 3])
    with pytest.raises(ValueError, match="same model"):
        combine([_run(1.0), _run(2.0)], dim="beta")  # same seed -> same model_hash here
    with pytest.raises(ValueError, match="do not line up"):
        combine([_run(1.0), _run(2.0, seed=1, n=5)], dim="beta")
    with pytest.raises(ValueError, match="already has that dim"):
        combine([combine([_run(1.0), _run(2.0, seed=1)], dim="beta")] * 2, dim="beta")


def test_arviz_plots_forest_on_a_combined_tree():
    pytest.importorskip("matplotlib")
    import arviz_plots

    out = combine([_run(b, seed=i) for i, b in enumerate(BETAS[:2])], dim="beta")
    pc = arviz_plots.plot_forest(
        out, group="posterior_predictive", var_names=["inside"], backend="matplotlib"
    )
    assert pc is not None
