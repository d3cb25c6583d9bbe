"""Loaders for data files a user already has: the official dSprites ``.npz`` and IDX (MNIST).

Nothing here downloads. Every loader checks the file against its format and raises an error
that names the path and what was expected: :class:`FileNotFoundError` for a missing file,
:class:`ValueError` for a truncated, corrupt or wrong-format one.

* :func:`load_dsprites_npz` -- ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` of [1]_
  (keys ``imgs``, ``latents_classes``, ``latents_values``);
* :func:`load_idx` -- any IDX file [2]_, raw or gzip-compressed (detected from the content);
* :func:`load_mnist` -- the four MNIST [2]_ or Fashion-MNIST [3]_ files of a directory.

References
----------
.. [1] Matthey, Higgins, Hassabis, Lerchner. *dSprites: Disentanglement testing Sprites dataset*.
   https://github.com/deepmind/dsprites-dataset, 2017.
.. [2] LeCun, Bottou, Bengio, Haffner. *Gradient-based learning applied to document
   recognition*. Proc. IEEE 86(11), 1998. File format: http://yann.lecun.com/exdb/mnist/
.. [3] Xiao, Rasul, Vollgraf. *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
   Learning Algorithms*. arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DSpritesArrays", "load_dsprites_npz", "load_idx", "load_mnist"]

_DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
_DSPRITES_KEYS = ("imgs", "latents_classes", "latents_values")

# IDX type byte -> big-endian numpy dtype
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MAGIC_IMAGES = 2051  # 0x00000803: unsigned bytes, 3 dims (n, rows, cols)
_MAGIC_LABELS = 2049  # 0x00000801: unsigned bytes, 1 dim (n,)
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _as_path(path, arg: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{arg}` must be a str or os.PathLike; got {type(path).__name__}.")
    return Path(path)


def _require_file(path: Path, expected: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected {expected}.")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a regular file; expected {expected}.")


class DSpritesArrays(NamedTuple):
    """The arrays of a dSprites ``.npz`` file, as tensors.

    Attributes
    ----------
    images : torch.Tensor
        ``uint8`` of shape ``(n, 1, 64, 64)``, values in {0, 1} (kept as bytes: the full file is
        3 GB as bytes, 12 GB as float32; convert per batch with ``.float()``).
    latents_classes : LongTensor
        ``(n, 6)`` factor indices, as :meth:`pyrobust.data.DSprites.index_to_factors`.
    latents_values : torch.Tensor
        ``float64`` ``(n, 6)`` physical values, as :meth:`pyrobust.data.DSprites.factor_values`.
    """

    images: torch.Tensor
    latents_classes: torch.Tensor
    latents_values: torch.Tensor


def load_dsprites_npz(path, *, device=None) -> DSpritesArrays:
    """Load the official dSprites ``.npz`` file (or one of the same format).

    Parameters
    ----------
    path : str or os.PathLike
        The file, e.g. ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``. It must be a NumPy
        ``.npz`` archive with keys ``imgs`` ``(n, H, W)``, ``latents_classes`` ``(n, k)`` of
        integers and ``latents_values`` ``(n, k)``; other keys (the original's pickled
        ``metadata``) are ignored and never unpickled.
    device : torch.device or str, optional
        Where to put the tensors. Default CPU.

    Returns
    -------
    DSpritesArrays
        ``(images (n, 1, H, W) uint8, latents_classes (n, k) long, latents_values (n, k) float64)``.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file is not an ``.npz`` archive, is truncated or corrupt, lacks a key, or its arrays
        have inconsistent shapes.
    """
    path = _as_path(path)
    expected = (
        f"the dSprites NumPy archive ({_DSPRITES_FILE} from "
        f"https://github.com/deepmind/dsprites-dataset) with keys {list(_DSPRITES_KEYS)}"
    )
    _require_file(path, expected)
    corrupt = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    # open the file ourselves so that it is closed even when NumPy fails half-way
    with open(path, "rb") as fh:
        try:
            archive = np.load(fh, allow_pickle=False)
        except corrupt as err:
            raise ValueError(f"{str(path)!r} could not be read as {expected}: {err}") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{str(path)!r} holds a single NumPy array, not an .npz archive; expected "
                f"{expected}."
            )
        with archive:
            missing = [k for k in _DSPRITES_KEYS if k not in archive.files]
            if missing:
                raise ValueError(
                    f"{str(path)!r} lacks the keys {missing} (it has {archive.files}); expected "
                    f"{expected}."
                )
            try:
                arrays = {k: archive[k] for k in _DSPRITES_KEYS}
            except corrupt as err:
                raise ValueError(
                    f"{str(path)!r} is truncated or corrupt ({type(err).__name__}: {err}); "
                    f"expected {expected}. Download it again."
                ) from err
    imgs, classes, values = (arrays[k] for k in _DSPRITES_KEYS)
    if imgs.ndim != 3:
        raise ValueError(f"{str(path)!r}: `imgs` must have shape (n, H, W); got {imgs.shape}.")
    n = imgs.shape[0]
    for key, arr in (("latents_classes", classes), ("latents_values", values)):
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(
                f"{str(path)!r}: `{key}` must have shape (n, k) with n = {n} (the number of "
                f"images); got {arr.shape}."
            )
    if classes.shape != values.shape:
        raise ValueError(
            f"{str(path)!r}: `latents_classes` {classes.shape} and `latents_values` "
            f"{values.shape} must have the same shape."
        )
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"{str(path)!r}: `latents_classes` must hold integers; got dtype {classes.dtype}."
        )
    return DSpritesArrays(
        images=torch.from_numpy(np.ascontiguousarray(imgs, dtype=np.uint8)).unsqueeze(1).to(device),
        latents_classes=torch.from_numpy(classes.astype(np.int64)).to(device),
        latents_values=torch.from_numpy(values.astype(np.float64)).to(device),
    )


def _read_bytes(path: Path, expected: str) -> bytes:
    _require_file(path, expected)
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read()
            except (OSError, EOFError, zlib.error) as err:
                raise ValueError(
                    f"{str(path)!r} is a truncated or corrupt gzip file ({err}); expected "
                    f"{expected}."
                ) from err
        return fh.read()


def _parse_idx(path: Path, expected: str) -> tuple[int, np.ndarray]:
    raw = _read_bytes(path, expected)
    if len(raw) < 4:
        raise ValueError(
            f"{str(path)!r} is truncated: {len(raw)} bytes, shorter than the 4-byte IDX magic "
            f"number; expected {expected}."
        )
    zero, type_code, ndim = raw[:2], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero != b"\x00\x00" or type_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: magic number {magic} (0x{magic:08x}); an IDX "
            f"magic is 0x0000TTDD with type TT in "
            f"{[f'0x{t:02x}' for t in _IDX_TYPES]} and DD >= 1 dims (e.g. 2051 for images, "
            f"2049 for labels); expected {expected}."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{str(path)!r} is truncated: its header needs {header} bytes for {ndim} dims, the "
            f"file has {len(raw)}; expected {expected}."
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[type_code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < need:
        raise ValueError(
            f"{str(path)!r} is truncated: its header promises dims {dims} of {dtype.name} "
            f"({need} bytes of data), the file has {got}; expected {expected}."
        )
    if got > need:
        raise ValueError(
            f"{str(path)!r} has {got - need} bytes after the {need} promised by its header "
            f"(dims {dims} of {dtype.name}); it is not a well-formed IDX file; expected "
            f"{expected}."
        )
    array = np.frombuffer(raw, dtype=dtype, count=need // dtype.itemsize, offset=header)
    return magic, array.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def load_idx(path, *, device=None) -> torch.Tensor:
    """Read an IDX file (the MNIST format), raw or gzip-compressed.

    The format: a big-endian magic number ``0x0000TTDD`` (``TT`` the element type: 0x08
    uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64; ``DD`` the number of
    dimensions), ``DD`` big-endian uint32 sizes, then the elements in C order, big-endian.
    MNIST images are magic 2051 (uint8, 3 dims), labels 2049 (uint8, 1 dim). Compression is
    detected from the content (gzip magic ``1f 8b``), not from the name.

    Parameters
    ----------
    path : str or os.PathLike
    device : torch.device or str, optional
        Default CPU.

    Returns
    -------
    torch.Tensor
        The array with the file's dims and element type (uint8 for MNIST).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        Not an IDX file, truncated (header or data), trailing bytes, or corrupt gzip.
    """
    path = _as_path(path)
    _, array = _parse_idx(path, "an IDX file (magic 0x0000TTDD, big-endian dims, then data)")
    return torch.from_numpy(array).to(device)


def _find(root: Path, name: str) -> Path:
    candidates = [d / (name + ext) for d in (root, root / "raw") for ext in ("", ".gz")]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no {name!r} file in {str(root)!r}; looked for {[str(c) for c in candidates]}. Put the "
        f"MNIST or Fashion-MNIST IDX files (raw or .gz) there."
    )


def load_mnist(
    root, split: str = "train", *, device=None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST from the IDX files in a directory.

    Looks in ``root`` and ``root/raw`` (torchvision's layout) for
    ``{train,t10k}-images-idx3-ubyte`` and ``{train,t10k}-labels-idx1-ubyte``, raw or ``.gz``.
    Fashion-MNIST uses the same names and format, so this loads either.

    Parameters
    ----------
    root : str or os.PathLike
        Directory holding the files.
    split : {"train", "test"}, default "train"
    device : torch.device or str, optional
        Default CPU.
    dtype : torch.dtype, default float32
        Floating dtype of the images.

    Returns
    -------
    images : torch.Tensor
        ``(n, 1, rows, cols)`` (28x28 for MNIST), grey levels divided by 255, in [0, 1].
    labels : LongTensor
        ``(n,)``.

    Raises
    ------
    FileNotFoundError
        A file is missing (the message lists the paths tried).
    ValueError
        A file is not IDX, is truncated, has the wrong magic (images must be 2051, labels
        2049), or the image and label counts differ.
    """
    root = _as_path(root, "root")
    if split not in _MNIST_FILES:
        raise ValueError(f"`split` must be one of {list(_MNIST_FILES)}; got {split!r}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype; got {dtype!r}.")
    if not root.is_dir():
        raise FileNotFoundError(
            f"{str(root)!r} is not a directory; expected the directory holding the MNIST or "
            f"Fashion-MNIST IDX files."
        )
    img_name, lab_name = _MNIST_FILES[split]
    img_path, lab_path = _find(root, img_name), _find(root, lab_name)
    img_expected = f"an MNIST image file (IDX magic {_MAGIC_IMAGES}: uint8, dims (n, rows, cols))"
    lab_expected = f"an MNIST label file (IDX magic {_MAGIC_LABELS}: uint8, dims (n,))"
    img_magic, images = _parse_idx(img_path, img_expected)
    lab_magic, labels = _parse_idx(lab_path, lab_expected)
    for path, magic, want, expected in (
        (img_path, img_magic, _MAGIC_IMAGES, img_expected),
        (lab_path, lab_magic, _MAGIC_LABELS, lab_expected),
    ):
        if magic != want:
            raise ValueError(
                f"{str(path)!r} has IDX magic {magic} (0x{magic:08x}); expected {expected}."
            )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{str(img_path)!r} holds {images.shape[0]} images but {str(lab_path)!r} holds "
            f"{labels.shape[0]} labels; they must match (are they from the same split?)."
        )
    x = torch.from_numpy(images).to(device=device).unsqueeze(1).to(dtype).div_(255.0)
    y = torch.from_numpy(labels).to(device=device, dtype=torch.long)
    return x, y
