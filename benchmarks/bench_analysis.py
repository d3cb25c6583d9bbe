"""Benchmark: the analysis tools of pyrobust side by side with the loops they replace.

1. ``mig`` (histogram estimator with bootstrap): one ``bincount`` over all (replicate, code,
   factor) pairs vs disentanglement_lib's loop of ``sklearn.metrics.mutual_info_score`` per pair
   and per replicate. Values must agree to 1e-10.
2. ``mig(estimator="sampled")``: the Chen et al. estimator with the full q(z|x), chunked
   log-densities (throughput in log-densities per second).
3. ``save`` / ``load`` of an r-robustness-sized result (netCDF and zarr): time and file size.
4. ``report`` of that result plus a training history: time to write the HTML.

Run ``python benchmarks/bench_analysis.py [--quick]``. Timings are the best of a few repeats
(wall clock).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
from sklearn.metrics import mutual_info_score

from pyrobust._results import make_tree
from pyrobust.analysis import load, mig, report, save


def _best(fn, repeats=3):
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _reference_mig(codes, factors, num_bootstrap, seed):
    """disentanglement_lib: discretise, then a mutual_info_score per pair and replicate."""
    disc = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes.T])
    rng = np.random.default_rng(seed)

    def score(d, f):
        m = np.array([[mutual_info_score(fk, dj) for fk in f.T] for dj in d])
        h = np.array([mutual_info_score(fk, fk) for fk in f.T])
        s = np.sort(m, axis=0)[::-1]
        return np.mean((s[0] - s[1]) / h)

    point = score(disc, factors)
    idx = rng.integers(0, codes.shape[0], size=(num_bootstrap, codes.shape[0]))
    reps = [score(disc[:, i], factors[i]) for i in idx]
    return point, np.asarray(reps)


def _data(n, num_codes, seed=0):
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, s, n) for s in (3, 6, 40, 32, 32, 2)], axis=1)
    codes = rng.standard_normal((n, num_codes))
    codes[:, : factors.shape[1]] += factors / factors.max(0)
    return codes, factors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else 10000
    boots = 20 if args.quick else 100
    m_samples = 500 if args.quick else 2000
    rows = []

    codes, factors = _data(n, 10)
    t_ours, tree = _best(lambda: mig(codes, factors, num_bootstrap=boots, seed=0))
    t_ref, (point, _) = _best(lambda: _reference_mig(codes, factors, boots, 0), repeats=1)
    ours = float(tree["metrics"]["mig_histogram"])
    if abs(ours - point) > 1e-10:
        raise RuntimeError(f"mig disagrees with the reference: {ours} vs {point}")
    rows.append(
        (
            f"MIG histogram, N={n}, L=10, K=6, {boots} bootstrap",
            f"{t_ours:.3f} s",
            f"{t_ref:.2f} s (sklearn loop)",
            f"{t_ref / t_ours:.0f}x",
        )
    )

    scale = np.full(codes.shape, 0.1)
    t_s, _ = _best(
        lambda: mig(
            codes, factors, estimator="sampled", scale=scale, num_samples=m_samples, num_bootstrap=0
        ),
        repeats=1,
    )
    dens = m_samples * n * codes.shape[1] * (1 + factors.shape[1])
    rows.append(
        (
            f"MIG sampled, M={m_samples} draws x N={n} inputs",
            f"{t_s:.2f} s",
            f"{dens / t_s / 1e6:.0f} M log-densities/s",
            "",
        )
    )

    obs = 500 if args.quick else 2000
    draws = 1000
    rng = np.random.default_rng(0)
    result = make_tree(
        {
            "posterior_predictive": {"distance": rng.random((1, draws, obs))},
            "constant_data": {"x": rng.random((obs, 1, 28, 28)), "r": np.array(0.5)},
        },
        dims={"distance": ["obs_id"], "x": ["obs_id", "channel", "row", "col"]},
        coords={"obs_id": np.arange(obs)},
        summary={"robustness": {"probability": (["obs_id"], rng.random(obs))}},
        attrs={"r": 0.5, "num_samples": draws},
    )
    history = make_tree(
        summary={"history": {"loss": (("step",), np.exp(-np.arange(500) / 100))}},
        coords={"step": np.arange(500)},
    )
    tmp = tempfile.mkdtemp()
    try:
        for suffix in (".nc", ".zarr"):
            path = os.path.join(tmp, f"result{suffix}")
            t_save, _ = _best(lambda p=path: save(result, p))
            t_load, _ = _best(lambda p=path: load(p))
            size = (
                sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
                if os.path.isdir(path)
                else os.path.getsize(path)
            )
            rows.append(
                (
                    f"save / load {suffix}, {obs} inputs x {draws} draws",
                    f"{t_save:.3f} s / {t_load:.3f} s",
                    f"{size / 2**20:.1f} MiB",
                    "",
                )
            )
        t_rep, _ = _best(lambda: report([result, history], os.path.join(tmp, "rep")), repeats=1)
        rows.append(("report (2 results, 2 plots)", f"{t_rep:.2f} s", "", ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("| task | pyrobust | reference / size | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
