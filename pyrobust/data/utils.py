"""Deterministic splits and minibatching to tensors on a device.

Two helpers every training and evaluation loop needs, and nothing more:

* :func:`train_test_split` -- a seeded random split of ``n`` items (or of a tensor's rows);
* :func:`minibatches` -- an iterable of minibatches (seeded shuffle; ``len`` is the number of
  batches per epoch) of tensors or a :class:`~pyrobust.data.DSpritesDataset`, moved to a device
  batch by batch.

Random permutations are drawn on the CPU from a local :class:`torch.Generator`, so the same
seed gives the same split and the same batch order on every device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, TensorDataset

from pyrobust.data.dsprites import DSpritesDataset

__all__ = ["minibatches", "train_test_split"]


def _generator(seed, arg: str = "seed") -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(
                f"`{arg}` must be a CPU torch.Generator (permutations are drawn on the CPU so "
                f"every device gets the same order); got one on {seed.device}."
            )
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"`{arg}` must be an int, a CPU torch.Generator or None; got {type(seed).__name__}."
        )
    return torch.Generator().manual_seed(seed)


def _length(data, arg: str = "data") -> int:
    if isinstance(data, torch.Tensor):
        if data.dim() == 0:
            raise ValueError(f"`{arg}` must have a leading data dimension; got a 0-d tensor.")
        return int(data.shape[0])
    if isinstance(data, (tuple, list)):
        if not data or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in data):
            raise TypeError(
                f"`{arg}` as a tuple/list must hold one or more tensors with a leading data "
                f"dimension; got {[type(t).__name__ for t in data]}."
            )
        lengths = {int(t.shape[0]) for t in data}
        if len(lengths) != 1:
            raise ValueError(
                f"the tensors in `{arg}` must share their first dimension; got lengths "
                f"{[int(t.shape[0]) for t in data]}."
            )
        return lengths.pop()
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)
    raise TypeError(
        f"`{arg}` must be a tensor, a tuple/list of tensors or a sized torch Dataset; got "
        f"{type(data).__name__}."
    )


def train_test_split(
    n_or_tensor, test_fraction: float = 0.2, seed: int | torch.Generator | None = 0
):
    r"""Split ``n`` items (or a tensor's rows) at random into a train and a test part.

    A uniformly random permutation :math:`\pi` of :math:`\{0, \dots, n-1\}` is drawn from a
    generator seeded with ``seed``; the first :math:`n_\text{test} = \lceil n \cdot
    \text{test\_fraction} \rceil` positions of :math:`\pi` form the test part, the rest the
    train part. Both index sets are returned sorted, so that splitting a lazily rendered data set
    reads it in order. The same seed gives the same split on every device.

    Parameters
    ----------
    n_or_tensor : int, torch.Tensor or tuple of torch.Tensor
        A number of items, a tensor split along its first dimension, or several tensors of the
        same length split alike (e.g. ``(images, labels)``).
    test_fraction : float, default 0.2
        Fraction of items in the test part, in ``[0, 1]``.
    seed : int, CPU torch.Generator or None, default 0
        Seed of the permutation; ``None`` uses torch's global generator.

    Returns
    -------
    (train, test)
        For an int: two sorted LongTensors of indices (CPU). For a tensor: the two row subsets,
        on the tensor's device. For a tuple of tensors: two tuples of row subsets.

    Examples
    --------
    >>> train_idx, test_idx = train_test_split(10, test_fraction=0.3, seed=0)
    >>> len(train_idx), len(test_idx)
    (7, 3)
    >>> x = torch.arange(10.0)
    >>> x_train, x_test = train_test_split(x, 0.3, seed=0)
    >>> bool((x_test == test_idx.double()).all())
    True
    """
    if isinstance(n_or_tensor, bool):
        raise TypeError("`n_or_tensor` must be an int or tensor(s); got a bool.")
    if isinstance(n_or_tensor, int):
        if n_or_tensor < 0:
            raise ValueError(f"`n_or_tensor` as a count must be >= 0; got {n_or_tensor}.")
        n = n_or_tensor
    elif isinstance(n_or_tensor, (torch.Tensor, tuple, list)):
        n = _length(n_or_tensor, "n_or_tensor")
    else:
        raise TypeError(
            f"`n_or_tensor` must be an int, a tensor or a tuple of tensors; got "
            f"{type(n_or_tensor).__name__}."
        )
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"`test_fraction` must be a float; got {type(test_fraction).__name__}.")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise ValueError(f"`test_fraction` must lie in [0, 1]; got {test_fraction}.")
    gen = _generator(seed)
    n_test = math.ceil(round(n * float(test_fraction), 6))
    perm = torch.randperm(n, generator=gen)
    test_idx = perm[:n_test].sort().values
    train_idx = perm[n_test:].sort().values
    if isinstance(n_or_tensor, int):
        return train_idx, test_idx

    def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return t[idx.to(t.device)]

    if isinstance(n_or_tensor, torch.Tensor):
        return take(n_or_tensor, train_idx), take(n_or_tensor, test_idx)
    return (
        tuple(take(t, train_idx) for t in n_or_tensor),
        tuple(take(t, test_idx) for t in n_or_tensor),
    )


def minibatches(
    data,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int | torch.Generator | None = None,
    drop_last: bool = False,
    device=None,
) -> _Minibatches:
    """Minibatches of ``data`` as tensors on ``device``: an iterable with a length.

    Each iteration is one pass (one epoch). With ``shuffle`` the order is a random permutation
    drawn on the CPU from ``seed``: an int gives the same order every pass; a CPU
    ``torch.Generator`` advances, so successive passes differ, and its state
    (``get_state``/``set_state``) can be checkpointed for an exact resume.

    Parameters
    ----------
    data : torch.Tensor, tuple/list of torch.Tensor, or torch Dataset
        Tensors are indexed along their first dimension (a tuple yields tuples, e.g.
        ``(images, labels)``). A :class:`~pyrobust.data.DSpritesDataset` (or any Dataset that
        accepts a LongTensor of positions in ``__getitem__``, returning a batch) renders each
        batch in one call; any other sized Dataset is read item by item and collated with
        :func:`torch.utils.data.default_collate`.
    batch_size : int
        Items per batch (the last batch may be smaller unless ``drop_last``).
    shuffle : bool, default True
    seed : int, CPU torch.Generator or None
        Seed of the shuffle; ``None`` uses torch's global generator (seeded by
        ``pyro.set_rng_seed``).
    drop_last : bool, default False
        Drop a last batch smaller than ``batch_size``.
    device : torch.device or str, optional
        Where batches go (``non_blocking`` copies). Default: leave them where they are.

    Returns
    -------
    iterable
        Iterating yields minibatches (a tensor, or a tuple of tensors); ``len()`` is the number
        of minibatches per pass.

    Examples
    --------
    >>> x = torch.arange(10.0).view(10, 1)
    >>> batches = minibatches(x, 4, seed=0)
    >>> len(batches), [b.shape[0] for b in batches]
    (3, [4, 4, 2])
    >>> sorted(torch.cat(list(minibatches(x, 4, seed=0))).view(-1).tolist()) == x.view(-1).tolist()
    True
    """
    n = _length(data)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
    _generator(seed)  # validate now, not at the first iteration
    device = torch.device(device) if device is not None else None
    return _Minibatches(data, n, batch_size, bool(shuffle), seed, bool(drop_last), device)


class _Minibatches:
    """The iterable returned by :func:`minibatches` (one epoch per iteration)."""

    def __init__(self, data, n, batch_size, shuffle, seed, drop_last, device):
        self.data, self.n, self.batch_size = data, n, batch_size
        self.shuffle, self.seed, self.drop_last, self.device = shuffle, seed, drop_last, device

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator:
        gen = _generator(self.seed)  # an int seed restarts; a Generator advances
        return _iterate(
            self.data, self.n, self.batch_size, self.shuffle, gen, self.drop_last, self.device
        )

    def __repr__(self) -> str:
        return (
            f"minibatches(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, device={self.device})"
        )


def _iterate(data, n, batch_size, shuffle, gen, drop_last, device) -> Iterator:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    batched_dataset = isinstance(data, Dataset) and _accepts_tensor_index(data)
    tensors = (data,) if isinstance(data, torch.Tensor) else data
    if isinstance(data, (torch.Tensor, tuple, list)):  # move the order once, not per batch
        orders = {t.device: order.to(t.device) for t in tensors}
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if isinstance(data, torch.Tensor):
            batch = data[orders[data.device][start : start + batch_size]]
        elif isinstance(data, (tuple, list)):
            batch = tuple(t[orders[t.device][start : start + batch_size]] for t in tensors)
        elif batched_dataset:
            batch = data[idx]
        else:
            batch = torch.utils.data.default_collate([data[i] for i in idx.tolist()])
        yield _to(batch, device)


def _accepts_tensor_index(data: Dataset) -> bool:
    return isinstance(data, (DSpritesDataset, TensorDataset))


def _to(batch, device):
    if device is None:
        return batch
    if isinstance(batch, torch.Tensor):
        # non_blocking only host -> GPU: a GPU -> host copy must finish before it is read
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, tuple):
        return tuple(_to(b, device) for b in batch)
    if isinstance(batch, list):
        return [_to(b, device) for b in batch]
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch
