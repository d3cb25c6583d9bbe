r"""The training loop: SVI on a dataset, with checkpoints that resume bit for bit.

:func:`fit` trains any model/guide pair (or an object with ``.model`` and ``.guide``, such as
:class:`pyrobust.models.VAE`) with :class:`pyro.infer.SVI` and returns its history as an
``xarray.DataTree``. Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) hold the
param store, the optimizer state, the objective's own state (e.g. a FactorVAE discriminator),
the RNG states and the history, written atomically (a temporary file, then ``os.replace``), so
``fit(..., resume=True)`` continues exactly the trajectory an uninterrupted run would follow.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.optim
import torch
import xarray as xr
from pyro import poutine
from pyro.infer import SVI

from pyrobust._results import make_tree
from pyrobust.inference.objectives import BetaELBO

__all__ = ["fit", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = 1
_OPTIMIZERS = {
    "adam": pyro.optim.Adam,
    "adamw": pyro.optim.AdamW,
    "clippedadam": pyro.optim.ClippedAdam,
    "sgd": pyro.optim.SGD,
    "rmsprop": pyro.optim.RMSprop,
}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _split_pair(vae_or_pair) -> tuple[Callable, Callable, torch.nn.Module | None]:
    if isinstance(vae_or_pair, (tuple, list)) and len(vae_or_pair) == 2:
        model, guide = vae_or_pair
        module = None
    elif hasattr(vae_or_pair, "model") and hasattr(vae_or_pair, "guide"):
        model, guide = vae_or_pair.model, vae_or_pair.guide
        module = vae_or_pair if isinstance(vae_or_pair, torch.nn.Module) else None
    else:
        raise TypeError(
            "vae_or_pair must be an object with .model and .guide (e.g. pyrobust.models.VAE) or "
            f"a (model, guide) tuple; got {type(vae_or_pair).__name__}."
        )
    if not (callable(model) and callable(guide)):
        raise TypeError("The model and the guide must be callables.")
    return model, guide, module


def _as_tensor(data, name: str) -> torch.Tensor:
    """Materialise a tensor, array, TensorDataset or map-style Dataset as one tensor."""
    if isinstance(data, torch.utils.data.TensorDataset):
        data = data.tensors[0]
    elif isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    elif not torch.is_tensor(data):
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                f"{name} must be a torch.Tensor, a numpy array or a map-style Dataset; got "
                f"{type(data).__name__}."
            )
        if len(data) == 0:
            raise ValueError(f"{name} is empty (len 0); fit needs at least one data point.")
        items = [data[i] for i in range(len(data))]
        items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
        data = torch.stack([torch.as_tensor(it) for it in items])
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(data.shape)}); fit needs at least one data point."
        )
    if not data.dtype.is_floating_point:
        data = data.to(torch.get_default_dtype())
    return data


def _first_tensor(out):
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out if torch.is_tensor(out) else None


class _Source:
    """Training or validation inputs, read by minibatch of indices.

    A tensor (or array, or ``TensorDataset``) is moved to the device once. A Dataset that
    takes a LongTensor of indices and returns the batch (as ``DSpritesDataset`` does) is read
    per minibatch, never materialised (dSprites in full is 12 GB of float32). Any other
    map-style Dataset is materialised once, item by item.
    """

    def __init__(self, data, name: str):
        self.name, self.dataset, self.tensor = name, None, None
        self.device = None
        if _is_batch_indexable(data):
            self.dataset = data
            self.n = len(data)
        else:
            self.tensor = _as_tensor(data, name)
            self.n = self.tensor.shape[0]

    def to(self, device) -> _Source:
        self.device = torch.device(device)
        if self.tensor is not None:
            self.tensor = self.tensor.to(self.device)
        return self

    @property
    def index_device(self):
        return self.tensor.device if self.tensor is not None else torch.device("cpu")

    def default_device(self) -> torch.device:
        if self.tensor is not None:
            return self.tensor.device
        return self.get(torch.arange(1)).device

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[idx]
        batch = _first_tensor(self.dataset[idx])
        if not batch.dtype.is_floating_point:
            batch = batch.to(torch.get_default_dtype())
        return batch if self.device is None else batch.to(self.device, non_blocking=True)


def _is_batch_indexable(data) -> bool:
    if torch.is_tensor(data) or isinstance(data, (np.ndarray, torch.utils.data.TensorDataset)):
        return False
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")) or len(data) == 0:
        return False
    k = min(3, len(data))
    try:
        out = _first_tensor(data[torch.arange(k)])
    except (TypeError, IndexError, ValueError, KeyError, RuntimeError):
        return False
    return out is not None and out.dim() >= 1 and out.shape[0] == k


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def _accepts_size(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "size" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _make_optimizer(optimizer, lr):
    if isinstance(optimizer, pyro.optim.PyroOptim):
        return optimizer, type(optimizer).__name__
    if isinstance(optimizer, str):
        key = optimizer.lower().replace("_", "")
        if key not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(_OPTIMIZERS)} or a pyro.optim.PyroOptim; got "
                f"{optimizer!r}."
            )
        if not (isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number; got {lr!r}.")
        return _OPTIMIZERS[key]({"lr": float(lr)}), key
    raise TypeError(
        f"optimizer must be a name ({sorted(_OPTIMIZERS)}) or a pyro.optim.PyroOptim; got "
        f"{type(optimizer).__name__}."
    )


def _resolve_device(device, module, x) -> torch.device:
    if device is not None:
        return torch.device(device)
    if module is not None:
        p = next(iter(module.parameters()), None)
        if p is not None:
            return p.device
    return x.default_device()


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    # Pyro seeds numpy's legacy global RNG (pyro.set_rng_seed), so that is the state to keep.
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"].cpu())
    r = state["random"]
    random.setstate((r[0], tuple(r[1]), r[2]))
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    path: str | os.PathLike,
    *,
    module: torch.nn.Module | None = None,
    optimizer: pyro.optim.PyroOptim | None = None,
    objective=None,
    extra: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    param_names=None,
) -> Path:
    """Write a checkpoint atomically: ``path`` (``torch.save``) and ``path.json``.

    The ``.pt`` file holds the param store (unconstrained values), ``module.state_dict()``
    (buffers included), the optimizer state, ``objective.state_dict()``, the RNG states of
    torch, CUDA, numpy and ``random``, and ``extra``; everything loads with
    ``torch.load(..., weights_only=True)``. The JSON file holds ``metadata`` for people.
    ``param_names`` restricts the saved param-store entries (default: all of them).
    Each file is written to a temporary file, synced and renamed, so a crash never leaves a
    half-written checkpoint.

    Parameters
    ----------
    path : str or path-like
        The ``.pt`` file to write; its parent is created.
    module : torch.nn.Module, optional
        Saved with ``state_dict()`` (buffers included).
    optimizer : pyro.optim.PyroOptim, optional
    objective : optional
        Anything with ``state_dict()`` (e.g. :class:`~pyrobust.inference.FactorVAELoss`).
    extra : mapping, optional
        Further ``weights_only``-loadable content (``fit`` stores epoch, step and history).
    metadata : mapping, optional
        JSON-able content of the sidecar.
    param_names : collection of str, optional

    Returns
    -------
    pathlib.Path
        The checkpoint path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "params": {
            name: p.detach().cpu().clone()
            for name, p in pyro.get_param_store().named_parameters()
            if param_names is None or name in param_names
        },
        "module": None
        if module is None
        else {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.get_state(),
        "objective": objective.state_dict() if hasattr(objective, "state_dict") else {},
        "rng": _rng_state(),
        "extra": dict(extra or {}),
    }
    _atomic_write(path, lambda f: torch.save(state, f))
    meta = {"format": CHECKPOINT_FORMAT, **(metadata or {})}
    _atomic_write(
        path.with_suffix(path.suffix + ".json"),
        lambda f: f.write(json.dumps(meta, indent=2, default=repr)),
        mode="w",
    )
    return path


