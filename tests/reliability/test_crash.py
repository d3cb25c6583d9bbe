"""Crash injection: kill -9 a process at random points of fit, save, save_model and report.

After every kill (issue 13, "Done when"):

* every final path holds a complete file that loads, equal to one of the versions written
  (never half-written, never a mix of two);
* nothing is lost: the result that was there before the killed write is still readable;
* a resumed ``fit`` ends bit for bit where an uninterrupted run ends;
* temporary files of the killed process are gone after the next run.

A kill lands at a random time (seeded) within the span of about two writes, so over many kills
every phase of a write is hit: serialising, flushing, renaming, cleaning up. The default run
kills a few times per target; ``-m slow`` repeats it many times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from pyrobust.analysis import load, report, save
from pyrobust.models import load_model, save_model
from tests.reliability import _crash_child as child

ROOT = Path(__file__).resolve().parents[2]
FEW, MANY = 1, 25


def _spawn(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._crash_child", *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen) -> str:
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"the child died on its own: {proc.stderr.read()[-2000:]}")
    return line


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: its pid is dead for the next run's cleanup
    proc.stdout.close()
    proc.stderr.close()


def _kill_during_writes(target: str, workdir: Path, rng: random.Random) -> None:
    """Start a child that rewrites its target in a loop; kill it at a random point of a write."""
    proc = _spawn(target, workdir)
    try:
        first = float(_line(proc).split()[2])
        second = float(_line(proc).split()[2])
        time.sleep(rng.uniform(0.0, 2.0 * max(second - first, 1e-3)))
    finally:
        _kill(proc)


def _same_groups(a: xr.DataTree, b: xr.DataTree) -> bool:
    """Same groups, values, dims, coords and attrs (but the creation time of each copy)."""

    def strip(ds):
        ds = ds.copy()
        ds.attrs.pop("created_at", None)
        return ds

    if set(a.children) != set(b.children):
        return False
    return all(strip(a[g].to_dataset()).identical(strip(b[g].to_dataset())) for g in a.children)


def _temps(directory: Path, name: str) -> list[str]:
    return sorted(p for p in os.listdir(directory) if p != name)


@pytest.mark.parametrize("fmt", ["nc", "zarr", "zarr-fallback"])
def test_kill_during_save(tmp_path, fmt):
    _kills_during_save(tmp_path, fmt, FEW, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nc", "zarr", "zarr-fallback"])
def test_kill_during_save_repeated(tmp_path, fmt):
    _kills_during_save(tmp_path, fmt, MANY, seed=1)


def _kills_during_save(tmp_path, fmt, kills, seed):
    rng = random.Random(seed)
    versions = [child.big_tree(1), child.big_tree(2)]
    path = save(versions[0], tmp_path / f"run.{fmt.split('-')[0]}")
    for _ in range(kills):
        _kill_during_writes(f"save-{fmt}", tmp_path, rng)
        back = load(path)  # puts back a store renamed aside, if the kill came between renames
        assert any(_same_groups(back, v) for v in versions), "a mixed or partial result"
    save(versions[0], path)
    assert _temps(tmp_path, path.name) == [], "temporary files of killed saves were left"
    assert _same_groups(load(path), versions[0])


def test_kill_during_save_model(tmp_path):
    _kills_during_save_model(tmp_path, FEW, seed=0)


@pytest.mark.slow
def test_kill_during_save_model_repeated(tmp_path):
    _kills_during_save_model(tmp_path, MANY, seed=1)


def _kills_during_save_model(tmp_path, kills, seed):
    rng = random.Random(seed)
    versions = [child.small_vae(1).state_dict(), child.small_vae(2).state_dict()]
    path = save_model(child.small_vae(1), tmp_path / "model.pt")
    for _ in range(kills):
        _kill_during_writes("save_model", tmp_path, rng)
        state = load_model(path).state_dict()
        assert any(all(torch.equal(state[k], v[k]) for k in v) for v in versions)
    save_model(child.small_vae(1), path)
    assert _temps(tmp_path, path.name) == []


def test_kill_during_report(tmp_path):
    _kills_during_report(tmp_path, FEW, seed=0)


@pytest.mark.slow
def test_kill_during_report_repeated(tmp_path):
    _kills_during_report(tmp_path, MANY, seed=1)


def _kills_during_report(tmp_path, kills, seed):
    from tests.analysis._fixtures import margin_tree

    rng = random.Random(seed)
    out = tmp_path / "report"
    report(margin_tree(seed=1), out)
    for _ in range(kills):
        _kill_during_writes("report", tmp_path, rng)
        text = (out / "index.html").read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and text.endswith("</body></html>")
    report(margin_tree(seed=1), out)
    assert _temps(out, "index.html") == []


# ---- fit with checkpoints: kill, resume, compare with an uninterrupted run --------------------

EPOCHS = 12


def _run_fit(workdir: Path, kill_after: float | None = None) -> float | None:
    """Run the training child; kill it ``kill_after`` s after it starts training (if given).
    Returns the training time if it finished, else None."""
    workdir.mkdir(exist_ok=True)
    proc = _spawn("fit", workdir, EPOCHS)
    try:
        assert _line(proc).strip() == "start"
        start = time.perf_counter()
        if kill_after is None:
            assert _line(proc).strip() == "end"
            proc.wait()
            return time.perf_counter() - start
        time.sleep(kill_after)
        finished = proc.poll() is not None
    finally:
        _kill(proc)
    return time.perf_counter() - start if finished and (workdir / "final.pt").exists() else None


def _check_checkpoints(ckpt: Path) -> None:
    """Every checkpoint at a final path loads; nothing half-written."""
    from pyrobust.inference import load_checkpoint

    for path in sorted(ckpt.glob("*.pt")):
        load_checkpoint(path)


def test_kill_during_fit_resumes_bit_identical(tmp_path):
    _kills_during_fit(tmp_path, FEW, seed=0)


@pytest.mark.slow
def test_kill_during_fit_resumes_bit_identical_repeated(tmp_path):
    _kills_during_fit(tmp_path, MANY // 3, seed=1)


def _kills_during_fit(tmp_path, kills, seed):
    rng = random.Random(seed)
    span = _run_fit(tmp_path / "reference")
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    work = tmp_path / "killed"
    for _ in range(kills):
        if _run_fit(work, kill_after=rng.uniform(0.0, span)) is not None:
            break
        if (work / "ckpt").exists():
            _check_checkpoints(work / "ckpt")
    if not (work / "final.pt").exists():
        assert _run_fit(work) is not None
    resumed = torch.load(work / "final.pt", weights_only=True)
    assert resumed["state"].keys() == reference["state"].keys()
    for k, v in reference["state"].items():
        assert torch.equal(resumed["state"][k], v), k
    np.testing.assert_array_equal(resumed["loss"].numpy(), reference["loss"].numpy())
    stray = [p.name for p in (work / "ckpt").iterdir() if p.name.endswith(".tmp")]
    assert stray == [], "temporary checkpoint files of killed runs were left"
