"""Benchmark: anytime-valid sequential robustness decisions vs fixed-n designs (issue 15).

On the demo model (``pyrobust demo``: an MLP VAE 64-256-8 with a Bernoulli likelihood trained on
scikit-learn digits), side by side in one process:

1. **r-robustness over a curve of eps.** Every test digit, random perturbations on the l2 sphere
   of radius eps (one direction per digit, shared by the eps and by both designs), r = 1. The
   sequential design (``num_samples="auto"``, error 0.05, ``max_samples`` = 100,000) is compared
   with the smallest fixed-n design (95% Clopper-Pearson, a wrong decision <= 2.5% per cell)
   that decides as many cells, searched over a grid of n. The fixed design of size n is run as
   independent chunks whose counts add up (statistically the same as one call with
   ``num_samples=n``; the time is the sum of the chunks' times, each paying the fixed per-call
   cost once). Reported: total decoded draws, wall time, decided cells.
   Targets: >= 10x fewer draws and >= 5x less time.
2. **Empirical margins** (bisection over the attack radius) with ``num_samples=1000`` per
   decision vs ``num_samples="auto"`` (error 0.05 for the whole margin of an input), with and
   without an indifference zone, at ``empirical_margin``'s default attack and bisection
   (``--margin-settings light``: a lighter one): wall time, draws and the margins (compared
   within the bisection's resolution). Target: >= 3x less time. A run with 16 draws per verdict shows the
   attacks' own time, the floor no choice of verdicts can go below. Accuracy: each design's
   margins against a reference of nearly exact verdicts (``--reference-draws``, default 20,000
   per verdict, two seeds averaged).

Run ``python benchmarks/bench_sequential.py [--quick] [--threads N] [--fixed-max N]
[--skip-curve] [--margin-settings defaults|light]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyro
import torch

from pyrobust._results import decode_attrs
from pyrobust.analysis.experiment import build_vae, load_dataset
from pyrobust.inference import BetaELBO, fit
from pyrobust.robustness import empirical_margin, r_robustness
from pyrobust.robustness._stats import UNDECIDED, clopper_pearson, decide

#: Attack and bisection settings of the empirical-margin comparison: ``empirical_margin``'s
#: own defaults, and a lighter set that runs in about a third of the time.
MARGIN_SETTINGS = {
    "defaults": {"bisection_steps": 12, "steps": 50, "restarts": 4},
    "light": {"bisection_steps": 10, "steps": 30, "restarts": 2},
}
FIXED_GRID = (1_000, 2_000, 5_000, 10_000, 20_000, 30_000, 50_000, 70_000, 100_000)


def demo_vae(epochs: int, device: str):
    """The demo's model: digits, MLP 64-256-8, Bernoulli, beta = 1 (as pyrobust.analysis.demo)."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    split = load_dataset("digits", seed=0, device=device)
    vae = build_vae(split.input_shape, arch="mlp", latent_dim=8, hidden=(256,))
    fit(
        vae,
        split.train,
        elbo=BetaELBO(1.0),
        epochs=epochs,
        batch_size=64,
        lr=2e-3,
        seed=0,
        device=device,
    )
    vae.eval()
    return vae, split.test


