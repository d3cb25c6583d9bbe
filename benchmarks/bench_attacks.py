"""Benchmark: batched PGD attacks and empirical margins vs the research-code way.

The research code of [CAM]-style experiments attacks one input at a time with
``scipy.optimize.minimize(method="L-BFGS-B")``, evaluating the expected distance with a Python
loop over encoder draws, and bisects the radius input by input. (The paper draws fresh noise
per evaluation; the baseline here fixes the draws per attack, which lets L-BFGS-B run its
iterations and makes it a stronger, slower baseline. Its probabilities are batched over
draws, which favours it too.) pyrobust folds inputs, restarts and radii into one batch and runs projected
gradient ascent with expectation over the encoder noise.

Two measurements on a small conv VAE trained briefly on scikit-learn digits (8x8):

1. the maximum-damage attack at a fixed budget for all inputs: wall time and achieved damage,
   both attacks' damage measured by the same estimator (1000 fresh draws);
2. empirical margins (bisection over the radius) for all inputs: wall time, the margins, and
   how often ours is at most the baseline's (a smaller margin means a stronger attack).

The baseline is timed on ``--baseline-inputs`` inputs and its per-input time scaled to all
inputs (it is a loop over inputs, so the scaling is linear); the table says so.

Run ``python benchmarks/bench_attacks.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyro
import torch
from scipy import optimize

from pyrobust.data.digits import load_digits
from pyrobust.inference.fit import fit
from pyrobust.models import VAE, ConvDecoder, ConvEncoder, guide_loc_scale, model_mean
from pyrobust.models.sites import Pair
from pyrobust.robustness._sampling import sample_distances
from pyrobust.robustness.attacks import max_damage_attack
from pyrobust.robustness.empirical import empirical_margin


def train_vae(epochs: int, latent_dim: int = 4):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    x, _ = load_digits()
    kw = {"channels": (16, 32), "hidden": (64,)}
    vae = VAE(
        ConvEncoder((1, 8, 8), latent_dim, **kw),
        ConvDecoder(latent_dim, (1, 8, 8), **kw),
        likelihood="bernoulli",
    )
    fit(vae, x[:1500], epochs=epochs, batch_size=32, lr=2e-3, seed=0)
    vae.eval()
    return vae, x[1500:]


# ------------------------------------------------------------------------------------------
# the research-code way: one input at a time, L-BFGS-B, a loop over encoder draws
# ------------------------------------------------------------------------------------------
def research_attack(vae, x1, ref1, eps, *, draws, maxiter, rng):
    """Per-input L-BFGS-B maximum-damage attack with a per-sample distance loop."""
    low = np.maximum(-eps, -x1.numpy().ravel()).astype(np.float64)
    high = np.minimum(eps, 1.0 - x1.numpy().ravel()).astype(np.float64)

    # Fixed draws per attack (common random numbers): with a fresh draw per evaluation, as in
    # the paper, L-BFGS-B's line search fails early and the attack is weaker (and faster).
    etas = torch.randn(draws, 1, latent_dim(vae, x1), generator=rng)

    def squash(d):
        return d * torch.clamp(eps / d.norm().clamp_min(1e-12), max=1.0)

    def fun(flat):
        d = torch.tensor(np.array(flat), dtype=x1.dtype).reshape(x1.shape).requires_grad_(True)
        xd = x1 + squash(d)
        total = 0.0
        for eta in etas:  # one encoder draw at a time
            loc, scale = guide_loc_scale(vae.guide, xd)
            total = total + (model_mean(vae.model, x1, loc + eta * scale) - ref1).norm()
        loss = -total / draws
        (grad,) = torch.autograd.grad(loss, d)
        return loss.item(), grad.numpy().astype(np.float64).ravel()

    start = rng_uniform(rng, x1.numel(), eps)
    res = optimize.minimize(
        fun,
        np.clip(start, low, high),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(low, high, strict=True)),
        options={"maxiter": maxiter},
    )
    with torch.no_grad():
        return squash(torch.tensor(np.array(res.x), dtype=x1.dtype).reshape(x1.shape))


def latent_dim(vae, x1):
    with torch.no_grad():
        return guide_loc_scale(vae.guide, x1)[0].shape[-1]


def rng_uniform(rng, n, eps):
    """A random start at half the budget."""
    u = torch.randn(n, generator=rng, dtype=torch.float64)
    return (0.5 * eps * u / u.norm()).numpy()


def research_margin(vae, x1, r, *, bisection_steps, draws, maxiter, num_samples, rng):
    """Per-input bisection of the radius with the per-input attack."""
    with torch.no_grad():
        loc, _ = guide_loc_scale(vae.guide, x1)
        ref1 = model_mean(vae.model, x1, loc)

    def robust(delta):
        with torch.no_grad():
            d = sample_distances(
                Pair.build(vae.model, vae.guide, x1), x1, delta, num_samples=num_samples
            )
        return float((d <= r).double().mean()) > 0.5

    if not robust(torch.zeros_like(x1)):
        return 0.0
    lo, hi = 0.0, float(torch.maximum(x1, 1 - x1).norm())
    if robust(research_attack(vae, x1, ref1, hi, draws=draws, maxiter=maxiter, rng=rng)):
        return hi
    for _ in range(bisection_steps):
        mid = 0.5 * (lo + hi)
        delta = research_attack(vae, x1, ref1, mid, draws=draws, maxiter=maxiter, rng=rng)
        lo, hi = (mid, hi) if robust(delta) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------------------
def damage(vae, x, delta, n=1000):
    with torch.no_grad():
        return sample_distances(
            Pair.build(vae.model, vae.guide, x),
            x,
            delta,
            num_samples=n,
            generator=torch.Generator().manual_seed(9),
        ).mean(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--inputs", type=int, default=64)
    parser.add_argument("--baseline-inputs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.baseline_inputs, args.epochs = 8, 2, 1
    torch.set_num_threads(1)  # a shared machine: compare like with like on one core

    t0 = time.perf_counter()
    vae, test = train_vae(args.epochs)
    train_s = time.perf_counter() - t0
    x = test[: args.inputs]
    n, nb = x.shape[0], min(args.baseline_inputs, x.shape[0])
    steps, draws, restarts, bisect = 30, 8, 2, 8
    eps = 1.0

    # 1. maximum-damage attack at a fixed budget
    t0 = time.perf_counter()
    tree = max_damage_attack(
        vae.model,
        vae.guide,
        x,
        eps=eps,
        steps=steps,
        restarts=restarts,
        eot_samples=draws,
        eval_samples=64,
        seed=0,
    )
    pgd_s = time.perf_counter() - t0
    delta = torch.as_tensor(tree["constant_data"]["delta"].values[:, 0])
    pgd_damage = damage(vae, x, delta)

    rng = torch.Generator().manual_seed(0)
    with torch.no_grad():
        loc, _ = guide_loc_scale(vae.guide, x[:nb])
        ref = model_mean(vae.model, x[:nb], loc)
    t0 = time.perf_counter()
    base = torch.cat(
        [
            research_attack(
                vae, x[i : i + 1], ref[i : i + 1], eps, draws=draws, maxiter=steps, rng=rng
            )
            for i in range(nb)
        ]
    )
    base_s = (time.perf_counter() - t0) * n / nb
    base_damage = damage(vae, x[:nb], base)

    # 2. empirical margins
    with torch.no_grad():
        d0 = sample_distances(Pair.build(vae.model, vae.guide, x), x, num_samples=500)
    r = float(1.2 * d0.median(0).values.median())
    t0 = time.perf_counter()
    em = empirical_margin(
        vae.model,
        vae.guide,
        x,
        r=r,
        steps=steps,
        restarts=restarts,
        eot_samples=draws,
        eval_samples=64,
        bisection_steps=bisect,
        num_samples=500,
        seed=0,
    )
    em_s = time.perf_counter() - t0
    ours = em["robustness"]["margin"].values
    t0 = time.perf_counter()
    theirs = np.array(
        [
            research_margin(
                vae,
                x[i : i + 1],
                r,
                bisection_steps=bisect,
                draws=draws,
                maxiter=steps,
                num_samples=500,
                rng=rng,
            )
            for i in range(nb)
        ]
    )
    em_base_s = (time.perf_counter() - t0) * n / nb

    print(
        f"Conv VAE on digits 8x8 (d_z=4, {args.epochs} epochs, trained in {train_s:.0f} s); "
        f"{n} inputs, l2, box [0, 1], {steps} steps, {draws} encoder draws, "
        f"{restarts} restarts (PGD), {bisect} bisection steps; one CPU thread.\n"
    )
    print("| task | method | time for all inputs (s) | speed-up | quality |")
    print("|---|---|---|---|---|")
    print(
        f"| max-damage attack, eps={eps} | batched PGD (pyrobust) | {pgd_s:.2f} | "
        f"{base_s / pgd_s:.0f}x | mean damage {pgd_damage.mean():.4f} "
        f"(first {nb}: {pgd_damage[:nb].mean():.4f}) |"
    )
    print(
        f"| max-damage attack, eps={eps} | per-input L-BFGS-B, per-sample loop "
        f"(timed on {nb}, scaled) | {base_s:.2f} | 1x | mean damage {base_damage.mean():.4f} |"
    )
    frac = float(np.mean(ours[:nb] <= theirs + 1e-12))
    print(
        f"| empirical margin, r={r:.3f} | batched PGD bisection (pyrobust) | {em_s:.2f} | "
        f"{em_base_s / em_s:.0f}x | median margin {np.median(ours):.4f} "
        f"(first {nb}: {np.median(ours[:nb]):.4f}); ours <= baseline for {frac:.0%} |"
    )
    print(
        f"| empirical margin, r={r:.3f} | per-input L-BFGS-B bisection "
        f"(timed on {nb}, scaled) | {em_base_s:.2f} | 1x | median margin "
        f"{np.median(theirs):.4f} |"
    )
    return {
        "attack_speedup": base_s / pgd_s,
        "margin_speedup": em_base_s / em_s,
        "damage_ratio": float(pgd_damage[:nb].mean() / base_damage.mean()),
        "margin_not_larger": frac,
    }


if __name__ == "__main__":
    main()
