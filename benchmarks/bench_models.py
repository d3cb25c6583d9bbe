"""Benchmarks for pyrobust.models: the cost of the site protocol and of training steps.

Prints a markdown table. Ratios are measured side by side in one run, so they are more
trustworthy than the absolute times on a shared machine.

    python benchmarks/bench_models.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from pyrobust.models import (
    VAE,
    BurgessDecoder,
    BurgessEncoder,
    MLPDecoder,
    MLPEncoder,
    guide_loc_scale,
    model_mean,
)


def _time_pair(ours, base, repeats: int) -> tuple[float, float]:
    """Median wall times (ms) of two callables, interleaved so load spikes hit both alike."""
    ours(), base()  # warm-up
    t_ours, t_base = [], []
    for _ in range(repeats):
        for fn, out in ((ours, t_ours), (base, t_base)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return 1e3 * sorted(t_ours)[repeats // 2], 1e3 * sorted(t_base)[repeats // 2]


def bench(quick: bool) -> list[tuple[str, str, float, float]]:
    repeats = 5 if quick else 11
    samples = 16 if quick else 32
    batch = 32 if quick else 64
    rows = []
    configs = [
        ("MLP 784-400-20", VAE(MLPEncoder(784, 20), MLPDecoder(20, 784)), (784,)),
        ("Burgess 64x64", VAE(BurgessEncoder(), BurgessDecoder()), (1, 64, 64)),
    ]
    for label, vae, event in configs:
        x = torch.rand(batch, *event)
        z = torch.randn(samples, batch, vae.latent_dim)
        with torch.no_grad(), pyro.validation_enabled(False):
            traced, bare = _time_pair(
                lambda vae=vae, x=x, z=z: model_mean(vae.model, x, z),
                lambda vae=vae, z=z: vae.decode(z),
                repeats,
            )
            rows.append(
                (label, f"g(z): model_mean vs bare decode, {samples}x{batch} codes", traced, bare)
            )
            read, enc = _time_pair(
                lambda vae=vae, x=x: guide_loc_scale(vae.guide, x),
                lambda vae=vae, x=x: vae.encode(x),
                repeats,
            )
            rows.append(
                (label, f"mu, sigma: guide_loc_scale vs bare encode, {batch} inputs", read, enc)
            )
        pyro.clear_param_store()
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)

        def torch_step(vae=vae, x=x, opt=opt):
            opt.zero_grad()
            loc, scale = vae.encode(x)
            zz = loc + scale * torch.randn_like(loc)
            logits = vae.decoder(zz)
            rec = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum()
            (rec + kl).backward()
            opt.step()

        with pyro.validation_enabled(False):
            svi_ms, plain_ms = _time_pair(lambda svi=svi, x=x: svi.step(x), torch_step, repeats)
        rows.append(
            (
                label,
                f"training step: Pyro SVI vs hand-written torch, batch {batch}",
                svi_ms,
                plain_ms,
            )
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = bench(args.quick)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    print("| model | operation | pyrobust (ms) | baseline (ms) | ratio |")
    print("|---|---|---:|---:|---:|")
    for label, what, ours, base in rows:
        print(f"| {label} | {what} | {ours:.2f} | {base:.2f} | {ours / base:.2f}x |")


if __name__ == "__main__":
    main()
