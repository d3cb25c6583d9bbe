"""Saving, loading and combining pyrobust result trees.

Every pyrobust result is an ``xarray.DataTree`` in the ArviZ schema (see DESIGN.md, "Results as
ArviZ DataTrees"). This module writes them to netCDF (``h5netcdf`` engine) or zarr, reads them
back, and concatenates the results of several models along a new dimension (``model`` or
``beta``), so that ``arviz_stats`` and ``arviz_plots`` work on a sweep exactly as on one run.

Writes are atomic: the tree goes to a temporary sibling path that is renamed over the target only
once it is complete, so an interrupted or failed save never leaves a half-written file and never
destroys an existing one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pyrobust._results import decode_attrs, encode_attrs

__all__ = ["as_tree", "combine", "load", "require_group", "result_kind", "save", "settings"]

#: Root attribute that marks a file written by :func:`save`.
VERSION_ATTR = "pyrobust_version"
#: Root attribute naming the kind of result (``"robustness"``, ``"metrics"``, ``"training"``, ...).
KIND_ATTR = "pyrobust_kind"

_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5")
_ZARR_SUFFIXES = (".zarr",)

# Summary groups that name a result kind, in order of precedence.
_KIND_GROUPS = ("metrics", "robustness", "history", "sample_stats")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyrobust")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("netcdf", "zarr"):
            raise ValueError(
                f"format must be 'netcdf' or 'zarr' (or None to use the file extension); "
                f"got {format!r}."
            )
        return format
    suffix = path.suffix.lower()
    if suffix in _ZARR_SUFFIXES:
        return "zarr"
    if suffix in _NETCDF_SUFFIXES:
        return "netcdf"
    raise ValueError(
        f"path {str(path)!r} has extension {suffix!r}, which names no known format; "
        f"use one of {_NETCDF_SUFFIXES} for netCDF or {_ZARR_SUFFIXES} for zarr, "
        f"or pass format='netcdf' / format='zarr'."
    )


def _check_tree(tree: Any, argname: str = "tree") -> xr.DataTree:
    if not isinstance(tree, xr.DataTree):
        raise TypeError(
            f"{argname} must be an xarray.DataTree (a pyrobust result); got {type(tree).__name__}. "
            f"Use pyrobust.analysis.load(path) to read a saved result."
        )
    return tree


def result_kind(tree: xr.DataTree) -> str:
    """Return the kind of a result tree.

    The kind is the root attribute ``pyrobust_kind`` when present, else inferred from the groups
    (``"metrics"``, ``"robustness"``, or ``"training"`` when there is a ``history`` or
    ``sample_stats`` group), else ``"result"``.
    """
    _check_tree(tree)
    kind = tree.attrs.get(KIND_ATTR)
    if isinstance(kind, str) and kind:
        return kind
    for group in _KIND_GROUPS:
        if group in tree.children:
            return "training" if group in ("history", "sample_stats") else group
    return "result"


def settings(tree: xr.DataTree) -> dict[str, Any]:
    """Return the settings that produced ``tree`` (its root attrs, JSON values decoded).

    ArviZ bookkeeping attributes (``created_at``, ``creation_library*``) are left out.
    """
    _check_tree(tree)
    return {
        k: v
        for k, v in decode_attrs(tree.attrs).items()
        if not (k == "created_at" or k.startswith("creation_library"))
    }


def require_group(
    tree: Any, group: str, variables: Sequence[str] = (), *, caller: str = ""
) -> xr.Dataset:
    """Return ``tree[group]`` as a Dataset, raising a clear error if it or a variable is missing.

    Parameters
    ----------
    tree : xarray.DataTree
    group : str
        Group name, e.g. ``"robustness"``.
    variables : sequence of str
        Variables the caller needs in that group.
    caller : str
        Name of the calling function, for the message.
    """
    who = f"{caller}: " if caller else ""
    _check_tree(tree)
    if group not in tree.children:
        raise ValueError(
            f"{who}the result tree has no {group!r} group (groups: {sorted(tree.children)}); "
            f"pass a result that contains it (e.g. the output of the function that writes it)."
        )
    ds = tree[group].to_dataset()
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise ValueError(
            f"{who}group {group!r} lacks variable(s) {missing} "
            f"(has {sorted(map(str, ds.data_vars))})."
        )
    return ds


def save(
    tree: xr.DataTree,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    kind: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Save a result tree to netCDF or zarr, atomically.

    The format follows the extension (``.nc``/``.nc4``/``.h5`` netCDF written with ``h5netcdf``;
    ``.zarr`` a zarr store in Zarr format 2) unless ``format`` is given. The root attrs ``pyrobust_version`` and
    ``pyrobust_kind`` are added to the written copy (``tree`` itself is not modified), and
    :func:`load` checks them.

    The tree is first written to a temporary sibling of ``path`` and then renamed onto it: a save
    that fails part-way leaves no partial file and leaves any existing file at ``path`` intact.

    Parameters
    ----------
    tree : xarray.DataTree
        A pyrobust result.
    path : str or path-like
        Destination.
    format : {"netcdf", "zarr"}, optional
        Overrides the extension.
    kind : str, optional
        Result kind stored in ``pyrobust_kind``; default :func:`result_kind`.
    overwrite : bool, default True
        If False, an existing ``path`` raises ``FileExistsError``.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from pyrobust._results import make_tree
    >>> from pyrobust.analysis import save, load
    >>> t = make_tree(summary={"metrics": {"mig": ((), 0.5)}})
    >>> p = save(t, os.path.join(tempfile.mkdtemp(), "run.nc"))
    >>> float(load(p)["metrics"]["mig"])
    0.5
    """
    _check_tree(tree)
    path = Path(path)
    fmt = _format_of(path, format)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it.")
    if not path.parent.exists():
        raise FileNotFoundError(
            f"the directory {str(path.parent)!r} of path does not exist; create it first."
        )
    out = tree.copy(deep=False)
    out.attrs = dict(tree.attrs)
    out.attrs.update(encode_attrs({VERSION_ATTR: _version(), KIND_ATTR: kind or result_kind(tree)}))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target_tmp = tmp / path.name
    try:
        if fmt == "netcdf":
            out.to_netcdf(target_tmp, engine="h5netcdf")
        else:
            # Zarr format 2: format 3 has no specification yet for fixed-length strings
            # (decision labels) nor for consolidated metadata, and warns on both.
            out.to_zarr(target_tmp, mode="w", zarr_format=2, consolidated=True)
        _replace(target_tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``.

    A file replacing a file is one ``os.replace`` (atomic on POSIX). When either is a directory
    (a zarr store), the old ``dst`` is first renamed aside, then ``src`` renamed in, then the old
    one removed; if the second rename fails the old one is put back.
    """
    if not dst.exists() or not (src.is_dir() or dst.is_dir()):
        os.replace(src, dst)
        return
    backup = dst.with_name(f".{dst.name}.{os.getpid()}.old")
    os.replace(dst, backup)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(backup, dst)
        raise
    if backup.is_dir():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        backup.unlink(missing_ok=True)


#: Object codecs that decode to plain strings/bytes (xarray writes object-dtype string
#: coordinates with ``vlen-utf8``); every other codec of object arrays (``pickle``, ``json2``,
#: ``msgpack2``, ``vlen-array``, ``categorize``, ...) is refused, ``pickle`` anywhere.
_SAFE_OBJECT_CODECS = frozenset({"vlen-utf8", "vlen-bytes"})
_UNSAFE_CODECS = ("pickle", "json2", "msgpack2", "vlen-array", "categorize")


def _refuse_object_codecs(path: Path) -> None:
    """Refuse a zarr store with object arrays or codecs, reading only its JSON metadata.

    The pickle codec of zarr 2 runs code on load; a result file is data, so any array whose
    metadata (``.zarray``, ``zarr.json`` or the consolidated ``.zmetadata``) declares an
    object dtype with a codec other than ``vlen-utf8``/``vlen-bytes``, or names ``pickle``
    anywhere, is refused before zarr sees the store.
    """
    import json

    def codec_ids(meta) -> list[str]:
        # every "id" (format 2) and "name" (format 3, also inside sharding codecs) of a codec
        found, stack = [], [(meta.get("filters"), meta.get("compressor"), meta.get("codecs"))]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                found += [str(item[k]).lower() for k in ("id", "name") if k in item]
                stack.extend(item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend(item)
        return found

    def check(meta, where: str) -> None:
        if not isinstance(meta, dict):
            return
        ids = codec_ids(meta)
        dtype = json.dumps(meta.get("dtype", meta.get("data_type", "")))
        is_object = '"|O' in dtype or '"O' in dtype or "object" in dtype
        unsafe = [i for i in ids if any(bad in i for bad in _UNSAFE_CODECS)]
        if is_object and not any(i in _SAFE_OBJECT_CODECS for i in ids):
            unsafe.append("object dtype without a string codec")
        if unsafe:
            raise ValueError(
                f"{str(path)!r} is refused: array {where} declares an object dtype or codec "
                f"({', '.join(sorted(set(unsafe)))}), which can run code when decoded. "
                "pyrobust results hold numbers and strings only; re-save the result with "
                "pyrobust.analysis.save."
            )

    if not path.is_dir():
        return
    for root, _, files in os.walk(path):
        for name in files:
            if name not in (".zarray", ".zmetadata", "zarr.json"):
                continue
            file = Path(root) / name
            try:
                meta = json.loads(file.read_text())
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
                raise ValueError(
                    f"{str(path)!r} is not a pyrobust result: its metadata file "
                    f"{str(file.relative_to(path))!r} is not readable JSON ({err})."
                ) from None
            where = str(file.relative_to(path).parent)
            if not isinstance(meta, dict):
                continue
            if name == ".zmetadata":
                listed = meta.get("metadata")
                listed = listed if isinstance(listed, dict) else {}
                entries = {k: v for k, v in listed.items() if str(k).endswith(".zarray")}
            else:
                entries = {where: meta}
                listed = meta.get("consolidated_metadata")
                listed = listed.get("metadata") if isinstance(listed, dict) else None
                entries.update(listed if isinstance(listed, dict) else {})
            for key, entry in entries.items():
                check(entry, str(key).removesuffix("/.zarray"))


def load(path: str | os.PathLike, *, format: str | None = None) -> xr.DataTree:
    """Load a result tree written by :func:`save`.

    The data are read into memory and the file is closed, so the file may be overwritten or
    deleted afterwards.

    Parameters
    ----------
    path : str or path-like
    format : {"netcdf", "zarr"}, optional
        Overrides the extension.

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is not a netCDF/zarr file, or is one that :func:`save` did not write (no
        ``pyrobust_version`` root attribute).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no result at {str(path)!r}.")
    fmt = _format_of(path, format)
    if fmt == "zarr":
        _refuse_object_codecs(path)
    try:
        if fmt == "netcdf":
            with xr.open_datatree(path, engine="h5netcdf") as opened:
                tree = opened.load()
        else:
            with xr.open_datatree(path, engine="zarr") as opened:
                tree = opened.load()
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{str(path)!r} is not a pyrobust result: it could not be read as {fmt} "
            f"({type(err).__name__}: {err}). Save results with pyrobust.analysis.save."
        ) from err
    if VERSION_ATTR not in tree.attrs:
        raise ValueError(
            f"{str(path)!r} is a {fmt} file but not a pyrobust result: its root has no "
            f"{VERSION_ATTR!r} attribute. Only files written by pyrobust.analysis.save load; "
            f"open other files with xarray.open_datatree."
        )
    return tree


