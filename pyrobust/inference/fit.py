r"""The training loop: SVI on a dataset, with checkpoints that resume bit for bit.

:func:`fit` trains any model/guide pair (or an object with ``.model`` and ``.guide``, such as
:class:`pyrobust.models.VAE`) with :class:`pyro.infer.SVI` and returns its history as an
``xarray.DataTree``. Checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`) hold the
param store, the optimizer state, the objective's own state (e.g. a FactorVAE discriminator),
the RNG states and the history, written atomically (a ``mkstemp`` temporary file, then
``os.replace``; the JSON sidecar is bound to its ``.pt`` by the file's SHA-256), so
``fit(..., resume=True)`` continues exactly the trajectory an uninterrupted run would follow.
Conditional models take ``model_args`` / ``model_kwargs`` as :class:`pyro.infer.Predictive`
does.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import numbers
import os
import random
import re
import sys
import tempfile
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
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from pyrobust._results import make_tree
from pyrobust.inference._protocol import (
    _check_finite,
    _dtype_mismatch,
    _model_dtype,
    _ModelArgs,
)
from pyrobust.inference.objectives import BetaELBO

__all__ = ["fit", "load_checkpoint", "save_checkpoint"]

logger = logging.getLogger(__name__)

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
        if data.dtype == object or not np.issubdtype(data.dtype, np.number):
            raise TypeError(
                f"{name} must hold numbers; got a numpy array of dtype {data.dtype}. Convert "
                "it to a numeric array first."
            )
        data = torch.from_numpy(np.ascontiguousarray(data))
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
        try:
            data = torch.stack([torch.as_tensor(it) for it in items])
        except (TypeError, RuntimeError, ValueError) as err:
            raise TypeError(
                f"The items of {name} could not be stacked into one tensor ({err}); each item "
                "(or the first element of each tuple item) must be an array of the same shape."
            ) from err
    if data.dim() < 1 or data.shape[0] == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(data.shape)}); fit needs at least one data point."
        )
    if data.is_complex():
        raise TypeError(f"{name} must be real; got dtype {data.dtype}.")
    return data


def _first_tensor(out):
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out if torch.is_tensor(out) else None


class _Source:
    """Training or validation inputs, read by minibatch of indices.

    A tensor (or array, or ``TensorDataset``) is checked for NaN/inf and moved to the device
    once. A Dataset that takes a LongTensor of indices and returns the batch (as
    ``DSpritesDataset`` does) is read per minibatch, never materialised (dSprites in full is
    12 GB of float32), and each minibatch is checked as it is read. Any other map-style
    Dataset is materialised once, item by item. Floating inputs are converted to ``dtype``
    (the model's, when known); integer and bool inputs to ``dtype`` or torch's default.
    """

    def __init__(self, data, name: str, dtype: torch.dtype | None = None):
        self.name, self.dataset, self.tensor = name, None, None
        self.device = None
        self.dtype = dtype
        if _is_batch_indexable(data):
            self.dataset = data
            self.n = len(data)
        else:
            self.tensor = self._convert(_as_tensor(data, name))
            _check_finite(self.tensor, name)
            self.n = self.tensor.shape[0]

    def _convert(self, t: torch.Tensor) -> torch.Tensor:
        if not t.dtype.is_floating_point:
            return t.to(self.dtype or torch.get_default_dtype())
        return t if self.dtype is None else t.to(self.dtype)

    def to(self, device) -> _Source:
        self.device = torch.device(device)
        if self.tensor is not None:
            self.tensor = self.tensor.to(self.device)
        return self

    @property
    def batch_dtype(self) -> torch.dtype:
        if self.tensor is not None:
            return self.tensor.dtype
        return self.dtype or torch.get_default_dtype()

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
        if batch is None or batch.dim() < 1 or batch.shape[0] != len(idx):
            raise ValueError(
                f"{self.name}[indices] returned {type(batch).__name__} "
                f"{tuple(getattr(batch, 'shape', ()))} for {len(idx)} indices; a Dataset read "
                "by minibatch must return one row per index."
            )
        batch = self._convert(batch)
        rows = f" of the minibatch at dataset indices {idx[:5].tolist()}..."
        _check_finite(batch, self.name, rows)
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
    """Whether ``fn`` has a parameter actually named ``size``.

    A ``**kwargs`` catch-all does not count: pyroVED-style models take ``**kwargs`` and
    ignore ``size``, and passing it to them would not scale their data plate.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("size")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


class _ObservedScale(Messenger):
    """Records the largest scale of the observed sample sites of one model run."""

    def __init__(self):
        super().__init__()
        self.scale: float | None = None

    def _postprocess_message(self, msg):
        if msg["type"] != "sample" or not msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        s = msg["scale"]
        if torch.is_tensor(s):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                s = float(s.detach().double().mean())
        s = float(s)
        self.scale = s if self.scale is None else max(self.scale, s)


class _CountedModel:
    """The model, recording how many data points its last minibatch stood for.

    That number is ``B * s``: the minibatch's ``B = len(x)`` rows times the largest scale
    ``s`` of the observed sites (``N / B`` in ``pyro.plate("data", N, subsample=x)``, 1 in
    ``pyro.plate("data", len(x))``, ``c`` under ``poutine.scale(scale=c)``). The loss
    divided by it is the loss per data point, whatever the model's plate scaling. A model
    with no observed site counts one data point per row. Under a JIT-compiled objective the
    model runs only while compiling; the counts of those runs are kept, by minibatch size.
    Use one instance per data source (training, validation).
    """

    def __init__(self, model: Callable):
        self.model = model
        self.points: dict[int, float] = {}

    def __call__(self, x, *args, **kwargs):
        recorder = _ObservedScale()
        with recorder:
            out = self.model(x, *args, **kwargs)
        rows = int(x.shape[0]) if torch.is_tensor(x) and x.dim() >= 1 else 1
        self.points[rows] = rows * (1.0 if recorder.scale is None else recorder.scale)
        return out

    def per_point(self, loss: float, rows: int) -> float:
        points = self.points.get(rows)
        return loss / (points if points and points > 0 else rows)


def _make_optimizer(optimizer, lr):
    """The optimizer, its name and the learning rate it runs with (``None`` if unknown)."""
    if isinstance(optimizer, pyro.optim.PyroOptim):
        if lr is not None:
            raise ValueError(
                f"lr={lr!r} applies only to a named optimizer; a {type(optimizer).__name__} "
                "instance carries its own learning rate. Put it in the instance's args "
                "(e.g. pyro.optim.Adam({'lr': 1e-3})) and leave lr unset."
            )
        args = getattr(optimizer, "pt_optim_args", None)
        used = args.get("lr") if isinstance(args, Mapping) else None
        return optimizer, type(optimizer).__name__, None if used is None else float(used)
    lr = 1e-3 if lr is None else lr
    if isinstance(optimizer, str):
        key = optimizer.lower().replace("_", "")
        if key not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(_OPTIMIZERS)} or a pyro.optim.PyroOptim; got "
                f"{optimizer!r}."
            )
        if isinstance(lr, bool) or not (
            isinstance(lr, numbers.Real) and lr > 0 and math.isfinite(lr)
        ):
            raise ValueError(f"lr must be a positive number; got {lr!r}.")
        return _OPTIMIZERS[key]({"lr": float(lr)}), key, float(lr)
    raise TypeError(
        f"optimizer must be a name ({sorted(_OPTIMIZERS)}) or a pyro.optim.PyroOptim; got "
        f"{type(optimizer).__name__}."
    )


