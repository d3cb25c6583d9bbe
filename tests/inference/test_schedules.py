"""Coefficient schedules: values by hand, vectorised evaluation, validation."""

from __future__ import annotations

import math

import pytest
import torch

from pyrobust.inference import schedules


def test_linear():
    s = schedules.Linear(1.0, 3.0, num_steps=4, delay=2)
    assert [s(t) for t in range(8)] == [1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]


def test_cyclical():
    s = schedules.Cyclical(0.0, 1.0, period=4, ratio=0.5, num_cycles=2)
    assert [s(t) for t in range(10)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_sigmoid_warmup():
    s = schedules.SigmoidWarmup(0.0, 2.0, midpoint=10, steepness=0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(14) == pytest.approx(2.0 / (1.0 + math.exp(-2.0)))
    assert s(0) < 0.02 and s(40) > 1.999


def test_constant_and_as_schedule():
    assert schedules.as_schedule(2.5)(1000) == 2.5
    lin = schedules.Linear(0.0, 1.0, 10)
    assert schedules.as_schedule(lin) is lin


@pytest.mark.parametrize(
    "sched",
    [
        schedules.Linear(0.0, 4.0, 7, delay=3),
        schedules.Cyclical(1.0, 0.0, period=5, ratio=0.4),
        schedules.SigmoidWarmup(0.5, 6.0, midpoint=12, steepness=0.3),
        schedules.Constant(3.0),
    ],
)
def test_vectorised_over_steps(sched):
    steps = torch.arange(40)
    values = sched(steps)
    assert values.shape == (40,) and values.dtype == torch.float64
    assert values.tolist() == pytest.approx([sched(int(t)) for t in steps])
    assert isinstance(sched.to_dict()["schedule"], str)


def test_bad_schedules():
    with pytest.raises(ValueError, match="num_steps must be > 0"):
        schedules.Linear(0.0, 1.0, num_steps=0)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        schedules.Cyclical(0.0, 1.0, period=4, ratio=1.5)
    with pytest.raises(TypeError, match="must be a number or a pyrobust"):
        schedules.as_schedule(lambda t: 1.0, "beta")
    with pytest.raises(ValueError, match="beta must be >= 0"):
        schedules.as_schedule(schedules.SigmoidWarmup(0.0, -1.0, midpoint=3), "beta")
    with pytest.raises(TypeError, match="step must be an int"):
        schedules.Constant(1.0)("3")
