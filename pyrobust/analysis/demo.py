"""The demo behind ``pyrobust demo`` (and the README's first command).

Trains a small VAE on scikit-learn's digits (shipped with scikit-learn: no download), asks the
robustness questions of [CAM] of it, prints the answers and saves them as netCDF DataTrees that
``xarray.open_datatree`` reads back.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["run_demo"]

_SHADES = " .:-=+*#%@"


def _ascii(images: list[torch.Tensor]) -> str:
    """Side-by-side ASCII art of 2-D images in [0, 1]."""
    rows = []
    for i in range(images[0].shape[-2]):
        parts = []
        for img in images:
            line = img[..., i, :].reshape(-1).clamp(0, 1).tolist()
            idx = [min(int(v * len(_SHADES)), len(_SHADES) - 1) for v in line]
            parts.append("".join(_SHADES[k] * 2 for k in idx))
        rows.append("   ".join(parts))
    return "\n".join(rows)


def run_demo(
    out_dir: str | Path = "pyrobust-demo",
    *,
    epochs: int = 40,
    r: float = 1.0,
    n_inputs: int = 6,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict:
    """Train a VAE on digits, query its robustness, print a report and save the results.

    Returns the result trees by name (``history``, ``robustness``, ``margin``,
    ``empirical_margin``).
    """
    from pyrobust.analysis import report, save
    from pyrobust.analysis.experiment import build_vae, load_dataset
    from pyrobust.inference import BetaELBO, fit
    from pyrobust.robustness import empirical_margin, margin_bound, r_robustness

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or "cpu")
    split = load_dataset("digits", seed=seed, device=device)
    print(
        f"pyrobust demo: scikit-learn digits, {split.train.shape[0]} train / "
        f"{split.test.shape[0]} test images of {tuple(split.input_shape)}"
    )
    vae = build_vae(split.input_shape, arch="mlp", latent_dim=8, hidden=(256,))
    print(f"training a VAE (MLP 64-256-8, Bernoulli likelihood) for {epochs} epochs ...")
    history = fit(
        vae,
        split.train,
        elbo=BetaELBO(1.0),
        epochs=epochs,
        batch_size=64,
        lr=2e-3,
        val_data=split.test,
        device=device,
        seed=seed,
    )
    val = history["history"]["val_loss"].values
    print(f"validation loss per image: {val[0]:.2f} -> {val[-1]:.2f}")

    x = split.test[:n_inputs]
    vae.eval()
    with torch.no_grad():
        recon = vae.reconstruct(x)
    print("\ninput 0 and its reconstruction g(mu(x)):")
    print(_ascii([x[0, 0].cpu(), recon[0, 0].cpu()]))

    q = {"seed": seed}
    eps = [0.0, 0.5, 1.0, 2.0, 4.0]
    rob = r_robustness(
        vae.model, vae.guide, x, r=r, eps=eps, family="sphere", num_samples=2000, **q
    )
    mb = margin_bound(vae.model, vae.guide, x, r=r, num_samples=2000, confidence=0.95, **q)
    em = empirical_margin(vae.model, vae.guide, x, r=r, steps=30, restarts=2, **q)

    rs = rob["robustness"]
    p, lo, hi = (
        rs[v].values.reshape(n_inputs, -1) for v in ("probability", "ci_lower", "ci_upper")
    )
    print(
        f"\nr-robustness at r = {r} (l2 distance between reconstructions), "
        "random perturbations on the l2 sphere of radius eps, 2000 draws, 95% Clopper-Pearson:"
    )
    print("input " + "".join(f"{'eps=' + str(e):>22}" for e in eps))
    for i in range(n_inputs):
        cells = "".join(f"{p[i, j]:>8.3f} [{lo[i, j]:.3f},{hi[i, j]:.3f}]" for j in range(len(eps)))
        print(f"{i:>5} {cells}")
    deg = rs["degree"].values.reshape(n_inputs, -1)[:, 0]
    bound = mb["robustness"]["bound"].values
    emp = em["robustness"]["margin"].values if "margin" in em["robustness"] else None
    print(
        "\nmargins: the [CAM] bound (p_A at its 95% lower confidence limit) and the empirical"
        " margin found by attacks; the bound should lie below:"
    )
    print(f"{'input':>5} {'degree':>8} {'bound':>8} {'empirical':>10}")
    for i in range(n_inputs):
        e = f"{emp[i]:>10.3f}" if emp is not None else f"{'-':>10}"
        print(f"{i:>5} {deg[i]:>8.3f} {bound[i]:>8.3f} {e}")

    trees = {"history": history, "robustness": rob, "margin": mb, "empirical_margin": em}
    paths = [save(tree, out / f"{name}.nc") for name, tree in trees.items()]
    html = report(paths, out / "report")
    print(f"\nresults: {', '.join(str(p) for p in paths)}")
    print(f"report:  {html}")
    print(
        f"read them back with:  import xarray as xr; xr.open_datatree('{paths[1]}')['robustness']"
    )
    return trees
