"""Benchmark: the cost of sharding an audit, and Ray workers on this machine.

Side by side in one run, on one device, with an MNIST-size MLP VAE (784 -> 400 -> 2x10 encoder,
10 -> 400 -> 784 Bernoulli decoder; random weights: speed does not depend on training):

1. ``pyrobust.audit(engine="local")`` over ``n`` inputs in shards of ``shard_size``, written to a
   zarr store, vs **one** ``r_robustness`` call on the same ``n`` inputs (same draws per input,
   results kept in memory). Target: throughput ratio >= 0.9x (sharding and the store cost
   almost nothing).
2. ``pyrobust.audit(engine="ray")`` with ``--workers`` actors of one torch thread each, on a local
   Ray cluster of ``--workers`` CPUs, vs the local engine with ``--workers`` torch threads. Reported,
   not targeted: the speed-up belongs to machines with many cores or GPUs. The Ray time includes
   starting the actors and loading the model in each (the cluster is started once, before).

Run ``python benchmarks/bench_audit.py [--quick] [--n N] [--workers W] [--device cuda]``.
Timings are the best of ``--repeats`` runs (wall clock), interleaved.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from pyrobust.models import VAE, MLPDecoder, MLPEncoder, save_model
from pyrobust.robustness import r_robustness
from pyrobust.robustness.audit import audit


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_times(fns, repeats, device):
    """Best wall-clock time of each of ``fns``, interleaved so they see the same machine load."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def main(args):
    torch.manual_seed(0)
    vae = VAE(MLPEncoder(784, 10, hidden=(400,)), MLPDecoder(10, 784, hidden=(400,)), "bernoulli")
    vae = vae.eval().to(args.device)
    x = torch.rand(args.n, 784, generator=torch.Generator().manual_seed(1)).to(args.device)
    work = Path(tempfile.mkdtemp(prefix="bench_audit_"))
    save_model(vae, work / "model.pt")
    kwargs = {"r": 5.0, "num_samples": args.num_samples}
    queries = {"r_robustness": kwargs}
    torch.set_num_threads(args.threads)

    def one_call():
        r_robustness(vae.model, vae.guide, x, seed=0, **kwargs)

    def local():
        audit(
            vae,
            x,
            queries=queries,
            out=work / "local.zarr",
            shard_size=args.shard_size,
            seed=0,
            overwrite=True,
            progress=False,
        )

    t_one, t_local = best_times([one_call, local], args.repeats, args.device)
    codes = args.n * args.num_samples
    print(f"\n### bench_audit ({args.device}, {args.threads} threads, {platform.machine()})\n")
    print("| measurement | size | time | ratio | target |")
    print("|---|---|---|---|---|")
    shards = -(-args.n // args.shard_size)
    print(
        f"| local audit vs one r_robustness call | {args.n} inputs x {args.num_samples} draws, "
        f"{shards} shards of {args.shard_size} | {t_local:.2f} s vs {t_one:.2f} s | "
        f"{t_one / t_local:.2f}x | >= 0.9x |"
    )
    if args.workers:
        import ray

        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.workers,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=200 * 1024**2,
        )
        t_init = time.perf_counter() - t0
        torch.set_num_threads(args.workers)

        def local_threads():
            audit(
                vae,
                x,
                queries=queries,
                out=work / "local.zarr",
                shard_size=args.shard_size,
                seed=0,
                overwrite=True,
                progress=False,
            )

        def on_ray():
            audit(
                work,
                x.cpu(),
                queries=queries,
                out=work / "ray.zarr",
                engine="ray",
                num_workers=args.workers,
                threads=1,
                shard_size=args.shard_size,
                seed=0,
                overwrite=True,
                progress=False,
            )

        t_lt, t_ray = best_times([local_threads, on_ray], args.repeats, args.device)
        ray.shutdown()
        print(
            f"| Ray, {args.workers} workers x 1 thread vs local engine, {args.workers} threads | "
            f"same | {t_ray:.2f} s vs {t_lt:.2f} s | {t_lt / t_ray:.2f}x | reported |"
        )
        print(
            f"\nRay local cluster start ({args.workers} CPUs): {t_init:.1f} s, not in the times above."
        )
    print(f"Throughput of one call: {codes / t_one:,.0f} decoded codes/s.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (0: skip Ray)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of parts 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.num_samples, args.shard_size, args.repeats = 200, 20, 50, 1
    main(args)
