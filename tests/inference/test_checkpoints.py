"""Checkpoints: the sidecar is bound to its .pt, no predictable temp names, stale temps are
cleaned, damaged files raise a named error (issue 13 items 9 and 12)."""

from __future__ import annotations

import hashlib
import json
import os

import pyro
import pytest
import torch

from pyrobust.inference import fit, load_checkpoint, save_checkpoint
from tests.inference._models import MLPPair, binary_data

X = binary_data(32)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sidecar_carries_the_hash_of_its_checkpoint(tmp_path):
    fit(MLPPair(), X, epochs=2, batch_size=16, checkpoint_dir=tmp_path)
    for name in ("last", "best"):
        meta = json.loads((tmp_path / f"{name}.pt.json").read_text())
        assert meta["sha256"] == _sha(tmp_path / f"{name}.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["metadata"]["epoch"] == 2 and state["metadata"]["step"] == 4


def test_a_kill_between_the_two_renames_leaves_a_sidecar_that_load_repairs(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    pyro.param("w", torch.ones(2))
    save_checkpoint(path, metadata={"epoch": 1})
    old_sidecar = (tmp_path / "last.pt.json").read_text()
    pyro.param("w").data.fill_(2.0)
    real_replace = os.replace

    def killed_at_the_sidecar(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt  # the process dies here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, metadata={"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    # the new .pt is in place, the sidecar still describes the old one; no temp file is left
    assert (tmp_path / "last.pt.json").read_text() == old_sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.json"]
    assert json.loads(old_sidecar)["sha256"] != _sha(path)
    state = load_checkpoint(path)
    assert torch.equal(state["params"]["w"], torch.full((2,), 2.0))
    assert state["metadata"]["epoch"] == 2
    meta = json.loads((tmp_path / "last.pt.json").read_text())
    assert meta["epoch"] == 2 and meta["sha256"] == _sha(path)


def test_planted_symlinks_at_old_temp_names_are_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in (f".last.pt.{os.getpid()}.tmp", f".last.pt.json.{os.getpid()}.tmp"):
        (ckpt / name).symlink_to(victim)
    fit(MLPPair(), X, epochs=1, batch_size=16, checkpoint_dir=ckpt)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best.pt",
        "best.pt.json",
        "last.pt",
        "last.pt.json",
    ]


def test_stale_temp_files_of_killed_runs_are_cleaned_by_the_next_run(tmp_path):
    stale = [".last.pt.k3j2_x1.tmp", ".best.pt.json.a8b9.tmp", ".last.pt.4242.tmp"]
    keep = ["notes.txt", ".hidden.tmp", "my.pt"]
    for name in stale + keep:
        (tmp_path / name).write_bytes(b"x" * 10)
    fit(MLPPair(), X, epochs=1, batch_size=16, checkpoint_dir=tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(stale)
    assert set(keep) <= names


@pytest.mark.parametrize(
    "damage",
    ["truncate", "garbage", "empty", "not_a_dict", "wrong_layout", "bad_param"],
)
def test_damaged_checkpoints_raise_a_named_error(tmp_path, damage):
    fit(MLPPair(), X, epochs=1, batch_size=16, checkpoint_dir=tmp_path)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(2048))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], path)
    elif damage == "wrong_layout":
        torch.save({"format": 1, "params": {}, "rng": [], "extra": {}}, path)
    else:
        state = torch.load(path, weights_only=True)
        state["params"]["t_enc$$$0.weight"] = "not a tensor"
        torch.save(state, path)
    with pytest.raises(ValueError, match=rf"{str(path)!r} is not a readable pyrobust checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not a readable pyrobust checkpoint"):
        fit(MLPPair(), X, epochs=2, batch_size=16, checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_without_resume_state_is_named(tmp_path):
    pyro.param("w", torch.ones(2))
    path = save_checkpoint(tmp_path / "last.pt")
    with pytest.raises(ValueError, match="has no 'epoch' to resume from"):
        fit(MLPPair(), X, epochs=2, batch_size=16, checkpoint_dir=tmp_path, resume=path)
