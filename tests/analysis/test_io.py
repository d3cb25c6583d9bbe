"""Save/load round trips, atomic writes, combining, and arviz_stats on every result kind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import arviz_stats
import numpy as np
import pytest
import xarray as xr

import pyrobust.analysis.io as io
from pyrobust.analysis import combine, load, save, settings
from pyrobust.analysis.io import require_group, result_kind
from pyrobust.analysis.metrics import mig
from tests.analysis._fixtures import margin_tree, robustness_tree, training_tree


def _assert_same(a, b):
    """Same groups, values, coords and attrs; ``created_at`` (when each was built) aside."""
    assert set(a.children) == set(b.children)
    for g in a.children:
        xr.testing.assert_identical(
            a[g].to_dataset().drop_attrs(deep=False).assign_attrs(_no_time(a[g].attrs)),
            b[g].to_dataset().drop_attrs(deep=False).assign_attrs(_no_time(b[g].attrs)),
        )
    for k, v in _no_time(a.attrs).items():
        assert b.attrs[k] == v


def _no_time(attrs):
    return {k: v for k, v in attrs.items() if k != "created_at"}


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
def test_failed_save_keeps_existing_file_and_leaves_no_temp(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"run{suffix}"
    good = robustness_tree(seed=1)
    save(good, path)
    bad = robustness_tree(seed=2)
    bad["robustness"] = xr.DataTree(xr.Dataset({"obj": ("obs_id", np.array([object()] * 6))}))
    with pytest.raises(ValueError, match="'robustness/obj' has dtype object"):
        save(bad, path)
    assert sorted(os.listdir(tmp_path)) == [path.name]
    _assert_same(good, load(path))

    def fail_half_way(self, target, *args, **kwargs):  # the backend dies after writing a part
        Path(target).mkdir() if suffix == ".zarr" else Path(target).write_bytes(b"CDF")
        raise OSError("disk full")

    method = "to_zarr" if suffix == ".zarr" else "to_netcdf"
    monkeypatch.setattr(xr.DataTree, method, fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        save(robustness_tree(seed=3), path)
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
    with pytest.raises(ValueError, match=r"different kinds: \['r_robustness', 'margin_bound'\]"):
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


# ---- files are never lost: refused directories, killed saves, damaged files -------------------


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_refuses_a_directory_that_is_not_a_pyrobust_store(tmp_path):
    project = tmp_path / "my_project"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    for fmt in ("zarr", "netcdf"):
        with pytest.raises(ValueError, match=r"not a pyrobust zarr store.*nothing in it is lost"):
            save(margin_tree(), project, format=fmt)
    assert (project / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["my_project"]
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a pyrobust zarr store"):
        save(margin_tree(), empty)
    # a pyrobust store is replaced, by one of any format
    store = save(margin_tree(seed=1), tmp_path / "run.zarr")
    save(margin_tree(seed=2), store)
    _assert_same(margin_tree(seed=2), load(store))


def test_zarr_replacement_swaps_stores_without_a_gap(tmp_path, monkeypatch):
    path = save(margin_tree(seed=1), tmp_path / "run.zarr")
    seen = []
    exchange = io._exchange

    def watch(src, dst):  # at the swap, dst is the complete old store
        seen.append(io._is_pyrobust_store(dst))
        swapped = exchange(src, dst)
        seen.append(io._is_pyrobust_store(dst))
        return swapped

    monkeypatch.setattr(io, "_exchange", watch)
    save(margin_tree(seed=2), path)
    assert seen == [True, True]
    _assert_same(margin_tree(seed=2), load(path))
    assert sorted(os.listdir(tmp_path)) == ["run.zarr"]


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path):
    """Without RENAME_EXCHANGE a zarr save renames the old store aside, then the new one in.
    A process killed between the two leaves only ``.run.zarr.PID.old``: the next load (or save)
    puts it back, and a later save cleans every leftover of the dead process."""
    path = save(margin_tree(seed=1), tmp_path / "run.zarr")
    pid = _dead_pid()
    os.replace(path, tmp_path / f".run.zarr.{pid}.old")
    (tmp_path / f".run.zarr.{pid}.abcd1234.tmp").mkdir()  # its temp dir with the new store
    _assert_same(margin_tree(seed=1), load(path))  # recovered, not FileNotFoundError
    assert sorted(os.listdir(tmp_path)) == ["run.zarr"]
    # the same with a save as the next operation
    os.replace(path, tmp_path / f".run.zarr.{pid}.old")
    save(margin_tree(seed=2), path)
    _assert_same(margin_tree(seed=2), load(path))
    assert sorted(os.listdir(tmp_path)) == ["run.zarr"]


def test_fallback_without_rename_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_exchange", lambda src, dst: False)
    path = save(margin_tree(seed=1), tmp_path / "run.zarr")
    save(margin_tree(seed=2), path)
    _assert_same(margin_tree(seed=2), load(path))
    assert sorted(os.listdir(tmp_path)) == ["run.zarr"]
    real_replace = os.replace

    def fail_second(src, dst):  # the second rename fails: the old store is put back
        if Path(src).parent.name.endswith(".tmp"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="rename failed"):
        save(margin_tree(seed=3), path)
    monkeypatch.undo()
    _assert_same(margin_tree(seed=2), load(path))
    assert sorted(os.listdir(tmp_path)) == ["run.zarr"]


def test_leftovers_of_live_processes_are_kept(tmp_path):
    live = tmp_path / f".run.nc.{os.getppid()}.abcd1234.tmp"  # a save running elsewhere
    live.mkdir()
    dead = tmp_path / f".run.nc.{_dead_pid()}.abcd1234.tmp"
    dead.mkdir()
    (dead / "run.nc").write_bytes(b"half")
    other = tmp_path / ".other.nc.1.x.tmp"  # another file's entries are not ours to judge
    other.mkdir()
    save(margin_tree(), tmp_path / "run.nc")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "run.nc"])


def _damage(path, how):
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    elif how == "flip":
        data = bytearray(path.read_bytes())
        for i in range(len(data) // 3, len(data), 97):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "metadata-json":
        (path / ".zmetadata").write_text("{not json")
    elif how == "no-metadata":
        (path / ".zmetadata").unlink()
        (path / ".zgroup").unlink()
    elif how == "chunk":
        chunk = next(p for p in sorted(path.rglob("*")) if p.is_file() and p.name[0].isdigit())
        chunk.write_bytes(b"\x00\x01garbage" * 7)
    elif how == "dtype":
        meta = json.loads((path / ".zmetadata").read_text())
        key = next(k for k in meta["metadata"] if k.endswith(".zarray"))
        meta["metadata"][key]["dtype"] = "<x9"
        (path / ".zmetadata").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("suffix", "how"),
    [
        (".nc", "truncate"),
        (".nc", "garbage"),
        (".nc", "flip"),
        (".zarr", "metadata-json"),
        (".zarr", "no-metadata"),
        (".zarr", "chunk"),
        (".zarr", "dtype"),
    ],
)
def test_damaged_files_raise_a_named_error(tmp_path, suffix, how):
    path = save(robustness_tree(), tmp_path / f"run{suffix}")
    _damage(path, how)
    with pytest.raises(
        ValueError, match=r"run\.(nc|zarr)' is not a pyrobust result|pyrobust_version"
    ):
        load(path)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_deeply_nested_or_malformed_json_attrs_raise_a_named_error(tmp_path, suffix):
    tree = margin_tree()
    tree.attrs["crafted"] = "json:" + "[" * 100_000 + "]" * 100_000
    path = save(tree, tmp_path / f"deep{suffix}")
    with pytest.raises(ValueError, match=r"attribute 'crafted' of '/' .*nested too deeply"):
        load(path)
    tree = margin_tree()
    tree["robustness"].attrs["bad"] = "json:{oops"
    path = save(tree, tmp_path / f"bad{suffix}")
    with pytest.raises(ValueError, match=r"attribute 'bad' of '/robustness' .*not valid JSON"):
        load(path)


def test_bad_argument_types_are_named():
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        save(margin_tree(), 3)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        load(None)
    with pytest.raises(ValueError, match="path must be a non-empty file path"):
        load("")
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        save(margin_tree(), "x.nc", overwrite="yes")
    with pytest.raises(TypeError, match="kind must be a non-empty str"):
        save(margin_tree(), "x.nc", kind=3)
