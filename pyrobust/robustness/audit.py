r"""Audits that outgrow one process: sharded robustness queries streamed into one zarr store.

:func:`audit` answers robustness queries (:func:`pyrobust.r_robustness`,
:func:`pyrobust.margin_bound`, any other query of :mod:`pyrobust.robustness`, or a callable of
the same shape) over a data set too large for one call. The inputs are cut into shards of
``shard_size`` consecutive inputs; each shard is one call of each query, run in this process
(``engine="local"``) or by Ray actors (``engine="ray"``) that each load the model once. Every
finished shard is written into ONE zarr store by a region write, and the store records which
shards are done, so a run that crashed or was killed resumes where it stopped.

Store layout (zarr format 2, readable with ``xarray.open_datatree(out, engine="zarr")``)::

    /                               shards_done (shard), shard_start / shard_stop (shard),
                                    shard_seed (shard, query); attrs: the audit's settings
    /<label>/<group>                one group per query label and result group (default
                                    ``robustness`` and ``posterior_predictive``), the query's
                                    variables with ``obs_id`` running over the whole data set

Seeds: shard :math:`s` of query number :math:`q` runs with the seed
``numpy.random.SeedSequence(seed, spawn_key=(s, q))`` (:func:`shard_seed`), so the answers are
the same bits whatever the engine, the number of workers or the order in which shards finish
(on the same device with the same number of torch threads).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from pyrobust._results import _jsonable

__all__ = ["Query", "audit", "shard_seed"]

logger = logging.getLogger("pyrobust.audit")

#: Engines :func:`audit` runs shards on.
ENGINES = ("local", "ray")
#: Result groups of a query written to the store unless :attr:`Query.groups` says otherwise
#: (``posterior_predictive`` where the result has it).
DEFAULT_GROUPS = ("robustness", "posterior_predictive")
_FORMAT = "pyrobust.audit"
_VERSION = 1
_SHARD_DIM = "obs_id"
_ROOT_VARS = ("shards_done", "shard_start", "shard_stop", "shard_seed")
#: Attrs of a query's result that differ from shard to shard and so are not copied to the
#: store's (which would show the first shard's): the seed (the root variable ``shard_seed``
#: holds each shard's) and a sequential run's counters (``num_draws`` holds every cell's draws).
_PER_SHARD_ATTRS = ("seed", "rounds", "total_draws")


# --------------------------------------------------------------------------------------------
# queries and seeds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One robustness query of an audit.

    Parameters
    ----------
    fn : str or callable
        The name of a query of :mod:`pyrobust.robustness` (``"r_robustness"``,
        ``"margin_bound"``, ``"certified_margin"``, ``"max_damage_attack"``,
        ``"empirical_margin"``, ``"likelihood_degradation"``, ``"latent_attack"``,
        ``"output_attack"``) or a callable ``fn(model, guide, x, *, seed, **kwargs)`` returning
        an ``xarray.DataTree`` whose result groups have an ``obs_id`` dim. A callable is run
        by Ray workers too: it must be picklable (a module-level function).
    kwargs : mapping, optional
        Keyword arguments of ``fn`` (everything but ``model, guide, x`` and ``seed``, which the
        audit sets per shard).
    groups : sequence of str, optional
        Groups of each shard's result written to the store. Their variables with an ``obs_id``
        dim are written shard by shard; those without it (radii, draws) once. By default the
        result's ``robustness`` group and, when it has one, its ``posterior_predictive``
        group (a fixed design's draws; ``num_samples="auto"`` and the attacks summarise theirs
        in ``robustness``). Groups named here must exist.
    per_input : mapping of {str: int}, optional
        Keyword arguments that hold one entry per input, and the axis that runs over the
        inputs; they are sliced shard by shard. Tensors shaped like the data (axis 0) or like a
        stack of it, ``(m, *data.shape)`` (axis 1), e.g. a ``delta`` or a ``target``, are
        found without being named here, and so are the tensors in ``model_args`` /
        ``model_kwargs`` whose leading dim is the number of inputs (they follow their input,
        as in every query).

    Examples
    --------
    >>> Query("r_robustness", {"r": [0.5, 1.0], "num_samples": 100}).name
    'r_robustness'
    """

    fn: str | Callable
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    groups: Sequence[str] | None = None
    per_input: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.fn, str):
            _query_function(self.fn)
        elif not callable(self.fn):
            raise TypeError(
                f"Query.fn must be a query name or a callable; got {type(self.fn).__name__}."
            )
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(
                f"Query.kwargs must be a mapping of keyword arguments; got "
                f"{type(self.kwargs).__name__}."
            )
        reserved = {"model", "guide", "x", "seed"} & set(self.kwargs)
        if reserved:
            raise ValueError(
                f"Query.kwargs must not set {sorted(reserved)}: the audit passes the model, the "
                "guide and each shard's inputs, and derives each shard's seed from audit(seed=)."
            )
        if self.groups is not None:
            groups = (self.groups,) if isinstance(self.groups, str) else tuple(self.groups)
            if not groups or not all(isinstance(g, str) and g and "/" not in g for g in groups):
                raise ValueError(
                    f"Query.groups must be a non-empty sequence of result-group names such as "
                    f"{DEFAULT_GROUPS}, or None for the default; got {self.groups!r}."
                )
            object.__setattr__(self, "groups", groups)
        for key, axis in dict(self.per_input).items():
            if key not in self.kwargs:
                raise ValueError(
                    f"Query.per_input names {key!r}, which is not in Query.kwargs "
                    f"({sorted(self.kwargs)}); add it there or drop it from per_input."
                )
            if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
                raise ValueError(
                    f"Query.per_input[{key!r}] must be the non-negative axis running over the "
                    f"inputs; got {axis!r}."
                )

    @property
    def name(self) -> str:
        """The query function's name (for a callable, ``module.qualname``)."""
        if isinstance(self.fn, str):
            return self.fn
        return f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', '?')}"