def combine(
    trees: Sequence[xr.DataTree],
    dim: str = "model",
    coords: Sequence[Any] | np.ndarray | None = None,
    *,
    join: str = "exact",
) -> xr.DataTree:
    """Concatenate the results of several models along a new dimension.

    Every group present in all trees is concatenated with :func:`xarray.concat` along ``dim``;
    each variable gains that dim (so ``arviz_stats.summary`` reports per model). Attributes that
    agree across trees are kept; attributes that differ are dropped from the groups, and the
    root records the per-tree settings as the JSON attr ``combined_settings``.

    Parameters
    ----------
    trees : sequence of xarray.DataTree
        Results of the same kind (same groups and variables).
    dim : str, default "model"
        Name of the new dimension, typically ``"model"`` or ``"beta"``.
    coords : sequence, optional
        Coordinate values along ``dim`` (one per tree). Default: the root attribute named
        ``dim`` of each tree when every tree has it (e.g. ``beta``), else ``0, 1, ...``.
    join : {"exact", "outer", "inner"}, default "exact"
        How to align other dims (e.g. ``obs_id``) that differ between trees; ``"exact"``
        raises if they differ, ``"outer"`` pads with NaN.

    Returns
    -------
    xarray.DataTree
    """
    if isinstance(trees, xr.DataTree) or not isinstance(trees, Sequence) or len(trees) == 0:
        raise TypeError(
            f"trees must be a non-empty list of xarray.DataTree; got {type(trees).__name__}."
        )
    for i, t in enumerate(trees):
        _check_tree(t, f"trees[{i}]")
    if not isinstance(dim, str) or not dim:
        raise TypeError(f"dim must be a non-empty str such as 'model' or 'beta'; got {dim!r}.")
    if coords is None:
        values = [decode_attrs(t.attrs).get(dim) for t in trees]
        coords = values if all(_is_scalar(v) for v in values) else np.arange(len(trees))
    coords = np.asarray(coords)
    if coords.shape != (len(trees),):
        raise ValueError(
            f"coords must have one value per tree: expected shape ({len(trees)},), "
            f"got {coords.shape}."
        )
    groups = [set(t.children) for t in trees]
    common = set.intersection(*groups)
    missing = set.union(*groups) - common
    if missing:
        raise ValueError(
            f"cannot combine: group(s) {sorted(missing)} are not in every tree; "
            f"combine results of the same kind (groups per tree: "
            f"{[sorted(g) for g in groups]})."
        )
    index = xr.DataArray(coords, dims=(dim,), name=dim)
    out = xr.DataTree()
    for group in sorted(common, key=list(trees[0].children).index):
        datasets = [t[group].to_dataset() for t in trees]
        for ds in datasets:
            if dim in ds.dims:
                raise ValueError(
                    f"cannot combine along {dim!r}: group {group!r} already has that dim; "
                    f"pick another dim name."
                )
        ds = xr.concat(
            datasets,
            dim=index,
            data_vars="all",
            coords="minimal",
            compat="override",
            join=join,
            combine_attrs="drop_conflicts",
        )
        out[group] = xr.DataTree(ds)
    root = xr.merge(
        [xr.Dataset(attrs=dict(t.attrs)) for t in trees], combine_attrs="drop_conflicts"
    ).attrs
    root.pop(VERSION_ATTR, None)
    out.attrs.update(root)
    out.attrs.update(
        encode_attrs(
            {
                "combined_dim": dim,
                "combined_settings": [settings(t) for t in trees],
            }
        )
    )
    return out


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def as_tree(obj: Any, argname: str = "tree") -> xr.DataTree:
    """Return ``obj`` as a DataTree: trees pass through, paths are :func:`load`-ed."""
    if isinstance(obj, xr.DataTree):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load(obj)
    raise TypeError(
        f"{argname} must be an xarray.DataTree or a path to a saved result; "
        f"got {type(obj).__name__}."
    )
