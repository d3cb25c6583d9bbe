"""A user's path from training to ArviZ: two beta-VAEs on digits, queried, combined, summarised.

1. Train two small VAEs on scikit-learn's 8x8 digits with the beta-VAE objective, beta = 1
   and beta = 4 (``pyrobust.inference.fit``).
2. Ask each the same robustness question: the probability that the reconstruction of x + delta
   stays within r of g(mu(x)), for random perturbations of growing size eps
   (``pyrobust.r_robustness``). Each answer is an ArviZ DataTree whose
   ``posterior_predictive/inside`` holds the 0/1 indicator draws.
3. Combine the two results along a ``beta`` dim (``pyrobust.analysis.combine``).
4. Summarise with ``arviz_stats.summary``: the mean of the indicators is the probability and
   ``mcse_mean`` its Monte-Carlo error, per (beta, input, eps).
5. Plot with ``arviz_plots.plot_forest`` (matplotlib, Agg backend: no window).
6. Convert each model and guide to a DataTree with ``pyrobust.analysis.from_pyro`` and compare
   them by PSIS-LOO with ``arviz_stats.loo`` / ``compare``.

Run ``python examples/arviz_workflow.py --help`` for the settings.
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import pyro
import torch

import pyrobust as pr
from pyrobust.analysis import combine, from_pyro
from pyrobust.data import load_digits
from pyrobust.inference import BetaELBO, fit
from pyrobust.models import VAE, MLPDecoder, MLPEncoder


def train(beta: float, x: torch.Tensor, args) -> VAE:
    """A small beta-VAE on ``x`` (images (n, 1, 8, 8)), trained with ``fit``."""
    pyro.clear_param_store()
    torch.manual_seed(args.seed)
    vae = VAE(
        MLPEncoder((1, 8, 8), args.latent_dim, hidden=(args.hidden,)),
        MLPDecoder(args.latent_dim, (1, 8, 8), hidden=(args.hidden,)),
        likelihood="continuous_bernoulli",
    )
    fit(
        vae,
        x,
        elbo=BetaELBO(beta=beta),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=False,
    )
    return vae.eval()


def main(args):
    import arviz_stats
    import matplotlib

    matplotlib.use("Agg")  # files only, no window
    import arviz_plots

    images, _ = load_digits()
    x_train, x_query = images[: -args.num_query], images[-args.num_query :]
    betas = [float(b) for b in args.betas]
    vaes = {beta: train(beta, x_train, args) for beta in betas}

    # 2. one question, asked of both models
    eps = np.linspace(0.0, args.eps_max, args.num_eps)
    results = []
    for vae in vaes.values():
        results.append(
            pr.r_robustness(
                vae.model, vae.guide, x_query, r=args.r, eps=eps, family="sphere",
                num_samples=args.num_samples, seed=args.seed,
            )
        )  # fmt: skip

    # 3. one tree, with a beta dim on every variable
    tree = combine(results, dim="beta", coords=betas)

    # 4. ArviZ's summary of the indicator draws: the mean is the probability, and mcse its
    # Monte-Carlo error (kind="stats": the MCSE of the sd is undefined when p = 0 or 1)
    summary = arviz_stats.summary(
        tree, group="posterior_predictive", var_names=["inside"], kind="stats", round_to="none"
    )
    mcse = arviz_stats.mcse(tree, group="posterior_predictive", var_names=["inside"])["inside"]
    prob = tree["robustness"]["probability"]
    last = float(eps[-1])
    print(f"| beta | mean p_r at eps = 0 | mean p_r at eps = {last:g} | max MCSE | robust |")
    print("|---|---|---|---|---|")
    for beta in betas:
        p = prob.sel(beta=beta)
        robust = int((tree["robustness"]["decision"].sel(beta=beta, eps=last) == 1).sum())
        print(
            f"| {beta:g} | {float(p.sel(eps=0.0).mean()):.3f} | "
            f"{float(p.sel(eps=last).mean()):.3f} | {float(mcse.sel(beta=beta).max()):.3f} | "
            f"{robust} of {args.num_query} |"
        )

    # 5. a forest plot of the indicator means (= probabilities) per beta and eps
    pc = arviz_plots.plot_forest(
        tree,
        group="posterior_predictive",
        var_names=["inside"],
        coords={"obs_id": [0, 1]},
        backend="matplotlib",
    )
    figure = None
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        figure = os.path.join(args.out, "forest.png")
        pc.savefig(figure)

    # 6. the models as ArviZ DataTrees: PSIS-LOO of the held-out inputs for each beta
    converted = {
        f"beta={beta:g}": from_pyro(
            vae.model, vae.guide, x_query, num_samples=args.num_samples, seed=args.seed
        )
        for beta, vae in vaes.items()
    }
    with warnings.catch_warnings():  # per-input latents: Pareto k is high (see from_pyro)
        warnings.simplefilter("ignore", UserWarning)
        loo = {name: arviz_stats.loo(t) for name, t in converted.items()}
    for name, value in loo.items():
        print(f"| {name} | elpd_loo = {float(value.elpd):.1f} (se {float(value.se):.1f}) |")
    return {
        "tree": tree,
        "summary": summary,
        "mcse": mcse,
        "converted": converted,
        "loo": loo,
        "figure": figure,
        "eps": eps,
        "betas": betas,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-query", type=int, default=16, help="held-out inputs to query")
    parser.add_argument("--r", type=float, default=1.0, help="radius of r-robustness")
    parser.add_argument("--eps-max", type=float, default=2.0, help="largest ||delta||_2")
    parser.add_argument("--num-eps", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=500, help="encoder draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for forest.png")
    main(parser.parse_args())