def _query_function(name: str) -> Callable:
    from pyrobust import robustness

    fn = getattr(robustness, name, None) if name in robustness.__all__ else None
    params = list(inspect.signature(fn).parameters)[:3] if callable(fn) else []
    if params != ["model", "guide", "x"]:
        known = [
            n
            for n in robustness.__all__
            if callable(getattr(robustness, n))
            and list(inspect.signature(getattr(robustness, n)).parameters)[:3]
            == ["model", "guide", "x"]
        ]
        raise ValueError(
            f"Unknown query {name!r} in `queries`; choose one of {known}, or pass a callable "
            "as Query(fn=...)."
        )
    return fn


def _normalize_queries(queries: Any) -> dict[str, Query]:
    if isinstance(queries, str | Query):
        queries = [queries]
    if isinstance(queries, Mapping):
        items = list(queries.items())
    elif isinstance(queries, Sequence) and not isinstance(queries, str):
        items = []
        for q in queries:
            if isinstance(q, str):
                items.append((q, q))
            elif isinstance(q, Query) and isinstance(q.fn, str):
                items.append((q.fn, q))
            else:
                raise TypeError(
                    "A list of queries holds query names or Query objects with a named fn; "
                    f"got {q!r}. Pass a dict {{label: Query(...)}} to label callables."
                )
    else:
        raise TypeError(
            "`queries` must be a dict {label: kwargs dict | Query}, a list of query names, or a "
            f"Query; got {type(queries).__name__}."
        )
    out: dict[str, Query] = {}
    for label, spec in items:
        if not isinstance(label, str) or not label or "/" in label or label in _ROOT_VARS:
            raise ValueError(
                f"Query label {label!r} must be a non-empty string without '/' (it names a "
                "group of the store)."
            )
        if label in out:
            raise ValueError(f"Query label {label!r} appears twice; labels must be unique.")
        if isinstance(spec, Query):
            out[label] = spec
        elif spec is None or isinstance(spec, str):
            out[label] = Query(label if spec is None else spec)
        elif isinstance(spec, Mapping):
            out[label] = Query(label, dict(spec))
        else:
            raise TypeError(
                f"queries[{label!r}] must be a dict of keyword arguments of {label!r} or a "
                f"Query; got {type(spec).__name__}."
            )
    if not out:
        raise ValueError(
            "`queries` is empty; name at least one query, e.g. {'r_robustness': {'r': 1.0}}."
        )
    return out


def shard_seed(seed: int, shard: int, query: int = 0) -> int:
    """The seed of one shard of one query: independent streams from one root seed.

    ``numpy.random.SeedSequence(seed, spawn_key=(shard, query))`` is the ``spawn`` child
    ``SeedSequence(seed).spawn(shard + 1)[shard].spawn(query + 1)[query]``; its first 64 state
    bits, shifted to 63, are the integer seed passed to the query's ``seed=``.

    Parameters
    ----------
    seed : int
        The audit's root seed, ``>= 0``.
    shard : int
        Shard number (shard ``s`` holds inputs ``s * shard_size`` to
        ``(s + 1) * shard_size - 1``).
    query : int, default 0
        Position of the query in the audit's ``queries``.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.

    Examples
    --------
    >>> shard_seed(0, 1) == shard_seed(0, 1) != shard_seed(0, 2)
    True
    """
    for value, name in ((seed, "seed"), (shard, "shard"), (query, "query")):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise TypeError(f"`{name}` must be a non-negative integer; got {value!r}.")
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(shard), int(query)))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def _sha256_tensor(t: Any) -> str:
    a = np.ascontiguousarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t)
    return hashlib.sha256(a.view(np.uint8).reshape(-1)).hexdigest()


