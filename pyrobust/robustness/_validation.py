"""Input checks shared by every robustness function.

Each check raises a :class:`ValueError` or :class:`TypeError` that names the argument, says what
was expected and what was got, and how to fix it (the style of Pyro's ``check_site_shape``).
They run once at the public boundary, never inside a hot loop.

Stable private API (used by ``query``, ``margin``, ``attacks`` and ``empirical``):

* :func:`check_inputs` ``(x, name="x") -> Tensor``
* :func:`check_perturbation` ``(delta, x, name="delta") -> Tensor``
* :func:`check_radius` ``(r, x, name="r") -> (Tensor, bool)``
* :func:`check_positive_int` ``(value, name, minimum=1) -> int``
* :func:`check_confidence` ``(confidence, name="confidence", allow_none=False) -> float | None``
* :func:`check_choice` ``(value, name, choices) -> str``
* :func:`check_seed` ``(seed) -> int | None``
* :func:`check_finite` ``(t, name) -> None``
* :func:`check_site_name` ``(value, name) -> str``
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "check_choice",
    "check_confidence",
    "check_finite",
    "check_inputs",
    "check_perturbation",
    "check_positive_int",
    "check_radius",
    "check_seed",
    "check_site_name",
]


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or infinite values."""
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        raise ValueError(
            f"`{name}` must be finite; it has {n_bad} NaN/inf value(s) out of {t.numel()}. "
            f"Remove or replace them (e.g. torch.nan_to_num) before calling."
        )


def check_inputs(x: Any, name: str = "x") -> torch.Tensor:
    """Check a batch of inputs: a floating-point tensor of shape ``(n, *event)``, finite.

    Returns ``x`` unchanged (never copied or mutated).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor of shape (n_inputs, *event); got "
            f"{type(x).__name__}. Convert it with torch.as_tensor(..., dtype=torch.float32)."
        )
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"`{name}` must be a floating-point tensor; got dtype {x.dtype}. "
            f"Use {name}.float() (or .double())."
        )
    if x.is_meta:
        raise ValueError(
            f"`{name}` is on the meta device (shapes without data); pass real inputs on the "
            "model's device, e.g. x.to('cpu')."
        )
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(
            f"`{name}` must have shape (n_inputs, *event) with a leading batch dim and at least "
            f"one input; got shape {tuple(x.shape)}. For a single input pass {name}[None]."
        )
    check_finite(x, name)
    return x


def check_perturbation(delta: Any, x: torch.Tensor, name: str = "delta") -> torch.Tensor:
    """Check a perturbation against inputs ``x`` of shape ``(n, *event)``.

    ``delta`` may be shaped like ``x`` (one perturbation per input) or ``(m, *x.shape)`` (a stack
    of ``m`` perturbations). Array-likes are converted to ``x``'s dtype; tensors are moved to
    ``x``'s device.

    Returns
    -------
    torch.Tensor
        Always of shape ``(m, *x.shape)`` (``m = 1`` for a single perturbation).
    """
    if not isinstance(delta, torch.Tensor):
        try:
            delta = torch.as_tensor(delta, dtype=x.dtype, device=x.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`{name}` must be a tensor shaped like x {tuple(x.shape)} or a stack "
                f"(m, {', '.join(map(str, x.shape))}); got {type(delta).__name__}."
            ) from err
    if not delta.dtype.is_floating_point:
        delta = delta.to(x.dtype)
    delta = delta.to(device=x.device, dtype=x.dtype)
    if tuple(delta.shape) == tuple(x.shape):
        delta = delta.unsqueeze(0)
    elif delta.dim() != x.dim() + 1 or tuple(delta.shape[1:]) != tuple(x.shape):
        raise ValueError(
            f"`{name}` must be shaped like x, {tuple(x.shape)}, or be a stack of perturbations "
            f"(m, {', '.join(map(str, x.shape))}); got {tuple(delta.shape)}. For one perturbation "
            f"shared by every input, pass {name}.expand_as(x)."
        )
    check_finite(delta, name)
    return delta


def check_radius(r: Any, x: torch.Tensor, name: str = "r") -> tuple[torch.Tensor, bool]:
    """Check radii: a positive finite scalar or 1-D array.

    Returns
    -------
    r : torch.Tensor
        1-D tensor of radii on ``x``'s device, in ``x``'s dtype.
    scalar : bool
        Whether ``r`` was a scalar (so the ``radius`` dim is dropped from results).
    """
    if r is None:
        raise TypeError(f"`{name}` is required: a positive radius (scalar or 1-D array).")
    try:
        t = torch.as_tensor(r.detach() if isinstance(r, torch.Tensor) else r, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"`{name}` must be a positive number or 1-D array of them; got {type(r).__name__}."
        ) from err
    if t.dim() > 1 or t.numel() == 0:
        raise ValueError(
            f"`{name}` must be a scalar or a non-empty 1-D array; got shape {tuple(t.shape)}."
        )
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(
            f"`{name}` must be positive and finite (a radius of the output ball); got "
            f"{t.tolist()}. Pass r > 0."
        )
    return t.reshape(-1).to(device=x.device, dtype=x.dtype), t.dim() == 0


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Check an integer count ``>= minimum`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


def check_confidence(
    confidence: Any, name: str = "confidence", allow_none: bool = False
) -> float | None:
    """Check a confidence level strictly inside ``(0, 1)`` (or ``None`` when allowed)."""
    if confidence is None and allow_none:
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        allowed = " or None" if allow_none else ""
        raise TypeError(
            f"`{name}` must be a number in (0, 1){allowed}; got {confidence!r}. "
            "For a 95% interval pass 0.95."
        )
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"`{name}` must lie strictly between 0 and 1; got {confidence}. "
            "For a 95% interval pass 0.95 (not 95)."
        )
    return confidence


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"Unknown `{name}`={value!r}; choose one of {', '.join(map(repr, choices))}."
        )
    return value


def check_seed(seed: Any) -> int | None:
    """Check a seed: ``None`` or a non-negative integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"`seed` must be None or a non-negative integer; got {seed!r}.")
    return int(seed)


def check_site_name(value: Any, name: str) -> str:
    """Check a Pyro sample-site name (a non-empty string)."""
    if not isinstance(value, str) or not value:
        raise TypeError(
            f"`{name}` must be the name of a Pyro sample site (a non-empty string); got {value!r}."
        )
    return value
