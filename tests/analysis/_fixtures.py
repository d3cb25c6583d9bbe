"""Result trees of every kind, built with ``make_tree`` so these tests need no other module."""

import numpy as np

from pyrobust._results import make_tree


def robustness_tree(seed=0, n=6, draws=50, beta=1.0):
    """An r-robustness result: distances, x/delta/r, probability with its interval."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 4, 4))
    delta = 0.1 * rng.standard_normal((n, 1, 4, 4)) * np.arange(1, n + 1)[:, None, None, None]
    dist = np.abs(rng.standard_normal((1, draws, n))) * np.arange(1, n + 1)
    p = (dist < 1.0).mean((0, 1))
    return make_tree(
        {
            "posterior_predictive": {"distance": dist},
            "constant_data": {"x": x, "delta": delta, "r": np.array(1.0)},
        },
        dims={
            "distance": ["obs_id"],
            "x": ["obs_id", "channel", "row", "col"],
            "delta": ["obs_id", "channel", "row", "col"],
        },
        coords={"obs_id": np.arange(n)},
        summary={
            "robustness": {
                "probability": (["obs_id"], p),
                "ci_lower": (["obs_id"], np.clip(p - 0.1, 0, 1)),
                "ci_upper": (["obs_id"], np.clip(p + 0.1, 0, 1)),
                "decision": (["obs_id"], p > 0.5),
                "degree": (["obs_id"], p),
            }
        },
        attrs={
            "query": "r_robustness",
            "r": 1.0,
            "beta": beta,
            "num_samples": draws,
            "reference": "mean",
            "confidence": 0.95,
            "latent_site": "z",
            "max_batch": None,
        },
    )


def margin_tree(seed=0, n=6, beta=1.0):
    """A margin-bound result plus an empirical margin in the same robustness group."""
    rng = np.random.default_rng(seed)
    bound = rng.random(n)
    return make_tree(
        summary={
            "robustness": {
                "bound": (["obs_id"], bound),
                "empirical_margin": (["obs_id"], bound * 1.5 + 0.05 * rng.random(n)),
                "p_a": (["obs_id"], np.full(n, 0.9)),
                "min_scale": (["obs_id"], rng.random(n) / beta),
                "jacobian_norm": (["obs_id"], rng.random(n) * beta),
                "vacuous": (["obs_id"], np.zeros(n, dtype=bool)),
            }
        },
        coords={"obs_id": np.arange(n)},
        attrs={"query": "margin_bound", "r": 1.0, "beta": beta, "norm": "frobenius"},
    )


def training_tree(seed=0, steps=30):
    """A training history: per-step loss and its parts in sample_stats."""
    rng = np.random.default_rng(seed)
    loss = 100 * np.exp(-np.arange(steps) / 10) + rng.random(steps)
    return make_tree(
        {"sample_stats": {"loss": loss[None], "kl": (loss / 3)[None]}},
        attrs={"epochs": steps, "lr": 1e-3, "objective": "BetaTCELBO"},
    )


def history_tree(steps=40, epochs=4):
    """A training history laid out as ``pyrobust.inference.fit`` returns it."""
    rng = np.random.default_rng(0)
    loss = 100 * np.exp(-np.arange(steps) / 10) + rng.random(steps)
    return make_tree(
        summary={
            "history": {
                "loss": (("step",), loss),
                "lr": (("step",), np.full(steps, 1e-3)),
                "epoch_loss": (("epoch",), loss.reshape(epochs, -1).mean(1)),
            }
        },
        coords={"step": np.arange(steps), "epoch": np.arange(1, epochs + 1)},
        attrs={"epochs": epochs, "lr": 1e-3},
        name="fit",
    )


# --------------------------------------------------------------------------------------------
# Results in the target schema of DESIGN.md "Results as ArviZ DataTrees" (indicator draws,
# ``ci`` on ``ci_bound``, int8 decision codes), built directly so the analysis side can be
# tested before and independently of the robustness queries.
# --------------------------------------------------------------------------------------------

MODEL_HASH = "ab" * 32


def schema_robustness_tree(seed=0, n=6, draws=400, eps=(0.0, 0.5), radii=(0.5, 1.0)):
    """r_robustness over an eps sweep and two radii: indicators, probability, ci, decision."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    eps_a, r_a = np.asarray(eps), np.asarray(radii)
    scale = (1 + np.arange(n))[:, None] * (1 + eps_a)[None, :]  # (n, eps)
    dist = np.abs(rng.standard_normal((1, draws, n, len(eps_a)))) * scale / 4
    inside = (dist[..., None] <= r_a).astype(np.float64)  # (1, S, n, eps, radius)
    k = inside.sum((0, 1)).astype(np.int64)
    lower = np.where(k > 0, stats.beta.ppf(0.025, k, draws - k + 1), 0.0)
    upper = np.where(k < draws, stats.beta.ppf(0.975, k + 1, draws - k), 1.0)
    codes = (lower > 0.5).astype(np.int8) - (upper < 0.5).astype(np.int8)
    dims = ("obs_id", "eps", "radius")
    return make_tree(
        {
            "posterior_predictive": {"distance": dist, "inside": inside},
            "constant_data": {"delta": np.zeros((n, len(eps_a), 4)), "r": r_a},
            "observed_data": {"x": rng.random((n, 4))},
        },
        dims={
            "distance": ["obs_id", "eps"],
            "inside": list(dims),
            "delta": ["obs_id", "eps", "feature"],
            "r": ["radius"],
            "x": ["obs_id", "feature"],
        },
        coords={"obs_id": np.arange(n), "eps": eps_a, "radius": r_a},
        summary={
            "robustness": {
                "probability": (dims, k / draws),
                "ci": ((*dims, "ci_bound"), np.stack([lower, upper], -1)),
                "num_inside": (dims, k),
                "num_draws": ((), draws),
                "decision": (dims, codes),
                "degree": (("obs_id", "eps"), np.median(dist[0], 0)),
            }
        },
        attrs={
            "query": "r_robustness",
            "r": list(radii),
            "eps": list(eps),
            "num_samples": draws,
            "confidence": 0.95,
            "seed": seed,
            "model_hash": MODEL_HASH,
            "model_name": "VAE",
        },
    )


