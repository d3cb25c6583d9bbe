"""pyrobust.audit with the local engine: shards equal single calls, the store resumes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
import zarr

import pyrobust as pr
from pyrobust.models import VAE, MLPDecoder, MLPEncoder, save_model
from pyrobust.robustness.audit import Query, audit, shard_seed
from tests.audit import _interrupted, _queries
from tests.linear_gaussian import LinearGaussianVAE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lg():
    return LinearGaussianVAE()


def _x(vae, n, seed=1):
    return torch.randn(n, vae.d_x, generator=torch.Generator().manual_seed(seed), dtype=vae.dtype)


def _assert_same(a: xr.Dataset, b: xr.Dataset):
    """Same variables, dims and bits (strings compared as str)."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in b.data_vars:
        assert a[name].dims == b[name].dims, name
        va, vb = a[name].values, b[name].values
        if vb.dtype.kind in "OU":
            va, vb = va.astype(str), vb.astype(str)
        np.testing.assert_array_equal(va, vb, err_msg=name)


def _region(tree, path, start, stop):
    return tree[path].to_dataset().isel(obs_id=slice(start, stop)).load()


def test_each_shard_equals_one_query_call_with_its_seed(lg, tmp_path):
    n, size, seed = 10, 4, 3
    x = _x(lg, n)
    # a per-input stack of perturbations (m=2): sliced with its shard (axis 1)
    delta = 0.4 * torch.randn(
        2, n, lg.d_x, generator=torch.Generator().manual_seed(2), dtype=lg.dtype
    )
    queries = {
        "r_robustness": {"r": [0.3, 0.6], "num_samples": 50, "delta": delta},
        "margin_bound": {"r": 0.6, "num_samples": 50, "confidence": 0.9},
    }
    tree = audit(
        (lg.model, lg.guide),
        x,
        queries=queries,
        out=tmp_path / "a.zarr",
        shard_size=size,
        seed=seed,
        progress=False,
    )
    assert tree["shards_done"].values.tolist() == [True, True, True]
    np.testing.assert_array_equal(tree["r_robustness/robustness"]["obs_id"], np.arange(n))
    for s, start in enumerate(range(0, n, size)):
        stop = min(start + size, n)
        assert tree["shard_seed"].values[s].tolist() == [
            shard_seed(seed, s, 0),
            shard_seed(seed, s, 1),
        ]
        ref = pr.r_robustness(
            lg.model,
            lg.guide,
            x[start:stop],
            r=[0.3, 0.6],
            num_samples=50,
            delta=delta[:, start:stop],
            seed=shard_seed(seed, s, 0),
        )
        for group in ("robustness", "posterior_predictive"):
            _assert_same(
                _region(tree, f"r_robustness/{group}", start, stop), ref[group].to_dataset()
            )
        ref = pr.margin_bound(
            lg.model,
            lg.guide,
            x[start:stop],
            r=0.6,
            num_samples=50,
            confidence=0.9,
            seed=shard_seed(seed, s, 1),
        )
        _assert_same(
            _region(tree, "margin_bound/robustness", start, stop), ref["robustness"].to_dataset()
        )


