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

import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pyrobust._results import JSON_PREFIX, decode_attrs, encode_attrs, strip_standard_attrs

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

    ArviZ's bookkeeping attributes (``created_at``, ``inference_library*``,
    ``creation_library*``, ``arviz_version``) are left out.
    """
    _check_tree(tree)
    return strip_standard_attrs(decode_attrs(tree.attrs))


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

    The tree is first written to a temporary sibling of ``path`` and then moved onto it: a save
    that fails or is killed part-way leaves no partial file and leaves any existing result at
    ``path`` intact.

    * A file replacing a file is one :func:`os.replace` (atomic on POSIX).
    * A zarr store is a directory, which no single POSIX rename can replace. On Linux the new
      store and the old one are swapped atomically (``renameat2(RENAME_EXCHANGE)``), so there is
      always a complete result at ``path``. Elsewhere the old store is renamed aside to
      ``.NAME.PID.old`` first; if the process dies between the two renames, the next
      :func:`save` or :func:`load` of ``path`` puts the old store back.
    * Temporary entries are named ``.NAME.PID.*.tmp`` / ``.NAME.PID.old``; the next save or load
      of ``path`` removes those whose process is no longer alive (a killed save), and never
      touches those of a save still running in another process.

    An existing *directory* at ``path`` is replaced only if it is a pyrobust zarr store (its root
    attrs carry ``pyrobust_version``); any other directory is refused, never deleted.

    Parameters
    ----------
    tree : xarray.DataTree
        A pyrobust result. Variables of dtype ``object`` holding anything but ``str`` are
        refused (they could only be written with a pickle codec).
    path : str or path-like
        Destination; its directory must exist.
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

    Raises
    ------
    TypeError
        If ``tree`` is not a DataTree, or ``path``, ``kind`` or ``overwrite`` has the wrong type.
    ValueError
        If ``format`` or the extension names no known format, ``tree`` holds an object-dtype
        variable, or ``path`` is a directory that is not a pyrobust zarr store.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    FileNotFoundError
        If the directory of ``path`` does not exist.

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
    path = _check_path(path)
    fmt = _format_of(path, format)
    if kind is not None and (not isinstance(kind, str) or not kind):
        raise TypeError(
            f"kind must be a non-empty str such as 'robustness' (or None to infer it); "
            f"got {kind!r}."
        )
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False; got {overwrite!r}.")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"the directory {str(path.parent)!r} of path does not exist; create it first."
        )
    _check_writable_tree(tree)
    _recover(path)
    if os.path.lexists(path):
        if not overwrite:
            raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it.")
        if path.is_dir() and not _is_pyrobust_store(path):
            raise ValueError(
                f"path {str(path)!r} is an existing directory that is not a pyrobust zarr store "
                f"(its root has no {VERSION_ATTR!r} attribute); save refuses to replace it, so "
                f"nothing in it is lost. Pass a new path, e.g. {str(path / 'result.zarr')!r}."
            )
    out = tree.copy(deep=False)
    out.attrs = dict(tree.attrs)
    out.attrs.update(encode_attrs({VERSION_ATTR: _version(), KIND_ATTR: kind or result_kind(tree)}))
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    )
    target_tmp = tmp / path.name
    try:
        if fmt == "netcdf":
            out.to_netcdf(target_tmp, engine="h5netcdf")
        else:
            # Zarr format 2: format 3 has no specification yet for fixed-length strings
            # (decision labels) nor for consolidated metadata, and warns on both.
            out.to_zarr(target_tmp, mode="w", zarr_format=2, consolidated=True)
        _fsync_tree(target_tmp)
        _replace(target_tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_path(path: Any, argname: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(
            f"{argname} must be a str or os.PathLike (e.g. 'result.nc'); got {type(path).__name__}."
        )
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise ValueError(
            f"{argname} must be a non-empty file path without NUL bytes; got {text!r}."
        )
    return Path(text)


def _check_writable_tree(tree: xr.DataTree) -> None:
    """Refuse variables that netCDF/zarr could only store with a pickle (object) codec.

    Object arrays of ``str`` are fine: they are written as variable-length UTF-8 strings.
    """
    for node in tree.subtree:
        for name, var in {**node.data_vars, **node.coords}.items():
            if var.dtype.kind == "V" or (
                var.dtype.kind == "O" and not all(isinstance(v, str) for v in var.values.flat)
            ):
                where = f"{node.path.rstrip('/')}/{name}".lstrip("/")
                raise ValueError(
                    f"tree variable {where!r} has dtype {var.dtype} (Python objects), which result "
                    f"files refuse because reading it back would unpickle code; convert it to "
                    f"numbers or fixed-width strings (e.g. .astype(str)) before saving."
                )


def _is_pyrobust_store(path: Path) -> bool:
    """Whether the directory ``path`` is a zarr store written by :func:`save`."""
    for meta, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            with open(path / meta, encoding="utf-8") as f:
                attrs = json.load(f)
        except (OSError, ValueError, RecursionError):
            continue
        if key is not None and isinstance(attrs, dict):
            attrs = attrs.get(key)
        if isinstance(attrs, dict) and VERSION_ATTR in attrs:
            return True
    return False


def _fsync_tree(path: Path) -> None:
    """Flush a written file, or every file of a written store, to disk before it is moved."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_owner(entry: str, name: str) -> int | None:
    """The pid in a temporary entry ``.NAME.PID.*.tmp`` / ``.NAME.PID.old`` of ``name``."""
    m = re.fullmatch(rf"\.{re.escape(name)}\.(\d+)\.(?:[^/]*\.tmp|old)", entry)
    return int(m.group(1)) if m else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Undo what a killed :func:`save` of ``path`` left behind.

    A store renamed aside (``.NAME.PID.old``) by a save whose process died is put back when
    nothing is at ``path`` (the newest one, so the result is never lost), else removed; temporary
    entries (``.NAME.PID.*.tmp``) of dead processes are removed. Entries of live processes are
    left alone. Errors (e.g. a read-only directory) are ignored: recovery is best effort.
    """
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return
    stale = []
    for entry in entries:
        pid = _temp_owner(entry, path.name)
        if pid is not None and not _pid_alive(pid):
            stale.append(path.parent / entry)
    backups = sorted(
        (p for p in stale if p.name.endswith(".old")),
        key=lambda p: p.lstat().st_mtime_ns,
        reverse=True,
    )
    try:
        if backups and not os.path.lexists(path):
            os.replace(backups[0], path)
            stale.remove(backups[0])
        for p in stale:
            _remove(p)
    except OSError:
        pass


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to the file ``path`` atomically, without a predictable temporary name.

    The bytes go to a file made by :func:`tempfile.mkstemp` (``O_EXCL``, random name
    ``.NAME.PID.*.tmp`` beside ``path``: a planted symlink is never followed), are flushed to
    disk, and the file is renamed over ``path`` (a symlink at ``path`` is replaced, not followed).
    Temporary files of earlier writes whose process has died are removed first.
    """
    _recover(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(src: Path, dst: Path) -> bool:
    """Atomically swap ``src`` and ``dst`` (Linux ``renameat2``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # the kernel or the filesystem has no RENAME_EXCHANGE
    raise OSError(err, os.strerror(err), str(dst))


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst`` without a moment where ``dst`` is missing or partial.

    A file replacing a file (or anything replacing nothing) is one ``os.replace``. When either is
    a directory (a zarr store), the two are swapped atomically where the platform can
    (``renameat2(RENAME_EXCHANGE)`` on Linux) and the old one, now at ``src``, is removed.
    Elsewhere the old ``dst`` is renamed aside to ``.NAME.PID.old``, ``src`` renamed in, and the
    old one removed; if the second rename fails the old one is put back, and if the process dies
    in between, :func:`_recover` puts it back on the next save or load.
    """
    if not os.path.lexists(dst) or not (src.is_dir() or dst.is_dir()):
        os.replace(src, dst)
        return
    if _exchange(src, dst):
        _remove(src)
        return
    backup = dst.with_name(f".{dst.name}.{os.getpid()}.old")
    os.replace(dst, backup)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(backup, dst)
        raise
    _remove(backup)


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
    TypeError
        If ``path`` is not a str or path-like.
    ValueError
        If ``path`` is not a netCDF/zarr file, is damaged or truncated, is one that :func:`save`
        did not write (no ``pyrobust_version`` root attribute), or holds an attribute marked as
        JSON that does not decode (malformed, or nested too deeply to read safely).

    Notes
    -----
    A store that a killed :func:`save` left renamed aside (``.NAME.PID.old``) is put back at
    ``path`` first, and temporary leftovers of killed saves are removed (see :func:`save`).
    """
    path = _check_path(path)
    _recover(path)
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
    except MemoryError:
        raise
    except Exception as err:  # damaged files fail in h5py/zarr/numcodecs with many types
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
    _check_json_attrs(tree, path)
    return tree


def _check_json_attrs(tree: xr.DataTree, path: Path) -> None:
    """Refuse attributes marked as JSON that do not decode, naming the group and attribute."""
    for node in tree.subtree:
        attr_sets = [(node.path, node.attrs)]
        attr_sets += [(f"{node.path.rstrip('/')}/{k}", v.attrs) for k, v in node.variables.items()]
        for where, attrs in attr_sets:
            for key, value in attrs.items():
                if not (isinstance(value, str) and value.startswith(JSON_PREFIX)):
                    continue
                try:
                    json.loads(value[len(JSON_PREFIX) :])
                except RecursionError:
                    reason = "it is nested too deeply to decode safely"
                except ValueError as err:
                    reason = f"it is not valid JSON ({err})"
                else:
                    continue
                raise ValueError(
                    f"{str(path)!r}: attribute {key!r} of {where!r} is marked as JSON but {reason}; "
                    f"the file is damaged or was not written by pyrobust.analysis.save."
                )


#: Settings that may differ between the results :func:`combine` joins: who made them and when,
#: which model (the identity is what the combined dim tells apart) and the seed.
_COMBINE_MAY_DIFFER = frozenset(
    {
        "created_at",
        "inference_library",
        "inference_library_version",
        "creation_library",
        "creation_library_version",
        "creation_library_language",
        "arviz_version",
        "pyrobust_version",
        "pyrobust_kind",
        "model_hash",
        "model_name",
        "run_dir",
        "objective",
        "coefficients",
        "seed",
        "cli_settings",
    }
)


def _query_kind(tree: xr.DataTree) -> str:
    query = tree.attrs.get("query")
    return query if isinstance(query, str) and query else result_kind(tree)


def _coord_from(attrs: dict[str, Any], dim: str) -> Any:
    if dim in attrs:
        return attrs[dim]
    coefs = attrs.get("coefficients")
    if isinstance(coefs, dict) and dim in coefs:
        return coefs[dim]
    return None


def _default_coords(all_attrs: list[dict[str, Any]], dim: str) -> list[Any] | None:
    values = [_coord_from(a, dim) for a in all_attrs]
    if all(_is_scalar(v) for v in values):
        return values
    if dim == "model":
        for key in ("run_dir", "model_name", "model_hash"):
            labels = [a.get(key) for a in all_attrs]
            if all(isinstance(v, str) for v in labels) and len(set(labels)) == len(labels):
                return labels
    return None


def combine(
    trees: Sequence[xr.DataTree],
    dim: str = "model",
    coords: Sequence[Any] | np.ndarray | None = None,
    *,
    join: str = "exact",
    allow_differing: Sequence[str] = (),
) -> xr.DataTree:
    """Concatenate results of the same query on several models along a new dimension.

    The trees are joined by :func:`xarray.concat` of DataTrees along ``dim``: every variable of
    every group gains that dim, so ``arviz_stats.summary`` reports per model and
    ``arviz_plots`` draws one line per model. Because a silent wrong comparison is worse than
    an error, the trees are checked first:

    * the same **kind of query** (root attr ``query``, else :func:`result_kind`): a robustness
      result and a margin result are refused by name;
    * the same **settings** (root attrs) except the combined dim itself, the model identity
      (``model_hash``, ``model_name``, ``run_dir``, ``objective``, ``coefficients``), the seed
      and ArviZ's bookkeeping; pass ``allow_differing`` to accept others;
    * the same groups, and the same coordinates on every other dim (``join="exact"``);
    * **real coordinate values**: one distinct value per tree, given as ``coords`` or read from
      each tree's attrs (``dim`` itself, e.g. ``beta``, or ``coefficients[dim]``; for
      ``dim="model"`` the run directories, model names or weight hashes); never ``0, 1, ...``;
    * distinct models: two trees with the same ``model_hash`` are refused (the same weights
      labelled as two models), unless ``dim`` is ``"seed"``, ``"run"`` or ``"replicate"``.

    Attributes that agree across trees are kept; the root records the per-tree settings as the
    JSON attr ``combined_settings`` and the dim as ``combined_dim``; the root and every group
    get fresh ArviZ standard attrs.

    Parameters
    ----------
    trees : sequence of xarray.DataTree
        Results of the same query (same groups and variables), e.g. one per beta.
    dim : str, default "model"
        Name of the new dimension, typically ``"model"`` or ``"beta"``.
    coords : sequence, optional
        Coordinate values along ``dim`` (one distinct value per tree). Default: read from the
        attrs as above; an error when they are not there.
    join : {"exact", "outer", "inner"}, default "exact"
        How to align other dims (e.g. ``obs_id``); ``"exact"`` raises if they differ.
    allow_differing : sequence of str, default ()
        Further settings allowed to differ between trees (their per-tree values stay in
        ``combined_settings``).

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    ValueError
        On mixed kinds, differing settings, missing or repeated coordinates, repeated models,
        or groups not in every tree.

    Examples
    --------
    >>> import numpy as np
    >>> from pyrobust._results import make_tree
    >>> def run(beta):
    ...     return make_tree(summary={"robustness": {"bound": (("obs_id",), np.full(3, beta))}},
    ...                      attrs={"query": "margin_bound", "r": 0.5, "beta": beta})
    >>> out = combine([run(1.0), run(4.0)], dim="beta")
    >>> out["robustness"]["bound"].sel(beta=4.0).values.tolist()
    [4.0, 4.0, 4.0]
    """
    from pyrobust._results import EMPTY_MODEL_HASH, standard_attrs, strip_standard_attrs

    if isinstance(trees, xr.DataTree) or not isinstance(trees, Sequence) or len(trees) == 0:
        raise TypeError(
            f"trees must be a non-empty list of xarray.DataTree; got {type(trees).__name__}."
        )
    for i, t in enumerate(trees):
        _check_tree(t, f"trees[{i}]")
    if not isinstance(dim, str) or not dim:
        raise TypeError(f"dim must be a non-empty str such as 'model' or 'beta'; got {dim!r}.")
    if isinstance(allow_differing, str):
        allow_differing = [allow_differing]
    for t in trees:
        for node in t.subtree:
            if dim in node.dims:
                raise ValueError(
                    f"cannot combine along {dim!r}: group {node.name!r} already has that dim; "
                    f"pick another dim name."
                )
    kinds = [_query_kind(t) for t in trees]
    if len(set(kinds)) > 1:
        raise ValueError(
            f"`trees` holds results of different kinds: {kinds}. Combine results of one query "
            f"(e.g. all r_robustness, or all margin_bound) and put the others beside them."
        )
    all_attrs = [decode_attrs(t.attrs) for t in trees]
    may_differ = _COMBINE_MAY_DIFFER | {dim} | set(allow_differing)
    keys = sorted(set().union(*all_attrs) - may_differ)
    differing = {
        k: [a.get(k, "<missing>") for a in all_attrs]
        for k in keys
        if any(a.get(k, "<missing>") != all_attrs[0].get(k, "<missing>") for a in all_attrs)
    }
    if differing:
        text = "; ".join(f"{k}: {v}" for k, v in differing.items())
        raise ValueError(
            f"cannot combine along {dim!r}: settings other than {dim!r} differ ({text}). "
            f"Rerun the queries with the same settings, or pass "
            f"allow_differing={sorted(differing)} if the difference is intended."
        )
    if coords is None:
        coords = _default_coords(all_attrs, dim)
        if coords is None:
            raise ValueError(
                f"cannot combine along {dim!r}: the trees do not record {dim!r} in their attrs "
                f"(nor in 'coefficients'); pass coords=[...] with one value per tree, e.g. "
                f"combine(trees, dim={dim!r}, coords=[1, 2, 4, 8])."
            )
    coords = np.asarray(coords)
    if coords.shape != (len(trees),):
        raise ValueError(
            f"coords must have one value per tree: expected shape ({len(trees)},), "
            f"got {coords.shape}."
        )
    if len(np.unique(coords)) != len(coords):
        raise ValueError(
            f"coords along {dim!r} must be distinct (one per model); got {coords.tolist()}."
        )
    hashes = [a.get("model_hash") for a in all_attrs]
    seen: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h == EMPTY_MODEL_HASH:  # no parameters were hashed: it names no model
            continue
        if isinstance(h, str) and h in seen and dim not in ("seed", "run", "replicate"):
            raise ValueError(
                f"cannot combine along {dim!r}: trees[{seen[h]}] and trees[{i}] come from the "
                f"same model (model_hash {h[:12]}...), labelled {coords[seen[h]]!r} and "
                f"{coords[i]!r}. Combine results of different models, or combine along "
                f"dim='seed' for repeated queries of one model."
            )
        if isinstance(h, str):
            seen.setdefault(h, i)
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
    parts = []
    for t in trees:
        part = t.copy(deep=False)
        part.attrs = {}
        parts.append(part)
    try:
        out = xr.concat(
            parts,
            dim=index,
            data_vars="all",
            coords="minimal",
            compat="override",
            join=join,
            combine_attrs="drop_conflicts",
        )
    except ValueError as err:
        raise ValueError(
            f"cannot combine along {dim!r}: the trees do not line up ({err}). With "
            f"join='exact' every other dim (obs_id, radius, eps, ...) must have the same "
            f"coordinates in every tree."
        ) from err
    # Root: coordinate of the new dim on every group, not inherited from the root.
    out = xr.DataTree.from_dict(
        {
            "/": xr.Dataset(),
            **{
                f"/{g}": out[g].to_dataset().assign_coords({dim: index.values})
                for g in trees[0].children
            },
        }
    )
    std = standard_attrs(trees[0].attrs.get("inference_library"))
    for group in out.children:
        kept = {
            k: v
            for k, v in out[group].attrs.items()
            if all(_group_attr(t, group, k) == v for t in trees)
        }
        out[group].attrs = {**std, **kept, **std}
    root = xr.merge(
        [xr.Dataset(attrs=dict(t.attrs)) for t in trees], combine_attrs="drop_conflicts"
    ).attrs
    root.pop(VERSION_ATTR, None)
    out.attrs = {
        **std,
        **{k: v for k, v in root.items() if k not in std},
        **encode_attrs(
            {
                "combined_dim": dim,
                "combined_kind": kinds[0],
                "combined_settings": [strip_standard_attrs(settings(t)) for t in trees],
            }
        ),
        **std,
    }
    return out


def _group_attr(tree: xr.DataTree, group: str, key: str) -> Any:
    """``tree[group].attrs[key]`` or a sentinel when absent (for :func:`combine`)."""
    return tree[group].attrs.get(key, _ABSENT)


_ABSENT = object()


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
