r"""Procedural dSprites: the exact factor grid of [1]_, rendered lazily from factor indices.

dSprites is the standard benchmark of disentanglement [2]_: every image has known ground-truth
factors, so a representation can be scored against them. The original data set holds one
64x64 binary image for every combination of six ground-truth factors (its
``latents_classes`` / ``latents_values`` columns):

==============  ====  =============================================
factor          size  values (``latents_values``)
==============  ====  =============================================
``color``          1  1 (white)
``shape``          3  1, 2, 3 (square, ellipse, heart)
``scale``          6  ``linspace(0.5, 1, 6)``
``orientation``   40  ``linspace(0, 2*pi, 40)`` (radians; both ends)
``posX``          32  ``linspace(0, 1, 32)``
``posY``          32  ``linspace(0, 1, 32)``
==============  ====  =============================================

so :math:`1 \cdot 3 \cdot 6 \cdot 40 \cdot 32 \cdot 32 = 737{,}280` images, in the original's order:
the flat index of factor indices :math:`f = (f_1, \dots, f_6)` is the C-order (row-major)
index :math:`\mathrm{index}(f) = \sum_k f_k \prod_{l > k} n_l` with :math:`n` the factor sizes.

Rendering (our choice; the original's renderer is not published)
----------------------------------------------------------------
Every shape is drawn in a body frame inside the unit disc and then scaled by
:math:`R = 13\,\mathrm{px} \times \mathrm{scale}`, so no orientation ever leaves a disc of
13 pixels at scale 1:

* square: :math:`\max(|u|, |v|) \le 1/\sqrt 2` (side 18.4 px = 0.29 of the canvas at scale 1);
* ellipse: :math:`u^2 + (2v)^2 \le 1` (26 x 13 px at scale 1, long axis along x at orientation 0);
* heart: :math:`(a^2 + b^2 - 1)^3 - a^2 b^3 \le 0` with :math:`(a, b) = 1.25\,(u, v) + (0, 0.25)`,
  i.e. the classic heart curve centred on its smallest enclosing disc (23.7 px wide at scale 1),
  upright at orientation 0.

A body point :math:`(u, v)` is mapped to the canvas by a counter-clockwise rotation by the
orientation angle (counter-clockwise as displayed, x to the right, y up on screen), the
scaling :math:`R` and a translation to the centre :math:`(c_x, c_y)`. A pixel is on when its
centre is inside the shape (point sampling, so a square at orientation 0 is an exact filled
square of pixels). The centre of the shape is on a pixel corner,

.. math::

    c = \operatorname{round}\bigl(14 + 36\,\mathrm{pos}\bigr) \in \{14, \dots, 50\}\ \mathrm{px},

i.e. it moves over [0.22, 0.78] of the canvas in 32 strictly increasing integer steps (1 or 2
pixels), so every sprite stays inside the canvas with at least one empty border pixel, as in
the original. ``posX`` moves the sprite to the right (column index grows), ``posY`` moves it
down (row index grows, as in image arrays).

Speed: the :math:`3 \cdot 6 \cdot 40 = 720` (shape, scale, orientation) masks are evaluated once,
on the CPU in float64, into zero-padded canvases and copied once per device and dtype (so every
device gets bit-identical images); an image is then a 64x64 window of its mask at an integer
offset, read for a whole batch by one ``index_select`` over a strided view of all windows
(pass ``out=`` to reuse a buffer). No Python loop runs per image.

References
----------
.. [1] Matthey, Higgins, Hassabis, Lerchner. *dSprites: Disentanglement testing Sprites dataset*.
   https://github.com/deepmind/dsprites-dataset, 2017.
.. [2] Higgins et al. *beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
   Framework*. ICLR 2017.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["DSprites", "DSpritesDataset"]

_FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
_FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
_SHAPE_NAMES = ("square", "ellipse", "heart")

_CANVAS = 64  # image side in pixels
_RADIUS = 13.0  # px: every shape fits a disc of this radius at scale 1
_MARGIN = 14  # px: smallest centre coordinate (corner units); the largest is _CANVAS - _MARGIN
_HALF = 14  # px: half side of the patch each mask is rendered in (>= ceil(_RADIUS))
_SPAN = _CANVAS - 2 * _MARGIN  # px the centre travels over pos in [0, 1]
_TABLE = _CANVAS + _SPAN  # side of each zero-padded mask canvas
_TABLE_CENTRE = _CANVAS - _MARGIN  # where each mask's centre sits in its padded canvas

_MASK_CACHE: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def _strides(sizes: Sequence[int]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(sizes):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


_FACTOR_STRIDES = _strides(_FACTOR_SIZES)
_NUM_IMAGES = math.prod(_FACTOR_SIZES)


def _factor_grids(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """The physical value of every level of every factor, as the original's ``latents_values``."""
    return (
        torch.ones(1, dtype=dtype),
        torch.arange(1, 4, dtype=dtype),
        torch.linspace(0.5, 1.0, 6, dtype=dtype),
        torch.linspace(0.0, 2.0 * math.pi, 40, dtype=dtype),
        torch.linspace(0.0, 1.0, 32, dtype=dtype),
        torch.linspace(0.0, 1.0, 32, dtype=dtype),
    )