def _model_source(model_or_run: Any) -> tuple[str, Any, dict]:
    """``(kind, payload, identity)``: kind ``"path"`` (a model file), ``"vae"`` or ``"pair"``."""
    if isinstance(model_or_run, str | os.PathLike):
        path = Path(model_or_run)
        file = path / "model.pt" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"model_or_run={str(path)!r}: expected a run directory holding model.pt (as "
                "written by `pyrobust train`) or a model file written by "
                "pyrobust.models.save_model."
            )
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        return "path", str(file.resolve()), {"model_file": str(file), "sha256": digest}
    if callable(getattr(model_or_run, "model", None)) and callable(
        getattr(model_or_run, "guide", None)
    ):
        identity: dict[str, Any] = {"class": type(model_or_run).__qualname__}
        if isinstance(model_or_run, torch.nn.Module):
            h = hashlib.sha256()
            for key, value in sorted(model_or_run.state_dict().items()):
                h.update(key.encode())
                h.update(_sha256_tensor(value).encode())
            identity["weights_sha256"] = h.hexdigest()
        return "vae", model_or_run, identity
    if (
        isinstance(model_or_run, tuple)
        and len(model_or_run) == 2
        and all(callable(f) for f in model_or_run)
    ):
        names = [
            f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', '?')}"
            for f in model_or_run
        ]
        return "pair", model_or_run, {"model": names[0], "guide": names[1]}
    raise TypeError(
        "model_or_run must be a run directory or model file (str or Path), a VAE with .model "
        f"and .guide, or a (model, guide) pair of Pyro callables; got {type(model_or_run).__name__}."
    )


def _sites(obj: Any) -> dict[str, str]:
    sites = {}
    for key in ("latent_site", "obs_site"):
        value = getattr(obj, key, None)
        if isinstance(value, str):
            sites[key] = value
    return sites


class _ShardRunner:
    """Runs every query on one shard; the unit of work of both engines (a Ray actor's class).

    The model is loaded (or unpickled) once, when the runner is built.
    """

    def __init__(self, kind: str, payload: Any, queries: dict, device: str | None, threads):
        if threads:
            torch.set_num_threads(int(threads))
        if kind == "path":
            from pyrobust.models import load_model

            if device is None:
                device = "cpu"
            vae = load_model(payload, map_location=device)
            vae.eval()
            payload, kind = vae, "vae"
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                f"This audit worker was asked for device {device!r} but sees no CUDA device; "
                "pass num_gpus_per_worker=0 to run on CPUs."
            )
        if kind == "vae":
            if device is not None and isinstance(payload, torch.nn.Module):
                if any(t.device != torch.device(device) for t in payload.state_dict().values()):
                    payload = copy.deepcopy(payload).to(device)  # never move the caller's model
            self.model, self.guide = payload.model, payload.guide
            self.sites = _sites(payload)
        else:
            self.model, self.guide = payload
            self.sites = {}
        if device is None and isinstance(payload, torch.nn.Module):
            first = next(iter(payload.parameters()), None)
            device = str(first.device) if first is not None else None
        self.device = device
        self.queries = queries

    def run(self, shard: int, start: int, x: torch.Tensor, per_input: dict, seeds: list) -> dict:
        """Answer every query on ``x`` (inputs ``start .. start + len(x) - 1``)."""
        if self.device is not None:
            x = x.to(self.device)
        out: dict[str, dict] = {}
        for (label, query), seed in zip(self.queries.items(), seeds, strict=True):
            fn = _query_function(query.fn) if isinstance(query.fn, str) else query.fn
            kwargs = dict(query.kwargs)
            kwargs.update(per_input.get(label, {}))
            params = inspect.signature(fn).parameters
            for key, value in self.sites.items():
                if key in params and key not in kwargs:
                    kwargs[key] = value
            if self.device is not None:
                kwargs = _to_device(kwargs, self.device)
            if "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kwargs["seed"] = seed
            tree = fn(self.model, self.guide, x, **kwargs)
            out[label] = _shard_groups(tree, query.groups, label, start, x.shape[0])
        return out


def _shard_groups(tree: Any, groups: Sequence[str], label: str, start: int, n: int) -> dict:
    if not isinstance(tree, xr.DataTree):
        raise TypeError(
            f"Query {label!r} returned {type(tree).__name__}; an audit query must return an "
            "xarray.DataTree."
        )
    result: dict[str, Any] = {"attrs": dict(tree.attrs)}
    if groups is None:  # the default: robustness, and the draws where the result keeps them
        groups = [g for g in DEFAULT_GROUPS if g == "robustness" or g in tree.children]
    for group in groups:
        if group not in tree.children:
            raise ValueError(
                f"Query {label!r} has no result group {group!r}; its groups are "
                f"{sorted(tree.children)}. Set Query(groups=...) to the ones to keep."
            )
        ds = tree[group].to_dataset().load()
        if ds.sizes.get(_SHARD_DIM) != n:
            raise ValueError(
                f"Group {group!r} of query {label!r} must have an {_SHARD_DIM!r} dim of length "
                f"{n} (the shard's inputs); got dims {dict(ds.sizes)}."
            )
        ds = ds.assign_coords({_SHARD_DIM: np.arange(start, start + n)})
        result[group] = ds
    return result


