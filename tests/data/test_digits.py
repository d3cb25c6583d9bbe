"""scikit-learn's digits as tensors."""

import pytest
import torch
from sklearn.datasets import load_digits as sk_load_digits

from pyrobust.data import load_digits


def test_digits_shapes_range_and_values():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.long
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # exactly the grey levels / 16, and the same order and labels as scikit-learn
    ref = sk_load_digits()
    torch.testing.assert_close(x.double() * 16, torch.as_tensor(ref.images).unsqueeze(1))
    torch.testing.assert_close(y, torch.as_tensor(ref.target))
    assert torch.equal(torch.bincount(y) > 170, torch.ones(10, dtype=torch.bool))


def test_digits_options():
    x, y = load_digits(n_class=3, dtype=torch.float64)
    assert x.dtype == torch.float64 and set(y.tolist()) == {0, 1, 2}
    assert len(x) == len(y) == 537
    with pytest.raises(ValueError, match="n_class"):
        load_digits(n_class=11)
    with pytest.raises(TypeError, match="dtype"):
        load_digits(dtype=torch.int32)
