"""``pyrobust audit``: the command line of pyrobust.audit (local engine; Ray marked ``ray``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyrobust.analysis.experiment import load_dataset
from pyrobust.cli import main
from pyrobust.robustness.audit import audit

TINY = ["--n", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "100"]
AUDIT = ["--n-inputs", "10", "--shard-size", "4", "--num-samples", "20", "--r", "0.5,2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "digits"
    assert main(["train", "--out", str(path), *TINY]) == 0
    return path


def _same(a, b, path):
    da, db = a[path].to_dataset().load(), b[path].to_dataset().load()
    for name in db.data_vars:
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)


def _assert_library_store(run, tree, tmp_path, n_inputs, num_samples):
    """``tree`` (the command's store) equals the library's audit of the same first inputs."""
    x = load_dataset("digits", n=300, seed=0).test[:n_inputs]
    kwargs = {"num_samples": num_samples, "confidence": 0.95}
    ref = audit(
        run,
        x,
        out=tmp_path / "ref.zarr",
        shard_size=4,
        seed=0,
        progress=False,
        queries={"r_robustness": {"r": [0.5, 2.0], **kwargs}, "margin_bound": {"r": 0.5, **kwargs}},
    )
    for path in ("r_robustness/robustness", "margin_bound/robustness"):
        _same(tree, ref, path)


def test_audit_writes_the_store_the_library_writes_and_resumes(run, tmp_path, capsys):
    assert main(["audit", "--run", str(run), *AUDIT]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'audit.zarr'}: 3 of 3 shards, 10 inputs" in out
    import xarray as xr

    tree = xr.open_datatree(run / "audit.zarr", engine="zarr")
    _assert_library_store(run, tree, tmp_path, 10, 20)
    # again: everything is read from the store; another seed is refused, --force replaces
    assert main(["audit", "--run", str(run), *AUDIT]) == 0
    assert main(["audit", "--run", str(run), *AUDIT, "--seed", "1"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["audit", "--run", str(run), *AUDIT, "--seed", "1", "--force", "--no-margin"]) == 0
    assert "margin_bound" not in xr.open_datatree(run / "audit.zarr", engine="zarr").children


def test_audit_with_sequential_decisions(run, tmp_path, capsys):
    """--num-samples auto: both queries decide sequentially, as the library's audit does."""
    out = tmp_path / "auto.zarr"
    args = ["--n-inputs", "6", "--shard-size", "4", "--r", "0.5,2", "--out", str(out)]
    assert main(["audit", "--run", str(run), *args, "--num-samples", "auto"]) == 0
    printed = capsys.readouterr().out
    import xarray as xr

    tree = xr.open_datatree(out, engine="zarr")
    draws = int(tree["r_robustness/robustness"]["num_draws"].sum())
    assert f"sequential decisions: {draws:,} draws in all" in printed
    _assert_library_store(run, tree, tmp_path, 6, "auto")
    assert tree["margin_bound"].attrs["num_samples"] == "auto"


def test_audit_of_a_npy_file(run, tmp_path):
    x = torch.rand(5, 1, 8, 8).numpy()
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "a.zarr"
    args = ["--dataset", str(tmp_path / "x.npy"), "--out", str(out), "--num-samples", "10"]
    assert main(["audit", "--run", str(run), *args, "--no-margin"]) == 0
    import xarray as xr

    assert xr.open_datatree(out, engine="zarr")["r_robustness/robustness"].sizes["obs_id"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar"], "--dataset cifar: expected one of"),
        (["--n-inputs", "100000"], "--n-inputs 100000 exceeds"),
        (["--engine", "spark"], "invalid choice: 'spark'"),
        (["--address", "auto"], "--address: settings of --engine ray"),
        (["--workers", "2", "--gpus-per-worker", "1"], "--workers, --gpus-per-worker: settings"),
        (["--out", "/nonexistent/dir/a.zarr"], "does not exist"),
        (["--num-samples", "many"], "--num-samples"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run, args, message, capsys):
    assert main(["audit", "--run", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.ray
def test_audit_on_ray_equals_the_local_engine(run, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2, log_to_driver=False
    )
    try:
        out = tmp_path / "ray.zarr"
        assert (
            main(
                [
                    "audit",
                    "--run",
                    str(run),
                    *AUDIT,
                    "--engine",
                    "ray",
                    "--workers",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        ray.shutdown()
    assert main(["audit", "--run", str(run), *AUDIT, "--out", str(tmp_path / "local.zarr")]) == 0
    import xarray as xr

    tree = xr.open_datatree(out, engine="zarr")
    local = xr.open_datatree(tmp_path / "local.zarr", engine="zarr")
    for path in ("r_robustness/robustness", "r_robustness/posterior_predictive"):
        _same(tree, local, path)