def _per_input(queries: dict[str, Query], data: torch.Tensor) -> dict[str, dict[str, int]]:
    """For each query, the keyword arguments sliced by shard and their input axis."""
    out: dict[str, dict[str, int]] = {}
    shape = tuple(data.shape)
    for label, query in queries.items():
        axes = dict(query.per_input)
        for key, value in query.kwargs.items():
            if key in axes or not isinstance(value, torch.Tensor | np.ndarray):
                continue
            if tuple(value.shape) == shape:
                axes[key] = 0
            elif value.ndim == len(shape) + 1 and tuple(value.shape[1:]) == shape:
                axes[key] = 1
        for key, axis in axes.items():
            value = query.kwargs[key]
            if not hasattr(value, "shape") or len(value.shape) <= axis:
                raise ValueError(
                    f"queries[{label!r}].kwargs[{key!r}] is declared per input along axis {axis} "
                    f"but has shape {getattr(value, 'shape', None)}."
                )
            if value.shape[axis] != shape[0]:
                raise ValueError(
                    f"queries[{label!r}].kwargs[{key!r}] runs over the inputs along axis {axis} "
                    f"and must have {shape[0]} entries there (one per input); got shape "
                    f"{tuple(value.shape)}."
                )
        out[label] = axes
    return out


def _is_per_input(value: Any, n: int) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray) and value.ndim >= 1 and value.shape[0] == n


def _slice_model_arguments(value: Any, n: int, start: int, stop: int) -> Any:
    """``model_args``/``model_kwargs`` of one shard: per-input tensors (leading dim ``n``, as in
    the site protocol) are cut to the shard, everything else is passed as it is."""
    if isinstance(value, Mapping):
        return {k: _slice_model_arguments(v, n, start, stop) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_slice_model_arguments(v, n, start, stop) for v in value)
    if _is_per_input(value, n):
        return value[start:stop]
    return value


def _slice_per_input(queries, axes, start: int, stop: int, n: int) -> dict[str, dict[str, Any]]:
    out = {}
    for label, keys in axes.items():
        sliced = {}
        for key in ("model_args", "model_kwargs"):
            if key in queries[label].kwargs:
                sliced[key] = _slice_model_arguments(queries[label].kwargs[key], n, start, stop)
        for key, axis in keys.items():
            value = queries[label].kwargs[key]
            index = (slice(None),) * axis + (slice(start, stop),)
            sliced[key] = value[index]
            if isinstance(sliced[key], torch.Tensor):
                sliced[key] = sliced[key].contiguous()
        out[label] = sliced
    return out


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------
def _fingerprint_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray):
        return {
            "shape": list(value.shape),
            "dtype": str(value.dtype),
            "sha256": _sha256_tensor(value),
        }
    if isinstance(value, Mapping):
        return {str(k): _fingerprint_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fingerprint_value(v) for v in value]
    if callable(value) and not isinstance(value, type):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return _jsonable(value)


def _fill_like(values: np.ndarray) -> np.ndarray:
    kind = values.dtype.kind
    if kind in "fc":
        return np.full_like(values, np.nan)
    if kind in "OUS":
        return np.full(values.shape, "", dtype=object)
    return np.zeros_like(values)