def _centre_pixels() -> torch.Tensor:
    """Integer centre coordinate (pixel-corner units) for each of the 32 position levels."""
    pos = torch.linspace(0.0, 1.0, 32, dtype=torch.float64)
    return torch.floor(_MARGIN + _SPAN * pos + 0.5).long()


def _inside(shape: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of body-frame points (unit disc) in each shape (``shape`` broadcasts)."""
    square = torch.maximum(u.abs(), v.abs()) <= 1.0 / math.sqrt(2.0)
    ellipse = u.square() + (2.0 * v).square() <= 1.0
    a, b = 1.25 * u, 1.25 * v + 0.25
    heart = (a.square() + b.square() - 1.0) ** 3 - a.square() * b**3 <= 0.0
    return torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))


def _render_masks() -> torch.Tensor:
    """Render the 720 (shape, scale, orientation) masks into zero-padded canvases, on the CPU.

    Returns a uint8 tensor ``(720, _TABLE, _TABLE)`` in {0, 1} (the geometry is evaluated in
    float64); the shape centre sits on the pixel corner ``(_TABLE_CENTRE, _TABLE_CENTRE)``.
    """
    _, _, scales, angles, _, _ = _factor_grids(torch.float64)
    s = torch.arange(3).view(3, 1, 1, 1, 1)
    radius = (_RADIUS * scales).view(1, 6, 1, 1, 1)
    theta = angles.view(1, 1, 40, 1, 1)
    # pixel-centre coordinates relative to the shape centre (pixel units, x right, y up)
    coord = torch.arange(-_HALF, _HALF, dtype=torch.float64) + 0.5
    x = coord.view(1, -1)  # columns
    y = -coord.view(-1, 1)  # rows grow downwards, y grows upwards
    cos, sin = torch.cos(theta), torch.sin(theta)
    # the inverse rotation (by -theta) and scaling take canvas offsets to the body frame
    u = (cos * x + sin * y) / radius
    v = (-sin * x + cos * y) / radius
    side = 2 * _HALF
    patches = _inside(s, u, v).to(torch.uint8).reshape(720, side, side)
    table = torch.zeros(720, _TABLE, _TABLE, dtype=torch.uint8)
    lo = _TABLE_CENTRE - _HALF
    table[:, lo : lo + side, lo : lo + side] = patches
    return table


def _mask_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The padded mask table on ``device`` in ``dtype``, rendered once and cached."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), dtype)
    table = _MASK_CACHE.get(key)
    if table is None:
        master = _MASK_CACHE.get(("cpu", torch.uint8))
        if master is None:
            master = _render_masks()
            _MASK_CACHE[("cpu", torch.uint8)] = master
        table = master.to(device=device, dtype=dtype).contiguous()
        _MASK_CACHE[key] = table
    return table


def _check_factors(factors, arg: str = "factors") -> torch.Tensor:
    """Validate an integer array of factor indices with last dim 6; return it as a LongTensor."""
    if not isinstance(factors, torch.Tensor):
        try:
            factors = torch.as_tensor(factors)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`{arg}` must be an integer tensor of shape (..., 6) of factor indices; got an "
                f"object of type {type(factors).__name__} that torch cannot convert ({err})."
            ) from None
    if factors.dtype.is_floating_point or factors.dtype.is_complex or factors.dtype == torch.bool:
        raise TypeError(
            f"`{arg}` must hold integer factor indices (levels 0..size-1, as the original's "
            f"`latents_classes`), got dtype {factors.dtype}. Convert physical values with "
            f"the grid of `DSprites.factor_grid`, or cast indices with `.long()`."
        )
    if factors.dim() == 0 or factors.shape[-1] != len(_FACTOR_SIZES):
        raise ValueError(
            f"`{arg}` must have shape (..., 6), one column per factor {_FACTOR_NAMES}; got shape "
            f"{tuple(factors.shape)}."
        )
    factors = factors.long()
    sizes = torch.tensor(_FACTOR_SIZES, device=factors.device)
    bad = (factors < 0) | (factors >= sizes)
    if factors.numel() and bool(bad.any()):
        col = int(bad.reshape(-1, 6).any(0).nonzero()[0])
        got = factors.reshape(-1, 6)[:, col]
        raise ValueError(
            f"`{arg}` column {col} ({_FACTOR_NAMES[col]!r}) must lie in "
            f"0..{_FACTOR_SIZES[col] - 1}; "
            f"got values in {int(got.min())}..{int(got.max())}. Factor sizes are {_FACTOR_SIZES}."
        )
    return factors


def _check_index(index, arg: str = "index") -> torch.Tensor:
    """Validate flat image indices in [0, 737280); return them as a LongTensor."""
    if not isinstance(index, torch.Tensor):
        index = torch.as_tensor(index)
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(
            f"`{arg}` must hold integer image indices in 0..{_NUM_IMAGES - 1}, got dtype "
            f"{index.dtype}; cast with `.long()`."
        )
    index = index.long()
    if index.numel() and bool(((index < 0) | (index >= _NUM_IMAGES)).any()):
        raise ValueError(
            f"`{arg}` must lie in 0..{_NUM_IMAGES - 1} (the dSprites grid has {_NUM_IMAGES} "
            f"images); got values in {int(index.min())}..{int(index.max())}."
        )
    return index


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"`dtype` must be a floating torch.dtype such as torch.float32; got {dtype!r}."
        )
    return dtype


class DSprites:
    r"""The dSprites ground truth: factor grid, index maps and lazy vectorised rendering.

    Nothing is stored but the 720 masks (rendered on first use, about 7 M numbers per device
    and dtype); every image is computed on demand from its factor indices, deterministically.
    See the module docstring for the exact geometry.

    Attributes
    ----------
    factor_names : tuple of str
        ``("color", "shape", "scale", "orientation", "posX", "posY")``, the original's columns.
    factor_sizes : tuple of int
        ``(1, 3, 6, 40, 32, 32)``.
    num_factors : int
        6.
    shape_names : tuple of str
        ``("square", "ellipse", "heart")`` for shape levels 0, 1, 2 (values 1, 2, 3).
    image_shape : tuple of int
        ``(1, 64, 64)``.

    Examples
    --------
    >>> ds = DSprites()
    >>> len(ds)
    737280
    >>> f = ds.sample_factors(4, seed=0)
    >>> ds.images(f).shape
    torch.Size([4, 1, 64, 64])
    >>> i = ds.factors_to_index(f)
    >>> torch.equal(ds.index_to_factors(i), f)
    True
    >>> ds.factor_values(torch.tensor([0, 2, 5, 0, 31, 0])).tolist()
    [1.0, 3.0, 1.0, 0.0, 1.0, 0.0]
    """

    factor_names: tuple[str, ...] = _FACTOR_NAMES
    factor_sizes: tuple[int, ...] = _FACTOR_SIZES
    num_factors: int = len(_FACTOR_SIZES)
    shape_names: tuple[str, ...] = _SHAPE_NAMES
    image_shape: tuple[int, int, int] = (1, _CANVAS, _CANVAS)

    def __len__(self) -> int:
        return _NUM_IMAGES

    def __repr__(self) -> str:
        return f"DSprites(factor_names={self.factor_names}, factor_sizes={self.factor_sizes})"

    # -- factors -----------------------------------------------------------------------------

    def factor_grid(self, factor: int | str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The physical values of every level of one factor, e.g. ``linspace(0.5, 1, 6)`` for scale.

        Parameters
        ----------
        factor : int or str
            Column number (0..5) or name from :attr:`factor_names`.
        dtype : torch.dtype, default float64

        Returns
        -------
        torch.Tensor
            Shape ``(factor_sizes[factor],)``.
        """
        if isinstance(factor, str):
            if factor not in _FACTOR_NAMES:
                raise ValueError(f"`factor` must be one of {_FACTOR_NAMES}; got {factor!r}.")
            factor = _FACTOR_NAMES.index(factor)
        if isinstance(factor, bool) or not isinstance(factor, int):
            raise TypeError(f"`factor` must be an int or a name; got {type(factor).__name__}.")
        if not 0 <= factor < len(_FACTOR_SIZES):
            raise ValueError(f"`factor` must be in 0..{len(_FACTOR_SIZES) - 1}; got {factor}.")
        return _factor_grids(_check_dtype(dtype))[factor]

    def factor_values(self, factors, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Map factor indices to physical values (``latents_classes`` to ``latents_values``).

        Parameters
        ----------
        factors : LongTensor, shape (..., 6)
            Factor indices.
        dtype : torch.dtype, default float64

        Returns
        -------
        torch.Tensor
            Shape ``(..., 6)`` on ``factors``' device: colour 1, shape 1..3, scale in [0.5, 1],
            orientation in [0, 2 pi] (radians), posX and posY in [0, 1].
        """
        factors = _check_factors(factors)
        dtype = _check_dtype(dtype)
        cols = [
            grid.to(factors.device)[factors[..., k]] for k, grid in enumerate(_factor_grids(dtype))
        ]
        return torch.stack(cols, dim=-1)

    def index_to_factors(self, index) -> torch.Tensor:
        r"""Factor indices of flat image indices: :math:`f_k = \lfloor i / s_k \rfloor \bmod n_k`.

        :math:`n_k` are the factor sizes and :math:`s_k = \prod_{l > k} n_l` the row-major strides
        ``(737280, 245760, 40960, 1024, 32, 1)``, the order of the original file.

        Parameters
        ----------
        index : LongTensor, shape (...)
            Flat indices in ``0..737279`` (the original's row order).

        Returns
        -------
        LongTensor
            Shape ``(..., 6)`` on ``index``' device.
        """
        index = _check_index(index)
        strides = torch.tensor(_FACTOR_STRIDES, device=index.device)
        sizes = torch.tensor(_FACTOR_SIZES, device=index.device)
        return torch.div(index.unsqueeze(-1), strides, rounding_mode="floor") % sizes

    def factors_to_index(self, factors) -> torch.Tensor:
        r"""Flat image indices of factor indices: :math:`i = \sum_k f_k s_k` (row-major strides).

        Parameters
        ----------
        factors : LongTensor, shape (..., 6)

        Returns
        -------
        LongTensor
            Shape ``(...)`` on ``factors``' device.
        """
        factors = _check_factors(factors)
        strides = torch.tensor(_FACTOR_STRIDES, device=factors.device)
        return (factors * strides).sum(-1)

    def sample_factors(self, n: int, seed: int | None = None, device=None) -> torch.Tensor:
        """Draw ``n`` factor-index rows, each factor uniform and independent over its levels.

        Parameters
        ----------
        n : int
            Number of rows (>= 0).
        seed : int, optional
            Seed of a local generator: the same seed gives the same factors on every device.
            ``None`` draws from torch's global generator (seeded by ``pyro.set_rng_seed``).
        device : torch.device or str, optional
            Where to put the result (drawn on the CPU, then moved). Default CPU.

        Returns
        -------
        LongTensor
            Shape ``(n, 6)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"`n` must be a non-negative int; got {n!r}.")
        gen = None
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"`seed` must be an int or None; got {type(seed).__name__}.")
            gen = torch.Generator().manual_seed(seed)
        index = torch.randint(0, _NUM_IMAGES, (n,), generator=gen)
        return self.index_to_factors(index).to(device if device is not None else "cpu")

    # -- images ------------------------------------------------------------------------------

    def images(
        self,
        factors,
        device=None,
        dtype: torch.dtype | None = None,
        *,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""Render the images of factor indices.

        Image :math:`b` is the 64x64 window of mask :math:`m_b = (f_{b,1} \cdot 6 + f_{b,2})
        \cdot 40 + f_{b,3}` whose top-left corner sits at the integer offset that puts the
        shape centre on :math:`(c(f_{b,4}), c(f_{b,5}))` (module docstring); a batch is one
        ``index_select`` of these windows out of a strided view of the cached mask table.

        Parameters
        ----------
        factors : LongTensor, shape (..., 6)
            Factor indices (levels, not physical values).
        device : torch.device or str, optional
            Where to render. Default: the device of ``factors`` (CPU for non-tensors), or of
            ``out`` when given.
        dtype : torch.dtype, optional
            Floating dtype of the images. Default float32 (``out``'s dtype when given).
        out : torch.Tensor, optional
            A contiguous tensor of shape ``(..., 1, 64, 64)`` to write the images into. Reusing
            one buffer across batches saves allocating (and, for large batches, page-faulting)
            fresh memory on every call, which dominates the cost on a CPU.

        Returns
        -------
        torch.Tensor
            Shape ``(..., 1, 64, 64)``, values in {0, 1} (``out`` itself when given).
        """
        factors = _check_factors(factors)
        if out is not None:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"`out` must be a torch.Tensor; got {type(out).__name__}.")
            want = (*factors.shape[:-1], *self.image_shape)
            if tuple(out.shape) != want or not out.is_contiguous():
                raise ValueError(
                    f"`out` must be a contiguous tensor of shape {want}; got shape "
                    f"{tuple(out.shape)} (contiguous: {out.is_contiguous()}). Allocate it with "
                    f"`torch.empty({want})`."
                )
            if dtype is not None and dtype != out.dtype:
                raise ValueError(f"`dtype` {dtype} conflicts with `out.dtype` {out.dtype}.")
            if device is not None and torch.device(device) != out.device:
                raise ValueError(f"`device` {device} conflicts with `out.device` {out.device}.")
            dtype, device = out.dtype, out.device
        dtype = _check_dtype(torch.float32 if dtype is None else dtype)
        device = factors.device if device is None else torch.device(device)
        f = factors.to(device).reshape(-1, 6)
        mask = (f[:, 1] * 6 + f[:, 2]) * 40 + f[:, 3]
        centre = _centre_pixels().to(device)
        off_x = _TABLE_CENTRE - centre[f[:, 4]]
        off_y = _TABLE_CENTRE - centre[f[:, 5]]
        offset = mask * (_TABLE * _TABLE) + off_y * _TABLE + off_x
        table = _mask_table(device, dtype)
        # every 64x64 window of the flat table, one per starting element (a view: no copy)
        last = table.numel() - (_CANVAS - 1) * (_TABLE + 1)
        windows = table.view(-1).as_strided((last, _CANVAS, _CANVAS), (1, _TABLE, 1))
        if out is None:
            images = torch.index_select(windows, 0, offset)
            return images.reshape(*factors.shape[:-1], *self.image_shape)
        torch.index_select(windows, 0, offset, out=out.view(-1, _CANVAS, _CANVAS))
        return out

    def images_from_index(self, index, device=None, dtype: torch.dtype | None = None, *, out=None):
        """Render the images of flat indices; ``images(index_to_factors(index))``.

        Parameters
        ----------
        index : LongTensor, shape (...)
        device, dtype, out
            As in :meth:`images`.

        Returns
        -------
        torch.Tensor
            Shape ``(..., 1, 64, 64)``, values in {0, 1}.
        """
        return self.images(self.index_to_factors(index), device=device, dtype=dtype, out=out)


class DSpritesDataset(Dataset):
    """A torch ``Dataset`` over any subset of the dSprites grid, rendered on access.

    Parameters
    ----------
    indices : LongTensor or sequence of int, optional
        Flat indices (``0..737279``) of the images in the subset, in order. Default: all.
    return_factors : bool, default True
        Items are ``(image, factors)`` when true, ``image`` alone otherwise.
    device : torch.device or str, optional
        Where images and factors are rendered. Default CPU.
    dtype : torch.dtype, default float32

    Notes
    -----
    ``dataset[i]`` gives one item (image ``(1, 64, 64)``, factors ``(6,)``); ``dataset[idx]``
    with a LongTensor, list or slice gives a whole batch at once (images ``(b, 1, 64, 64)``),
    rendered in one vectorised call: prefer it (or :func:`pyrobust.data.minibatches`) over a
    ``DataLoader`` that collates single items.

    Examples
    --------
    >>> from pyrobust.data import train_test_split
    >>> train_idx, test_idx = train_test_split(737280, test_fraction=0.1, seed=0)
    >>> train = DSpritesDataset(train_idx, return_factors=False)
    >>> train[torch.arange(8)].shape
    torch.Size([8, 1, 64, 64])
    """

    def __init__(
        self,
        indices=None,
        *,
        return_factors: bool = True,
        device=None,
        dtype: torch.dtype = torch.float32,
    ):
        self.dsprites = DSprites()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = _check_dtype(dtype)
        if indices is None:
            self.indices = None
        else:
            idx = _check_index(indices, "indices")
            if idx.dim() != 1:
                raise ValueError(
                    f"`indices` must be one-dimensional; got shape {tuple(idx.shape)}. "
                    f"Flatten it with `.reshape(-1)`."
                )
            self.indices = idx.to(self.device)
        self.return_factors = bool(return_factors)

    def __len__(self) -> int:
        return _NUM_IMAGES if self.indices is None else int(self.indices.shape[0])

    def __repr__(self) -> str:
        return (
            f"DSpritesDataset(len={len(self)}, return_factors={self.return_factors}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    def _flat(self, positions: torch.Tensor) -> torch.Tensor:
        n = len(self)
        if positions.numel() and bool(((positions < -n) | (positions >= n)).any()):
            raise IndexError(f"index out of range for a DSpritesDataset of length {n}.")
        positions = positions % n if n else positions
        return positions if self.indices is None else self.indices[positions]

    def __getitem__(self, item):
        if isinstance(item, slice):
            positions = torch.arange(len(self), device=self.device)[item]
        elif isinstance(item, (int, torch.Tensor)) or hasattr(item, "__index__"):
            positions = torch.as_tensor(item, device=self.device)
            if positions.dtype.is_floating_point or positions.dtype == torch.bool:
                raise TypeError(f"DSpritesDataset indices must be integers; got {positions.dtype}.")
            positions = positions.long()
        else:
            positions = torch.as_tensor(list(item), dtype=torch.long, device=self.device)
        factors = self.dsprites.index_to_factors(self._flat(positions))
        images = self.dsprites.images(factors, dtype=self.dtype)
        return (images, factors) if self.return_factors else images

    def factors(self) -> torch.Tensor:
        """Factor indices of the whole subset, ``(len, 6)``; cheap (no rendering)."""
        index = self.indices if self.indices is not None else torch.arange(_NUM_IMAGES)
        return self.dsprites.index_to_factors(index.to(self.device))
