"""Files written by pyrobust never follow planted symlinks and never clobber what is not theirs."""

import os

import pytest

from pyrobust.analysis import report, save
from tests.analysis._fixtures import margin_tree


def test_report_follows_no_planted_symlink(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    other = tmp_path / "other.txt"
    other.write_text("also precious")
    # the old predictable temp name, and index.html itself, point at files of the victim
    (out / ".index.html.tmp").symlink_to(victim)
    (out / "index.html").symlink_to(other)
    path = report(margin_tree(), out)
    assert victim.read_text() == "precious" and other.read_text() == "also precious"
    assert not path.is_symlink() and "<html" in path.read_text()
    leftovers = sorted(p for p in os.listdir(out) if p != "index.html")
    assert leftovers == [".index.html.tmp"]  # the planted link itself, untouched


def test_report_refuses_a_file_as_out_dir(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    with pytest.raises(ValueError, match=r"out_dir .* is not a directory"):
        report(margin_tree(), target)
    assert target.read_text() == "keep"


def test_save_replaces_a_symlink_rather_than_writing_through_it(tmp_path):
    victim = tmp_path / "victim.nc"
    victim.write_bytes(b"precious")
    (tmp_path / "run.nc").symlink_to(victim)
    save(margin_tree(), tmp_path / "run.nc")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "run.nc").is_symlink()
