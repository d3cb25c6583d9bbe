"""Building result trees: one place that turns tensors into ArviZ-schema ``xarray.DataTree``s.

Every public function of pyrobust returns an ``xarray.DataTree`` built here, so the layout
rules of DESIGN.md ("Results as ArviZ DataTrees") live in one module:

* schema groups (``posterior``, ``posterior_predictive``, ``sample_stats``, ``constant_data``,
  ``observed_data``) go through :func:`arviz_base.from_dict`; sample groups carry leading
  ``(chain, draw)`` dims, data groups none;
* summary groups (``robustness``, ``metrics``, ...) are plain datasets with dims ``(obs_id, ...)``;
* every setting goes to the attrs, JSON-encoded when it is not a number or a string, because
  netCDF cannot hold ``bool``, ``dict`` or ``None``.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "CI_BOUNDS",
    "DECISION_FLAGS",
    "EMPTY_MODEL_HASH",
    "STANDARD_ATTRS",
    "ci_bound",
    "decision_attrs",
    "decode_attrs",
    "encode_attrs",
    "make_tree",
    "model_identity",
    "standard_attrs",
    "strip_standard_attrs",
    "to_numpy",
]

#: Prefix marking an attribute value that was JSON-encoded by :func:`encode_attrs`.
JSON_PREFIX = "json:"


def to_numpy(value: Any) -> np.ndarray:
    """Return ``value`` as a NumPy array, detaching and moving torch tensors to the CPU."""
    if hasattr(value, "detach"):
        value = value.detach()
        if value.dtype.is_floating_point and value.dtype not in (
            _torch().float32,
            _torch().float64,
        ):
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def _torch():
    import torch

    return torch


def _jsonable(value: Any) -> Any:
    if hasattr(value, "detach"):
        return to_numpy(value).tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def encode_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Encode settings as netCDF-safe attributes.

    Numbers (not ``bool``) and strings are stored as they are; anything else (``bool``,
    ``None``, lists, dicts, tensors) becomes the string ``"json:" + json.dumps(value)``,
    which :func:`decode_attrs` turns back.
    """
    out: dict[str, Any] = {}
    for key, value in (attrs or {}).items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) or (
            isinstance(value, numbers.Real) and not isinstance(value, bool)
        ):
            out[str(key)] = value
        else:
            out[str(key)] = JSON_PREFIX + json.dumps(_jsonable(value))
    return out


def decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Invert :func:`encode_attrs`: JSON-encoded values become Python objects again."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, str) and value.startswith(JSON_PREFIX):
            out[key] = json.loads(value[len(JSON_PREFIX) :])
        elif isinstance(value, np.generic):
            out[key] = value.item()
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# ArviZ standard attributes, intervals, decision codes, model identity
# --------------------------------------------------------------------------------------------

#: The attributes ArviZ's ``make_attrs`` puts on every group, which :func:`make_tree` writes on
#: the root and on every group of a result.
STANDARD_ATTRS = (
    "created_at",
    "inference_library",
    "inference_library_version",
    "creation_library",
    "creation_library_version",
    "creation_library_language",
    "arviz_version",
)

#: Coordinate values of the ``ci_bound`` dim that holds interval limits.
CI_BOUNDS = ("lower", "upper")

#: ``model_hash`` of a model with no parameters to hash (weights kept in plain tensors): it
#: names no model, so :func:`pyrobust.analysis.combine` does not compare it.
EMPTY_MODEL_HASH = hashlib.sha256().hexdigest()

#: Decision codes and their meanings (CF ``flag_values`` / ``flag_meanings``).
DECISION_FLAGS = {-1: "not_robust", 0: "undecided", 1: "robust"}


