"""The process that ``test_crash.py`` kills -9: it writes results, models, reports or
checkpoints in a loop and prints one line after each complete write.

Run as ``python -m tests.reliability._crash_child TARGET WORKDIR`` from the repository root.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch


def big_tree(seed: int):
    """A robustness result of a few MB, so that a write takes long enough to be cut."""
    from tests.analysis._fixtures import robustness_tree

    return robustness_tree(seed=seed, n=40, draws=12_000)


def small_vae(seed: int):
    from pyrobust.models import VAE, MLPDecoder, MLPEncoder

    torch.manual_seed(seed)
    return VAE(MLPEncoder(64, 4, hidden=(256, 256)), MLPDecoder(4, 64, hidden=(256, 256)))


def fit_data():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(192, 16, generator=g) > 0.5).float()


def run_fit(workdir: Path, epochs: int):
    """Train with checkpoints, resuming from them; save the final weights and losses."""
    import pyro

    from pyrobust.inference import fit
    from pyrobust.models import VAE, MLPDecoder, MLPEncoder

    torch.manual_seed(0)
    vae = VAE(MLPEncoder(16, 2, hidden=(32,)), MLPDecoder(2, 16, hidden=(32,)))
    pyro.clear_param_store()
    print("start", flush=True)
    tree = fit(
        vae,
        fit_data(),
        epochs=epochs,
        batch_size=32,
        lr=1e-2,
        seed=3,
        checkpoint_dir=workdir / "ckpt",
        resume=True,
        progress=False,
    )
    result = {
        "state": {k: v.detach().clone() for k, v in vae.state_dict().items()},
        "loss": torch.as_tensor(tree["history"]["loss"].values),
    }
    torch.save(result, workdir / "final.pt")
    print("end", flush=True)


def main(argv: list[str]) -> None:
    target, workdir = argv[0], Path(argv[1])
    torch.set_num_threads(1)
    if target == "fit":
        run_fit(workdir, int(argv[2]))
        return
    from pyrobust.analysis import report, save
    from pyrobust.models import save_model

    if target == "save-zarr-fallback":  # as on a system without renameat2(RENAME_EXCHANGE)
        import pyrobust.analysis.io as io

        io._exchange = lambda src, dst: False
        target = "save-zarr"
    if target in ("save-nc", "save-zarr"):
        items = [big_tree(1), big_tree(2)]
        path = workdir / ("run.nc" if target == "save-nc" else "run.zarr")
        write = lambda item: save(item, path)  # noqa: E731
    elif target == "save_model":
        items = [small_vae(1), small_vae(2)]
        path = workdir / "model.pt"
        write = lambda item: save_model(item, path)  # noqa: E731
    elif target == "report":
        from tests.analysis._fixtures import margin_tree

        items = [margin_tree(seed=1), margin_tree(seed=2)]
        path = workdir / "report"
        write = lambda item: report(item, path)  # noqa: E731
    else:
        raise SystemExit(f"unknown target {target!r}")
    start = time.perf_counter()
    for i in range(10**9):
        write(items[(i + 1) % 2])  # starts with the second item: the parent wrote the first
        print(f"done {i} {time.perf_counter() - start:.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