def _resolve_device(device, module, x) -> torch.device:
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"`device` must name a torch device such as 'cpu' or 'cuda:0'; got {device!r}."
            ) from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"`device`={str(device)!r} but CUDA is not available here; use device='cpu'."
            )
        return device
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


#: Names of the temporary files of :func:`save_checkpoint` (``.<name>.pt[.json].<random>.tmp``),
#: also the ``.<name>.pt.<pid>.tmp`` of earlier versions.
_TEMP_NAME = re.compile(r"^\..+\.pt(\.json)?\..+\.tmp$")


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file next to ``path``, synced; return its path.

    ``tempfile.mkstemp`` creates the file with ``O_CREAT | O_EXCL`` under a random name, so
    a symlink planted at a predictable name is never followed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _clean_stale_temps(directory: Path) -> list[str]:
    """Remove the temporary files that killed runs left in ``directory``; return their names.

    Only names of :func:`save_checkpoint`'s pattern are touched (a symlink is unlinked, never
    followed). Call it when no other process writes checkpoints into ``directory``.
    """
    removed = []
    if not directory.is_dir():
        return removed
    for entry in os.scandir(directory):
        if _TEMP_NAME.match(entry.name) and not entry.is_dir(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def _sidecar_text(metadata_json: str, digest: str) -> str:
    meta = json.loads(metadata_json)
    return json.dumps({"format": CHECKPOINT_FORMAT, "sha256": digest, **meta}, indent=2)


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
    """Write a checkpoint atomically: ``path`` (``torch.save``) and its sidecar ``path.json``.

    The ``.pt`` file holds the param store (unconstrained values), ``module.state_dict()``
    (buffers included), the optimizer state, ``objective.state_dict()``, the RNG states of
    torch, CUDA, numpy and ``random``, ``extra``, and ``metadata`` (as a JSON string);
    everything loads with ``torch.load(..., weights_only=True)``. The JSON sidecar holds
    ``metadata`` for people, and the SHA-256 of the ``.pt`` file it describes.

    Both files are written to temporary files made with :func:`tempfile.mkstemp` (``O_EXCL``,
    random names: a planted symlink is never followed), synced, then renamed over the final
    names, the ``.pt`` first. A crash never leaves a half-written file at a final path. Two
    renames cannot be one atomic step, so a crash between them can leave the previous sidecar
    next to the new ``.pt``: the hash binds them, and :func:`load_checkpoint` detects the
    mismatch and rewrites the sidecar from the ``.pt``'s own copy of the metadata. Temporary
    files of killed runs are removed by the next :func:`fit` with the same ``checkpoint_dir``.

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
        JSON-able content of the sidecar (other values are written as their ``repr``).
    param_names : collection of str, optional
        Restricts the saved param-store entries (default: all of them).

    Returns
    -------
    pathlib.Path
        The checkpoint path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata_json = json.dumps(dict(metadata or {}), default=repr)
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
        "metadata": metadata_json,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    sidecar = _sidecar_path(path)
    side_text = _sidecar_text(metadata_json, hashlib.sha256(data).hexdigest())
    tmp_pt = _write_temp(path, data)
    try:
        tmp_json = _write_temp(sidecar, side_text.encode())
    except BaseException:
        tmp_pt.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp_pt, path)
        os.replace(tmp_json, sidecar)
    finally:
        tmp_pt.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


#: What a checkpoint's top level must hold, and the types of the values.
_CHECKPOINT_KEYS = {
    "params": dict,
    "module": (dict, type(None)),
    "optimizer": (dict, type(None)),
    "objective": dict,
    "rng": dict,
    "extra": dict,
}


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{str(path)!r} is not a readable pyrobust checkpoint (format {CHECKPOINT_FORMAT}): "
        f"{why}. The file is damaged, truncated or of another kind; use another checkpoint "
        "(e.g. best.pt instead of last.pt) or start fresh."
    )


def load_checkpoint(
    path: str | os.PathLike,
    vae_or_pair=None,
    *,
    example: torch.Tensor | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict:
    """Load a checkpoint written by :func:`fit` / :func:`save_checkpoint`.

    The file is read with ``torch.load(..., weights_only=True)`` (data, never code) and its
    layout is checked. If the JSON sidecar does not carry the file's SHA-256 (a run killed
    between the two renames of :func:`save_checkpoint`, or a hand-edited sidecar), the
    sidecar is rewritten from the metadata stored in the ``.pt`` file (when the directory is
    writable): the ``.pt`` file is the authority.

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
        ``"rng"``, ``"extra"``, and ``"metadata"``: the sidecar's content as a dict).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        A damaged, truncated or foreign file (the message names the path), or parameters
        that do not match ``vae_or_pair``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {str(path)!r}.")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # any failure to parse the file means it is not a checkpoint
        raise _damaged(path, f"torch.load failed ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise _damaged(path, f"its format is {found!r}")
    for key, kind in _CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise _damaged(path, f"its entry {key!r} is {type(state.get(key)).__name__}")
    bad = [k for k, v in state["params"].items() if not torch.is_tensor(v)]
    if bad:
        raise _damaged(path, f"params {bad[:5]} are not tensors")
    metadata_json = state.get("metadata")
    if metadata_json is None:  # written before the sidecar was bound to the file
        state["metadata"] = {}
    else:
        try:
            state["metadata"] = json.loads(metadata_json)
        except (TypeError, ValueError) as err:
            raise _damaged(path, "its metadata is not JSON") from err
        if not isinstance(state["metadata"], dict):
            raise _damaged(path, "its metadata is not a JSON object")
        _repair_sidecar(path, metadata_json, hashlib.sha256(data).hexdigest())
    if vae_or_pair is not None:
        _restore_params(state, vae_or_pair, example)
    return state


def _repair_sidecar(path: Path, metadata_json: str, digest: str) -> None:
    """Rewrite ``path``'s sidecar if it does not carry ``digest`` (best effort)."""
    sidecar = _sidecar_path(path)
    try:
        current = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        current = None
    if isinstance(current, dict) and current.get("sha256") == digest:
        return
    try:
        tmp = _write_temp(sidecar, _sidecar_text(metadata_json, digest).encode())
        try:
            os.replace(tmp, sidecar)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only directory: the .pt file is still the authority


def _restore_params(state, vae_or_pair, example) -> None:
    model, guide, module = _split_pair(vae_or_pair)
    if module is not None and state.get("module") is not None:
        try:
            module.load_state_dict(state["module"])
        except (RuntimeError, TypeError, KeyError) as err:
            raise ValueError(
                f"The checkpoint's module state does not fit {type(module).__name__}: "
                f"{str(err).splitlines()[0]}. Build the module with the settings it was "
                "trained with."
            ) from err
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


def _svi_step(svi: SVI, x, args, kwargs, where: str, elbo):
    """SVI.step with a finiteness check between the gradients and the update.

    Returns the loss and the names of the params it updated.
    """
    with poutine.trace(param_only=True) as capture, warnings.catch_warnings():
        # Pyro warns "Encountered NaN"; the check below raises a more precise error instead.
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        loss = svi.loss_and_grads(svi.model, svi.guide, x, *args, **kwargs)
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


def _evaluate(
    elbo,
    model: _CountedModel,
    guide,
    source: _Source,
    args: _ModelArgs,
    batch_size,
    extra_kwargs,
    seed,
    device,
) -> float:
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
            idx = order[start : start + batch_size]
            xb = source.get(idx)
            a, kw = args.get(idx)
            loss = float(elbo.loss(model, guide, xb, *a, **extra_kwargs(n), **kw))
            total += model.per_point(loss, xb.shape[0]) * xb.shape[0]
    return total / n


def fit(
    vae_or_pair,
    data,
    *,
    elbo=None,
    epochs: int,
    batch_size: int,
    lr: float | None = None,
    optimizer: str | pyro.optim.PyroOptim = "adam",
    val_data=None,
    model_args=(),
    model_kwargs: Mapping[str, Any] | None = None,
    val_model_args=None,
    val_model_kwargs: Mapping[str, Any] | None = None,
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
    global step (``elbo.set_step``).

    **How the model is called.** As :class:`pyro.infer.Predictive` does,
    ``model(x_batch, *model_args, **model_kwargs)`` (the guide alike), where every tensor in
    ``model_args`` / ``model_kwargs`` whose leading dim is ``N = len(data)`` is *per data
    point* and is minibatched with ``x`` (the same rows); every other value passes through
    unchanged. So a conditional VAE ``model(x, y)`` trains with ``model_args=(y,)``. When the
    model and the guide both have a parameter actually named ``size`` (as
    :class:`pyrobust.models.VAE` does; a ``**kwargs`` catch-all does not count), ``size=N``
    is passed too, so that ``pyro.plate("data", size, subsample=x)`` scales the minibatch to
    the dataset (a ``size`` in ``model_kwargs`` is passed as given instead).

    **What is recorded.** ``train_loss`` and ``val_loss`` are losses *per data point*,
    whatever the model's plate scaling: each minibatch's loss is divided by the number of
    data points it stands for, its rows times the scale of the model's observed sites
    (``N/B`` for a plate subsampled to ``B`` of ``N``, 1 for ``pyro.plate("data", len(x))``
    or a sizeless plate). The per-step ``loss`` is the objective's value as returned.

    **Objectives.** Any Pyro ELBO works, with its own gradient estimator. pyrobust's
    objectives (:class:`~pyrobust.inference.BetaELBO`, ...) are reparameterized estimators
    and refuse a guide site that cannot be reparameterized (a discrete ``y``) by name at the
    first step. For such a guide (e.g. the semi-supervised VAE M2), enumerate the site with
    :func:`pyro.infer.config_enumerate` and train with
    ``pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)``.

    Parameters
    ----------
    vae_or_pair : object with ``.model`` and ``.guide``, or ``(model, guide)``
        A ``torch.nn.Module`` (e.g. :class:`pyrobust.models.VAE`) is moved to ``device``.
    data : torch.Tensor, numpy array or Dataset
        Training inputs. A tensor is moved to ``device`` once; a Dataset that accepts a
        LongTensor of indices (e.g. :class:`pyrobust.data.DSpritesDataset`) is read one
        minibatch at a time; any other map-style Dataset is materialised once. Of tuple items
        (e.g. a ``TensorDataset(x, y)``), only the first element is used: the others are
        *not* passed to the model; pass conditioning values explicitly as ``model_args``
        (e.g. ``model_args=(dataset.tensors[1],)`` for a ``TensorDataset(x, y)``).
        Floating inputs are converted to the dtype of the parameters of the modules
        reachable from ``vae_or_pair`` (the module itself, a bound method's owner and its
        attributes), so numpy's float64 arrays train a float32 model; integer and bool inputs
        to that dtype, or torch's default. NaN or infinite values are refused
        (``ValueError`` naming ``data``).
    elbo : pyro.infer.ELBO, optional
        The objective; default :class:`~pyrobust.inference.BetaELBO` ``(1.0)``.
    epochs : int
        Total number of epochs (when resuming, training continues up to this number).
    batch_size : int
    lr : float, optional
        Learning rate of a named ``optimizer`` (default 1e-3). Not allowed with an optimizer
        instance, which carries its own.
    optimizer : str or pyro.optim.PyroOptim, default "adam"
        ``"adam"``, ``"adamw"``, ``"clippedadam"``, ``"sgd"``, ``"rmsprop"`` or an instance.
    val_data : optional
        Validation inputs, as ``data``; their mean per-data-point loss is recorded every epoch
        and chooses the best checkpoint. It is computed with a forked RNG seeded with
        ``seed``: the same noise every epoch, and no effect on the training trajectory.
    model_args : tuple, default ()
        Extra positional arguments of the model and guide, after ``x``.
    model_kwargs : dict, optional
        Extra keyword arguments of the model and guide.
    val_model_args, val_model_kwargs : optional
        The same for ``val_data`` (per-data-point tensors have leading dim
        ``len(val_data)``). Default ``model_args`` / ``model_kwargs``, allowed only when these
        hold no per-data-point tensor (else pass the validation ones).
    checkpoint_dir : path-like, optional
        Where to write ``last.pt`` (every ``checkpoint_every`` epochs and at the end) and
        ``best.pt`` (lowest validation loss, or training loss without validation data), each
        with a ``.json`` sidecar bound to it by its SHA-256. See :func:`save_checkpoint`.
        Temporary files left there by killed runs are removed at the start.
    checkpoint_every : int, default 1
    resume : bool or path-like, default False
        ``True`` continues from ``checkpoint_dir/last.pt`` if it exists (else starts fresh); a
        path continues from that checkpoint. The continuation is bit-for-bit the run that
        was never interrupted, so the settings that shape the trajectory (``batch_size``,
        ``seed``, the data size, the objective, the optimizer and ``lr``) must be those of
        the checkpoint: a difference is refused, naming the setting.
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
        For bad settings or data, before any training step; a guide site that the objective
        cannot differentiate through, at the first step; a float dtype that the model does
        not compute in (``TypeError``), at the first step.
    FloatingPointError
        When a step's loss is NaN or infinite; the message names the step and the term, the
        update is not applied and checkpoints already written are left intact.

    Examples
    --------
    >>> from pyrobust.inference import BetaTCELBO, fit  # doctest: +SKIP
    >>> history = fit(vae, x, elbo=BetaTCELBO(beta=6.0), epochs=10, batch_size=256)  # doctest: +SKIP
    >>> history["history"]["val_loss"].plot()  # doctest: +SKIP

    A conditional VAE ``model(x, y)`` / ``guide(x, y)``:

    >>> fit((cvae.model, cvae.guide), x, model_args=(y,), val_data=x_val,  # doctest: +SKIP
    ...     val_model_args=(y_val,), epochs=10, batch_size=128)
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
    dtype = _model_dtype(vae_or_pair, model, guide)
    x = _Source(data, "data", dtype)
    n = x.n
    args = _ModelArgs(model_args, model_kwargs, n)
    x_val, val_args = None, None
    if val_data is not None:
        x_val = _Source(val_data, "val_data", dtype)
        if x_val.tensor is not None and x.tensor is not None:
            if tuple(x_val.tensor.shape[1:]) != tuple(x.tensor.shape[1:]):
                raise ValueError(
                    f"`val_data` must have the training data's shape per row, "
                    f"{tuple(x.tensor.shape[1:])}; got rows of {tuple(x_val.tensor.shape[1:])}."
                )
        if val_model_args is None and val_model_kwargs is None:
            if args.per_point:
                raise ValueError(
                    f"model_args/model_kwargs hold per-data-point tensors (leading dim "
                    f"len(data)={n}), so the validation data needs its own: pass "
                    f"val_model_args=/val_model_kwargs= with leading dim len(val_data)="
                    f"{x_val.n}."
                )
            val_args = args  # nothing per point: the same values, passed through unchanged
        else:
            val_args = _ModelArgs(
                model_args if val_model_args is None else val_model_args,
                model_kwargs if val_model_kwargs is None else val_model_kwargs,
                x_val.n,
                names=("val_model_args", "val_model_kwargs"),
            )
    elif val_model_args is not None or val_model_kwargs is not None:
        raise ValueError("val_model_args/val_model_kwargs are given but val_data is not.")
    elbo = BetaELBO(1.0) if elbo is None else elbo
    if not (hasattr(elbo, "loss") and hasattr(elbo, "loss_and_grads")):
        raise TypeError(f"elbo must be a pyro.infer.ELBO; got {type(elbo).__name__}.")
    dataset_size = getattr(elbo, "dataset_size", None)
    if dataset_size is not None and dataset_size < min(batch_size, n):
        raise ValueError(
            f"The objective's dataset_size ({dataset_size}) is smaller than the minibatch "
            f"({min(batch_size, n)}); pass dataset_size=len(data) ({n}) or leave it None."
        )
    optim, optim_name, lr_used = _make_optimizer(optimizer, lr)
    device = _resolve_device(device, module, x)
    if module is not None:
        module.to(device)
    x.to(device)
    args.to(device, dtype)
    if x_val is not None:
        x_val.to(device)
        val_args.to(device, dtype)
    use_size = _accepts_size(model) and _accepts_size(guide) and "size" not in args.kwargs

    def size_kwargs(size):
        return {"size": size} if use_size else {}

    counted, counted_val = _CountedModel(model), _CountedModel(model)
    svi = SVI(counted, guide, optim, loss=elbo)
    num_batches = math.ceil(n / batch_size)
    ckpt_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    settings = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr_used,
        "optimizer": optim_name,
        "seed": int(seed),
        "device": str(device),
        "num_train": n,
        "num_val": 0 if x_val is None else x_val.n,
        "num_batches": num_batches,
        "size_passed": use_size,
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
    if ckpt_dir is not None:
        _clean_stale_temps(ckpt_dir)
    with pyro.validation_enabled(validate):
        if resume_path is not None:
            state = load_checkpoint(resume_path, map_location="cpu")
            extra = _resume_extra(state, resume_path)
            _check_same_trajectory(extra.get("trajectory", {}), settings, resume_path)
            idx = torch.arange(min(batch_size, n), device=x.index_device)
            first = x.get(idx)
            a, kw = args.get(idx)
            with _named_dtype_errors("data", first.dtype):
                _init_params(elbo, counted, guide, first, a, {**size_kwargs(n), **kw})
            _restore_params(state, (model, guide) if module is None else vae_or_pair, None)
            param_names.update(state["params"])
            try:
                optim.set_state(state["optimizer"] or {})
                if hasattr(elbo, "load_state_dict"):
                    elbo.load_state_dict(state["objective"])
                _set_rng_state(state["rng"])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
                raise _damaged(resume_path, f"its state does not fit this run ({err})") from err
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
                    idx = perm[b * batch_size : (b + 1) * batch_size]
                    xb = x.get(idx)
                    a, kw = args.get(idx)
                    if hasattr(elbo, "set_step"):
                        elbo.set_step(step)
                    where = f"epoch {epoch + 1}, step {step} (batch {b + 1}/{num_batches})"
                    with _named_dtype_errors("data", xb.dtype):
                        loss, names = _svi_step(svi, xb, a, {**size_kwargs(n), **kw}, where, elbo)
                    param_names.update(names)
                    terms = dict(getattr(elbo, "last_terms", {}) or {})
                    terms["loss"] = loss
                    for name in getattr(elbo, "_schedules", {}):
                        terms[f"coef_{name}"] = elbo.coefficient(name)
                    terms["epoch_of_step"] = epoch + 1
                    history.add(history.steps, terms)
                    train_sum += counted.per_point(loss, xb.shape[0]) * xb.shape[0]
                    step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4g}", refresh=False)
                record = {"train_loss": train_sum / n, "time": time.perf_counter() - t0}
                if x_val is not None:
                    with _named_dtype_errors("val_data", x_val.batch_dtype):
                        record["val_loss"] = _evaluate(
                            elbo,
                            counted_val,
                            guide,
                            x_val,
                            val_args,
                            batch_size,
                            size_kwargs,
                            seed,
                            device,
                        )
                history.add(history.epochs, record)
                if not show:  # no bar: progress through logging (the CLI shows it)
                    logger.info(
                        "fit: epoch %d/%d, train loss %.5g%s",
                        epoch + 1,
                        epochs,
                        float(record["train_loss"]),
                        f", val loss {float(record['val_loss']):.5g}"
                        if "val_loss" in record
                        else "",
                    )
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