@functools.cache
def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for key, dist in (("pyro", "pyro-ppl"), ("pyrobust", "pyrobust"), ("arviz", "arviz-base")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - a bare checkout
            out[key] = "0+unknown"
    return out


def standard_attrs(inference_library: str | None = "pyro") -> dict[str, str]:
    """ArviZ's standard group attributes, as ``arviz_base.make_attrs`` writes them.

    ``created_at`` (UTC, ISO 8601), ``inference_library`` and its version (Pyro's, unless
    ``inference_library`` names another library or is ``None``), ``creation_library``
    (``"pyrobust"``) and its version, ``creation_library_language`` and ``arviz_version``
    (arviz-base's).

    Parameters
    ----------
    inference_library : str or None, default "pyro"
        The library whose draws the result holds; ``None`` leaves the two ``inference_library``
        attributes out.

    Returns
    -------
    dict of str
    """
    versions = _library_versions()
    attrs = {"created_at": datetime.datetime.now(datetime.UTC).isoformat()}
    if inference_library is not None:
        attrs["inference_library"] = str(inference_library)
        if inference_library == "pyro":
            attrs["inference_library_version"] = versions["pyro"]
        else:
            from importlib.metadata import PackageNotFoundError, version

            try:
                attrs["inference_library_version"] = version(str(inference_library))
            except PackageNotFoundError:
                attrs["inference_library_version"] = "unknown"
    attrs["creation_library"] = "pyrobust"
    attrs["creation_library_version"] = versions["pyrobust"]
    attrs["creation_library_language"] = "Python"
    attrs["arviz_version"] = versions["arviz"]
    return attrs


def strip_standard_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` without the :data:`STANDARD_ATTRS` bookkeeping (what is left are settings)."""
    return {k: v for k, v in attrs.items() if k not in STANDARD_ATTRS}


def ci_bound(lower: Any, upper: Any) -> np.ndarray:
    """Stack interval limits on a trailing ``ci_bound`` axis (``["lower", "upper"]``).

    Lay the result out with dims ``(*dims, "ci_bound")`` and the coordinate
    ``ci_bound=CI_BOUNDS``, as ``arviz_stats.hdi``/``eti`` and pyrobust's metrics do.

    Parameters
    ----------
    lower, upper : array_like or torch.Tensor
        Limits of the same shape.

    Returns
    -------
    numpy.ndarray
        Shape ``(*lower.shape, 2)``.

    Examples
    --------
    >>> ci_bound([0.1, 0.2], [0.5, 0.9]).tolist()
    [[0.1, 0.5], [0.2, 0.9]]
    """
    lo, hi = to_numpy(lower), to_numpy(upper)
    if lo.shape != hi.shape:
        raise ValueError(
            f"ci_bound: lower and upper must have the same shape; got {lo.shape} and {hi.shape}."
        )
    return np.stack([lo, hi], axis=-1)


def decision_attrs(confidence: float | None = None) -> dict[str, Any]:
    """CF flag attributes of an int8 decision variable (-1 not robust, 0 undecided, 1 robust).

    ``flag_values`` and ``flag_meanings`` follow the CF conventions, so netCDF readers label the
    codes, while the variable itself stays numeric (``arviz_stats.summary`` and ``plot_forest``
    never meet strings).

    Parameters
    ----------
    confidence : float, optional
        The interval level the decision was taken at, recorded in ``long_name``.

    Returns
    -------
    dict
    """
    level = "" if confidence is None else f" at confidence {confidence:g}"
    return {
        "flag_values": np.array(list(DECISION_FLAGS), dtype=np.int8),
        "flag_meanings": " ".join(DECISION_FLAGS.values()),
        "long_name": (
            f"r-robustness decision{level}: 1 robust (interval above 1/2), -1 not robust "
            "(interval below 1/2), 0 undecided"
        ),
    }


def _owner(fn: Any) -> Any:
    return getattr(fn, "__self__", None)


def _callable_name(fn: Any) -> str:
    owner = _owner(fn)
    if owner is not None:
        return type(owner).__name__
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return str(name) if name else type(fn).__name__


#: Objective settings that are not loss coefficients.
_NOT_COEFFICIENTS = {
    "objective",
    "latent_site",
    "num_particles",
    "dataset_size",
    "estimator",
    "kind",
    "vectorize_particles",
}


def model_identity(
    model: Any,
    guide: Any,
    params: Iterable[Any] | Mapping[str, Any],
    *,
    run_dir: Any = None,
    objective: Any = None,
) -> dict[str, Any]:
    """Attributes that say which model produced a result: a weights hash, a name, the objective.

    ``model_hash`` is the SHA-256 of the parameters the model and guide use (dtype, shape and
    bytes of each, in order; a mapping is hashed in the order of its sorted names together with
    the names), so two results carry the same hash exactly when they were computed from the
    same weights. :func:`pyrobust.analysis.combine` refuses to treat results of one model as
    results of different models on that basis. A model that keeps its weights in plain tensors
    (neither module parameters nor param sites) has nothing to hash and gets
    :data:`EMPTY_MODEL_HASH`, which identifies no model.

    Parameters
    ----------
    model, guide : callable
        The Pyro pair (bound methods of a module name the module's class).
    params : iterable of torch.Tensor, or mapping of {name: torch.Tensor}
        The parameters the traces read (e.g. ``module.parameters()`` or the param sites).
        A tensor passed twice is hashed once.
    run_dir : str or path-like, optional
        The training run directory, recorded as ``run_dir``.
    objective : str, mapping, or an objective with ``settings()``, optional
        The training objective: its name, a settings mapping (e.g. the attrs of
        ``pyrobust.inference.fit``'s history) or the ELBO object. Numeric settings other than
        bookkeeping become ``coefficients`` (e.g. ``{"beta": 4.0}``).

    Returns
    -------
    dict
        ``model_hash``, ``model_name`` and, when known, ``run_dir``, ``objective`` and
        ``coefficients``; pass it into a result's attrs.

    Examples
    --------
    >>> import torch
    >>> w = torch.ones(2)
    >>> ident = model_identity(lambda x: x, lambda x: x, [w], objective={"objective": "BetaELBO", "beta": 4.0})
    >>> ident["objective"], ident["coefficients"], len(ident["model_hash"])
    ('BetaELBO', {'beta': 4.0}, 64)
    """
    if isinstance(params, Mapping):
        items = sorted(((str(k), v) for k, v in params.items()), key=lambda kv: kv[0])
    else:
        if hasattr(params, "detach"):
            raise TypeError(
                "model_identity: params must be an iterable of tensors (e.g. "
                "module.parameters()) or a mapping of them; got a single tensor. Wrap it: [w]."
            )
        items = [("", v) for v in params]
    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, value in items:
        if id(value) in seen:
            continue
        seen.add(id(value))
        if hasattr(value, "detach"):
            value = value.detach().cpu().contiguous()
            dtype, shape = str(value.dtype), tuple(value.shape)
            data = value.view(-1).view(_torch().uint8).numpy().tobytes() if value.numel() else b""
        else:
            arr = np.ascontiguousarray(value)
            dtype, shape, data = str(arr.dtype), arr.shape, arr.tobytes()
        digest.update(f"{name}|{dtype}|{shape}|".encode())
        digest.update(data)
    owner = _owner(model)
    out: dict[str, Any] = {
        "model_hash": digest.hexdigest(),
        "model_name": _callable_name(model)
        if owner is not None or _owner(guide) is None
        else _callable_name(guide),
    }
    if run_dir is None and owner is not None:
        run_dir = getattr(owner, "run_dir", None)
    if run_dir is not None:
        out["run_dir"] = str(run_dir)
    if objective is not None:
        if hasattr(objective, "settings") and callable(objective.settings):
            objective = objective.settings()
        if isinstance(objective, Mapping):
            name = objective.get("objective")
            coefs = {
                str(k): v
                for k, v in objective.items()
                if k not in _NOT_COEFFICIENTS
                and (
                    (isinstance(v, numbers.Real) and not isinstance(v, bool))
                    or (isinstance(v, Mapping) and "schedule" in v)
                )
            }
            if name is not None:
                out["objective"] = str(name)
            if coefs:
                out["coefficients"] = coefs
        else:
            out["objective"] = objective if isinstance(objective, str) else type(objective).__name__
    return out


SummaryVars = Mapping[str, tuple[Sequence[str], Any]]


def make_tree(
    groups: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    summary: Mapping[str, SummaryVars] | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str | None = None,
    inference_library: str | None = "pyro",
) -> xr.DataTree:
    """Build a result tree.

    Parameters
    ----------
    groups : mapping of {group: {variable: array}}, optional
        ArviZ schema groups passed to :func:`arviz_base.from_dict`. Arrays in sample groups
        (any group whose name does not contain ``"data"``) must have leading ``(chain, draw)``
        axes; torch tensors are accepted.
    dims : mapping of {variable: dims}, optional
        Dims of each variable in ``groups`` *after* the sample dims.
    coords : mapping of {dim: values}, optional
        Coordinates shared by every group (e.g. ``obs_id``, ``radius``, ``eps``).
    summary : mapping of {group: {variable: (dims, array)}}, optional
        Non-sample groups such as ``robustness``, built as plain datasets.
    attrs : mapping, optional
        Settings that produced the result; stored (encoded with :func:`encode_attrs`) on the
        root and on every summary group.
    name : str, optional
        Name of the root node.
    inference_library : str or None, default "pyro"
        Recorded in the standard attrs (see :func:`standard_attrs`).

    Returns
    -------
    xarray.DataTree
        The root and every group carry ArviZ's standard attrs (:data:`STANDARD_ATTRS`); the
        root and the summary groups also carry the settings. A ``ci_bound`` dim without given
        coordinates gets ``["lower", "upper"]``; an integer summary variable named
        ``decision`` (or ``decision_*``) gets the CF flag attrs of :func:`decision_attrs`.
    """
    coords = {k: to_numpy(v) for k, v in (coords or {}).items()}
    std = standard_attrs(inference_library)
    enc = {**std, **encode_attrs(attrs)}
    data = {g: {k: to_numpy(v) for k, v in vs.items()} for g, vs in (groups or {}).items()}
    if data:
        tree = _from_dict(data, dims=dims, coords=coords, attrs=enc, name=name)
        for group in data:
            tree[group].attrs = {**std, **dict(tree[group].attrs), **std}
    else:
        tree = xr.DataTree(name=name)
        tree.attrs.update(enc)
    for group, variables in (summary or {}).items():
        ds = xr.Dataset(
            {k: (tuple(d), to_numpy(v)) for k, (d, v) in variables.items()},
        )
        used = {d for d in ds.dims if d in coords}
        ds = ds.assign_coords({d: coords[d] for d in used})
        if "ci_bound" in ds.dims and "ci_bound" not in ds.coords:
            ds = ds.assign_coords(ci_bound=np.array(CI_BOUNDS))
        for key, var in ds.data_vars.items():
            if (key == "decision" or str(key).startswith("decision_")) and var.dtype.kind == "i":
                level = enc.get("confidence")
                var.attrs.update(decision_attrs(level if isinstance(level, float) else None))
        ds.attrs.update(enc)
        tree[group] = xr.DataTree(ds)
    return tree


def _from_dict(data, *, dims, coords, attrs, name):
    from arviz_base import from_dict

    return from_dict(
        data,
        dims={k: list(v) for k, v in (dims or {}).items()},
        coords=coords,
        attrs={"/": dict(attrs)},
        name=name,
    )
