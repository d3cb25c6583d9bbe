r"""Coefficient schedules: warm-ups and cycles for any coefficient of an objective.

A schedule is a callable mapping the optimisation step :math:`t = 0, 1, \dots` to a value.
Every coefficient of the objectives in :mod:`pyrobust.inference.objectives` (``beta``,
``gamma``, ``capacity``, ``lambda_od``, ...) accepts either a number or a schedule; the
training loop :func:`pyrobust.inference.fit` calls ``objective.set_step(t)`` before each step.
The objective keeps the current value in a 0-dim tensor on the loss's device and dtype,
updated in place (``fill_``) between steps, so no new tensor or host-to-device copy is made per
step and the graph has the same structure at every step. The JIT-compiled objectives
(:class:`~pyrobust.inference.JitBetaELBO`, ...) pass these tensors to the compiled function as
traced *inputs*, so a schedule changes their values without recompiling.

Schedules are vectorised: called on an integer tensor of steps they return a tensor of values,
which is how they are plotted and tested.

References
----------
.. [1] Bowman, Vilnis, Vinyals, Dai, Jozefowicz, Bengio. *Generating Sentences from a
   Continuous Space*. CoNLL 2016 (KL annealing, linear and sigmoid warm-up).
.. [2] Fu, Li, Liu, Gao, Celikyilmaz, Carin. *Cyclical Annealing Schedule: A Simple Approach
   to Mitigating KL Vanishing*. NAACL 2019.
.. [3] Burgess, Higgins, Pal, Matthey, Watters, Desjardins, Lerchner. *Understanding
   disentangling in beta-VAE*. arXiv:1804.03599, 2018 (linearly increasing capacity).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import torch

__all__ = ["Constant", "Cyclical", "Linear", "Schedule", "SigmoidWarmup", "as_schedule"]


def _check_number(name: str, value, *, positive: bool = False, nonnegative: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}.")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}.")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}.")
    return float(value)


def _steps(step):
    """Return ``(t, scalar)``: the steps as a float64 tensor and whether the input was scalar."""
    if isinstance(step, torch.Tensor):
        return step.to(torch.float64), False
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be an int or a tensor of ints; got {type(step).__name__}.")
    return torch.tensor(float(step), dtype=torch.float64), True


def _out(value: torch.Tensor, scalar: bool):
    return float(value) if scalar else value


class Schedule:
    """Base class: a value as a function of the step. Subclasses implement :meth:`_value`."""

    def __call__(self, step):
        """Value at ``step`` (an int, giving a float, or an integer tensor, giving a tensor)."""
        t, scalar = _steps(step)
        return _out(self._value(t), scalar)

    def _value(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The schedule's settings, for the attrs of a training history."""
        return {"schedule": type(self).__name__, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Constant(Schedule):
    """A constant value (what a plain number means)."""

    value: float

    def __post_init__(self):
        object.__setattr__(self, "value", _check_number("value", self.value))

    def _value(self, t):
        return torch.full_like(t, self.value)


@dataclass(frozen=True)
class Linear(Schedule):
    r"""Linear ramp from ``start`` to ``end`` over ``num_steps`` steps after ``delay``.

    .. math:: c(t) = c_0 + (c_1 - c_0)\,\mathrm{clip}\!\left(\frac{t - t_d}{T}, 0, 1\right)

    The capacity schedule of Burgess et al. [3]_ is ``Linear(0.0, C_max, num_steps)``; the KL
    warm-up of Bowman et al. [1]_ is ``Linear(0.0, 1.0, num_steps)``.
    """

    start: float
    end: float
    num_steps: int
    delay: int = 0

    def __post_init__(self):
        _check_number("start", self.start)
        _check_number("end", self.end)
        _check_number("num_steps", self.num_steps, positive=True)
        _check_number("delay", self.delay, nonnegative=True)

    def _value(self, t):
        frac = ((t - self.delay) / self.num_steps).clamp(0.0, 1.0)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class Cyclical(Schedule):
    r"""Cyclical annealing of Fu et al. [2]_: repeated linear ramps.

    Each cycle of ``period`` steps rises linearly from ``start`` to ``end`` during its first
    ``ratio * period`` steps and then stays at ``end``:

    .. math:: c(t) = c_0 + (c_1 - c_0)\,\min\!\left(1, \frac{t \bmod P}{R P}\right)

    After ``num_cycles`` cycles (if given) the value stays at ``end``.
    """

    start: float
    end: float
    period: int
    ratio: float = 0.5
    num_cycles: int | None = None

    def __post_init__(self):
        _check_number("start", self.start)
        _check_number("end", self.end)
        _check_number("period", self.period, positive=True)
        if not 0.0 < _check_number("ratio", self.ratio) <= 1.0:
            raise ValueError(f"ratio must be in (0, 1]; got {self.ratio!r}.")
        if self.num_cycles is not None:
            _check_number("num_cycles", self.num_cycles, positive=True)

    def _value(self, t):
        frac = (torch.remainder(t, self.period) / (self.ratio * self.period)).clamp(0.0, 1.0)
        if self.num_cycles is not None:
            frac = torch.where(t >= self.num_cycles * self.period, torch.ones_like(frac), frac)
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class SigmoidWarmup(Schedule):
    r"""Sigmoid warm-up (Bowman et al. [1]_) from ``start`` to ``end`` centred at ``midpoint``.

    .. math:: c(t) = c_0 + (c_1 - c_0)\,\sigma\!\big(k\,(t - t_m)\big)

    with steepness :math:`k` (per step).
    """

    start: float
    end: float
    midpoint: float
    steepness: float = 0.01

    def __post_init__(self):
        _check_number("start", self.start)
        _check_number("end", self.end)
        _check_number("midpoint", self.midpoint)
        _check_number("steepness", self.steepness, positive=True)

    def _value(self, t):
        return self.start + (self.end - self.start) * torch.sigmoid(
            self.steepness * (t - self.midpoint)
        )


def as_schedule(value, name: str = "coefficient", *, nonnegative: bool = True) -> Schedule:
    """Turn a number or a schedule into a :class:`Schedule`, validating numbers.

    Parameters
    ----------
    value : float or Schedule
        The coefficient.
    name : str
        The argument's name, for error messages.
    nonnegative : bool, default True
        Reject negative numbers (schedules are checked at their start and end points).
    """
    if isinstance(value, Schedule):
        sched = value
    elif callable(value):
        raise TypeError(
            f"{name} must be a number or a pyrobust.inference.schedules.Schedule; got the "
            f"callable {value!r}. Wrap custom rules in a Schedule subclass implementing _value."
        )
    else:
        sched = Constant(_check_number(name, value))
    if nonnegative:
        for where, v in (("at step 0", sched(0)), ("at its end", _end_value(sched))):
            if v < 0:
                raise ValueError(
                    f"{name} must be >= 0; got {v!r} {where} (from {value!r}). Use a "
                    "non-negative value or schedule."
                )
    return sched


def _end_value(sched: Schedule) -> float:
    end = getattr(sched, "end", None)
    return float(end) if end is not None else sched(0)
