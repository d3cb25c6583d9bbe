"""Audit queries with side effects for the fault tests: they log each execution, fail or die."""

from __future__ import annotations

import os
import time

from pyrobust import r_robustness

#: Set by a test to make :func:`logged_r_robustness` raise from that call on (1-based).
FAIL_AT_CALL: int | None = None
_calls = 0


def logged_r_robustness(model, guide, x, *, seed, log, sleep=0.0, **kwargs):
    """:func:`pyrobust.r_robustness`, appending its seed (one per shard) to the file ``log``."""
    global _calls
    _calls += 1
    if FAIL_AT_CALL is not None and _calls >= FAIL_AT_CALL:
        raise RuntimeError("injected failure")
    with open(log, "a") as f:
        f.write(f"{seed}\n")
    time.sleep(sleep)
    return r_robustness(model, guide, x, seed=seed, **kwargs)


def crash_once_r_robustness(model, guide, x, *, seed, flag, **kwargs):
    """:func:`pyrobust.r_robustness`, but the first call anywhere kills its process.

    The file ``flag`` marks that the crash happened; a retried call finds it and answers.
    """
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return r_robustness(model, guide, x, seed=seed, **kwargs)
    os.close(fd)
    os._exit(1)
