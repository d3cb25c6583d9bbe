"""A driver that a test kills with SIGKILL mid-audit: ``python -m tests.audit._interrupted OUT LOG``."""

from __future__ import annotations

import sys

import torch

from pyrobust.robustness.audit import Query, audit
from tests.audit._queries import logged_r_robustness
from tests.linear_gaussian import LinearGaussianVAE

N_INPUTS, SHARD_SIZE, SEED = 12, 2, 7


def setup():
    """The model, the inputs and the queries shared by the killed run and its resumption."""
    vae = LinearGaussianVAE()
    x = torch.randn(N_INPUTS, vae.d_x, generator=torch.Generator().manual_seed(1), dtype=vae.dtype)
    return vae, x


def queries(log: str, sleep: float) -> dict:
    kwargs = {"r": [0.3, 0.6], "num_samples": 64, "log": log, "sleep": sleep}
    return {"r_robustness": Query(logged_r_robustness, kwargs)}


def main(out: str, log: str, sleep: float) -> None:
    vae, x = setup()
    audit(
        (vae.model, vae.guide),
        x,
        queries=queries(log, sleep),
        out=out,
        shard_size=SHARD_SIZE,
        seed=SEED,
        progress=False,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