def sphere_perturbations(x: torch.Tensor, eps: list[float], seed: int) -> torch.Tensor:
    """``(len(eps), n, *event)``: one uniform direction per input on the unit l2 sphere, scaled."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    u = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    u = u / u.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
    return (
        torch.tensor(eps, dtype=x.dtype, device=x.device).reshape(-1, 1, *([1] * (x.dim() - 1))) * u
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_curve(vae, x, eps, *, r, error, max_samples, fixed_max, chunk):
    delta = sphere_perturbations(x, eps, seed=1)
    q = {"r": r, "delta": delta}
    # warm-up (first calls pay for lazy initialisation)
    r_robustness(vae.model, vae.guide, x[:2], r=r, delta=delta[:, :2], num_samples=16, seed=0)
    seq, t_seq = timed(
        lambda: r_robustness(
            vae.model,
            vae.guide,
            x,
            num_samples="auto",
            error=error,
            max_samples=max_samples,
            seed=0,
            **q,
        )
    )
    rs = seq["robustness"]
    draws_seq = int(rs["num_draws"].sum())
    decided_seq = int((rs["decision"] != UNDECIDED).sum())  # int8 codes; 0 undecided
    cells = int(rs["decision"].size)
    looks = decode_attrs(dict(seq.attrs))["looks"]
    hist = np.bincount(
        np.searchsorted(np.asarray(looks), rs["num_draws"].values.ravel()), minlength=len(looks)
    )
    rows = [("sequential (auto)", draws_seq, t_seq, decided_seq)]

    k = None
    n_done, t_fixed, seed = 0, 0.0, 100
    found = None
    for n in FIXED_GRID:
        if n > fixed_max:
            break
        while n_done < n:
            m = min(chunk, n - n_done)
            tree, t = timed(
                lambda m=m, s=seed: r_robustness(
                    vae.model, vae.guide, x, num_samples=m, seed=s, **q
                )
            )
            seed += 1
            t_fixed += t
            ki = torch.as_tensor(tree["robustness"]["num_inside"].values)
            k = ki if k is None else k + ki
            n_done += m
        lo, hi = clopper_pearson(k, n_done, 0.95)
        decided = int((decide(lo, hi) != 0).sum())
        rows.append((f"fixed n = {n_done:,}", n_done * cells, t_fixed, decided))
        if decided >= decided_seq:
            found = rows[-1]
            break
    return rows, found, cells, hist, seq


def bench_margin(vae, x, *, r, error, bisection_steps, steps, restarts, reference_draws):
    """Empirical margins with a fixed design and sequential variants; times and agreement.

    Accuracy is measured against a reference margin: the mean of two runs of the fixed design
    with ``reference_draws`` draws per verdict (seeds 5 and 6), whose verdicts are nearly
    exact; what is left of its error is the attack's own randomness (the two runs' median
    difference is printed).
    """
    kw = {
        "r": r,
        "bisection_steps": bisection_steps,
        "steps": steps,
        "restarts": restarts,
        "seed": 0,
    }
    empirical_margin(vae.model, vae.guide, x[:2], num_samples=16, **{**kw, "steps": 2})
    variants = [
        ("num_samples=1000 (fixed, point estimate p̂ > 1/2 as [CAM])", {"num_samples": 1000}),
        # the same fixed design with another seed: how far the margin moves by chance alone
        ("num_samples=1000, another seed", {"num_samples": 1000, "seed": 1}),
        (
            f"auto, error {error} (tolerance 'auto' = 0.04)",
            {"num_samples": "auto", "error": error},
        ),
        (
            f"auto, error {error}, tolerance 0.05",
            {"num_samples": "auto", "error": error, "tolerance": 0.05},
        ),
        (
            f"auto, error {error}, tolerance 0.06",
            {"num_samples": "auto", "error": error, "tolerance": 0.06},
        ),
        (
            f"auto, error {error}, tolerance 0.075",
            {"num_samples": "auto", "error": error, "tolerance": 0.075},
        ),
        (
            f"auto, error {error}, tolerance 0.1",
            {"num_samples": "auto", "error": error, "tolerance": 0.1},
        ),
        (
            f"auto, error {error}, no zone (tolerance None)",
            {"num_samples": "auto", "error": error, "tolerance": None},
        ),
        # verdicts from 16 draws: nearly free, so this is the attacks' own time
        ("num_samples=16 (the full attacks with next to free verdicts)", {"num_samples": 16}),
    ]
    rows = []
    for name, extra in variants:
        # wall clock and this process's CPU time (one torch thread: the work done, less exposed
        # to other jobs on a shared machine than the wall clock)
        cpu = time.process_time()
        tree, t = timed(
            lambda extra=extra: empirical_margin(vae.model, vae.guide, x, **{**kw, **extra})
        )
        cpu = time.process_time() - cpu
        rob = tree["robustness"]
        rows.append(
            (
                name,
                t,
                cpu,
                rob["margin"].values,
                rob["margin_upper"].values,
                rob["num_draws"].values,
            )
        )
    ref = None
    if reference_draws:
        runs = [
            empirical_margin(
                vae.model, vae.guide, x, **{**kw, "num_samples": reference_draws, "seed": s}
            )["robustness"]["margin"].values
            for s in (5, 6)
        ]
        ref = 0.5 * (runs[0] + runs[1])
        print(
            f"reference: fixed design with {reference_draws} draws per verdict, two seeds; their "
            f"median |difference| {np.median(np.abs(runs[0] - runs[1])):.4f}"
        )
    _, t_f, c_f, m_f, u_f, _ = rows[0]
    out = []
    for name, t, cpu, m, u, draws in rows:
        resolution = np.maximum(u_f - m_f, u - m)
        diff = np.abs(m - m_f)
        err = np.abs(m - ref) if ref is not None else np.full_like(m, np.nan)
        out.append(
            {
                "name": name,
                "time": t,
                "speedup": t_f / t,
                "cpu": cpu,
                "speedup_cpu": c_f / cpu,
                "draws": int(draws.sum()),
                "median": float(np.median(m)),
                "agree": float((diff <= resolution + 1e-9).mean()),
                "median_diff": float(np.median(diff)),
                "p90_diff": float(np.quantile(diff, 0.9)),
                "resolution": float(np.median(resolution)),
                "median_err": float(np.median(err)),
                "p90_err": float(np.quantile(err, 0.9)),
                "within_ref": float((err <= u_f - m_f + 1e-9).mean()),
            }
        )
    return out


def report_curve(args, vae, x, eps, r):
    """Part 1: print the curve's table and the comparison with the fixed designs."""
    rows, found, cells, hist, seq = bench_curve(
        vae,
        x,
        eps,
        r=r,
        error=args.error,
        max_samples=2_000 if args.quick else args.max_samples,
        fixed_max=5_000 if args.quick else args.fixed_max,
        chunk=args.chunk,
    )
    print("| design | decoded draws | wall time (s) | decided cells |")
    print("|---|---|---|---|")
    for name, draws, t, decided in rows:
        print(f"| {name} | {draws:,} | {t:.2f} | {decided} / {cells} |")
    looks = decode_attrs(dict(seq.attrs))["looks"]
    print("\ncells by draws used (sequential):")
    print(", ".join(f"{n:,}: {c}" for n, c in zip(looks, hist, strict=True) if c))
    if found is not None:
        _, d_f, t_f, _ = found
        _, d_s, t_s, _ = rows[0]
        print(
            f"\nsmallest fixed design deciding as many cells: {found[0]}; "
            f"{d_f / d_s:.1f}x the draws, {t_f / t_s:.1f}x the time of the sequential design"
        )
    else:
        _, d_f, t_f, dec_f = rows[-1]
        _, d_s, t_s, dec_s = rows[0]
        print(
            f"\nno fixed design up to n = {args.fixed_max:,} decides as many cells "
            f"({dec_f} < {dec_s}); the largest tried used {d_f / d_s:.1f}x the draws and "
            f"{t_f / t_s:.1f}x the time"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (few inputs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--error", type=float, default=0.05)
    parser.add_argument("--max-samples", type=int, default=100_000)
    parser.add_argument("--fixed-max", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--margin-inputs", type=int, default=360)
    parser.add_argument("--skip-curve", action="store_true", help="only the empirical margins")
    parser.add_argument(
        "--margin-settings",
        choices=sorted(MARGIN_SETTINGS),
        default="defaults",
        help="attack and bisection settings of the empirical margins: the library's defaults "
        "(12 bisection steps, 50 PGD steps, 4 restarts) or a lighter, faster set (10, 30, 2)",
    )
    parser.add_argument(
        "--reference-draws",
        type=int,
        default=20_000,
        help="draws per verdict of the reference margins (0: no reference)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    (vae, x), t_train = timed(lambda: demo_vae(2 if args.quick else args.epochs, args.device))
    if args.quick:
        x = x[:8]
    eps = [0.0, 0.5, 1.0, 2.0, 4.0]
    r = 1.0
    print(
        f"demo VAE (MLP 64-256-8, digits, {args.epochs if not args.quick else 2} epochs, "
        f"trained in {t_train:.1f} s); {x.shape[0]} test digits x {len(eps)} eps = "
        f"{x.shape[0] * len(eps)} cells; r = {r}; sphere perturbations; error {args.error}; "
        f"{args.threads} thread(s), device {args.device}\n"
    )
    if not args.skip_curve:
        report_curve(args, vae, x, eps, r)

    xm = x[: min(args.margin_inputs, x.shape[0])]
    res = bench_margin(
        vae,
        xm,
        r=r,
        error=args.error,
        **(
            {"bisection_steps": 4, "steps": 5, "restarts": 2}
            if args.quick
            else MARGIN_SETTINGS[args.margin_settings]
        ),
        reference_draws=min(args.reference_draws, 2000) if args.quick else args.reference_draws,
    )
    print(
        f"\nempirical margin, {xm.shape[0]} digits, r = {r}, settings "
        f"{'quick' if args.quick else args.margin_settings}:\n"
    )
    print(
        "| verdicts | wall time (s) | speed-up | CPU time (s) | speed-up (CPU) | "
        "encoder draws for verdicts | median margin | "
        "median abs. difference to fixed | 90% abs. difference | median bracket width | "
        "within the bracket | median abs. error (reference) | 90% abs. error (reference) | "
        "within one width of the reference |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in res:
        print(
            f"| {row['name']} | {row['time']:.2f} | {row['speedup']:.2f}x | {row['cpu']:.2f} | "
            f"{row['speedup_cpu']:.2f}x | {row['draws']:,} | "
            f"{row['median']:.4f} | {row['median_diff']:.4f} | {row['p90_diff']:.4f} | "
            f"{row['resolution']:.4f} | "
            f"{100 * row['agree']:.0f}% | {row['median_err']:.4f} | {row['p90_err']:.4f} | "
            f"{100 * row['within_ref']:.0f}% |"
        )


if __name__ == "__main__":
    main()