def load_checkpoint(
    path: str | os.PathLike,
    vae_or_pair=None,
    *,
    example: torch.Tensor | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict:
    """Load a checkpoint written by :func:`fit` / :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or path-like
        The ``.pt`` file (e.g. ``checkpoint_dir / "best.pt"``).
    vae_or_pair : object with .model/.guide, or (model, guide), optional
        If given, its parameters are restored in place: a ``torch.nn.Module`` from its state
        dict, and every checkpointed param-store entry into Pyro's param store. Params that
        do not exist yet are created by one trace of the guide and model on ``example``.
    example : torch.Tensor, optional
        A small batch of inputs, needed only to create missing params of plain Pyro pairs.
    map_location : optional
        As for :func:`torch.load`.

    Returns
    -------
    dict
        The checkpoint (``"params"``, ``"module"``, ``"optimizer"``, ``"objective"``,
        ``"rng"``, ``"extra"``), loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {str(path)!r}.")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a pyrobust checkpoint (format {CHECKPOINT_FORMAT})."
        )
    if vae_or_pair is not None:
        _restore_params(state, vae_or_pair, example)
    return state


def _restore_params(state, vae_or_pair, example) -> None:
    model, guide, module = _split_pair(vae_or_pair)
    if module is not None and state.get("module") is not None:
        module.load_state_dict(state["module"])
    store = pyro.get_param_store()
    missing = [n for n in state["params"] if n not in store]
    if missing and example is not None:
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(example)
            poutine.replay(model, trace=guide_trace)(example)
        missing = [n for n in state["params"] if n not in store]
    if missing:
        raise ValueError(
            f"Params {missing[:5]} of the checkpoint are not in Pyro's param store; pass "
            "example=<a batch of inputs> so load_checkpoint can create them by running the "
            "model and guide once."
        )
    current = dict(store.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            target = current[name]
            if target.shape != value.shape:
                raise ValueError(
                    f"Param {name!r} has shape {tuple(target.shape)} but the checkpoint holds "
                    f"{tuple(value.shape)}; the model does not match the checkpoint."
                )
            target.copy_(value)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
class _History:
    def __init__(self):
        self.steps: dict[str, list[float]] = {}
        self.epochs: dict[str, list[float]] = {}

    def add(self, table: dict, values: Mapping[str, float]) -> None:
        n = len(next(iter(table.values()))) if table else 0
        for k, v in values.items():
            table.setdefault(k, [math.nan] * n).append(float(v))
        for col in table.values():
            if len(col) < n + 1:
                col.append(math.nan)

    def state(self) -> dict:
        return {
            "steps": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.steps.items()},
            "epochs": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.epochs.items()},
        }

    @classmethod
    def from_state(cls, state) -> _History:
        h = cls()
        h.steps = {k: v.tolist() for k, v in state["steps"].items()}
        h.epochs = {k: v.tolist() for k, v in state["epochs"].items()}
        return h


def _epoch_permutation(n: int, seed: int, epoch: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).to(device)


def _svi_step(svi: SVI, x, kwargs, where: str, elbo):
    """SVI.step with a finiteness check between the gradients and the update.

    Returns the loss and the names of the params it updated.
    """
    with poutine.trace(param_only=True) as capture, warnings.catch_warnings():
        # Pyro warns "Encountered NaN"; the check below raises a more precise error instead.
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        loss = svi.loss_and_grads(svi.model, svi.guide, x, **kwargs)
    params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
    loss = float(loss)
    if not math.isfinite(loss):
        for p in params:
            p.grad = None
        terms = getattr(elbo, "last_terms", {}) or {}
        bad = [k for k, v in terms.items() if k != "loss" and not math.isfinite(v)]
        detail = (
            f"non-finite term(s) {', '.join(f'{k}={terms[k]}' for k in bad)}"
            if bad
            else f"terms {terms}"
            if terms
            else "the loss"
        )
        raise FloatingPointError(
            f"Non-finite loss {loss} at {where}: {detail}. The update was not applied and the "
            "last checkpoint is intact. Lower the learning rate, check the data for NaN/inf, "
            "or bound the likelihood's scale."
        )
    svi.optim(params)
    for p in params:  # like torch's zero_grad(set_to_none=True): no zero-filled buffers
        p.grad = None
    return loss, capture.trace.nodes.keys()


def _evaluate(elbo, model, guide, source: _Source, batch_size, kwargs_for, seed, device) -> float:
    """Mean per-data-point loss over ``source`` in batches.

    The draws come from a forked RNG seeded with ``seed``, so validating does not change the
    training trajectory and every epoch is scored with the same noise.
    """
    total = 0.0
    n = source.n
    order = torch.arange(n, device=source.index_device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            xb = source.get(order[start : start + batch_size])
            kw = kwargs_for(n)
            per = float(elbo.loss(model, guide, xb, **kw)) / (n if kw else xb.shape[0])
            total += per * xb.shape[0]
    return total / n


def fit(
    vae_or_pair,
    data,
    *,
    elbo=None,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    optimizer: str | pyro.optim.PyroOptim = "adam",
    val_data=None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool | str | os.PathLike = False,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: bool | None = None,
    validate: bool = False,
) -> xr.DataTree:
    r"""Train a Pyro VAE with SVI; return the training history as a DataTree.

    Each epoch visits the data in a random order drawn from ``seed`` and the epoch number, in
    minibatches of ``batch_size``; before each step the objective's schedules are set to the
    global step (``elbo.set_step``). The model and guide are called as ``model(x_batch,
    size=N)`` when they accept ``size`` (as :class:`pyrobust.models.VAE` does, so the data
    plate scales the minibatch to the dataset), else as ``model(x_batch)``.

    Parameters
    ----------
    vae_or_pair : object with ``.model`` and ``.guide``, or ``(model, guide)``
        A ``torch.nn.Module`` (e.g. :class:`pyrobust.models.VAE`) is moved to ``device``.
    data : torch.Tensor, numpy array or Dataset
        Training inputs. A tensor is moved to ``device`` once; a Dataset that accepts a
        LongTensor of indices (e.g. :class:`pyrobust.data.DSpritesDataset`) is read one
        minibatch at a time; any other map-style Dataset is materialised once. Of tuple items,
        the first element is the input.
    elbo : pyro.infer.ELBO, optional
        The objective; default :class:`~pyrobust.inference.BetaELBO` ``(1.0)``.
    epochs : int
        Total number of epochs (when resuming, training continues up to this number).
    batch_size : int
    lr : float, default 1e-3
        Learning rate of a named ``optimizer``.
    optimizer : str or pyro.optim.PyroOptim, default "adam"
        ``"adam"``, ``"adamw"``, ``"clippedadam"``, ``"sgd"``, ``"rmsprop"`` or an instance.
    val_data : optional
        Validation inputs; their mean per-data-point loss is recorded every epoch and chooses
        the best checkpoint. It is computed with a forked RNG seeded with ``seed``: the same
        noise every epoch, and no effect on the training trajectory.
    checkpoint_dir : path-like, optional
        Where to write ``last.pt`` (every ``checkpoint_every`` epochs and at the end) and
        ``best.pt`` (lowest validation loss, or training loss without validation data), each
        with a ``.json`` sidecar. See :func:`save_checkpoint`.
    checkpoint_every : int, default 1
    resume : bool or path-like, default False
        ``True`` continues from ``checkpoint_dir/last.pt`` if it exists (else starts fresh); a
        path continues from that checkpoint. The continuation is bit-for-bit the run that
        was never interrupted (same seed, same settings).
    device : str or torch.device, optional
        Default: the module's device, else the data's.
    seed : int, default 0
        Seeds Pyro's global RNGs (``pyro.set_rng_seed``) at a fresh start and the data order.
    progress : bool, optional
        Show a tqdm progress bar; default only when stderr is a terminal.
    validate : bool, default False
        Pyro's validation during training (off in the hot path by default: faster).

    Returns
    -------
    xarray.DataTree
        Group ``history`` with per-step variables (dim ``step``: ``loss`` and the objective's
        :attr:`last_terms`, scheduled coefficients, ``epoch``) and per-epoch variables (dim
        ``epoch``: ``train_loss`` and ``val_loss`` per data point, ``time``); the settings are
        in the attrs.

    Raises
    ------
    ValueError, TypeError
        For bad settings or data, before any training step.
    FloatingPointError
        When a step's loss is NaN or infinite; the message names the step and the term, the
        update is not applied and checkpoints already written are left intact.

    Examples
    --------
    >>> from pyrobust.inference import BetaTCELBO, fit  # doctest: +SKIP
    >>> history = fit(vae, x, elbo=BetaTCELBO(beta=6.0), epochs=10, batch_size=256)  # doctest: +SKIP
    >>> history["history"]["val_loss"].plot()  # doctest: +SKIP
    """
    model, guide, module = _split_pair(vae_or_pair)
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    checkpoint_every = _positive_int("checkpoint_every", checkpoint_every)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int; got {seed!r}.")
    if resume and not isinstance(resume, bool) and checkpoint_dir is None:
        checkpoint_dir = Path(resume).parent
    if resume is True and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (where last.pt lives).")
    x = _Source(data, "data")
    x_val = None if val_data is None else _Source(val_data, "val_data")
    n = x.n
    elbo = BetaELBO(1.0) if elbo is None else elbo
    if not (hasattr(elbo, "loss") and hasattr(elbo, "loss_and_grads")):
        raise TypeError(f"elbo must be a pyro.infer.ELBO; got {type(elbo).__name__}.")
    dataset_size = getattr(elbo, "dataset_size", None)
    if dataset_size is not None and dataset_size < min(batch_size, n):
        raise ValueError(
            f"The objective's dataset_size ({dataset_size}) is smaller than the minibatch "
            f"({min(batch_size, n)}); pass dataset_size=len(data) ({n}) or leave it None."
        )
    optim, optim_name = _make_optimizer(optimizer, lr)
    device = _resolve_device(device, module, x)
    if module is not None:
        module.to(device)
    x.to(device)
    if x_val is not None:
        x_val.to(device)
    use_size = _accepts_size(model) and _accepts_size(guide)

    def kwargs_for(size):
        return {"size": size} if use_size else {}

    svi = SVI(model, guide, optim, loss=elbo)
    num_batches = math.ceil(n / batch_size)
    ckpt_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optim_name,
        "seed": int(seed),
        "device": str(device),
        "num_train": n,
        "num_val": 0 if x_val is None else x_val.n,
        "num_batches": num_batches,
        "checkpoint_dir": None if ckpt_dir is None else str(ckpt_dir),
        "checkpoint_every": checkpoint_every,
        "validate": bool(validate),
        **(elbo.settings() if hasattr(elbo, "settings") else {"objective": type(elbo).__name__}),
    }

    history = _History()
    param_names: set[str] = set()  # the params this training updates (what checkpoints hold)
    start_epoch, step, best = 0, 0, math.inf
    resume_path = None
    if resume:
        resume_path = ckpt_dir / "last.pt" if resume is True else Path(resume)
        if resume is True and not resume_path.exists():
            resume_path = None
    with pyro.validation_enabled(validate):
        if resume_path is not None:
            state = load_checkpoint(resume_path, map_location="cpu")
            extra = state["extra"]
            _check_same_trajectory(extra.get("trajectory", {}), settings, resume_path)
            first = x.get(torch.arange(min(batch_size, n), device=x.index_device))
            _init_params(elbo, model, guide, first, kwargs_for(n))
            _restore_params(state, (model, guide) if module is None else vae_or_pair, None)
            param_names.update(state["params"])
            optim.set_state(state["optimizer"] or {})
            if hasattr(elbo, "load_state_dict"):
                elbo.load_state_dict(state["objective"])
            _set_rng_state(state["rng"])
            start_epoch, step, best = int(extra["epoch"]), int(extra["step"]), float(extra["best"])
            history = _History.from_state(extra["history"])
        else:
            pyro.set_rng_seed(int(seed))
        settings["resumed_from_epoch"] = start_epoch if resume_path is not None else None

        def checkpoint(name, epoch):
            save_checkpoint(
                ckpt_dir / f"{name}.pt",
                module=module,
                optimizer=optim,
                objective=elbo,
                extra={
                    "epoch": epoch,
                    "step": step,
                    "best": best,
                    "history": history.state(),
                    "trajectory": {k: settings[k] for k in _TRAJECTORY_KEYS},
                },
                metadata={
                    "epoch": epoch,
                    "step": step,
                    "best": best,
                    "settings": settings,
                    "last_epoch": {k: v[-1] for k, v in history.epochs.items()},
                },
                param_names=param_names,
            )

        show = sys.stderr.isatty() if progress is None else bool(progress)
        bar = _progress_bar(show, total=epochs * num_batches, initial=start_epoch * num_batches)
        try:
            for epoch in range(start_epoch, epochs):
                t0 = time.perf_counter()
                perm = _epoch_permutation(n, seed, epoch, x.index_device)
                train_sum = 0.0
                for b in range(num_batches):
                    xb = x.get(perm[b * batch_size : (b + 1) * batch_size])
                    if hasattr(elbo, "set_step"):
                        elbo.set_step(step)
                    where = f"epoch {epoch + 1}, step {step} (batch {b + 1}/{num_batches})"
                    loss, names = _svi_step(svi, xb, kwargs_for(n), where, elbo)
                    param_names.update(names)
                    terms = dict(getattr(elbo, "last_terms", {}) or {})
                    terms["loss"] = loss
                    for name in getattr(elbo, "_schedules", {}):
                        terms[f"coef_{name}"] = elbo.coefficient(name)
                    terms["epoch_of_step"] = epoch + 1
                    history.add(history.steps, terms)
                    train_sum += loss / (n if use_size else xb.shape[0]) * xb.shape[0]
                    step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4g}", refresh=False)
                record = {"train_loss": train_sum / n, "time": time.perf_counter() - t0}
                if x_val is not None:
                    record["val_loss"] = _evaluate(
                        elbo, model, guide, x_val, batch_size, kwargs_for, seed, device
                    )
                history.add(history.epochs, record)
                monitored = record.get("val_loss", record["train_loss"])
                improved = monitored < best
                if improved:
                    best = monitored
                if ckpt_dir is not None:
                    if improved:
                        checkpoint("best", epoch + 1)
                    if (epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs:
                        checkpoint("last", epoch + 1)
        finally:
            bar.close()
    return _history_tree(history, settings)


#: Settings that must match for a resumed run to continue the same trajectory.
_TRAJECTORY_KEYS = ("batch_size", "seed", "num_train", "objective", "optimizer")


def _check_same_trajectory(saved: Mapping, settings: Mapping, path: Path) -> None:
    diff = {
        k: (saved[k], settings[k])
        for k in _TRAJECTORY_KEYS
        if k in saved and saved[k] != settings[k]
    }
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"Cannot resume from {str(path)!r}: {detail}. A resumed run continues the same "
            "trajectory only with the same settings; pass them, or start fresh (resume=False)."
        )


def _init_params(elbo, model, guide, xb, kwargs) -> None:
    """Create every param (and lazily built state) by one evaluation; RNG restored after."""
    with torch.no_grad():
        elbo.loss(model, guide, xb, **kwargs)


def _progress_bar(show: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not show,
        desc="fit",
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _history_tree(history: _History, settings: dict) -> xr.DataTree:
    steps = {k: (("step",), np.asarray(v)) for k, v in history.steps.items()}
    epochs = {k: (("epoch",), np.asarray(v)) for k, v in history.epochs.items()}
    num_steps = len(next(iter(history.steps.values()), []))
    num_epochs = len(next(iter(history.epochs.values()), []))
    return make_tree(
        summary={"history": {**steps, **epochs}},
        coords={"step": np.arange(num_steps), "epoch": np.arange(1, num_epochs + 1)},
        attrs=settings,
        name="fit",
    )
