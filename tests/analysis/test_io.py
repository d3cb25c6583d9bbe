"""Save/load round trips, atomic writes, combining, and arviz_stats on every result kind."""

import os

import arviz_stats
import numpy as np
import pytest
import xarray as xr

from pyrobust.analysis import combine, load, save, settings
from pyrobust.analysis.io import require_group, result_kind
from pyrobust.analysis.metrics import mig
from tests.analysis._fixtures import margin_tree, robustness_tree, training_tree


def _assert_same(a, b):
    assert set(a.children) == set(b.children)
    for g in a.children:
        xr.testing.assert_identical(a[g].to_dataset(), b[g].to_dataset())
    for k, v in a.attrs.items():
        assert b.attrs[k] == v


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
@pytest.mark.parametrize("make", [robustness_tree, margin_tree, training_tree])
def test_round_trip_keeps_values_dims_coords_attrs(tmp_path, suffix, make):
    tree = make()
    path = save(tree, tmp_path / f"run{suffix}")
    back = load(path)
    _assert_same(tree, back)
    assert back.attrs["pyrobust_version"]
    assert back.attrs["pyrobust_kind"] == result_kind(tree)
    # the caller's tree is not modified by save
    assert "pyrobust_version" not in tree.attrs
    # settings decode the JSON-encoded attrs
    kept = {k: v for k, v in settings(back).items() if not k.startswith("pyrobust_")}
    assert kept == settings(tree)


def test_round_trip_bool_and_none_settings(tmp_path):
    tree = robustness_tree()
    back = load(save(tree, tmp_path / "r.nc"))
    s = settings(back)
    assert s["max_batch"] is None and s["reference"] == "mean" and s["r"] == 1.0
    assert back["robustness"]["decision"].dtype == bool


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_failed_save_keeps_existing_file_and_leaves_no_temp(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    good = robustness_tree(seed=1)
    save(good, path)
    bad = robustness_tree(seed=2)
    bad["robustness"] = xr.DataTree(xr.Dataset({"obj": ("obs_id", np.array([object()] * 6))}))
    with pytest.raises(Exception):  # noqa: B017 - any backend error; what matters is the state after
        save(bad, path)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    _assert_same(good, load(path))


def test_overwrite_false_refuses(tmp_path):
    path = save(margin_tree(), tmp_path / "m.nc")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save(margin_tree(), path, overwrite=False)


def test_load_rejects_files_that_are_not_results(tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("not a netcdf file")
    with pytest.raises(ValueError, match="not a pyrobust result"):
        load(text)
    foreign = tmp_path / "foreign.nc"
    xr.DataTree(xr.Dataset({"a": ("x", np.arange(3))})).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(ValueError, match="pyrobust_version"):
        load(foreign)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="extension"):
        save(margin_tree(), tmp_path / "run.txt")
    with pytest.raises(TypeError, match=r"xarray\.DataTree"):
        save({"a": 1}, tmp_path / "run.nc")


def test_combine_along_beta_reads_coords_from_attrs():
    trees = [robustness_tree(seed=i, beta=b) for i, b in enumerate([1.0, 4.0, 8.0])]
    out = combine(trees, dim="beta")
    np.testing.assert_array_equal(out["robustness"]["beta"].values, [1.0, 4.0, 8.0])
    for i, t in enumerate(trees):
        np.testing.assert_array_equal(
            out["robustness"]["probability"].isel(beta=i).values,
            t["robustness"]["probability"].values,
        )
    assert out["posterior_predictive"]["distance"].dims == ("beta", "chain", "draw", "obs_id")
    assert [s["beta"] for s in settings(out)["combined_settings"]] == [1.0, 4.0, 8.0]
    assert "beta" not in out.attrs  # differing settings are dropped from the root
    summary = arviz_stats.summary(out, group="posterior_predictive")
    assert len(summary) == 3 * 6


def test_combine_errors():
    with pytest.raises(ValueError, match="not in every tree"):
        combine([robustness_tree(), margin_tree()])
    with pytest.raises(ValueError, match="one value per tree"):
        combine([margin_tree(), margin_tree()], coords=[1, 2, 3])
    with pytest.raises(TypeError, match="non-empty list"):
        combine(margin_tree())
    out = combine([margin_tree(), margin_tree(seed=1)], coords=["a", "b"])
    assert list(out["robustness"]["model"].values) == ["a", "b"]


def test_require_group_names_missing_group_and_variables():
    with pytest.raises(ValueError, match="no 'metrics' group"):
        require_group(margin_tree(), "metrics", caller="f")
    with pytest.raises(ValueError, match="lacks variable"):
        require_group(margin_tree(), "robustness", ["probability"])


def test_arviz_stats_on_every_result_kind():
    rob = robustness_tree()
    s = arviz_stats.summary(rob, group="posterior_predictive")
    np.testing.assert_allclose(
        s["mean"].to_numpy(),
        rob["posterior_predictive"]["distance"].mean(("chain", "draw")),
        atol=0.01,
    )
    eti = arviz_stats.eti(rob, group="posterior_predictive", prob=0.9)
    assert eti["distance"].sizes == {"obs_id": 6, "ci_bound": 2}
    hdi = arviz_stats.hdi(rob, group="posterior_predictive", prob=0.9)
    assert (hdi["distance"].sel(ci_bound="upper") >= hdi["distance"].sel(ci_bound="lower")).all()
    train = arviz_stats.summary(training_tree(), group="sample_stats", kind="stats")
    assert set(train.index) == {"loss", "kl"}
    rng = np.random.default_rng(0)
    f = rng.integers(0, 4, size=(300, 2))
    met = mig(f, f, num_bootstrap=20)
    boot = arviz_stats.summary(met, group="bootstrap", kind="stats")
    assert boot.loc["mig_histogram", "mean"] == pytest.approx(1.0, abs=0.05)
    # summary groups are plain datasets: ArviZ's dataset-level functions work on them too
    margins = margin_tree()["robustness"].to_dataset()
    assert float(margins["bound"].mean()) == pytest.approx(margins["bound"].values.mean())


def test_format_change_replaces_file_with_store_and_back(tmp_path):
    path = tmp_path / "run.zarr"
    save(margin_tree(seed=1), path, format="netcdf")  # a netCDF file under a .zarr name
    assert path.is_file()
    save(margin_tree(seed=2), path)  # now a zarr store (a directory) replaces it
    assert path.is_dir()
    _assert_same(margin_tree(seed=2), load(path))
    save(margin_tree(seed=3), path, format="netcdf")
    assert path.is_file()
    _assert_same(margin_tree(seed=3), load(path, format="netcdf"))
    assert sorted(os.listdir(tmp_path)) == ["run.zarr"]
