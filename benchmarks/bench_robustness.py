"""Benchmark: r_robustness and margin_bound against their physical floor and research-style loops.

Side by side in one run, on one device, with a small MLP VAE written as a plain Pyro pair
(784 -> 400 -> 2x10 encoder, 10 -> 400 -> 784 Bernoulli decoder, as in Kingma & Welling):

1. ``r_robustness`` (``reference="mean"``, one perturbation) vs the **floor**: one batched pass of
   the bare decoder (with its output sigmoid) over the same ``num_samples x inputs`` latent codes.
   Target: ratio <= 1.3.
2. ``r_robustness`` vs a **per-sample Python loop** as research code does it: for every input and
   every draw, a forward pass (encode x+delta, sample z, decode) and a distance. The loop is timed
   on a subset and compared per latent code. Target: >= 50x.
3. ``margin_bound``'s Jacobian (one forward, d_z vmapped backward passes) vs a loop over inputs of
   ``d_z`` backward passes each. Target: >= 5x.

Run ``python benchmarks/bench_robustness.py [--quick] [--device cuda] [--threads N]``. Timings are
the best of a few repeats (wall clock).
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrobust.models.sites import Pair
from pyrobust.robustness import r_robustness
from pyrobust.robustness._jacobian import encoder_jacobian


class MLPVAE:
    """A plain Pyro model/guide pair with an MLP encoder and decoder."""

    def __init__(self, d_x=784, hidden=400, d_z=10, device="cpu"):
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(d_x, hidden), nn.ReLU(), nn.Linear(hidden, 2 * d_z))
        self.decoder = nn.Sequential(nn.Linear(d_z, hidden), nn.ReLU(), nn.Linear(hidden, d_x))
        self.encoder.to(device)
        self.decoder.to(device)
        self.d_z = d_z

    def encode(self, x):
        loc, s = self.encoder(x).chunk(2, dim=-1)
        return loc, nn.functional.softplus(s) + 1e-3

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.d_z), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_times(fns, repeats, device):
    """Best wall-clock time of each of ``fns``, interleaved so they see the same machine load."""
    for fn in fns:
        fn()
    _sync(device)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def loop_r_robustness(vae, x, delta, r, num_samples):
    """Research-style estimate: a Python loop over inputs and draws, one forward pass per draw."""
    probs = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            ref = torch.sigmoid(vae.decoder(vae.encode(x[i : i + 1])[0]))
            inside = 0
            for _ in range(num_samples):
                loc, scale = vae.encode(x[i : i + 1] + delta[i : i + 1])
                z = loc + torch.randn_like(loc) * scale
                rec = torch.sigmoid(vae.decoder(z))
                inside += int(torch.linalg.vector_norm(rec - ref) <= r)
            probs.append(inside / num_samples)
    return probs


def loop_jacobian(vae, x):
    """A loop over inputs of d_z backward passes each."""
    rows = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach().requires_grad_(True)
        loc = vae.encode(xi)[0][0]
        rows.append(
            torch.stack(
                [torch.autograd.grad(loc[j], xi, retain_graph=True)[0][0] for j in range(vae.d_z)]
            )
        )
    return torch.stack(rows)


CONFIGS = {
    # name: (d_x, hidden, d_z)
    "mnist-mlp": (784, 400, 10),
    "digits-mlp": (64, 128, 4),
}


def run_config(name, device, quick):
    """Measure one VAE size; returns the table rows and the ratios."""
    d_x, hidden, d_z = CONFIGS[name]
    n, num_samples, repeats = (20, 500, 2) if quick else (100, 1000, 5)
    loop_n, loop_s = (1, 100) if quick else (2, 250)
    jac_n = 20 if quick else 200
    vae = MLPVAE(d_x=d_x, hidden=hidden, d_z=d_z, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(n, d_x, generator=g, device=device)
    delta = 0.05 * torch.randn(n, d_x, generator=g, device=device)
    r = 0.2 * d_x**0.5
    codes = n * num_samples
    z = torch.randn(num_samples * n, d_z, generator=g, device=device)

    def ours():
        return r_robustness(
            vae.model, vae.guide, x, r=r, delta=delta, num_samples=num_samples, seed=0
        )

    def floor():
        with torch.no_grad():
            return torch.sigmoid(vae.decoder(z))

    def loop():
        return loop_r_robustness(vae, x[:loop_n], delta[:loop_n], r, loop_s)

    with pyro.validation_enabled(False):
        t_ours, t_floor = best_times([ours, floor], repeats, device)
        (t_loop,) = best_times([loop], 1, device)
    per_code_loop = t_loop / (loop_n * loop_s)
    per_code_ours = t_ours / codes

    xj = torch.rand(jac_n, d_x, generator=g, device=device)
    torch.testing.assert_close(
        encoder_jacobian(Pair.build(vae.model, vae.guide, xj), xj)[2], loop_jacobian(vae, xj)
    )
    t_jac, t_jac_loop = best_times(
        [
            lambda: encoder_jacobian(Pair.build(vae.model, vae.guide, xj), xj),
            lambda: loop_jacobian(vae, xj),
        ],
        1 if quick else 3,
        device,
    )
    rows = [
        f"| {name} | r_robustness vs decoder floor | {n} inputs x {num_samples} draws "
        f"| {t_ours * 1e3:.1f} ms vs {t_floor * 1e3:.1f} ms | {t_ours / t_floor:.2f}x | <= 1.3x |",
        f"| {name} | r_robustness vs per-sample loop | per code (loop: {loop_n} x {loop_s}) "
        f"| {per_code_ours * 1e6:.2f} us vs {per_code_loop * 1e6:.1f} us "
        f"| {per_code_loop / per_code_ours:.0f}x faster | >= 50x |",
        f"| {name} | Jacobian: batched vs loop over inputs | {jac_n} inputs, d_z={d_z} "
        f"| {t_jac * 1e3:.1f} ms vs {t_jac_loop * 1e3:.1f} ms "
        f"| {t_jac_loop / t_jac:.0f}x faster | >= 5x |",
    ]
    ratios = {
        "floor_ratio": t_ours / t_floor,
        "loop_speedup": per_code_loop / per_code_ours,
        "jacobian_speedup": t_jac_loop / t_jac,
        "codes_per_s": codes / t_ours,
        "floor_codes_per_s": codes / t_floor,
        "floor_vs_loop": per_code_loop / (t_floor / codes),
    }
    return rows, ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = list(CONFIGS) if args.config == "all" else [args.config]
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### bench_robustness ({label}, {torch.get_num_threads()} threads)\n")
    print("| model | measurement | size | time | ratio | target |")
    print("|---|---|---|---|---|---|")
    results = {}
    for name in names:
        rows, results[name] = run_config(name, device, args.quick)
        print("\n".join(rows), flush=True)
    print()
    for name, res in results.items():
        print(
            f"{name}: {res['codes_per_s']:,.0f} decoded codes/s (floor "
            f"{res['floor_codes_per_s']:,.0f}); the floor itself is "
            f"{res['floor_vs_loop']:.0f}x faster per code than the loop."
        )
    return results


if __name__ == "__main__":
    main()
