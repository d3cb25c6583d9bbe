"""Disentanglement metrics: the bootstrap replicates are a chain/draw group ArviZ reads as it is,
and its equal-tailed interval is the metric's own ``_ci``."""

import arviz_stats
import numpy as np
import pytest

from pyrobust._results import STANDARD_ATTRS
from pyrobust.analysis import mig, sap


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, 4, size=(300, 2))
    codes = factors + 0.4 * rng.standard_normal(factors.shape)
    return {
        "mig": mig(codes, factors, num_bootstrap=60, confidence=0.9, seed=1),
        "sap": sap(codes, factors, num_bootstrap=60, confidence=0.9, seed=1),
    }


@pytest.mark.parametrize("name", ["mig", "sap"])
def test_bootstrap_group_is_read_by_arviz_stats(scores, name):
    tree = scores[name]
    boot = tree["bootstrap"].to_dataset()
    (var,) = list(boot.data_vars)
    assert boot[var].dims == ("chain", "draw") and boot.sizes == {"chain": 1, "draw": 60}
    for node in [tree, *(tree[g] for g in tree.children)]:
        assert set(STANDARD_ATTRS) <= set(node.attrs)
    # the equal-tailed interval of the replicates at the result's level is the metric's _ci
    eti = arviz_stats.eti(tree, group="bootstrap", prob=0.9)[var]
    ci = tree["metrics"][f"{var}_ci"]
    assert eti.dims == ci.dims == ("ci_bound",)
    np.testing.assert_allclose(eti.values, ci.values, rtol=1e-12)
    # summary, ess and mcse agree with the replicates computed by hand
    reps = boot[var].values.ravel()
    s = arviz_stats.summary(tree, group="bootstrap", kind="stats", round_to="none")
    assert s.loc[var, "mean"] == pytest.approx(reps.mean())
    assert s.loc[var, "sd"] == pytest.approx(reps.std(), rel=1e-6)  # ArviZ: ddof=0
    ess = float(arviz_stats.ess(tree, group="bootstrap")[var])
    mcse = float(arviz_stats.mcse(tree, group="bootstrap")[var])
    assert ess > 20  # independent replicates
    assert mcse == pytest.approx(reps.std(ddof=1) / np.sqrt(ess), rel=0.05)


def test_arviz_plots_on_the_bootstrap_group(scores, tmp_path):
    pytest.importorskip("matplotlib")
    import arviz_plots

    tree = scores["mig"]
    arviz_plots.plot_forest(tree, group="bootstrap", backend="matplotlib")
    pc = arviz_plots.plot_dist(tree, group="bootstrap", backend="matplotlib")
    pc.savefig(tmp_path / "dist.png")
    assert (tmp_path / "dist.png").stat().st_size > 1000
