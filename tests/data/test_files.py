"""File loaders: small files of each format written here and read back, and every error case."""

import gzip
import struct

import numpy as np
import pytest
import torch

from pyrobust.data import DSprites, load_dsprites_npz, load_idx, load_mnist

IDX_TYPE = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
IDX_TYPE[np.float64] = 0x0E


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of an array: magic 0x0000TTDD, big-endian dims, big-endian data."""
    code = IDX_TYPE[array.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, compress: bool = False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def mnist_dir(root, n=7, rows=28, cols=28, compress=False, split="train"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if compress else ""
    write(root / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images), compress)
    write(root / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels), compress)
    return images, labels


def dsprites_npz(path, n=6, compressed=True):
    ds = DSprites()
    index = torch.arange(n) * 12_289
    factors = ds.index_to_factors(index)
    save = np.savez_compressed if compressed else np.savez
    save(
        path,
        imgs=ds.images(factors).squeeze(1).numpy().astype(np.uint8),
        latents_classes=factors.numpy(),
        latents_values=ds.factor_values(factors).numpy(),
    )
    return factors


# -- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(array), compress)
    out = load_idx(path)
    assert tuple(out.shape) == (3, 4, 5)
    np.testing.assert_array_equal(out.numpy(), array)  # big-endian decoded correctly


def test_idx_magic_numbers_of_mnist(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    labels = np.arange(2, dtype=np.uint8)
    assert int.from_bytes(idx_bytes(images)[:4], "big") == 2051
    assert int.from_bytes(idx_bytes(labels)[:4], "big") == 2049
    out = load_idx(write(tmp_path / "l", idx_bytes(labels)))
    assert out.dtype == torch.uint8 and out.tolist() == [0, 1]


def test_idx_errors_name_the_path(tmp_path):
    good = idx_bytes(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    missing = tmp_path / "missing.idx"
    with pytest.raises(FileNotFoundError, match=r"missing\.idx.*IDX"):
        load_idx(missing)
    cases = {
        "truncated_data": (good[:-3], "truncated.*48 bytes of data.*45"),
        "truncated_header": (good[:9], "truncated.*header needs 16 bytes"),
        "too_short": (good[:2], "truncated.*magic"),
        "trailing": (good + b"\0\0", "2 bytes after"),
        "not_idx": (b"PK\x03\x04" + good[4:], "not an IDX file.*magic number"),
        "bad_type": (b"\x00\x00\x07\x01" + good[4:], "not an IDX file"),
    }
    for name, (data, message) in cases.items():
        path = write(tmp_path / name, data)
        with pytest.raises(ValueError, match=message) as info:
            load_idx(path)
        assert str(path) in str(info.value)
    cut_gzip = write(tmp_path / "cut.gz", gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt gzip") as info:
        load_idx(cut_gzip)
    assert str(cut_gzip) in str(info.value)
    with pytest.raises(ValueError, match="not a regular file"):
        load_idx(tmp_path)
    with pytest.raises(TypeError, match="path"):
        load_idx(3)


# -- MNIST / Fashion-MNIST -------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_round_trip(tmp_path, compress):
    images, labels = mnist_dir(tmp_path, compress=compress, split="test")
    x, y = load_mnist(tmp_path, split="test")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x.squeeze(1) * 255, torch.from_numpy(images).float())
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.dtype == torch.long and y.tolist() == labels.tolist()


def test_mnist_torchvision_layout(tmp_path):
    (tmp_path / "raw").mkdir()
    mnist_dir(tmp_path / "raw", n=3, rows=5, cols=4, compress=True)
    x, y = load_mnist(tmp_path, dtype=torch.float64)
    assert x.shape == (3, 1, 5, 4) and x.dtype == torch.float64 and y.shape == (3,)


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*looked for"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="validation")
    # labels where the images should be: wrong magic
    _, labels = mnist_dir(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(labels))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic 2049.*expected.*2051"):
        load_mnist(tmp_path)
    # counts that disagree
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match=r"3 images but.*7 labels"):
        load_mnist(tmp_path)
    # a truncated file
    mnist_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


# -- dSprites .npz ---------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [True, False])
def test_dsprites_npz_round_trip_matches_the_procedural_grid(tmp_path, compressed):
    path = tmp_path / "dsprites.npz"
    factors = dsprites_npz(path, compressed=compressed)
    out = load_dsprites_npz(path)
    assert out.images.shape == (6, 1, 64, 64) and out.images.dtype == torch.uint8
    ds = DSprites()
    torch.testing.assert_close(out.images.float(), ds.images(factors), rtol=0, atol=0)
    torch.testing.assert_close(out.latents_classes, factors)
    torch.testing.assert_close(out.latents_values, ds.factor_values(factors))
    torch.testing.assert_close(ds.factors_to_index(out.latents_classes), torch.arange(6) * 12_289)


def test_dsprites_npz_ignores_a_pickled_metadata_key(tmp_path):
    path = tmp_path / "with_metadata.npz"
    np.savez(
        path,
        imgs=np.zeros((2, 64, 64), np.uint8),
        latents_classes=np.zeros((2, 6), np.int64),
        latents_values=np.zeros((2, 6)),
        metadata=np.array([{"title": "dSprites"}], dtype=object),
    )
    assert load_dsprites_npz(path).images.shape == (2, 1, 64, 64)


def test_dsprites_npz_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz.*dsprites_ndarray"):
        load_dsprites_npz(tmp_path / "nope.npz")
    good = tmp_path / "good.npz"
    dsprites_npz(good)
    cases = {}
    cases["truncated.npz"] = (good.read_bytes()[:-200], "could not be read|truncated")
    cases["text.npz"] = (b"this is not numpy\n" * 10, "could not be read")
    for name, (data, message) in cases.items():
        path = write(tmp_path / name, data)
        with pytest.raises(ValueError, match=message) as info:
            load_dsprites_npz(path)
        assert str(path) in str(info.value)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single NumPy array"):
        load_dsprites_npz(single)
    no_values = tmp_path / "no_values.npz"
    np.savez(no_values, imgs=np.zeros((2, 64, 64), np.uint8), latents_classes=np.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"lacks the keys \['latents_values'\]"):
        load_dsprites_npz(no_values)
    ragged = tmp_path / "ragged.npz"
    np.savez(
        ragged,
        imgs=np.zeros((2, 64, 64), np.uint8),
        latents_classes=np.zeros((3, 6), np.int64),
        latents_values=np.zeros((3, 6)),
    )
    with pytest.raises(ValueError, match="n = 2"):
        load_dsprites_npz(ragged)
    float_classes = tmp_path / "float_classes.npz"
    np.savez(
        float_classes,
        imgs=np.zeros((2, 64, 64), np.uint8),
        latents_classes=np.zeros((2, 6)),
        latents_values=np.zeros((2, 6)),
    )
    with pytest.raises(ValueError, match="integers"):
        load_dsprites_npz(float_classes)
