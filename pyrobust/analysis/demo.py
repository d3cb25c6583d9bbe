"""The demo behind ``pyrobust demo`` (and the README's first command).

Trains a small VAE on scikit-learn's digits (shipped with scikit-learn: no download), asks the
robustness questions of [CAM] of it, saves the answers as netCDF DataTrees that
``xarray.open_datatree`` reads back, and returns a text summary of them. Progress goes through
:mod:`logging` (logger ``pyrobust.analysis.demo``); nothing is printed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["DemoResult", "run_demo"]

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` made: the result trees by name, their files and a text summary."""

    trees: dict = field(repr=False)
    paths: list[Path]
    report: Path
    summary: str = field(repr=False)


def _interval(rs, n_inputs: int):
    """Lower and upper interval limits, from a ``ci`` (``ci_bound`` dim) or two variables."""
    if "ci" in rs:
        ci = rs["ci"]
        lo, hi = ci.sel(ci_bound="lower"), ci.sel(ci_bound="upper")
    else:
        lo, hi = rs["ci_lower"], rs["ci_upper"]
    return (v.values.reshape(n_inputs, -1) for v in (lo, hi))


def _check_number(name: str, value, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "int" if integer else "number"
        raise TypeError(f"{name} must be a positive {kind}; got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}.")


def run_demo(
    out_dir: str | Path = "pyrobust-demo",
    *,
    epochs: int = 40,
    r: float = 1.0,
    n_inputs: int = 6,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> DemoResult:
    """Train a VAE on digits, query its robustness, save the results and summarise them.

    The VAE (MLP 64-256-8, Bernoulli likelihood) is built after ``pyro.set_rng_seed(seed)``, so
    the same seed gives the same weights, the same answers and the same files, bit for bit.

    Parameters
    ----------
    out_dir : path-like, default "pyrobust-demo"
        Directory of ``history.nc``, ``robustness.nc``, ``margin.nc``,
        ``empirical_margin.nc`` (replaced if present) and ``report/index.html``.
    epochs : int, default 40
    r : float, default 1.0
        Radius of r-robustness (l2 distance between reconstructions).
    n_inputs : int, default 6
        Test inputs queried.
    device : torch.device or str, optional
        Default CPU.
    seed : int, default 0
    progress : bool, optional
        A tqdm bar during training; default only on a terminal.

    Returns
    -------
    DemoResult
        ``trees`` by name (``history``, ``robustness``, ``margin``, ``empirical_margin``), the
        files written, the report and the text ``summary`` (r-robustness with intervals along a
        curve of random perturbations, the [CAM] bound and the empirical margin per input).
    """
    import pyro

    from pyrobust.analysis import report, save
    from pyrobust.analysis.experiment import build_vae, load_dataset
    from pyrobust.inference import BetaELBO, fit
    from pyrobust.robustness import empirical_margin, margin_bound, r_robustness

    _check_number("epochs", epochs, integer=True)
    _check_number("n_inputs", n_inputs, integer=True)
    _check_number("r", r)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32); got {seed!r}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file; pass a directory.")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or "cpu")
    split = load_dataset("digits", seed=seed, device=device)
    if n_inputs > split.test.shape[0]:
        raise ValueError(
            f"n_inputs must be at most the {split.test.shape[0]} test images; got {n_inputs}."
        )
    log.info(
        "scikit-learn digits, %d train / %d test images of %s",
        split.train.shape[0],
        split.test.shape[0],
        tuple(split.input_shape),
    )
    pyro.set_rng_seed(seed)  # the initial weights: same seed, same network
    vae = build_vae(split.input_shape, arch="mlp", latent_dim=8, hidden=(256,))
    log.info("training a VAE (MLP 64-256-8, Bernoulli likelihood) for %d epochs", epochs)
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
        progress=progress,
    )
    val = history["history"]["val_loss"].values
    lines = [f"validation loss per image: {val[0]:.2f} -> {val[-1]:.2f}"]

    x = split.test[:n_inputs]
    vae.eval()
    with torch.no_grad():
        recon = vae.reconstruct(x)
    lines += ["", "input 0 and its reconstruction g(mu(x)):"]
    lines.append(_ascii([x[0, 0].cpu(), recon[0].reshape(x.shape[1:])[0].cpu()]))

    q = {"seed": seed}
    eps = [0.0, 0.5, 1.0, 2.0, 4.0]
    log.info("r-robustness, margin bound and empirical margin of %d test inputs", n_inputs)
    rob = r_robustness(
        vae.model, vae.guide, x, r=r, eps=eps, family="sphere", num_samples=2000, **q
    )
    mb = margin_bound(vae.model, vae.guide, x, r=r, num_samples=2000, confidence=0.95, **q)
    em = empirical_margin(vae.model, vae.guide, x, r=r, steps=30, restarts=2, **q)

    rs = rob["robustness"]
    p = rs["probability"].values.reshape(n_inputs, -1)
    lo, hi = _interval(rs, n_inputs)
    lines += [
        "",
        f"r-robustness at r = {r} (l2 distance between reconstructions), "
        "random perturbations on the l2 sphere of radius eps, 2000 draws, 95% Clopper-Pearson:",
        "input " + "".join(f"{'eps=' + str(e):>22}" for e in eps),
    ]
    for i in range(n_inputs):
        cells = "".join(f"{p[i, j]:>8.3f} [{lo[i, j]:.3f},{hi[i, j]:.3f}]" for j in range(len(eps)))
        lines.append(f"{i:>5} {cells}")
    deg = rs["degree"].values.reshape(n_inputs, -1)[:, 0]
    bound = mb["robustness"]["bound"].values
    emp = em["robustness"]["margin"].values if "margin" in em["robustness"] else None
    lines += [
        "",
        "margins: the [CAM] bound (p_A at its 95% lower confidence limit) and the empirical"
        " margin found by attacks; the bound should lie below:",
        f"{'input':>5} {'degree':>8} {'bound':>8} {'empirical':>10}",
    ]
    for i in range(n_inputs):
        e = f"{emp[i]:>10.3f}" if emp is not None else f"{'-':>10}"
        lines.append(f"{i:>5} {deg[i]:>8.3f} {bound[i]:>8.3f} {e}")

    trees = {"history": history, "robustness": rob, "margin": mb, "empirical_margin": em}
    paths = [save(tree, out / f"{name}.nc") for name, tree in trees.items()]
    html = report(paths, out / "report")
    lines += [
        "",
        f"results: {', '.join(str(p) for p in paths)}",
        f"report:  {html}",
        f"read them back with:  import xarray as xr; xr.open_datatree('{paths[1]}')['robustness']",
    ]
    return DemoResult(trees=trees, paths=paths, report=Path(html), summary="\n".join(lines))
