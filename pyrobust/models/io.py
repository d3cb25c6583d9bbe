"""Saving and loading :class:`~pyrobust.models.VAE` models safely.

A model file holds the state dict and a JSON config that names the class of the encoder,
decoder and likelihood with their constructor arguments (from each module's ``config()``).
It is written with :func:`torch.save` to a temporary file in the target directory and moved
into place with :func:`os.replace`, so a crash never leaves a half-written file, and read
with ``torch.load(weights_only=True)``, so loading runs no pickled code: the classes are
rebuilt from a registry of known names, never from the file.

A model file is data, not code, and an untrusted one cannot make :func:`load_model` do more
work than its size: the JSON config is parsed with bounded nesting and bounded numbers, the
network is first built on the ``meta`` device (no memory), its parameter names, shapes and
dtypes are checked against the weights in the file, and only then are the file's tensors
assigned to it. Non-finite weights are refused.

Custom networks take part by having a ``config()`` method returning JSON-able constructor
arguments and being registered once with :func:`register_module`.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

from pyrobust.models import likelihoods, lipschitz, nets
from pyrobust.models.vae import VAE

__all__ = ["load_model", "model_config", "model_from_config", "register_module", "save_model"]

_FORMAT = "pyrobust.VAE"
_VERSION = 1
#: Bounds on a model file's JSON config: nesting depth, list length, string length, |int|.
_MAX_DEPTH = 16
_MAX_ITEMS = 4096
_MAX_STR = 4096
_MAX_INT = 2**31 - 1
_REGISTRY: dict[str, type[nn.Module]] = {}


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Register a network or likelihood class so :func:`load_model` can rebuild it.

    The class must be a :class:`torch.nn.Module` with a ``config()`` method whose JSON-able
    result are its constructor keyword arguments. Usable as a class decorator.

    Parameters
    ----------
    cls : type
        The class; it is registered under ``cls.__name__``.

    Returns
    -------
    type
        ``cls`` itself.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_module expects an nn.Module subclass; got {cls!r}.")
    if not callable(getattr(cls, "config", None)):
        raise TypeError(
            f"{cls.__name__} has no config() method; add one returning its constructor "
            "arguments as a JSON-able dict."
        )
    known = _REGISTRY.get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(
            f"A different class named {cls.__name__!r} is already registered "
            f"({known.__module__}.{known.__qualname__}); rename one of them."
        )
    _REGISTRY[cls.__name__] = cls
    return cls


for _module in (nets, likelihoods, lipschitz):
    for _name in _module.__all__:
        _obj = getattr(_module, _name)
        if (
            isinstance(_obj, type)
            and issubclass(_obj, nn.Module)
            and callable(getattr(_obj, "config", None))
            and _name != "Likelihood"
        ):
            register_module(_obj)


def _module_spec(module: nn.Module, role: str) -> dict:
    cls = type(module)
    if _REGISTRY.get(cls.__name__) is not cls:
        raise TypeError(
            f"The {role} is a {cls.__qualname__}, which is not registered for saving. Give it "
            "a config() method returning its constructor arguments and call "
            "pyrobust.models.register_module(" + cls.__name__ + ")."
        )
    config = module.config()
    try:
        json.dumps(config)
    except TypeError as err:
        raise TypeError(f"{cls.__name__}.config() must return a JSON-able dict: {err}") from err
    return {"class": cls.__name__, "config": config}


def _build(spec, role: str) -> nn.Module:
    if not isinstance(spec, dict) or not {"class", "config"} <= spec.keys():
        raise ValueError(f"Malformed {role} entry in the model config: {spec!r}.")
    cls = _REGISTRY.get(spec["class"]) if isinstance(spec["class"], str) else None
    if cls is None:
        raise ValueError(
            f"The {role} class {spec['class']!r} is not registered; known classes are "
            f"{sorted(_REGISTRY)}. Import the module defining it and call "
            "pyrobust.models.register_module on it before loading."
        )
    if not isinstance(spec["config"], dict):
        raise ValueError(
            f"The {role} entry of the model config has config {spec['config']!r}; expected a dict "
            f"of {spec['class']}'s constructor arguments."
        )
    try:
        return cls(**spec["config"])
    except MemoryError:
        raise
    except Exception as err:  # a constructor refusing its arguments, in whatever words
        raise ValueError(
            f"The {role} config {spec['config']!r} does not build a {spec['class']}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def model_config(vae: VAE) -> dict:
    """The JSON-able description of a VAE's architecture (no weights).

    Parameters
    ----------
    vae : VAE

    Returns
    -------
    dict
        ``{"encoder": {"class", "config"}, "decoder": ..., "likelihood": ..., "latent_site",
        "obs_site", "latent_dim"}``; :func:`model_from_config` rebuilds an untrained copy.
    """
    if not isinstance(vae, VAE):
        raise TypeError(f"Expected a pyrobust.models.VAE; got {type(vae).__name__}.")
    return {
        "encoder": _module_spec(vae.encoder, "encoder"),
        "decoder": _module_spec(vae.decoder, "decoder"),
        "likelihood": _module_spec(vae.likelihood, "likelihood"),
        "latent_site": vae.latent_site,
        "obs_site": vae.obs_site,
        "latent_dim": vae.latent_dim,
    }


def model_from_config(config: dict) -> VAE:
    """Build a freshly initialised :class:`VAE` from :func:`model_config`'s output."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict; got {type(config).__name__}.")
    missing = {"encoder", "decoder", "likelihood"} - config.keys()
    if missing:
        raise ValueError(f"The model config lacks {sorted(missing)}.")
    _check_bounds(config, "model config", "config", 0)
    return VAE(
        _build(config["encoder"], "encoder"),
        _build(config["decoder"], "decoder"),
        _build(config["likelihood"], "likelihood"),
        latent_site=config.get("latent_site", "z"),
        obs_site=config.get("obs_site", "x"),
        latent_dim=config.get("latent_dim"),
    )


