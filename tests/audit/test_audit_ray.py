"""pyrobust.audit on a local Ray cluster: same bits as the local engine, faults survived.

Marked ``ray``; skipped when Ray (the ``ray`` extra) is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyrobust.models import VAE, MLPDecoder, MLPEncoder, save_model
from pyrobust.robustness.audit import Query, audit
from tests.audit import _queries

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

QUERIES = {
    "r_robustness": {"r": [0.5, 1.0], "num_samples": 40},
    "margin_bound": {"r": 1.0, "num_samples": 40, "confidence": 0.9},
}
GROUPS = ("r_robustness/robustness", "r_robustness/posterior_predictive", "margin_bound/robustness")


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024**2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = VAE(MLPEncoder(6, 2, hidden=(8,)), MLPDecoder(2, 6, hidden=(8,)), "gaussian").eval()
    path = tmp_path_factory.mktemp("run")
    save_model(vae, path / "model.pt")
    return path


def _data():
    return torch.rand(9, 6, generator=torch.Generator().manual_seed(3))


def _assert_same_arrays(a, b, groups=GROUPS):
    for group in groups:
        da, db = a[group].to_dataset().load(), b[group].to_dataset().load()
        assert sorted(da.data_vars) == sorted(db.data_vars)
        for name in db.data_vars:
            np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)


def test_three_shards_on_ray_equal_the_local_engine_for_1_2_3_workers(cluster, run_dir, tmp_path):
    kwargs = {"queries": QUERIES, "shard_size": 3, "seed": 11, "progress": False}
    local = audit(run_dir, _data(), out=tmp_path / "local.zarr", threads=1, **kwargs)
    assert local.sizes["shard"] == 3
    for workers in (1, 2, 3):
        tree = audit(
            run_dir,
            _data(),
            out=tmp_path / f"ray{workers}.zarr",
            engine="ray",
            num_workers=workers,
            **kwargs,
        )
        assert tree["shards_done"].values.all()
        _assert_same_arrays(tree, local)


def test_a_killed_worker_is_restarted_and_its_shard_retried(cluster, run_dir, tmp_path):
    from pyrobust.models import load_model

    vae = load_model(run_dir / "model.pt").eval()  # shipped to the actors by Ray
    flag = tmp_path / "crashed"
    kwargs = {"r": 1.0, "num_samples": 30}
    crashing = {"q": Query(_queries.crash_once_r_robustness, {**kwargs, "flag": str(flag)})}
    tree = audit(
        vae,
        _data(),
        queries=crashing,
        out=tmp_path / "ray.zarr",
        engine="ray",
        num_workers=2,
        shard_size=3,
        seed=2,
        max_retries=2,
        progress=False,
    )
    assert flag.exists()  # one worker did die
    assert tree["shards_done"].values.all()
    local = audit(
        vae,
        _data(),
        queries={"q": Query("r_robustness", kwargs)},
        out=tmp_path / "local.zarr",
        shard_size=3,
        seed=2,
        progress=False,
    )
    _assert_same_arrays(tree, local, ("q/robustness", "q/posterior_predictive"))


def test_without_retries_the_failure_reaches_the_caller_and_the_store_resumes(
    cluster, run_dir, tmp_path
):
    flag = tmp_path / "crashed"
    q = {
        "q": Query(
            _queries.crash_once_r_robustness, {"r": 1.0, "num_samples": 30, "flag": str(flag)}
        )
    }
    args = {
        "queries": q,
        "out": tmp_path / "ray.zarr",
        "engine": "ray",
        "num_workers": 1,
        "shard_size": 3,
        "seed": 2,
        "progress": False,
    }
    with pytest.raises(ray.exceptions.RayActorError):
        audit(run_dir, _data(), max_retries=0, **args)
    tree = audit(run_dir, _data(), **args)  # the flag exists now: no more crashes
    assert tree["shards_done"].values.all()