@contextlib.contextmanager
def _named_dtype_errors(name: str, dtype: torch.dtype):
    """Turn a raw torch dtype mismatch inside the block into a TypeError naming ``name``."""
    try:
        yield
    except RuntimeError as err:
        named = _dtype_mismatch(err, name, dtype)
        if named is None:
            raise
        raise named from err


#: Settings that must match for a resumed run to continue the same trajectory.
_TRAJECTORY_KEYS = ("batch_size", "seed", "num_train", "objective", "optimizer", "lr")


def _resume_extra(state: Mapping, path: Path) -> Mapping:
    extra = state["extra"]
    for key in ("epoch", "step", "best", "history"):
        if key not in extra:
            raise _damaged(path, f"it has no {key!r} to resume from (not written by fit)")
    history = extra["history"]
    if not (
        isinstance(history, Mapping)
        and isinstance(history.get("steps"), Mapping)
        and isinstance(history.get("epochs"), Mapping)
        and all(torch.is_tensor(v) for t in ("steps", "epochs") for v in history[t].values())
    ):
        raise _damaged(path, "its training history is malformed")
    return extra


def _check_same_trajectory(saved: Mapping, settings: Mapping, path: Path) -> None:
    if not isinstance(saved, Mapping):
        raise _damaged(path, "its recorded settings are malformed")
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


def _init_params(elbo, model, guide, xb, args, kwargs) -> None:
    """Create every param (and lazily built state) by one evaluation."""
    with torch.no_grad():
        elbo.loss(model, guide, xb, *args, **kwargs)


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
