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

import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = ["decode_attrs", "encode_attrs", "make_tree", "to_numpy"]

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


SummaryVars = Mapping[str, tuple[Sequence[str], Any]]


def make_tree(
    groups: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    summary: Mapping[str, SummaryVars] | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str | None = None,
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

    Returns
    -------
    xarray.DataTree
    """
    coords = {k: to_numpy(v) for k, v in (coords or {}).items()}
    enc = encode_attrs(attrs)
    data = {g: {k: to_numpy(v) for k, v in vs.items()} for g, vs in (groups or {}).items()}
    if data:
        tree = _from_dict(data, dims=dims, coords=coords, attrs=enc, name=name)
    else:
        tree = xr.DataTree(name=name)
        tree.attrs.update(enc)
    for group, variables in (summary or {}).items():
        ds = xr.Dataset(
            {k: (tuple(d), to_numpy(v)) for k, (d, v) in variables.items()},
        )
        used = {d for d in ds.dims if d in coords}
        ds = ds.assign_coords({d: coords[d] for d in used})
        ds.attrs.update(enc)
        tree[group] = xr.DataTree(ds)
    return tree


def _from_dict(data, *, dims, coords, attrs, name):
    from arviz_base import from_dict

    group_attrs = {"/": dict(attrs)}
    return from_dict(
        data,
        dims={k: list(v) for k, v in (dims or {}).items()},
        coords=coords,
        attrs=group_attrs,
        name=name,
    )
