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
