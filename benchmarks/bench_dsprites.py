"""Benchmark: procedural dSprites rendering throughput (images per second).

Side by side in one run, on one device:

1. ``DSprites.images`` -- the gather of 64x64 windows out of the 720 cached (shape, scale,
   orientation) masks -- for batch sizes 256, 1024 and 4096 of random factors, allocating the
   result, and writing into a reused buffer (``out=``): on a CPU the difference is the cost of
   fresh memory (large blocks are mmapped and page-faulted on every call). Target on a 2-core
   CPU: >= 50,000 images/s.
2. ``DSprites.images_from_index`` (index -> factors -> images) and a full epoch-style pass of
   :func:`pyrobust.data.minibatches` over a :class:`pyrobust.data.DSpritesDataset` (shuffle,
   index, render).
3. The **direct** way, for scale: the same geometry evaluated per pixel for every image of the
   batch (vectorised, no masks), i.e. what the mask cache saves.
4. The one-off cost of rendering the 720 masks (first call on a device).

Run ``python benchmarks/bench_dsprites.py [--quick] [--device cuda] [--threads N]``. Timings are
the best of repeated runs (at least 3 or 10, and at least 0.3 s in all; wall clock).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from pyrobust.data import DSprites, DSpritesDataset, minibatches
from pyrobust.data import dsprites as _dsprites


def _best(fn, repeats: int, device: torch.device, min_seconds: float = 0.3) -> float:
    """Best wall time of ``fn()``: at least ``repeats`` runs, and more (up to 200) until
    ``min_seconds`` have passed, so short calls get enough tries on a busy machine."""
    fn()
    times: list[float] = []
    total = 0.0
    while len(times) < repeats or (total < min_seconds and len(times) < 200):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        total += times[-1]
    return min(times)


def _direct_render(factors: torch.Tensor) -> torch.Tensor:
    """The same images computed per pixel from the geometry (no mask cache), vectorised."""
    grids = _dsprites._factor_grids(torch.float64)
    dev = factors.device
    n = factors.shape[0]
    radius = (_dsprites._RADIUS * grids[2].to(dev)[factors[:, 2]]).view(n, 1, 1)
    theta = grids[3].to(dev)[factors[:, 3]].view(n, 1, 1)
    centre = _dsprites._centre_pixels().to(dev)
    cx = centre[factors[:, 4]].view(n, 1, 1).double()
    cy = centre[factors[:, 5]].view(n, 1, 1).double()
    pix = torch.arange(64, dtype=torch.float64, device=dev) + 0.5
    x = pix.view(1, 1, 64) - cx
    y = -(pix.view(1, 64, 1) - cy)
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = (cos * x + sin * y) / radius
    v = (-sin * x + cos * y) / radius
    inside = _dsprites._inside(factors[:, 1].view(n, 1, 1), u, v)
    return inside.to(torch.float32).unsqueeze(1)


def main(quick: bool = False, device: str = "cpu", threads: int | None = None) -> list[dict]:
    """Measure and print a markdown table; return the rows."""
    if threads is not None:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    repeats = 3 if quick else 10
    ds = DSprites()
    rows: list[dict] = []

    def row(what: str, batch, seconds: float, images: int | None) -> None:
        ips = float("nan") if images is None else images / seconds
        rows.append({"what": what, "batch": batch, "seconds": seconds, "images/s": ips})

    _dsprites._MASK_CACHE.clear()
    start = time.perf_counter()
    ds.images(torch.zeros(1, 6, dtype=torch.long, device=dev))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    row("render the 720 masks (once per device)", "-", time.perf_counter() - start, None)

    for batch in (256, 1024, 4096):
        f = ds.sample_factors(batch, seed=0, device=dev)
        row("DSprites.images", batch, _best(lambda f=f: ds.images(f), repeats, dev), batch)
        buffer = torch.empty(batch, 1, 64, 64, device=dev)
        t = _best(lambda f=f, b=buffer: ds.images(f, out=b), repeats, dev)
        row("DSprites.images into a reused buffer (out=)", batch, t, batch)

    batch = 1024 if quick else 4096
    index = torch.randint(0, len(ds), (batch,), generator=torch.Generator().manual_seed(0))
    index = index.to(dev)
    row(
        "DSprites.images_from_index",
        batch,
        _best(lambda: ds.images_from_index(index), repeats, dev),
        batch,
    )

    f = ds.sample_factors(batch, seed=0, device=dev)
    if not torch.equal(_direct_render(f), ds.images(f)):
        raise RuntimeError("the direct renderer disagrees with the mask gather")
    t = _best(lambda: _direct_render(f), max(1, repeats // 3), dev)
    row("direct per-pixel rendering (no masks)", batch, t, batch)

    n = 16_384 if quick else 65_536
    data = DSpritesDataset(torch.arange(n) * (len(ds) // n), device=dev)

    def epoch():
        for _ in minibatches(data, 1024, seed=0):
            pass

    t = _best(epoch, max(1, repeats // 3), dev)
    row(f"minibatches over a DSpritesDataset of {n} images", 1024, t, n)

    threads_used = torch.get_num_threads()
    print(f"dSprites rendering on {dev} ({threads_used} threads), best of >= {repeats} runs\n")
    print("| what | batch | seconds | images/s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        ips = "-" if math.isnan(r["images/s"]) else f"{r['images/s']:,.0f}"
        print(f"| {r['what']} | {r['batch']} | {r['seconds']:.4f} | {ips} |")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    main(quick=args.quick, device=args.device, threads=args.threads)