def save_model(vae: VAE, path: str | os.PathLike) -> Path:
    """Save a VAE's weights and architecture to one file, atomically.

    The file is written to a temporary sibling ``.NAME.PID.*.tmp`` (created with
    :func:`tempfile.mkstemp`, so no predictable name and no symlink is ever followed), flushed,
    and moved onto ``path`` with :func:`os.replace`: a save that fails or is killed leaves the
    old file intact. Temporary files of earlier saves whose process has died are removed.

    Parameters
    ----------
    vae : VAE
        The model; its encoder, decoder and likelihood classes must be registered
        (all of pyrobust's are; see :func:`register_module`). Its weights must be finite.
    path : str or os.PathLike
        Destination file (conventionally ``*.pt``); its directory must exist. An existing
        file is replaced only once the new one is completely written.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If ``vae`` is not a :class:`VAE`, a module is not registered, or ``path`` is not a path.
    ValueError
        If a weight is NaN or infinite, or ``path`` is a directory.
    FileNotFoundError
        If the directory of ``path`` does not exist.
    """
    config = model_config(vae)
    path = _check_path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot save to {str(path)!r}: directory {str(path.parent)!r} does not exist."
        )
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; pass a file path such as model.pt.")
    state = {k: v.detach() for k, v in vae.state_dict().items()}
    _check_finite(state, "vae")
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": json.dumps(config),
        "state_dict": state,
    }
    _clean_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike, map_location=None) -> VAE:
    """Load a VAE saved by :func:`save_model`, running no pickled code.

    The file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only).
    Its JSON config is parsed with bounds (nesting depth 16, 4096 items per list, integers below
    2**31), the network is built on the ``meta`` device (allocating nothing), and its
    parameter names, shapes and dtypes are checked against the file's weights; only then are
    the file's tensors assigned to the network. A file can therefore never make the loader
    allocate more than the weights it holds.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`save_model`.
    map_location : str, torch.device or callable, optional
        Passed to :func:`torch.load`, e.g. ``"cpu"`` for a model saved on a GPU.

    Returns
    -------
    VAE
        A model whose parameters, buffers, dtypes and outputs equal the saved ones (on
        ``map_location`` when given).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    TypeError
        If ``path`` is not a str or path-like.
    ValueError
        If the file is not a pyrobust model file, is corrupted or truncated, holds anything
        beyond tensors and plain containers, has a config that is malformed, nested too deeply
        or out of bounds, does not match its own config (names, shapes, dtypes), or holds NaN
        or infinite weights.
    """
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    _check_map_location(map_location)
    _clean_stale_temps(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # torch.load fails on damaged bytes with many exception types
        raise ValueError(
            f"{str(path)!r} is not a readable pyrobust model file: it is corrupted or "
            "truncated, holds objects other than tensors (refused by weights_only loading), or "
            f"was saved on a device this machine lacks (pass map_location='cpu'). "
            f"{type(err).__name__}: {str(err)[:300]}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(
            f"{str(path)!r} is a torch file but not a pyrobust model file (no "
            f"format={_FORMAT!r} marker). Save models with pyrobust.models.save_model."
        )
    if payload.get("version") != _VERSION:
        raise ValueError(
            f"{str(path)!r} has model-file version {payload.get('version')!r}; this pyrobust "
            f"reads version {_VERSION}."
        )
    config = _parse_config(payload.get("config"), path)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{str(path)!r} has a malformed state_dict: expected a dict of str -> tensor."
        )
    try:
        with torch.device("meta"):
            vae = model_from_config(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} has a config that does not build a VAE: {err}") from err
    _check_against(vae, state, path)
    _check_finite(state, str(path))
    try:
        vae.load_state_dict(state, strict=True, assign=True)
    except (KeyError, RuntimeError) as err:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit the architecture in its config: {err}"
        ) from err
    if any(t.is_meta for t in _tensors(vae)):
        # A custom module with state outside its state dict: build it for real, now that its
        # size is known to match the file, and load the weights into it.
        device = next(iter(state.values())).device if state else None
        with torch.device(device or "cpu"):
            vae = model_from_config(config)
        vae.load_state_dict(state, strict=True, assign=True)
    return vae


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(
            f"path must be a str or os.PathLike (e.g. 'model.pt'); got {type(path).__name__}."
        )
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise ValueError(f"path must be a non-empty file path without NUL bytes; got {text!r}.")
    return Path(text)


