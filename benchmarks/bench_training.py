"""One epoch of SVI training vs the same network and loss written in plain PyTorch.

Both loops run side by side in one process on the same data, with identical networks
(the plain loop gets a copy of the Pyro model's initial weights), the same Adam settings and
the same minibatches. Reported: seconds per epoch (median of ``--repeats`` alternating runs)
and the ratio Pyro / PyTorch, for

* the VAE (Bernoulli MLP VAE, :class:`pyrobust.inference.BetaELBO` ``(1)`` = the ELBO with an
  analytic KL), and
* the beta-TCVAE (:class:`pyrobust.inference.BetaTCELBO`, minibatch stratified sampling),

each through a bare ``SVI.step`` loop and through :func:`pyrobust.inference.fit` (which adds
shuffling, per-step term logging, the NaN guard and the history tree).

Run ``python benchmarks/bench_training.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

from pyrobust.inference import BetaELBO, BetaTCELBO, fit
from pyrobust.inference.objectives import log_importance_weights
from pyrobust.models import VAE, MLPDecoder, MLPEncoder


# ---------------------------------------------------------------------------------------------
# plain PyTorch: the same losses, summed over the minibatch and scaled by N / M like Pyro
# ---------------------------------------------------------------------------------------------
def torch_vae_loss(enc, dec, x, n, beta_tc=None):
    loc, scale = enc(x)
    z = loc + scale * torch.randn_like(loc)
    logits = dec(z)
    recon = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
    m = x.shape[0]
    if beta_tc is None:
        kl = 0.5 * (scale.pow(2) + loc.pow(2) - 1.0 - 2.0 * scale.log()).sum(-1)
        return -(n / m) * (recon - kl).sum()
    alpha, beta, gamma, log_w = beta_tc
    normal = torch.distributions.Normal(loc.unsqueeze(-3), scale.unsqueeze(-3))
    pair = normal.log_prob(z.unsqueeze(-2))  # (m, m, d)
    log_qz = torch.logsumexp(log_w + pair.sum(-1), -1)
    log_prod = torch.logsumexp(log_w.unsqueeze(-1) + pair, -2).sum(-1)
    log_qzx = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    penalty = alpha * (log_qzx - log_qz) + beta * (log_qz - log_prod) + gamma * (log_prod - log_pz)
    return -(n / m) * (recon - penalty).sum()


def torch_epoch(enc, dec, opt, x, batch_size, beta_tc_weights=None):
    n = x.shape[0]
    perm = torch.randperm(n)
    for start in range(0, n, batch_size):
        xb = x[perm[start : start + batch_size]]
        beta_tc = None
        if beta_tc_weights is not None:
            beta_tc = (1.0, 6.0, 1.0, beta_tc_weights(xb.shape[0]))
        loss = torch_vae_loss(enc, dec, xb, n, beta_tc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def svi_epoch(vae, svi, x, batch_size):
    n = x.shape[0]
    perm = torch.randperm(n)
    with pyro.validation_enabled(False):
        for start in range(0, n, batch_size):
            svi.step(x[perm[start : start + batch_size]], size=n)


# ---------------------------------------------------------------------------------------------
def make_data(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    proto = (torch.rand(32, d, generator=g) < 0.2).float()
    idx = torch.randint(0, 32, (n,), generator=g)
    flip = (torch.rand(n, d, generator=g) < 0.05).float()
    return (proto[idx] - flip).abs()


def bench_case(name, objective, x, args):
    d = x.shape[1]
    torch.manual_seed(0)
    pyro.clear_param_store()
    enc = MLPEncoder(d, args.latent, hidden=tuple(args.hidden))
    dec = MLPDecoder(args.latent, d, hidden=tuple(args.hidden))
    t_enc, t_dec = copy.deepcopy(enc), copy.deepcopy(dec)
    vae = VAE(enc, dec, likelihood="bernoulli")
    elbo = BetaELBO(1.0) if objective == "vae" else BetaTCELBO(beta=6.0)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
    opt = torch.optim.Adam([*t_enc.parameters(), *t_dec.parameters()], lr=1e-3)
    weights_cache = {}

    def weights(m):
        if m not in weights_cache:
            weights_cache[m] = log_importance_weights(m, x.shape[0], "mss")
        return weights_cache[m]

    tc = weights if objective == "beta_tc" else None
    times = {"torch": [], "svi": [], "fit": []}
    cpu = {"torch": [], "svi": [], "fit": []}

    def timed(key, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times[key].append(time.perf_counter() - t0)
        cpu[key].append(time.process_time() - c0)

    # warm-up (allocator, param registration)
    torch_epoch(t_enc, t_dec, opt, x[: 4 * args.batch_size], args.batch_size, tc)
    svi_epoch(vae, svi, x[: 4 * args.batch_size], args.batch_size)
    runs = {
        "torch": lambda: torch_epoch(t_enc, t_dec, opt, x, args.batch_size, tc),
        "svi": lambda: svi_epoch(vae, svi, x, args.batch_size),
        "fit": lambda: fit(
            vae, x, elbo=elbo, epochs=1, batch_size=args.batch_size, lr=1e-3, progress=False
        ),
    }
    order = list(runs)
    for r in range(args.repeats):  # rotate the order: no loop always runs first or last
        for key in order[r % 3 :] + order[: r % 3]:
            timed(key, runs[key])
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "case": name,
        **{f"{k}_s": v for k, v in med.items()},
        **{f"{k}_cpu_s": v for k, v in med_cpu.items()},
        "svi_ratio": med["svi"] / med["torch"],
        "fit_ratio": med["fit"] / med["torch"],
        "svi_cpu_ratio": med_cpu["svi"] / med_cpu["torch"],
        "fit_cpu_ratio": med_cpu["fit"] / med_cpu["torch"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--n", type=int, default=8192, help="training points")
    parser.add_argument("--dim", type=int, default=784, help="input dimension")
    parser.add_argument("--latent", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--cases", nargs="+", choices=["vae", "beta_tc"], default=["vae", "beta_tc"]
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 2048, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    x = make_data(args.n, args.dim)
    names = {"vae": "VAE (BetaELBO(1))", "beta_tc": "beta-TCVAE (MSS)"}
    rows = [bench_case(names[c], c, x, args) for c in args.cases]
    print(
        f"\nOne epoch, N={args.n}, x in {{0,1}}^{args.dim}, MLP {args.hidden}, "
        f"d_z={args.latent}, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
        f"median of {args.repeats}\n"
    )
    print("Wall-clock seconds (CPU seconds of this process in brackets; on a shared machine the")
    print("CPU-time ratio is the one to trust when torch runs on one thread).\n")
    print("| objective | plain PyTorch | SVI loop | fit | SVI / torch | fit / torch |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['torch_s']:.2f} ({r['torch_cpu_s']:.2f}) | "
            f"{r['svi_s']:.2f} ({r['svi_cpu_s']:.2f}) | {r['fit_s']:.2f} ({r['fit_cpu_s']:.2f}) | "
            f"{r['svi_ratio']:.3f} ({r['svi_cpu_ratio']:.3f}) | "
            f"{r['fit_ratio']:.3f} ({r['fit_cpu_ratio']:.3f}) |"
        )
    return rows


if __name__ == "__main__":
    main()
