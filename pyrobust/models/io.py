"""Saving and loading :class:`~pyrobust.models.VAE` models safely.

A model file holds the state dict and a JSON config that names the class of the encoder,
decoder and likelihood with their constructor arguments (from each module's ``config()``).
It is written with :func:`torch.save` to a temporary file in the target directory and moved
into place with :func:`os.replace`, so a crash never leaves a half-written file, and read
with ``torch.load(weights_only=True)``, so loading runs no pickled code: the classes are
rebuilt from a registry of known names, never from the file.

Custom networks take part by having a ``config()`` method returning JSON-able constructor
arguments and being registered once with :func:`register_module`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from pyrobust.models import likelihoods, lipschitz, nets
from pyrobust.models.vae import VAE

__all__ = ["load_model", "model_config", "model_from_config", "register_module", "save_model"]

_FORMAT = "pyrobust.VAE"
_VERSION = 1
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
    cls = _REGISTRY.get(spec["class"])
    if cls is None:
        raise ValueError(
            f"The {role} class {spec['class']!r} is not registered; known classes are "
            f"{sorted(_REGISTRY)}. Import the module defining it and call "
            "pyrobust.models.register_module on it before loading."
        )
    return cls(**spec["config"])


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

    Parameters
    ----------
    vae : VAE
        The model; its encoder, decoder and likelihood classes must be registered
        (all of pyrobust's are; see :func:`register_module`).
    path : str or os.PathLike
        Destination file (conventionally ``*.pt``); its directory must exist. An existing
        file is replaced only once the new one is completely written.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    config = model_config(vae)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot save to {str(path)!r}: directory {str(path.parent)!r} does not exist."
        )
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": json.dumps(config),
        "state_dict": {k: v.detach() for k, v in vae.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    ValueError
        If the file is not a pyrobust model file, is corrupted or truncated, holds anything
        beyond tensors and plain containers, or does not match its own config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No model file at {str(path)!r}.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except Exception as err:  # torch.load fails on damaged bytes with many exception types
        if isinstance(err, (MemoryError, RecursionError)):
            raise
        raise ValueError(
            f"{str(path)!r} is not a readable pyrobust model file: it is corrupted or "
            "truncated, holds objects other than tensors (refused by weights_only loading), or "
            f"was saved on a device this machine lacks (pass map_location='cpu'). {err}"
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
    try:
        config = json.loads(payload["config"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} has a missing or malformed config: {err}") from err
    vae = model_from_config(config)
    try:
        vae.load_state_dict(payload["state_dict"], strict=True, assign=True)
    except (KeyError, RuntimeError) as err:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit the architecture in its config: {err}"
        ) from err
    return vae
