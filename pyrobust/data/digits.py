r"""scikit-learn's handwritten digits: the small real data set that ships (no download).

1,797 images of 8x8 pixels with integer grey levels 0..16 (the UCI "optical recognition of
handwritten digits" test set [1]_, bundled with scikit-learn as
:func:`sklearn.datasets.load_digits`), scaled to :math:`x / 16 \in [0, 1]`, with labels 0..9.

References
----------
.. [1] Alpaydin, Kaynak. *Optical Recognition of Handwritten Digits*. UCI Machine Learning
   Repository, 1998. https://doi.org/10.24432/C50P49
"""

from __future__ import annotations

import torch

__all__ = ["load_digits"]


def load_digits(
    *, n_class: int = 10, device=None, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load scikit-learn's 8x8 digits as image and label tensors.

    Parameters
    ----------
    n_class : int, default 10
        Keep the digits ``0..n_class-1`` (as scikit-learn's ``n_class``), 1..10.
    device : torch.device or str, optional
        Where to put the tensors. Default CPU.
    dtype : torch.dtype, default float32
        Floating dtype of the images.

    Returns
    -------
    images : torch.Tensor
        Shape ``(n, 1, 8, 8)``, values ``grey / 16`` in [0, 1] (n = 1797 for all ten classes).
    labels : LongTensor
        Shape ``(n,)``, digits in ``0..n_class-1``.

    Examples
    --------
    >>> x, y = load_digits()
    >>> x.shape, y.shape
    (torch.Size([1797, 1, 8, 8]), torch.Size([1797]))
    >>> float(x.min()), float(x.max())
    (0.0, 1.0)
    """
    if isinstance(n_class, bool) or not isinstance(n_class, int) or not 1 <= n_class <= 10:
        raise ValueError(f"`n_class` must be an int in 1..10; got {n_class!r}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`dtype` must be a floating torch.dtype; got {dtype!r}.")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits(n_class=n_class)
    images = torch.as_tensor(bunch.images, dtype=torch.float64).div(16.0)
    images = images.unsqueeze(1).to(device=device, dtype=dtype)
    labels = torch.as_tensor(bunch.target, dtype=torch.long, device=device)
    return images, labels