def test_sequential_and_attack_queries_with_the_default_groups(lg, tmp_path):
    """num_samples="auto" and the attacks keep no draws: the default groups are their
    robustness group; each shard equals one call; per-shard run counters stay out of the
    store's attrs (which would show the first shard's), num_draws holds every cell's."""
    n, size, seed = 7, 3, 4
    x = _x(lg, n)
    queries = {
        "r_robustness": {"r": [0.5, 2.0], "num_samples": "auto", "tolerance": 0.1},
        "margin_bound": {"r": 1.0, "num_samples": "auto", "max_samples": 4096},
        "empirical_margin": {
            "r": 1.0,
            "num_samples": "auto",
            "box": None,
            "radius_max": 3.0,
            "steps": 4,
            "bisection_steps": 3,
            "max_samples": 2048,
        },
    }
    tree = audit(
        (lg.model, lg.guide),
        x,
        queries=queries,
        out=tmp_path / "a.zarr",
        shard_size=size,
        seed=seed,
        progress=False,
    )
    total = {}
    for q, (label, kwargs) in enumerate(queries.items()):
        assert sorted(tree[label].children) == ["robustness"]
        for key in ("rounds", "total_draws", "seed"):
            assert key not in tree[f"{label}/robustness"].attrs
            assert tree[label].attrs.get(key) in (
                None,
                "one per shard: the root variable shard_seed",
            )
        assert tree[label].attrs["num_samples"] == "auto"
        total[label] = 0
        for s, start in enumerate(range(0, n, size)):
            stop = min(start + size, n)
            ref = getattr(pr, label)(
                lg.model, lg.guide, x[start:stop], seed=shard_seed(seed, s, q), **kwargs
            )
            _assert_same(
                _region(tree, f"{label}/robustness", start, stop), ref["robustness"].to_dataset()
            )
            total[label] += ref.attrs["total_draws"]
        assert int(tree[f"{label}/robustness"]["num_draws"].sum()) == total[label] > 0


def test_probabilities_land_on_their_inputs(lg, tmp_path):
    """Against the exact answer of the linear-Gaussian VAE, input by input (THEORY.md 7)."""
    n = 9
    x = _x(lg, n)
    delta = torch.linspace(0.0, 1.5, n, dtype=lg.dtype)[:, None] * torch.ones(
        n, lg.d_x, dtype=lg.dtype
    )
    r = 0.6
    tree = audit(
        (lg.model, lg.guide),
        x,
        out=tmp_path / "a.zarr",
        shard_size=2,
        seed=0,
        queries={"r_robustness": {"r": r, "num_samples": 4000, "delta": delta}},
        progress=False,
    )
    p = tree["r_robustness/robustness"]["probability"].values
    exact = lg.p_robust(r, delta)
    assert np.all(np.abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / 4000) + 1e-3)


def _labelled(model, guide, x, *, seed):
    """A callable query: strings longer in later shards, a per-input number and a constant."""
    n = x.shape[0]
    labels = np.array(["x" * int(1 + v) for v in x[:, 0].abs().mul(4).tolist()])
    return xr.DataTree.from_dict(
        {
            "robustness": xr.Dataset(
                {
                    "label": ("obs_id", labels),
                    "total": ("obs_id", x.sum(-1).numpy()),
                    "num_features": ((), x.shape[1]),
                },
                coords={"obs_id": np.arange(n)},
            )
        }
    )


def test_a_callable_query_with_strings_of_any_length(lg, tmp_path):
    x = torch.arange(7, dtype=lg.dtype)[:, None] * torch.ones(7, lg.d_x, dtype=lg.dtype)
    tree = audit(
        (lg.model, lg.guide),
        x,
        out=tmp_path / "a.zarr",
        shard_size=3,
        seed=1,
        queries={"q": Query(_labelled, groups=("robustness",))},
        progress=False,
    )
    ds = tree["q/robustness"].to_dataset().load()
    assert ds["label"].values.astype(str).tolist() == ["x" * (1 + 4 * i) for i in range(7)]
    np.testing.assert_array_equal(ds["total"].values, 6.0 * np.arange(7))
    assert int(ds["num_features"]) == lg.d_x  # a variable without obs_id: written once


def test_run_directory_loads_the_saved_model(tmp_path):
    torch.manual_seed(0)
    vae = VAE(MLPEncoder(6, 2, hidden=(8,)), MLPDecoder(2, 6, hidden=(8,)), "gaussian").eval()
    save_model(vae, tmp_path / "model.pt")
    x = torch.rand(5, 6)
    q = {"r_robustness": {"r": 1.0, "num_samples": 20}}
    from_run = audit(
        tmp_path, x, queries=q, out=tmp_path / "a.zarr", shard_size=2, seed=1, progress=False
    )
    from_obj = audit(
        vae, x, queries=q, out=tmp_path / "b.zarr", shard_size=2, seed=1, progress=False
    )
    _assert_same(
        from_run["r_robustness/robustness"].to_dataset().load(),
        from_obj["r_robustness/robustness"].to_dataset().load(),
    )
    assert "weights_sha256" in from_obj.attrs["settings"]


