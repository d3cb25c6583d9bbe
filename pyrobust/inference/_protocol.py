"""Private helpers of the site protocol for training and evaluation.

The extra arguments of conditional models (Predictive's convention), the dtype a model
computes in, and finiteness checks of data. Reading sites from traces is the site protocol's
own (:mod:`pyrobust.models.sites`; ``inference`` depends on ``models``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pyrobust.models.sites import _diag_normal, _get_site  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------------------------
# extra arguments of conditional models
# --------------------------------------------------------------------------------------------
class _ModelArgs:
    """``model_args`` / ``model_kwargs`` split into per-data-point tensors and the rest.

    Following :class:`pyro.infer.Predictive`, the model and guide are called as
    ``model(x, *model_args, **model_kwargs)``. A tensor whose leading dim is ``n`` (the number
    of inputs) is *per data point*: it is indexed with the same rows as ``x``. Every other
    value passes through unchanged. A numpy array with leading dim ``n`` is refused (convert
    it with ``torch.as_tensor``: it would otherwise reach the model whole, unbatched).
    """

    def __init__(
        self, args, kwargs, n: int, names: tuple[str, str] = ("model_args", "model_kwargs")
    ):
        a_name, k_name = names
        if args is None:
            args = ()
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                f"{a_name} must be a tuple of extra positional arguments of the model and "
                f"guide (model(x, *{a_name})); got {type(args).__name__}. Wrap a single "
                f"argument as ({a_name}=(y,))."
            )
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise TypeError(
                f"{k_name} must be a dict of keyword arguments of the model and guide; got "
                f"{type(kwargs).__name__}."
            )
        self.n = int(n)
        self.args = list(args)
        self.kwargs = dict(kwargs)
        self.per_point: list[tuple[str, Any]] = []  # ("a", i) or ("k", key)
        for where, key, value, label in [
            *(("a", i, v, f"{a_name}[{i}]") for i, v in enumerate(self.args)),
            *(("k", k, v, f"{k_name}[{k!r}]") for k, v in self.kwargs.items()),
        ]:
            if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == self.n:
                raise TypeError(
                    f"{label} is a numpy array with leading dim {self.n} (one row per data "
                    "point); pass it as a torch tensor (torch.as_tensor(...)) so that it is "
                    "batched with the inputs."
                )
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == self.n:
                self.per_point.append((where, key))

    def __bool__(self) -> bool:
        return bool(self.args or self.kwargs)

    def _items(self):
        for where, key in self.per_point:
            yield where, key, (self.args[key] if where == "a" else self.kwargs[key])

    def _set(self, args, kwargs, where, key, value) -> None:
        if where == "a":
            args[key] = value
        else:
            kwargs[key] = value

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> _ModelArgs:
        """Move per-point tensors to ``device`` (floating ones to ``dtype``) once."""
        for where, key, value in list(self._items()):
            if dtype is not None and value.is_floating_point() and value.dtype != dtype:
                value = value.to(dtype)
            self._set(self.args, self.kwargs, where, key, value.to(device))
        return self

    def get(self, idx: torch.Tensor) -> tuple[tuple, dict]:
        """The arguments for the rows ``idx`` of the inputs."""
        args, kwargs = list(self.args), dict(self.kwargs)
        for where, key, value in self._items():
            self._set(args, kwargs, where, key, value[idx.to(value.device)])
        return tuple(args), kwargs

    def repeat(self, k: int, rows: slice | None = None) -> tuple[tuple, dict]:
        """Arguments for ``k`` copies of the inputs folded into the data dim (copy-major).

        Matches ``x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, ...)``.
        """
        args, kwargs = list(self.args), dict(self.kwargs)
        for where, key, value in self._items():
            v = value if rows is None else value[rows]
            v = v.unsqueeze(0).expand(k, *v.shape).reshape(k * v.shape[0], *v.shape[1:])
            self._set(args, kwargs, where, key, v)
        return tuple(args), kwargs


# --------------------------------------------------------------------------------------------
# dtype and finiteness
# --------------------------------------------------------------------------------------------
def _modules_of(obj) -> list[torch.nn.Module]:
    """The torch modules reachable from ``obj``: itself, a bound method's owner, and the
    owner's direct attributes (e.g. ``self.encoder``)."""
    found = []
    for candidate in (obj, getattr(obj, "__self__", None)):
        if isinstance(candidate, torch.nn.Module):
            found.append(candidate)
        elif candidate is not None and candidate is not obj and hasattr(candidate, "__dict__"):
            found += [v for v in vars(candidate).values() if isinstance(v, torch.nn.Module)]
    return found


def _model_dtype(*objs) -> torch.dtype | None:
    """The floating dtype of the parameters of the modules reachable from ``objs``.

    ``None`` when none is found (a model written with plain tensors) or they disagree.
    """
    dtypes = set()
    for obj in objs:
        for module in _modules_of(obj):
            for p in module.parameters():
                if p.is_floating_point():
                    dtypes.add(p.dtype)
                    break
    return dtypes.pop() if len(dtypes) == 1 else None


def _check_finite(t: torch.Tensor, name: str, rows: str = "") -> None:
    """Refuse NaN or infinite values in input data, naming the argument and the rows."""
    if not t.is_floating_point() and not t.is_complex():
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        per_row = bad.reshape(t.shape[0], -1).any(-1) if t.dim() >= 1 else bad.reshape(1)
        first = per_row.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{name} holds NaN or infinite values (in {int(per_row.sum())} row(s){rows}, "
            f"first at index {first}); training on them gives a NaN loss or a silently "
            f"wrong model. Drop or impute those rows (e.g. {name}[torch.isfinite({name})"
            ".flatten(1).all(1)])."
        )


def _dtype_mismatch(err: Exception, name: str, dtype: torch.dtype) -> TypeError | None:
    """A named error for a raw torch dtype mismatch raised while running the model on data
    of ``dtype``; ``None`` when ``err`` is not one."""
    if not isinstance(err, RuntimeError) or dtype == torch.get_default_dtype():
        return None
    msg = str(err)
    if not any(s in msg for s in ("dtype", "scalar type", "Double", "Float", "Half")):
        return None
    return TypeError(
        f"{name} has dtype {dtype} but the model computes in another dtype (torch raised: "
        f"{msg.splitlines()[0] if msg else type(err).__name__}). numpy arrays are float64 "
        f"by default: pass {name} converted to the model's dtype, e.g. "
        f"torch.as_tensor({name}, dtype=torch.float32), or convert the model (.double())."
    )