def _strings_to_objects(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode variables become variable-length strings (no truncation later)."""
    for name in list(ds.variables):
        if ds[name].dtype.kind in "US":
            ds[name] = ds[name].astype(object)
    return ds


class _Store:
    """One zarr store: root bookkeeping plus one group per query label and result group."""

    def __init__(self, out, storage_options: Mapping | None):
        self.out = out
        self.kw: dict[str, Any] = {"zarr_format": 2, "consolidated": False}
        if storage_options:
            self.kw["storage_options"] = dict(storage_options)

    def _group(self, mode: str):
        import zarr

        kwargs = (
            {"storage_options": self.kw["storage_options"]} if "storage_options" in self.kw else {}
        )
        return zarr.open_group(self.out, mode=mode, zarr_format=2, **kwargs)

    def existing_settings(self, overwrite: bool = False) -> dict | None:
        """The settings of the audit store at ``out``; None when there is nothing there yet.

        Anything else at ``out`` (a directory of other files, another zarr store) is refused,
        also with ``overwrite``: an audit replaces only an audit.
        """
        fix = (
            "overwrite=True replaces only audit stores; choose a new `out` or remove it yourself"
            if overwrite
            else "choose a new `out`"
        )
        import zarr

        not_a_group = getattr(zarr.errors, "GroupNotFoundError", KeyError)
        local = _local_path(self.out)
        if local is not None and (not local.exists() or _is_empty_dir(local)):
            return None
        try:
            group = self._group("r")
        except (FileNotFoundError, not_a_group, KeyError, ValueError) as err:
            if local is None:
                return None  # an fsspec URL with nothing there yet
            raise ValueError(
                f"out={str(self.out)!r} exists and is not a zarr store; {fix}."
            ) from err
        attrs = dict(group.attrs)
        if attrs.get("format") != _FORMAT or attrs.get("format_version") != _VERSION:
            raise ValueError(
                f"out={str(self.out)!r} holds a zarr store that is not a pyrobust audit (format "
                f"{attrs.get('format')!r}, version {attrs.get('format_version')!r}; expected "
                f"{_FORMAT!r}, {_VERSION}); {fix}."
            )
        return json.loads(attrs["settings"])

    def create(self, settings: dict, starts, stops, seeds, labels) -> None:
        n_shards = len(starts)
        root = xr.Dataset(
            {
                "shards_done": ("shard", np.zeros(n_shards, dtype=bool)),
                "shard_start": ("shard", np.asarray(starts, dtype=np.int64)),
                "shard_stop": ("shard", np.asarray(stops, dtype=np.int64)),
                "shard_seed": (("shard", "query"), np.asarray(seeds, dtype=np.int64)),
            },
            coords={"shard": np.arange(n_shards), "query": np.asarray(labels, dtype=object)},
            attrs={
                "format": _FORMAT,
                "format_version": _VERSION,
                "settings": json.dumps(settings),
                "template_complete": 0,
                "seed_rule": "shard_seed[s, q] = pyrobust.robustness.audit.shard_seed(seed, s, q)",
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        encoding = {"shards_done": {"chunks": (1,)}}
        root.to_zarr(self.out, mode="w", encoding=encoding, **self.kw)

    def template_complete(self) -> bool:
        return bool(self._group("r").attrs.get("template_complete", 0))

    def done(self) -> np.ndarray:
        return np.asarray(self._group("r")["shards_done"][:], dtype=bool)

    def write_template(self, result: dict, n: int, shard_size: int) -> None:
        """Write every result group with its ``obs_id`` dim stretched to all ``n`` inputs."""
        for label, groups in result.items():
            attrs = {k: v for k, v in groups["attrs"].items() if k not in _PER_SHARD_ATTRS}
            for group, ds in groups.items():
                if group == "attrs":
                    continue
                path = f"{label}/{group}"
                tmpl = _strings_to_objects(ds.isel({_SHARD_DIM: slice(0, 1)}).copy())
                # the obs_id coordinate: one chunk (written once); variables: one chunk per shard
                encoding = {_SHARD_DIM: {"chunks": (n,)}}
                for name in tmpl.variables:
                    var = tmpl[name]
                    if _SHARD_DIM in var.dims and name != _SHARD_DIM:
                        tmpl[name] = var.copy(data=_fill_like(var.values))
                        chunks = tuple(
                            shard_size if d == _SHARD_DIM else tmpl.sizes[d] for d in var.dims
                        )
                        encoding[name] = {"chunks": chunks}
                tmpl.attrs = {k: v for k, v in tmpl.attrs.items() if k not in _PER_SHARD_ATTRS}
                tmpl.to_zarr(self.out, group=path, mode="w", encoding=encoding, **self.kw)
                zgroup = self._group("r+")[path]
                for name, arr in zgroup.arrays():
                    dims = list(arr.attrs.get("_ARRAY_DIMENSIONS", []))
                    if _SHARD_DIM in dims:
                        shape = list(arr.shape)
                        shape[dims.index(_SHARD_DIM)] = n
                        arr.resize(tuple(shape))
                        if name == _SHARD_DIM:
                            arr[:] = np.arange(n, dtype=arr.dtype)
            self._group("r+")[label].attrs.update(
                {**attrs, "seed": "one per shard: the root variable shard_seed"}
            )
        self._group("r+").attrs["template_complete"] = 1

    def write_shard(self, shard: int, start: int, stop: int, result: dict) -> None:
        """Region-write one shard's groups, then mark the shard done."""
        region = {_SHARD_DIM: slice(start, stop)}
        for label, groups in result.items():
            for group, ds in groups.items():
                if group == "attrs":
                    continue
                part = ds.drop_vars(
                    [v for v in ds.variables if _SHARD_DIM not in ds[v].dims or v == _SHARD_DIM]
                )
                part.attrs = {}
                part.to_zarr(
                    self.out, group=f"{label}/{group}", mode="r+", region=region, **self.kw
                )
        flag = xr.Dataset({"shards_done": ("shard", np.ones(1, dtype=bool))})
        flag.to_zarr(self.out, mode="r+", region={"shard": slice(shard, shard + 1)}, **self.kw)

    def finish(self) -> None:
        import zarr

        kwargs = (
            {"storage_options": self.kw["storage_options"]} if "storage_options" in self.kw else {}
        )
        zarr.consolidate_metadata(self.out, zarr_format=2, **kwargs)


def _local_path(out) -> Path | None:
    """``out`` as a local path; None for an fsspec URL (``s3://...``)."""
    if isinstance(out, os.PathLike) or (isinstance(out, str) and "://" not in out):
        return Path(out)
    return None


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class _Progress:
    """One progress bar over all shards: tqdm on a terminal, log lines otherwise."""

    def __init__(self, total: int, initial: int, progress: bool | None):
        self.total, self.count = total, initial
        self.enabled = progress is not False
        self.bar = None
        if progress is True or (progress is None and sys.stderr.isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="shard", desc="audit")
        elif self.enabled:
            logger.info("audit: %d of %d shards already done", initial, total)

    def update(self, shard: int, seconds: float) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            logger.info(
                "audit: shard %d done in %.2f s (%d/%d)", shard, seconds, self.count, self.total
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Writer:
    """Store writes, in order, on one background thread: a finished shard is written while the
    next one is computed. At most one write is in flight; its error surfaces at the next call."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyrobust-audit-write")
        self._pending: Future | None = None

    def submit(self, fn: Callable, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------
def _run_local(runner_args, jobs, on_result) -> None:
    runner = _ShardRunner(*runner_args)
    for job in jobs:
        t0 = time.perf_counter()
        result = runner.run(*job)
        on_result(job[0], result, time.perf_counter() - t0)


def _import_ray():
    try:
        import ray
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'engine="ray" needs Ray, an optional extra: pip install "pyrobust[ray]" '
            '(or pip install "ray[default]>=2.9,<3"). Use engine="local" without it.'
        ) from err
    return ray


def _run_ray(
    runner_args,
    jobs,
    on_result,
    *,
    address,
    num_workers,
    num_gpus_per_worker,
    num_cpus_per_worker,
    max_retries,
    ray_init,
) -> None:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(address=address, **dict(ray_init or {}))
        started = True
    elif address is not None:
        logger.warning(
            "audit: Ray is already initialised in this process; address=%r is unused", address
        )
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0.0))
        if num_gpus_per_worker is None:
            num_gpus_per_worker = 1 if gpus > 0 else 0
        if num_workers is None:
            if num_gpus_per_worker:
                num_workers = int(gpus // num_gpus_per_worker)
            else:
                num_workers = int(resources.get("CPU", 1.0) // (num_cpus_per_worker or 1))
        num_workers = max(1, min(int(num_workers), len(jobs)))
        options: dict[str, Any] = {
            "num_gpus": num_gpus_per_worker,
            "max_restarts": max_retries,
            "max_task_retries": max_retries,
        }
        if num_cpus_per_worker is None:
            # share the cluster's CPUs, at most one each: more actors than CPUs still all start
            cpus = float(resources.get("CPU", 0.0))
            num_cpus_per_worker = math.floor(min(1.0, cpus / num_workers) * 1e4) / 1e4
        options["num_cpus"] = num_cpus_per_worker
        kind, payload, queries, device, threads = runner_args
        if device is None:
            device = "cuda" if num_gpus_per_worker else "cpu"
        if kind != "path":
            payload = ray.put(payload)  # shipped once, unpickled once per actor
        queries = {
            label: dataclasses.replace(q, kwargs=_to_cpu(dict(q.kwargs)))
            for label, q in queries.items()
        }
        actor_class = ray.remote(_ShardRunner).options(**options)
        actors = [
            actor_class.remote(
                kind, payload, queries, device, threads or max(1, int(num_cpus_per_worker))
            )
            for _ in range(num_workers)
        ]
        logger.info("audit: %d Ray workers, %s GPU each", num_workers, num_gpus_per_worker)
        pending = deque(jobs)
        inflight: dict[Any, tuple[int, Any, float]] = {}

        def submit(actor):
            if pending:
                job = pending.popleft()
                inflight[actor.run.remote(*job)] = (job[0], actor, time.perf_counter())

        try:
            for actor in actors:
                submit(actor)
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                shard, actor, t0 = inflight.pop(ready[0])
                result = ray.get(ready[0])
                submit(actor)
                on_result(shard, result, time.perf_counter() - t0)
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# the public function
# --------------------------------------------------------------------------------------------
def audit(
    model_or_run: Any,
    data: Any,
    *,
    queries: Any,
    out: str | os.PathLike = "audit.zarr",
    engine: str = "local",
    shard_size: int = 1024,
    seed: int | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    num_gpus_per_worker: float | None = None,
    num_cpus_per_worker: float | None = None,
    max_retries: int = 3,
    device: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    ray_init: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    r"""Run robustness queries over a whole data set, shard by shard, into one zarr store.

    The ``n`` inputs are cut into :math:`S = \lceil n / \text{shard\_size} \rceil` shards of
    consecutive inputs. Shard :math:`s` runs every query on inputs
    :math:`s\,b, \dots, \min((s+1)\,b, n) - 1` (:math:`b` = ``shard_size``) with the seed
    :func:`shard_seed` ``(seed, s, q)`` for query :math:`q`, so it gives exactly what one call
    ``query(model, guide, x[s*b:(s+1)*b], seed=shard_seed(seed, s, q), **kwargs)`` gives,
    whatever the engine, the number of workers or the order in which shards finish.

    Each finished shard is written into the store at ``out`` by region writes
    (``xarray.Dataset.to_zarr(region=...)``, one zarr chunk per shard along ``obs_id``, after
    a template written from the first finished shard) and then marked in the root variable
    ``shards_done``. Running ``audit`` again with the same settings resumes: shards marked done
    are not recomputed, so an audit killed at any point loses at most the shards in flight.
    Only this process writes the store, on a background thread, while the next shard computes.

    Parameters
    ----------
    model_or_run : str, os.PathLike, VAE or (model, guide)
        A run directory written by ``pyrobust train`` (its ``model.pt``) or a model file of
        :func:`pyrobust.models.save_model`, loaded once per worker; a
        :class:`pyrobust.models.VAE` (or any object with ``.model`` and ``.guide``); or a pair
        of Pyro callables. A VAE's ``latent_site``/``obs_site`` are passed to the queries.
    data : torch.Tensor or numpy.ndarray
        The inputs, ``(n, *event)``; kept where they are and sent shard by shard.
    queries : dict, list or Query
        ``{label: kwargs}`` with a query name as label (``{"r_robustness": {"r": 1.0},
        "margin_bound": {"r": 1.0, "confidence": 0.95}}``), ``{label: Query(...)}``, or a
        list of query names. Each label is a group of the store.
    out : str or os.PathLike, default "audit.zarr"
        The zarr store (a path, or an fsspec URL with ``storage_options``). On a multi-node
        cluster only the driver writes it.
    engine : {"local", "ray"}, default "local"
        ``"local"`` runs the shards one after another in this process; ``"ray"`` on Ray
        actors (the ``ray`` extra), each loading the model once.
    shard_size : int, default 1024
        Inputs per shard (and per zarr chunk). Part of the answer: the same seed with another
        shard size draws other noise.
    seed : int, optional
        Root seed. By default a fresh one, stored in the store so a resumed run reuses it.
    address : str, optional
        Ray cluster to connect to (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``);
        default: the running Ray instance, or a new local one (shut down afterwards).
    num_workers : int, optional
        Ray actors; default one per GPU (GPU clusters) or per CPU.
    num_gpus_per_worker : float, optional
        GPUs per actor; default 1 when the cluster has GPUs, else 0. Actors with GPUs run on
        ``cuda``.
    num_cpus_per_worker : float, optional
        CPUs reserved per actor (and its torch threads, rounded down, at least 1); default
        ``min(1, CPUs / num_workers)`` of the cluster, so every actor can start.
    max_retries : int, default 3
        Restarts of a Ray actor that died and retries of its task (``max_restarts``,
        ``max_task_retries``); a query's own exception is never retried.
    device : str, optional
        Torch device of the local engine (default: the model's) or of Ray actors (default
        ``cuda`` with GPUs, else ``cpu``).
    threads : int, optional
        Torch CPU threads of each worker (default: unchanged locally, 1 on Ray).
    overwrite : bool, default False
        Replace an existing audit store at ``out`` instead of resuming it. Anything else at
        ``out`` (other files, another zarr store) is refused either way: never deleted.
    progress : bool, optional
        ``True``: a tqdm bar; ``False``: silent; default: tqdm on a terminal, else one
        ``logging`` line (logger ``pyrobust.audit``) per shard.
    storage_options : dict, optional
        fsspec options of a remote ``out``.
    ray_init : dict, optional
        Extra keyword arguments of ``ray.init`` when the audit starts or joins a cluster.

    Returns
    -------
    xarray.DataTree
        The store, opened lazily: ``tree["<label>/robustness"]`` holds the query's summaries
        over all inputs (``obs_id`` = 0..n-1), the root ``shards_done`` which shards are in.

    Raises
    ------
    ValueError, TypeError
        For bad arguments, or when ``out`` holds another audit (other data, model, queries,
        seed or shard size): choose a new ``out`` or pass ``overwrite=True``.
    ImportError
        ``engine="ray"`` without Ray installed.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, tempfile, torch
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x, 0.1).to_event(1))
    >>> x = torch.zeros(10, 2)
    >>> out = tempfile.mkdtemp() + "/audit.zarr"
    >>> tree = audit((model, guide), x, queries={"r_robustness": {"r": 0.3, "num_samples": 50}},
    ...              out=out, shard_size=4, seed=0, progress=False)
    >>> tree["r_robustness/robustness"]["probability"].sizes["obs_id"]
    10
    >>> bool(tree["shards_done"].all())
    True
    """
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {ENGINES}; got {engine!r}.")
    data = _check_data(data)
    n = int(data.shape[0])
    if (
        isinstance(shard_size, bool)
        or not isinstance(shard_size, int | np.integer)
        or shard_size < 1
    ):
        raise ValueError(f"`shard_size` must be a positive integer; got {shard_size!r}.")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
    ):
        raise TypeError(f"`seed` must be None or a non-negative integer; got {seed!r}.")
    for value, name in ((num_workers, "num_workers"), (threads, "threads")):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"`{name}` must be None or a positive integer; got {value!r}.")
    for value, name in (
        (num_gpus_per_worker, "num_gpus_per_worker"),
        (num_cpus_per_worker, "num_cpus_per_worker"),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            raise ValueError(f"`{name}` must be None or a number >= 0; got {value!r}.")
    for value, name in ((overwrite, "overwrite"), (progress, "progress")):
        if not isinstance(value, bool) and not (name == "progress" and value is None):
            raise TypeError(
                f"`{name}` must be True or False{' (or None)' if name == 'progress' else ''}; "
                f"got {value!r}."
            )
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(
                f"`device` must be a torch device such as 'cpu', 'cuda' or 'cuda:1'; got "
                f"{device!r}."
            ) from None
        if engine == "local" and dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"`device`={device!r}: CUDA is not available in this process; use device='cpu'."
            )
        device = str(dev)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"`max_retries` must be an integer >= 0; got {max_retries!r}.")
    if engine == "local" and (address is not None or num_workers is not None):
        raise ValueError(
            '`address` and `num_workers` are settings of engine="ray"; pass engine="ray" or '
            "drop them."
        )
    qs = _normalize_queries(queries)
    axes = _per_input(qs, data)
    kind, payload, identity = _model_source(model_or_run)
    shard_size = int(shard_size)

    settings = {
        "n_inputs": n,
        "input_shape": list(data.shape[1:]),
        "data_sha256": _sha256_tensor(data),
        "shard_size": shard_size,
        "model": identity,
        "queries": {
            label: {
                "fn": q.name,
                "kwargs": _fingerprint_value(dict(q.kwargs)),
                "groups": "default" if q.groups is None else list(q.groups),
            }
            for label, q in qs.items()
        },
    }
    store = _Store(out, storage_options)
    previous = store.existing_settings(overwrite)
    if overwrite:
        previous = None
    if previous is not None:
        stored_seed = previous.pop("seed")
        if seed is None:
            seed = stored_seed
        changed = sorted(
            k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k)
        )
        if seed != stored_seed:
            changed.append("seed")
        if changed:
            raise ValueError(
                f"out={str(out)!r} holds an audit with other settings ({', '.join(changed)} "
                "differ), so it cannot be resumed. Choose a new `out`, or pass overwrite=True "
                "to replace it."
            )
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    seed = int(seed)
    settings["seed"] = seed

    starts = list(range(0, n, shard_size))
    stops = [min(s + shard_size, n) for s in starts]
    seeds = [[shard_seed(seed, s, q) for q in range(len(qs))] for s in range(len(starts))]
    writer = _Writer()
    if previous is None:
        writer.submit(store.create, settings, starts, stops, seeds, list(qs))
        done = np.zeros(len(starts), dtype=bool)
    else:
        done = store.done()
    template_done = previous is not None and store.template_complete()
    if not template_done:
        done[:] = False  # a store killed before its template was complete holds nothing yet

    # Ray ships shards between processes (and nodes): from the CPU, whatever the data's device
    ship = _to_cpu if engine == "ray" else (lambda value: value)
    jobs = [
        (
            s,
            starts[s],
            ship(data[starts[s] : stops[s]]),
            ship(_slice_per_input(qs, axes, starts[s], stops[s], n)),
            seeds[s],
        )
        for s in range(len(starts))
        if not done[s]
    ]
    bar = _Progress(len(starts), int(done.sum()), progress)

    def write(shard: int, result: dict, seconds: float) -> None:
        nonlocal template_done
        if not template_done:
            store.write_template(result, n, shard_size)
            template_done = True
        store.write_shard(shard, starts[shard], stops[shard], result)
        bar.update(shard, seconds)

    def on_result(shard: int, result: dict, seconds: float) -> None:
        writer.submit(write, shard, result, seconds)

    runner_args = (kind, payload, qs, device, threads)
    try:
        if not jobs:
            pass
        elif engine == "local":
            _run_local(runner_args, jobs, on_result)
        else:
            _run_ray(
                runner_args,
                jobs,
                on_result,
                address=address,
                num_workers=num_workers,
                num_gpus_per_worker=num_gpus_per_worker,
                num_cpus_per_worker=num_cpus_per_worker,
                max_retries=max_retries,
                ray_init=ray_init,
            )
        writer.close()
    except BaseException as err:
        try:
            writer.close()  # keep the shard being written
        except Exception as write_err:  # the first error is the one to report
            logger.error("audit: writing a finished shard failed too: %s", write_err)
        err.add_note(
            f"pyrobust.audit: the shards finished so far are kept in {str(out)!r}; run the same "
            "audit again to resume."
        )
        raise
    finally:
        bar.close()
    store.finish()
    open_kwargs = {"storage_options": dict(storage_options)} if storage_options else {}
    return xr.open_datatree(out, engine="zarr", consolidated=True, **open_kwargs)


def _to_device(value: Any, device: Any) -> Any:
    """``value`` with every tensor in it (nested in tuples, lists, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _to_cpu(value: Any) -> Any:
    return _to_device(value, "cpu")


def _check_data(data: Any) -> torch.Tensor:
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"`data` must be a torch.Tensor or numpy array of inputs (n, *event); got "
            f"{type(data).__name__}."
        )
    if data.dim() < 1 or data.shape[0] < 1:
        raise ValueError(
            f"`data` must hold at least one input, (n, *event); got shape {tuple(data.shape)}."
        )
    data = data.detach()
    if data.is_floating_point() or data.is_complex():
        bad = ~torch.isfinite(data.reshape(data.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).reshape(-1)[:5].tolist()
            raise ValueError(
                f"`data` holds NaN or infinite values in {int(bad.sum())} input(s) (first: "
                f"{rows}); remove or impute them before the audit."
            )
    return data