def bound_tree(seed=0, n=12):
    """margin_bound: one bound per input (two of them vacuous)."""
    rng = np.random.default_rng(seed)
    bound = 0.2 + rng.random(n)
    bound[:2] = 0.0
    return make_tree(
        summary={
            "robustness": {
                "bound": (("obs_id",), bound),
                "p_a": (("obs_id",), np.full(n, 0.9)),
                "vacuous": (("obs_id",), bound == 0),
            }
        },
        coords={"obs_id": np.arange(n)},
        attrs={"query": "margin_bound", "r": 0.5, "model_hash": MODEL_HASH, "seed": seed},
    )


def empirical_tree(seed=0, n=12, radius_max=3.0):
    """empirical_margin: about 3x the bound, three inputs not broken within radius_max."""
    bound = bound_tree(seed, n)["robustness"]["bound"].values
    rng = np.random.default_rng(seed + 100)
    margin = np.minimum(3 * bound + 0.3 * rng.random(n), radius_max)
    broken = np.ones(n, dtype=bool)
    broken[-3:] = False
    margin[-3:] = radius_max
    return make_tree(
        summary={
            "robustness": {
                "margin": (("obs_id",), margin),
                "margin_upper": (("obs_id",), np.where(broken, margin + 0.05, np.inf)),
                "broken": (("obs_id",), broken),
            }
        },
        coords={"obs_id": np.arange(n)},
        attrs={
            "query": "empirical_margin",
            "r": 0.5,
            "radius_max": radius_max,
            "model_hash": MODEL_HASH,
            "seed": seed,
        },
    )