def test_failed_run_resumes_without_redoing_finished_shards(lg, tmp_path, monkeypatch):
    x = _x(lg, 7)
    log, out = tmp_path / "log", tmp_path / "a.zarr"
    q = {"r": Query(_queries.logged_r_robustness, {"r": 0.5, "num_samples": 30, "log": str(log)})}
    monkeypatch.setattr(_queries, "_calls", 0)
    monkeypatch.setattr(_queries, "FAIL_AT_CALL", 3)
    with pytest.raises(RuntimeError, match="injected failure") as info:
        audit((lg.model, lg.guide), x, queries=q, out=out, shard_size=2, seed=5, progress=False)
    assert any("resume" in note for note in info.value.__notes__)
    done = np.asarray(zarr.open_group(out, mode="r")["shards_done"][:], dtype=bool)
    assert done.tolist() == [True, True, False, False]
    monkeypatch.setattr(_queries, "FAIL_AT_CALL", None)
    tree = audit(
        (lg.model, lg.guide), x, queries=q, out=out, shard_size=2, seed=None, progress=False
    )
    seeds = [int(s) for s in log.read_text().split()]
    assert seeds == [shard_seed(5, s) for s in (0, 1, 2, 3)]  # each shard ran once
    ref = audit(
        (lg.model, lg.guide),
        x,
        queries=q,
        out=tmp_path / "ref.zarr",
        shard_size=2,
        seed=5,
        progress=False,
    )
    for group in ("robustness", "posterior_predictive"):
        _assert_same(tree[f"r/{group}"].to_dataset().load(), ref[f"r/{group}"].to_dataset().load())


def test_killed_driver_resumes_with_nothing_recomputed_or_lost(tmp_path):
    out, log = tmp_path / "a.zarr", tmp_path / "log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.audit._interrupted", str(out), str(log), "0.5"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    n_shards = _interrupted.N_INPUTS // _interrupted.SHARD_SIZE
    try:
        deadline = time.monotonic() + 300
        # shards run one after another, each written while the next one runs: the 4th log
        # line (shard 3 started) means shards 0 and 1 are written and shard 2 is being written
        while not (log.exists() and len(log.read_text().split()) >= 4):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the audit subprocess made no progress"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done = np.asarray(zarr.open_group(out, mode="r")["shards_done"][:], dtype=bool)
    assert done[:2].all() and not done.all()
    first_run = [int(s) for s in log.read_text().split()]

    vae, x = _interrupted.setup()
    tree = audit(
        (vae.model, vae.guide),
        x,
        queries=_interrupted.queries(str(log), 0.5),
        out=out,
        shard_size=_interrupted.SHARD_SIZE,
        seed=_interrupted.SEED,
        progress=False,
    )
    second_run = [int(s) for s in log.read_text().split()][len(first_run) :]
    shard_of = {shard_seed(_interrupted.SEED, s): s for s in range(n_shards)}
    assert sorted(shard_of[s] for s in second_run) == np.flatnonzero(~done).tolist()
    assert {shard_of[s] for s in first_run} >= set(np.flatnonzero(done).tolist())
    assert tree["shards_done"].values.all()

    ref = audit(
        (vae.model, vae.guide),
        x,
        queries=_interrupted.queries(str(tmp_path / "ref.log"), 0.0),
        out=tmp_path / "ref.zarr",
        shard_size=_interrupted.SHARD_SIZE,
        seed=_interrupted.SEED,
        progress=False,
    )
    for group in ("robustness", "posterior_predictive"):
        _assert_same(
            tree[f"r_robustness/{group}"].to_dataset().load(),
            ref[f"r_robustness/{group}"].to_dataset().load(),
        )