def _check_map_location(map_location) -> None:
    if map_location is None or callable(map_location) or isinstance(map_location, dict):
        return
    if not isinstance(map_location, (str, torch.device)):
        raise TypeError(
            f"map_location must be a device such as 'cpu' or 'cuda:0' (or None); got "
            f"{type(map_location).__name__}."
        )
    try:
        device = torch.device(map_location)
    except RuntimeError as err:
        raise ValueError(
            f"map_location={map_location!r} is not a torch device; use e.g. 'cpu' or 'cuda:0'."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"map_location={map_location!r}: CUDA is not available on this machine; "
            "pass map_location='cpu'."
        )


def _parse_config(text, path: Path) -> dict:
    """The model file's JSON config, refusing what is malformed, too deep or too large."""
    if not isinstance(text, str):
        raise ValueError(f"{str(path)!r} has a missing or malformed config (not a JSON string).")
    try:
        config = json.loads(text)
    except RecursionError:
        raise ValueError(
            f"{str(path)!r} has a config nested too deeply to read; the file is damaged or "
            "crafted. Model configs are flat dicts of constructor arguments."
        ) from None
    except ValueError as err:
        raise ValueError(f"{str(path)!r} has a malformed config: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{str(path)!r} has a config of type {type(config).__name__}; expected a dict."
        )
    _check_bounds(config, repr(str(path)), "config", 0)
    return config


def _check_bounds(value, origin: str, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(
            f"{origin}: the config is nested more than {_MAX_DEPTH} levels deep at "
            f"{where}; the file is damaged or crafted."
        )
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(f"{i}", v) for i, v in enumerate(value)]
    else:
        items = []
    if len(items) > _MAX_ITEMS:
        raise ValueError(
            f"{origin}: {where} of the config has {len(items)} entries (at most "
            f"{_MAX_ITEMS}); the file is damaged or crafted."
        )
    if isinstance(value, str) and len(value) > _MAX_STR:
        raise ValueError(
            f"{origin}: {where} of the config is a string of {len(value)} characters "
            f"(at most {_MAX_STR})."
        )
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
        raise ValueError(
            f"{origin}: {where}={value} in the config is out of range (|value| <= "
            f"{_MAX_INT}); no network of that size fits in memory."
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{origin}: {where}={value} in the config is not finite.")
    for key, item in items:
        _check_bounds(item, origin, f"{where}.{key}", depth + 1)


def _check_against(vae: VAE, state: dict, path: Path) -> None:
    """Names, shapes and dtypes of the (meta) network's state dict against the file's."""
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit the architecture in its config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"The weights in {str(path)!r} do not fit the architecture in its config: "
                f"{key!r} has shape {tuple(got.shape)} in the file but {tuple(want.shape)} in "
                f"the network the config describes."
            )
        if want.dtype.is_floating_point != got.dtype.is_floating_point or (
            not want.dtype.is_floating_point and want.dtype != got.dtype
        ):
            raise ValueError(
                f"The weights in {str(path)!r} do not fit the architecture in its config: "
                f"{key!r} has dtype {got.dtype} in the file but the network expects "
                f"{want.dtype}."
            )
        if got.dtype.is_complex:
            raise ValueError(f"{str(path)!r}: {key!r} has complex dtype {got.dtype}.")


def _check_finite(state: dict, where: str) -> None:
    bad = [
        k
        for k, v in state.items()
        if v.dtype.is_floating_point and v.numel() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(
            f"{where}: weight(s) {bad[:5]} hold NaN or infinite values; such a model gives NaN "
            "reconstructions and meaningless robustness answers. Retrain (lower the learning "
            "rate) or load an earlier checkpoint."
        )


def _tensors(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor):
                yield value


def _clean_stale_temps(path: Path) -> None:
    """Remove ``.NAME.PID.*.tmp`` files of earlier saves of ``path`` whose process has died."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp")
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            try:
                (path.parent / entry).unlink()
            except OSError:
                pass
        except (PermissionError, OverflowError):
            pass
