"""The digits every client trains on: scikit-learn's 8x8 digits via ``pyrobust.data``."""

from __future__ import annotations

import functools

import torch

from pyrobust.data import load_digits


@functools.lru_cache(maxsize=1)
def _digits():
    return load_digits()


def digits(n: int = 512, *, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, 8, 8)`` in [0, 1] and their labels, from row ``offset`` on."""
    images, labels = _digits()
    return images[offset : offset + n].clone(), labels[offset : offset + n].clone()


def query_inputs(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out digits for the queries (rows 1700.. are never trained on)."""
    return digits(n, offset=1700)


def batches(num: int, n_data: int, batch_size: int, gen: torch.Generator):
    """``num`` random minibatch index tensors (seeded)."""
    for _ in range(num):
        yield torch.randint(0, n_data, (batch_size,), generator=gen)