def test_a_finished_store_is_read_not_recomputed(lg, tmp_path):
    x = _x(lg, 4)
    log = tmp_path / "log"
    q = {"r": Query(_queries.logged_r_robustness, {"r": 0.5, "num_samples": 10, "log": str(log)})}
    first = audit(
        (lg.model, lg.guide),
        x,
        queries=q,
        out=tmp_path / "a.zarr",
        shard_size=3,
        seed=0,
        progress=False,
    )
    again = audit(
        (lg.model, lg.guide), x, queries=q, out=tmp_path / "a.zarr", shard_size=3, progress=False
    )
    assert len(log.read_text().split()) == 2
    _assert_same(
        first["r/robustness"].to_dataset().load(), again["r/robustness"].to_dataset().load()
    )
    fresh = audit(
        (lg.model, lg.guide),
        x,
        queries=q,
        out=tmp_path / "a.zarr",
        shard_size=3,
        seed=0,
        overwrite=True,
        progress=False,
    )
    assert len(log.read_text().split()) == 4
    _assert_same(
        first["r/robustness"].to_dataset().load(), fresh["r/robustness"].to_dataset().load()
    )


def test_one_log_line_per_shard_without_a_terminal(lg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pyrobust.audit"):
        audit(
            (lg.model, lg.guide),
            _x(lg, 5),
            queries={"r_robustness": {"r": 0.5, "num_samples": 10}},
            out=tmp_path / "a.zarr",
            shard_size=2,
            seed=0,
        )
    lines = [
        r.getMessage()
        for r in caplog.records
        if "shard" in r.getMessage() and "done in" in r.getMessage()
    ]
    assert len(lines) == 3 and lines[-1].endswith("(3/3)")


def test_shard_seed_is_a_spawned_seed_sequence():
    child = np.random.SeedSequence(11).spawn(3)[2].spawn(2)[1]
    assert shard_seed(11, 2, 1) == int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))
    assert len({shard_seed(0, s, q) for s in range(20) for q in range(3)}) == 60
    with pytest.raises(TypeError, match="shard"):
        shard_seed(0, -1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"engine": "spark"}, ValueError, "engine"),
        ({"shard_size": 0}, ValueError, "shard_size"),
        (
            {"queries": {"no_such_query": {}}},
            ValueError,
            "Unknown query 'no_such_query' in `queries`",
        ),
        ({"queries": {"r_robustness": {"r": 1.0, "seed": 3}}}, ValueError, "seed"),
        ({"queries": {}}, ValueError, "empty"),
        ({"queries": {"a/b": {}}}, ValueError, "label"),
        ({"queries": 3}, TypeError, "queries"),
        ({"num_workers": 2}, ValueError, 'engine="ray"'),
        ({"seed": -1}, TypeError, "seed"),
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"overwrite": "yes"}, TypeError, "overwrite"),
        ({"progress": "yes"}, TypeError, "progress"),
    ],
)
def test_bad_arguments_are_refused(lg, tmp_path, kwargs, error, match):
    args = {"queries": {"r_robustness": {"r": 1.0}}, "out": tmp_path / "a.zarr", **kwargs}
    with pytest.raises(error, match=match):
        audit((lg.model, lg.guide), _x(lg, 3), **args)
    assert not (tmp_path / "a.zarr").exists()


def test_bad_models_data_and_groups_are_refused(lg, tmp_path):
    q = {"r_robustness": {"r": 1.0, "num_samples": 5}}
    with pytest.raises(FileNotFoundError, match=r"model\.pt"):
        audit(tmp_path / "nowhere", _x(lg, 3), queries=q, out=tmp_path / "a.zarr")
    with pytest.raises(TypeError, match="model_or_run"):
        audit(lg.model, _x(lg, 3), queries=q, out=tmp_path / "a.zarr")
    with pytest.raises(TypeError, match="data"):
        audit((lg.model, lg.guide), [1.0, 2.0], queries=q, out=tmp_path / "a.zarr")
    x = _x(lg, 4)
    x[2, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"`data` holds NaN or infinite values in 1 input\(s\) \(first: \[2\]\)"
    ):
        audit((lg.model, lg.guide), x, queries=q, out=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="kwargs\\['delta'\\]"):
        audit(
            (lg.model, lg.guide),
            _x(lg, 3),
            out=tmp_path / "a.zarr",
            queries={
                "q": Query(
                    "r_robustness", {"r": 1.0, "delta": torch.zeros(2, 6)}, per_input={"delta": 0}
                )
            },
        )
    with pytest.raises(ValueError, match="no result group 'sample_stats'"):
        audit(
            (lg.model, lg.guide),
            _x(lg, 3),
            out=tmp_path / "a.zarr",
            progress=False,
            queries={
                "q": Query("r_robustness", {"r": 1.0, "num_samples": 5}, groups=("sample_stats",))
            },
        )


def test_a_store_of_another_audit_is_not_resumed(lg, tmp_path):
    q = {"r_robustness": {"r": 1.0, "num_samples": 5}}
    out = tmp_path / "a.zarr"
    audit((lg.model, lg.guide), _x(lg, 3), queries=q, out=out, shard_size=2, seed=0, progress=False)
    for change in (
        {"seed": 1},
        {"shard_size": 3},
        {"queries": {"r_robustness": {"r": 2.0, "num_samples": 5}}},
    ):
        args = {"queries": q, "out": out, "shard_size": 2, "seed": 0, "progress": False, **change}
        with pytest.raises(ValueError, match="overwrite=True"):
            audit((lg.model, lg.guide), _x(lg, 3), **args)
    with pytest.raises(ValueError, match="data_sha256"):
        audit((lg.model, lg.guide), _x(lg, 3, seed=9), queries=q, out=out, shard_size=2, seed=0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("not a store")
    for overwrite in (False, True):  # other files are never deleted, overwrite or not
        with pytest.raises(ValueError, match="not a zarr store"):
            audit(
                (lg.model, lg.guide),
                _x(lg, 3),
                queries=q,
                out=tmp_path / "other",
                overwrite=overwrite,
            )
        assert (tmp_path / "other" / "file.txt").read_text() == "not a store"
    xr.Dataset({"a": ("i", [1, 2])}).to_zarr(tmp_path / "foreign.zarr", zarr_format=2)
    with pytest.raises(ValueError, match=r"not a pyrobust audit.*replaces only audit stores"):
        audit(
            (lg.model, lg.guide),
            _x(lg, 3),
            queries=q,
            out=tmp_path / "foreign.zarr",
            overwrite=True,
        )
    assert xr.open_zarr(tmp_path / "foreign.zarr")["a"].values.tolist() == [1, 2]


class _ConditionalLG(LinearGaussianVAE):
    """The linear-Gaussian VAE conditioned on a per-input label y (a CVAE-style shift)."""

    def model(self, x, y):
        super().model(x)

    def guide(self, x, y):
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.T + y[:, None]
            pyro.sample("z", dist.Normal(loc, self.s * torch.ones_like(loc)).to_event(1))


def test_per_input_model_args_follow_their_shard(tmp_path):
    vae = _ConditionalLG()
    x = _x(vae, 5)
    y = torch.arange(5, dtype=vae.dtype)
    kwargs = {"r": 0.5, "num_samples": 30, "model_args": (y,), "model_kwargs": {}}
    tree = audit(
        (vae.model, vae.guide),
        x,
        queries={"r_robustness": kwargs},
        out=tmp_path / "a.zarr",
        shard_size=2,
        seed=4,
        progress=False,
    )
    for s, start in enumerate(range(0, 5, 2)):
        ref = pr.r_robustness(
            vae.model,
            vae.guide,
            x[start : start + 2],
            r=0.5,
            num_samples=30,
            model_args=(y[start : start + 2],),
            seed=shard_seed(4, s),
        )
        _assert_same(
            _region(tree, "r_robustness/robustness", start, start + 2),
            ref["robustness"].to_dataset(),
        )


def test_docstring_examples_run():
    import doctest

    import pyrobust.robustness.audit as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.attempted >= 10 and result.failed == 0
