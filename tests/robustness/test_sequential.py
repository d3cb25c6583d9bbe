"""Anytime-valid sequential decisions (robustness/_sequential.py, docs/SEQUENTIAL.md).

Validity is checked three ways: the decision thresholds against independently computed
Clopper-Pearson intervals; the exact probability of a wrong decision by dynamic programming over
the looks; and simulation, each error rate reported with its own Clopper-Pearson interval.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyrobust._results import decode_attrs
from pyrobust.robustness import empirical_margin, margin_bound, r_robustness
from pyrobust.robustness._sequential import (
    ABOUT_HALF,
    look_schedule,
    sequential_decide,
    sequential_labels,
    sequential_lower_bound,
)
from pyrobust.robustness._stats import (
    NOT_ROBUST,
    ROBUST,
    UNDECIDED,
    clopper_pearson,
    clopper_pearson_lower,
)
from tests.linear_gaussian import LinearGaussianVAE

P_GRID = [0.45, 0.49, 0.5, 0.51, 0.55, 0.9]


def bernoulli_draw(p, seed=0, counts=True):
    """Fresh Bernoulli(p[cell]) draws: summed counts (exact binomial) or (m, a) indicators."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.as_tensor(p, dtype=torch.float64)

    def draw(active, m):
        if counts:
            total = torch.full((active.numel(),), float(m), dtype=torch.float64)
            return torch.binomial(total, p[active], generator=gen).to(torch.int64)
        return torch.rand(m, active.numel(), generator=gen, dtype=torch.float64) < p[active]

    return draw


def wrong(codes, p, tolerance=None):
    """Wrong decisions: robust with p <= 1/2, not robust with p >= 1/2, about 1/2 outside the zone."""
    p = torch.as_tensor(p, dtype=torch.float64)
    bad = ((codes == ROBUST) & (p <= 0.5)) | ((codes == NOT_ROBUST) & (p >= 0.5))
    if tolerance is not None:
        bad |= (codes == ABOUT_HALF) & ((p - 0.5).abs() >= tolerance)
    return bad


def exact_decision_probabilities(p, looks, error, tolerance=None):
    """P(robust), P(not robust), P(about 1/2), P(undecided) and E[draws], by convolution over the
    looks, with the stopping rule read from ``clopper_pearson`` (not from the module's thresholds)."""
    level = 1.0 - error / len(looks)
    mass = np.array([1.0])  # distribution of k over the paths still running
    prev = 0
    out = {"robust": 0.0, "not robust": 0.0, "about": 0.0, "undecided": 0.0, "draws": 0.0}
    for j, n in enumerate(looks):
        step = stats.binom.pmf(np.arange(n - prev + 1), n - prev, p)
        mass = np.convolve(mass, step)
        prev = n
        lo, hi = (t.numpy() for t in clopper_pearson(np.arange(n + 1), n, level))
        robust, not_robust = lo > 0.5, hi < 0.5
        about = np.zeros(n + 1, bool)
        if tolerance is not None:
            about = (lo > 0.5 - tolerance) & (hi < 0.5 + tolerance) & ~robust & ~not_robust
        out["robust"] += mass[robust].sum()
        out["not robust"] += mass[not_robust].sum()
        out["about"] += mass[about].sum()
        stopped = robust | not_robust | about
        out["draws"] += n * mass[stopped].sum()
        mass = np.where(stopped, 0.0, mass)
        if j == len(looks) - 1:
            out["undecided"] = mass.sum()
            out["draws"] += n * mass.sum()
    return out


# --- the schedule and the thresholds ---------------------------------------------------------


def test_look_schedule_is_geometric_and_ends_at_the_budget():
    assert look_schedule(16, 2.0, 1000) == (16, 32, 64, 128, 256, 512, 1000)
    assert look_schedule(10, 1.5, 40) == (10, 15, 23, 35, 40)
    assert look_schedule(5, 1.01, 8) == (5, 6, 7, 8)  # at least one draw per round
    assert look_schedule(7, 2.0, 7) == (7,)


@pytest.mark.parametrize("tolerance", [None, 0.05])
def test_stops_exactly_where_the_clopper_pearson_interval_at_alpha_over_j_says(tolerance):
    # One cell per possible count at the first look: the decision must follow the CP interval at
    # level 1 - error / J computed independently by _stats.clopper_pearson.
    n, error, max_samples = 64, 0.05, 1024
    looks = look_schedule(n, 2.0, max_samples)
    k = torch.arange(n + 1)

    rounds = []

    def draw(active, m):
        rounds.append(m)
        if len(rounds) == 1:
            return k[active]
        return torch.zeros(active.numel(), dtype=torch.int64)  # later rounds: all outside

    res = sequential_decide(
        draw, n + 1, error=error, max_samples=max_samples, first_round=n, tolerance=tolerance
    )
    lo, hi = clopper_pearson(k, n, 1.0 - error / len(looks))
    stopped_first = res.n == n
    expected = (lo > 0.5) | (hi < 0.5)
    if tolerance is not None:
        expected |= (lo > 0.5 - tolerance) & (hi < 0.5 + tolerance)
    assert torch.equal(stopped_first, expected)
    codes = res.decision_codes[stopped_first]
    assert torch.equal(codes == ROBUST, (lo > 0.5)[stopped_first])
    assert torch.equal(codes == NOT_ROBUST, (hi < 0.5)[stopped_first])
    torch.testing.assert_close(res.lower[stopped_first], lo[stopped_first], rtol=0, atol=1e-12)
    torch.testing.assert_close(res.upper[stopped_first], hi[stopped_first], rtol=0, atol=1e-12)
    assert res.alpha_per_look == pytest.approx(error / len(looks))
    # the cells that went on saw only misses afterwards: all of them end "not robust"
    assert bool((res.decision_codes[~stopped_first] == NOT_ROBUST).all())


# --- validity ------------------------------------------------------------------------------


@pytest.mark.parametrize("p", P_GRID)
def test_exact_wrong_decision_probability_is_at_most_error(p):
    # Exact (no simulation): P(wrong decision) over the whole sequential procedure.
    error = 0.05
    looks = look_schedule(16, 2.0, 4096)
    out = exact_decision_probabilities(p, looks, error)
    total = out["robust"] + out["not robust"] + out["undecided"]
    assert total == pytest.approx(1.0, abs=1e-9)
    p_wrong = (out["robust"] if p <= 0.5 else 0.0) + (out["not robust"] if p >= 0.5 else 0.0)
    assert p_wrong <= error
    if p == 0.5:  # both errors count; uniform spending over J looks keeps each side below error/2
        assert out["robust"] <= error / 2 and out["not robust"] <= error / 2
    if p == 0.9:  # far from 1/2 the decision is cheap
        assert out["robust"] > 0.999 and out["draws"] < 60


def test_exact_wrong_decision_probability_with_indifference_zone():
    error, tol = 0.05, 0.03
    looks = look_schedule(16, 2.0, 8192)
    for p in [0.46, 0.47, 0.5, 0.53, 0.54]:
        out = exact_decision_probabilities(p, looks, error, tolerance=tol)
        p_wrong = (out["robust"] if p <= 0.5 else 0.0) + (out["not robust"] if p >= 0.5 else 0.0)
        p_wrong += out["about"] if abs(p - 0.5) >= tol else 0.0
        assert p_wrong <= error, p
    assert exact_decision_probabilities(0.5, looks, error, tolerance=tol)["about"] > 0.95


def test_naive_repeated_fixed_n_tests_fail_the_exact_check():
    # The check above has teeth: 95% intervals at every look, without spending, err far more
    # often than 5% at p = 1/2.
    looks = look_schedule(16, 2.0, 4096)
    naive = exact_decision_probabilities(0.5, looks, error=0.05 * len(looks))
    assert naive["robust"] + naive["not robust"] > 0.1


def _simulated_error_rates(reps, max_samples, seed, tolerance=None):
    p = torch.tensor(P_GRID, dtype=torch.float64).repeat_interleave(reps)
    res = sequential_decide(
        bernoulli_draw(p, seed),
        p.numel(),
        error=0.05,
        max_samples=max_samples,
        tolerance=tolerance,
    )
    bad = wrong(res.decision_codes, p, tolerance).reshape(len(P_GRID), reps)
    n = res.n.reshape(len(P_GRID), reps)
    k_bad = bad.sum(1)
    lo, hi = clopper_pearson(k_bad, reps, 0.95)
    return k_bad, lo, hi, n, res


def test_simulated_error_rate_is_not_above_error():
    reps = 300
    k_bad, _, _, n, _ = _simulated_error_rates(reps, max_samples=20_000, seed=1)
    # not significantly above error: the one-sided 99% lower limit of the error rate is <= error
    lower99 = clopper_pearson_lower(k_bad, reps, 0.99)
    for p, kb, l99 in zip(P_GRID, k_bad.tolist(), lower99.tolist(), strict=True):
        assert l99 <= 0.05, f"p={p}: {kb}/{reps} wrong decisions"
    # draws far from 1/2 are few: p = 0.9 is decided in < ~100 draws
    assert n[P_GRID.index(0.9)].double().mean() < 100
    assert n[P_GRID.index(0.55)].double().mean() < 5_000


@pytest.mark.slow
@pytest.mark.parametrize("tolerance", [None, 0.02])
def test_simulated_error_rate_2000_repetitions(tolerance):
    reps = 2_000
    k_bad, lo, hi, n, _ = _simulated_error_rates(
        reps, max_samples=100_000, seed=2, tolerance=tolerance
    )
    report = {
        p: f"{kb}/{reps} wrong, 95% CP [{a:.4f}, {b:.4f}], mean draws {m:.0f}"
        for p, kb, a, b, m in zip(
            P_GRID,
            k_bad.tolist(),
            lo.tolist(),
            hi.tolist(),
            n.double().mean(1).tolist(),
            strict=True,
        )
    }
    print(report)
    lower99 = clopper_pearson_lower(k_bad, reps, 0.99)
    assert bool((lower99 <= 0.05).all()), report


# --- behaviour -----------------------------------------------------------------------------


def test_only_undecided_cells_are_drawn_and_each_round_is_one_call():
    p = torch.tensor([0.95, 0.05, 0.5, 0.7])
    calls = []
    inner = bernoulli_draw(p, seed=3, counts=False)

    def draw(active, m):
        calls.append((active.tolist(), m))
        return inner(active, m)

    res = sequential_decide(draw, 4, max_samples=2048)
    assert res.rounds == len(calls)
    looks = res.looks
    for j, (active, m) in enumerate(calls):
        assert m == looks[j] - (looks[j - 1] if j else 0)
        # a cell is drawn in round j iff it had not stopped before
        assert active == [c for c in range(4) if res.n[c] >= looks[j]]
    assert res.decision_codes.tolist()[:2] == [ROBUST, NOT_ROBUST]
    assert res.n[2] == 2048 and res.decision_codes[2] == UNDECIDED
    assert res.k.tolist() == [int(v) for v in res.k] and bool((res.k <= res.n).all())
    assert sequential_labels(res.decision_codes)[:3].tolist() == [
        "robust",
        "not robust",
        "undecided",
    ]


def test_same_seed_same_bits_and_count_draws_match_indicator_draws():
    p = torch.linspace(0.3, 0.7, 9, dtype=torch.float64)
    a = sequential_decide(bernoulli_draw(p, seed=5, counts=False), 9, max_samples=5000)
    b = sequential_decide(bernoulli_draw(p, seed=5, counts=False), 9, max_samples=5000)
    for name in ["k", "n", "lower", "upper", "decision_codes"]:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = sequential_decide(bernoulli_draw(p, seed=6, counts=False), 9, max_samples=5000)
    assert not torch.equal(a.k, c.k)


def test_indifference_zone_stops_cells_at_one_half():
    p = torch.full((50,), 0.5, dtype=torch.float64)
    res = sequential_decide(bernoulli_draw(p, seed=7), 50, max_samples=100_000, tolerance=0.02)
    assert bool((res.decision_codes == ABOUT_HALF).float().mean() > 0.9)
    about = res.decision_codes == ABOUT_HALF
    assert bool((res.lower[about] > 0.48).all() and (res.upper[about] < 0.52).all())
    assert bool((res.n[about] < 100_000).all())


def test_lower_bound_stops_at_the_precision_and_is_valid():
    reps = 400
    p = torch.tensor([0.7, 0.99], dtype=torch.float64).repeat_interleave(reps)
    res = sequential_lower_bound(
        bernoulli_draw(p, seed=8), p.numel(), confidence=0.9, precision=0.02
    )
    assert bool((res.decision_codes == 1).all())
    gap = res.probability - res.lower
    assert bool((gap <= 0.02).all())
    # at the stop, the limit is the one-sided CP bound at level 1 - alpha / J
    expected = clopper_pearson_lower(res.k, res.n, 1.0 - res.alpha_per_look)
    torch.testing.assert_close(res.lower, expected, rtol=0, atol=1e-12)
    # coverage: P(p < L) <= 0.1, not significantly exceeded
    miss = (res.lower > p).sum()
    assert clopper_pearson_lower(miss, p.numel(), 0.99).item() <= 0.1
    # the stop is near the smallest look that reaches the precision (p = 0.99 needs fewer draws)
    assert res.n[reps:].double().mean() < res.n[:reps].double().mean()


def test_lower_bound_reports_budget_spent():
    p = torch.tensor([0.5], dtype=torch.float64)
    res = sequential_lower_bound(bernoulli_draw(p), 1, precision=0.001, max_samples=1000)
    assert res.n.item() == 1000 and res.decision_codes.item() == 0


def test_counts_follow_the_draws_device_and_device_argument():
    p = torch.tensor([0.9, 0.2])
    res = sequential_decide(bernoulli_draw(p, counts=False), 2, device="cpu")
    assert res.k.device.type == "cpu" and res.k.dtype == torch.int64
    assert res.decision_codes.dtype == torch.int8


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"error": 0.0}, ValueError, "error"),
        ({"error": "0.05"}, TypeError, "error"),
        ({"max_samples": 0}, ValueError, "max_samples"),
        ({"first_round": 2.5}, TypeError, "first_round"),
        ({"first_round": 200, "max_samples": 100}, ValueError, "first_round"),
        ({"growth": 1.0}, ValueError, "growth"),
        ({"tolerance": 0.5}, ValueError, "tolerance"),
        ({"tolerance": True}, TypeError, "tolerance"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sequential_decide(bernoulli_draw([0.5]), 1, **kwargs)


def test_bad_draws_are_refused_with_the_expected_shape():
    with pytest.raises(TypeError, match="callable"):
        sequential_decide(None, 1)
    with pytest.raises(ValueError, match=r"shape \(m, len\(active\)\) = \(16, 2\)"):
        sequential_decide(lambda idx, m: torch.zeros(m, len(idx) + 1, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match=r"dtype torch\.float32"):
        sequential_decide(lambda idx, m: torch.rand(m, len(idx)), 2)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        sequential_decide(lambda idx, m: [0] * len(idx), 2)
    with pytest.raises(ValueError, match="precision"):
        sequential_lower_bound(bernoulli_draw([0.5]), 1, precision=0.0)


# --- r_robustness(num_samples="auto") ------------------------------------------------------


def _radii_for(vae, probabilities):
    """Radii at which p_r(x, 0) equals each probability exactly (reference "mean")."""
    return vae.s * np.sqrt(stats.chi2.ppf(np.asarray(probabilities), vae.d_z))


def _vae_error_rates(reps, max_samples, seed):
    vae = LinearGaussianVAE(d_x=4, d_z=2, s=0.5)
    x = torch.zeros(reps, vae.d_x, dtype=torch.float64)
    r = _radii_for(vae, P_GRID)
    np.testing.assert_allclose(vae.p_robust(r, torch.zeros(vae.d_x)), P_GRID, rtol=1e-10)
    tree = r_robustness(
        vae.model, vae.guide, x, r=r, num_samples="auto", max_samples=max_samples, seed=seed
    )
    rob = tree["robustness"]
    codes = torch.as_tensor(rob["decision"].values)  # int8 codes
    bad = wrong(codes, torch.tensor(P_GRID, dtype=torch.float64).expand(reps, -1))
    k_bad = bad.sum(0)
    return k_bad, clopper_pearson(k_bad, reps, 0.95), rob, tree


def test_auto_on_the_linear_gaussian_vae_is_valid_and_cheap_far_from_one_half():
    reps = 300
    k_bad, _, rob, tree = _vae_error_rates(reps, max_samples=4096, seed=0)
    lower99 = clopper_pearson_lower(k_bad, reps, 0.99)
    assert bool((lower99 <= 0.05).all()), k_bad.tolist()
    draws = rob["num_draws"].values
    assert draws[:, P_GRID.index(0.9)].mean() < 100
    assert bool((rob["num_inside"].values <= draws).all())
    np.testing.assert_allclose(rob["probability"].values, rob["num_inside"].values / draws)
    # the layout: counts, no draws, no degree; what was done in the attrs
    assert "posterior_predictive" not in tree.children and "degree" not in rob
    attrs = decode_attrs(dict(tree.attrs))
    assert attrs["num_samples"] == "auto" and attrs["error"] == pytest.approx(0.05)
    assert attrs["total_draws"] == int(draws.sum()) and attrs["looks"][-1] == 4096
    assert "confidence sequence" in attrs["sequential_method"]


def test_auto_matches_the_fixed_design_sampler_and_is_reproducible():
    vae = LinearGaussianVAE()
    x = torch.randn(5, vae.d_x, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    delta = 0.05 * torch.randn(3, 5, vae.d_x, dtype=torch.float64)
    r = [0.3, 0.5, 0.8]
    kw = {"r": r, "delta": delta, "num_samples": "auto", "max_samples": 20_000, "seed": 3}
    a = r_robustness(vae.model, vae.guide, x, **kw)["robustness"]
    b = r_robustness(vae.model, vae.guide, x, **kw)["robustness"]
    for name in ["num_inside", "num_draws", "ci", "decision"]:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a["decision"].dims == ("obs_id", "perturbation", "radius")
    exact = np.stack([[vae.p_robust(r, delta[j, i]) for j in range(3)] for i in range(5)])
    decided = a["decision"].values != UNDECIDED
    assert decided.mean() > 0.9
    # every decided cell is on the right side of 1/2 (45 cells; a wrong one has p <= 0.05)
    assert np.all((exact > 0.5)[decided] == (a["decision"].values == ROBUST)[decided])
    # the intervals cover the exact probabilities
    lo, hi = a["ci"].sel(ci_bound="lower").values, a["ci"].sel(ci_bound="upper").values
    assert np.all((lo <= exact) & (exact <= hi))


def test_auto_with_per_input_model_kwargs_follows_each_input():
    # The guide's scale is a per-input keyword tensor: p_r(x, 0) = chi2_2.cdf(r^2 / scale^2).
    def guide(x, scale):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x, scale).to_event(1))

    def model(x, scale):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    scale = torch.tensor([[0.2], [1.0], [0.3], [2.0]])
    x = torch.zeros(4, 2)
    tree = r_robustness(
        model, guide, x, r=0.5, num_samples="auto", model_kwargs={"scale": scale}, seed=0
    )
    p = stats.chi2.cdf(0.25 / scale.squeeze(1).numpy() ** 2, 2)  # 0.96, 0.12, 0.75, 0.03
    expected = np.where(p > 0.5, ROBUST, NOT_ROBUST)
    np.testing.assert_array_equal(tree["robustness"]["decision"].values, expected)


def test_auto_indifference_zone_and_refusals():
    vae = LinearGaussianVAE(d_x=4, d_z=2, s=0.5)
    x = torch.zeros(3, vae.d_x, dtype=torch.float64)
    r = float(_radii_for(vae, [0.5])[0])
    tree = r_robustness(vae.model, vae.guide, x, r=r, num_samples="auto", tolerance=0.05, seed=0)
    assert set(tree["robustness"]["decision"].values.tolist()) == {ABOUT_HALF}
    assert "about_half" in tree["robustness"]["decision"].attrs["flag_meanings"]
    with pytest.raises(ValueError, match="num_samples='auto'"):
        r_robustness(vae.model, vae.guide, x, r=r, num_samples=100, error=0.01)
    with pytest.raises(ValueError, match="'auto'"):
        r_robustness(vae.model, vae.guide, x, r=r, num_samples="adaptive")
    with pytest.raises(ValueError, match="disagree"):
        r_robustness(vae.model, vae.guide, x, r=r, num_samples="auto", error=0.1, confidence=0.99)
    with pytest.raises(ValueError, match="max_samples"):
        r_robustness(vae.model, vae.guide, x, r=r, num_samples="auto", max_samples=0)


@pytest.mark.slow
def test_auto_on_the_linear_gaussian_vae_2000_repetitions():
    reps = 2_000
    k_bad, (lo, hi), rob, _ = _vae_error_rates(reps, max_samples=20_000, seed=1)
    draws = rob["num_draws"].values.mean(0)
    report = {
        p: f"{kb}/{reps} wrong, 95% CP [{a:.4f}, {b:.4f}], mean draws {m:.0f}"
        for p, kb, a, b, m in zip(
            P_GRID, k_bad.tolist(), lo.tolist(), hi.tolist(), draws, strict=True
        )
    }
    print(report)
    assert bool((clopper_pearson_lower(k_bad, reps, 0.99) <= 0.05).all()), report


# --- margin_bound's p_A and empirical_margin's bisection ------------------------------------


def test_margin_bound_auto_stops_at_the_precision_and_stays_below_the_true_margin():
    vae = LinearGaussianVAE()
    x = torch.randn(6, vae.d_x, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    r = [0.6, 0.9]
    tree = margin_bound(
        vae.model, vae.guide, x, r=r, num_samples="auto", precision=0.02, norm="spectral", seed=0
    )
    rob = tree["robustness"]
    gap = rob["p_a"].values - rob["p_a_lower"].values
    assert np.all(gap <= 0.02)
    expected = clopper_pearson_lower(
        torch.as_tensor(rob["num_inside"].values),
        torch.as_tensor(rob["num_draws"].values),
        1.0 - tree.attrs["alpha_per_look"],
    )
    np.testing.assert_allclose(rob["p_a_lower"].values, expected.numpy(), rtol=0, atol=1e-12)
    p_true = vae.p_robust(np.asarray(r), torch.zeros(vae.d_x))
    assert np.all(rob["p_a_lower"].values <= p_true)
    margins = np.array([vae.true_margin(ri) for ri in r])
    assert np.all(rob["bound"].values <= margins) and np.all(rob["bound"].values > 0)
    # p_A near 1 reaches the precision with fewer draws than p_A near 3/4
    assert np.all(rob["num_draws"].values[:, 1] < rob["num_draws"].values[:, 0])
    assert "posterior_predictive" not in tree.children
    with pytest.raises(ValueError, match="precision"):
        margin_bound(vae.model, vae.guide, x, r=0.6, num_samples=100, precision=0.01)


def _scalar_pair():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(2 * x, 0.3).to_event(1))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    return model, guide


def _scalar_p(radius, r=0.6):
    """p = P(|2R + 0.3 eta| <= r): the scalar pair's r-robustness under its worst delta."""
    return stats.norm.cdf((r - 2 * radius) / 0.3) - stats.norm.cdf((-r - 2 * radius) / 0.3)


def _scalar_crossing(r=0.6):
    from scipy import optimize

    return optimize.brentq(lambda t: _scalar_p(t, r) - 0.5, 0.0, 0.3)


def test_empirical_margin_auto_splits_the_error_over_the_verdicts():
    # ||Delta|| = |2 delta + 0.3 eta|: the worst delta of size R gives p = P(|2R + 0.3 eta| <= r),
    # which crosses 1/2 at R* solving that equation (r = 0.6).
    model, guide = _scalar_pair()
    x = torch.zeros(3, 1)
    kw = {"r": 0.6, "box": None, "bisection_steps": 8, "steps": 10, "restarts": 1, "seed": 0}
    tree = empirical_margin(model, guide, x, num_samples="auto", tolerance=None, **kw)
    rob = tree["robustness"]
    attrs = decode_attrs(dict(tree.attrs))
    # the clean verdict and one per attack (31 doublings + 8 steps + 3 extra aimed steps);
    # two checks per attack
    assert attrs["verdicts_per_input"] == 1 + 42 and attrs["checks_per_input"] == 2 * 42
    # the verdicts share 0.9 error in the order they run: the clean one 5%, then shares falling
    # as (s + 1)^-1.5 (an input's search ends after a few verdicts, which get most of it)
    errors = np.asarray(attrs["error_per_verdict"])
    assert errors.shape == (43,) and errors.sum() == pytest.approx(0.9 * 0.05)
    assert errors[0] == pytest.approx(0.05 * 0.9 * 0.05)
    s = np.arange(1, 43)
    np.testing.assert_allclose(errors[1:] / errors[1], (2.0 / (s + 1)) ** 1.5, rtol=1e-12)
    assert errors[1] > 5 * 0.9 * 0.05 / 43  # the first search verdict: > 5x a uniform split
    assert attrs["error_per_check"] == pytest.approx(0.1 * 0.05 / 84)
    assert attrs["tolerance"] is None
    r_star = _scalar_crossing()
    # without a zone the margin is a radius shown robust (p > 1/2): at most the crossing
    assert np.all(rob["margin"].values <= r_star + 1e-6)
    assert np.all(rob["margin"].values > r_star - 0.03)
    assert np.all(rob["decision_at_margin"].values == ROBUST)
    # each end's interval is that of the test that decided it: it shows the decision
    assert np.all(rob["ci_at_margin"].sel(ci_bound="lower").values > 0.5)
    shown = rob["decision_above"].values == NOT_ROBUST  # the others: undecided, max_samples spent
    assert np.all(rob["ci_above"].sel(ci_bound="upper").values[shown] < 0.5)
    ci = rob["ci_above"].values[~shown]
    assert np.all((ci[:, 0] <= 0.5) & (ci[:, 1] >= 0.5))
    assert np.all(rob["num_draws"].values > 0) and attrs["total_draws"] == rob["num_draws"].sum()
    fixed = empirical_margin(model, guide, x, num_samples=200, **kw)["robustness"]
    assert np.all(fixed["num_draws"].values == 200 * (1 + 1 + 8))  # clean, R = 1, steps


def test_empirical_margin_auto_with_a_zone_ends_at_about_one_half():
    # The default zone (0.04): each input ends robust at a radius below the crossing, or
    # settles at a radius whose true p lies inside 1/2 +- 0.04 (margin = margin_upper there).
    model, guide = _scalar_pair()
    x = torch.zeros(4, 1)
    kw = {"r": 0.6, "box": None, "bisection_steps": 10, "steps": 10, "restarts": 1}
    r_star = _scalar_crossing()
    codes = []
    for seed in range(3):
        tree = empirical_margin(model, guide, x, num_samples="auto", seed=seed, **kw)
        rob = tree["robustness"]
        assert decode_attrs(dict(tree.attrs))["tolerance"] == 0.04
        lo, hi = rob["margin"].values, rob["margin_upper"].values
        code = rob["decision_at_margin"].values
        about = code == ABOUT_HALF
        assert np.all(lo[~about] <= r_star + 1e-6) and np.all(code[~about] == ROBUST)
        assert np.all(np.abs(_scalar_p(lo[about]) - 0.5) < 0.04)
        assert np.all(hi[about] == lo[about])
        assert np.all(rob["decision_above"].values[about] == ABOUT_HALF)
        assert np.all(_scalar_p(hi[~about]) < 0.5 + 1e-9)  # shown broken above the crossing
        codes.append(code)
    assert ABOUT_HALF in np.concatenate(codes)  # the zone is reached (the bisection aims at it)


def test_empirical_margin_auto_checks_end_attacks_early():
    # Far above the crossing the previous breaking perturbation, scaled into the ball, is
    # decided broken at once: no ascent runs and a handful of draws decide each step. Ascent
    # steps are counted as the guide's calls on inputs that carry a gradient.
    model, guide = _scalar_pair()
    x = torch.zeros(2, 1)
    calls = []

    def counting_guide(x):
        if x.requires_grad:
            calls.append(x.shape[0])
        return guide(x)

    kw = {"r": 0.6, "radius_max": 64.0, "bisection_steps": 5, "steps": 20, "restarts": 2}
    tree = empirical_margin(model, counting_guide, x, num_samples="auto", box=None, seed=0, **kw)
    rob = tree["robustness"]
    # the bracket narrows from 64 to the bisection's width 64 / 2^5 = 2 (or less: the steps aim
    # at the crossing) through radii all far above R* ~ 0.2: every one shown broken early
    assert np.all(rob["margin"].values == 0.0) and np.all(rob["margin_upper"].values <= 2.0)
    assert np.all(rob["margin_upper"].values > 0.5)
    assert np.all(rob["decision_above"].values == NOT_ROBUST)
    n_auto = len(calls)
    calls.clear()
    empirical_margin(model, counting_guide, x, num_samples=1000, box=None, seed=0, **kw)
    n_fixed = len(calls)
    assert n_fixed == 6 * 20  # six full ascents of 20 steps
    # the first attack (no warm start) is cut at its half-way check at the latest; the later
    # steps never start an ascent
    assert n_auto <= 10
    steps = 1 + 5 + 3  # the bracket's end, 5 bisection steps, 3 extra aimed ones at most
    assert np.all(rob["num_draws"].values <= 64 + steps * 2 * 64)  # clean + early checks


def test_empirical_margin_auto_first_attack_checks_the_far_corner():
    # With a box the first attack's budget is the radius of the whole box; its warm check is
    # the box's corner farthest from x, scaled into the ball. Here (x = 0, box [0, 1]) that is
    # delta = 1 (p ~ 0); the next step (aimed, at R <= 1/2) gets the corner scaled to R
    # (p < 0.01 for R > 0.4): both are shown broken without one ascent step, and the bracket
    # [0, R] is already as narrow as one bisection step makes it.
    model, guide = _scalar_pair()
    x = torch.zeros(3, 1)
    calls = []

    def counting_guide(x):
        if x.requires_grad:
            calls.append(x.shape[0])
        return guide(x)

    kw = {"r": 0.6, "box": (0.0, 1.0), "bisection_steps": 1, "steps": 10, "restarts": 2}
    tree = empirical_margin(model, counting_guide, x, num_samples="auto", seed=0, **kw)
    rob = tree["robustness"]
    assert calls == []
    upper = rob["margin_upper"].values
    assert np.all((upper <= 0.5) & (upper > 0.35)) and np.all(rob["margin"].values == 0.0)
    np.testing.assert_allclose(tree["constant_data"]["delta_above"].values[:, 0], upper)
    assert np.all(rob["decision_above"].values == NOT_ROBUST)
    empirical_margin(model, counting_guide, x, num_samples=1000, seed=0, **kw)
    assert len(calls) == 2 * 10  # the fixed design: two full ascents


def test_empirical_margin_auto_verdicts_are_rarely_wrong():
    # Over seeds and inputs, a wrong statement (robust below margin but p(margin) <= 1/2, or
    # broken at margin_upper with p >= 1/2 + tol) happens with probability <= error.
    model, guide = _scalar_pair()
    x = torch.zeros(8, 1)
    kw = {"r": 0.6, "box": None, "bisection_steps": 6, "steps": 8, "restarts": 1}
    wrong = total = 0
    for seed in range(6):
        rob = empirical_margin(model, guide, x, num_samples="auto", seed=seed, **kw)["robustness"]
        lo, hi = rob["margin"].values, rob["margin_upper"].values
        code = rob["decision_at_margin"].values
        bad = ((code == ROBUST) & (_scalar_p(lo) <= 0.5)) | (_scalar_p(hi) >= 0.54)
        bad |= (code == ABOUT_HALF) & (np.abs(_scalar_p(lo) - 0.5) >= 0.04)
        wrong, total = wrong + int(bad.sum()), total + bad.size
    assert total == 48 and wrong <= 2  # P(Bin(48, 0.05) > 2) is 0.43 at the bound; true ~0


def test_auto_over_a_random_perturbation_curve():
    vae = LinearGaussianVAE()
    x = torch.randn(4, vae.d_x, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tree = r_robustness(
        vae.model, vae.guide, x, r=0.6, eps=[0.0, 0.2, 2.0], family="sphere", num_samples="auto"
    )
    rob = tree["robustness"]
    assert rob["decision"].dims == ("obs_id", "eps")
    delta = tree["constant_data"]["delta"].values  # (obs_id, eps, feature)
    exact = np.stack([vae.p_robust(0.6, torch.as_tensor(delta[i])) for i in range(4)])
    decided = rob["decision"].values != UNDECIDED
    assert np.all((exact > 0.5)[decided] == (rob["decision"].values == ROBUST)[decided])
    assert np.all(rob["num_draws"].values[:, 2] <= 64)  # eps = 2 breaks at once


def test_empirical_margin_auto_same_seed_same_bits():
    # Early checks, shrinking batches and settled inputs keep every draw a function of the seed.
    from pyrobust.analysis.experiment import build_vae

    pyro.set_rng_seed(0)
    vae = build_vae((16,), arch="mlp", latent_dim=2, hidden=(16,))
    x = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    kw = {"r": 1.0, "num_samples": "auto", "bisection_steps": 5, "steps": 6, "restarts": 2}
    runs = [empirical_margin(vae.model, vae.guide, x, seed=5, **kw) for _ in range(2)]
    for name in runs[0]["robustness"].data_vars:
        a, b = (run["robustness"][name].values for run in runs)
        assert a.tobytes() == b.tobytes(), name
    delta = [run["constant_data"]["delta_above"].values for run in runs]
    assert delta[0].tobytes() == delta[1].tobytes()
    assert int(runs[0]["robustness"]["num_draws"].sum()) > 0


def test_aimed_step_is_exact_when_the_probit_is_linear():
    # p(R) = Phi(a - b R): Phi^-1(p) is linear in R, so the aim from two exact ends hits the
    # crossing R* = a / b; clipped to the bracket's middle part and 1/2 when not straddling.
    from pyrobust.robustness.empirical import _AIM_RANGE, _aim

    a, b, lo, hi, n = 1.2, 3.0, 0.1, 0.9, 10**6
    p = stats.norm.cdf([a - b * lo, a - b * hi])
    k_lo, k_hi = (torch.tensor([round(float(q) * n)]) for q in p)
    big = torch.tensor([n])
    theta = _aim(k_lo, big, k_hi, big, torch.tensor([0.5], dtype=torch.float64))
    assert float(lo + theta * (hi - lo)) == pytest.approx(a / b, abs=1e-3)
    near_lo = _aim(torch.tensor([n // 2 + 10]), big, torch.tensor([0]), big, theta)
    assert float(near_lo) == _AIM_RANGE[0]
    same_side = _aim(torch.tensor([n]), big, torch.tensor([n - 5]), big, theta * 0 + 0.5)
    assert float(same_side) == 0.5


def test_empirical_margin_auto_brackets_are_never_wider_than_the_bisections():
    # The aimed steps may shrink the bracket by less than half, but the step budget keeps the
    # halvings needed: every input not settled at 1/2 ends at most as wide as the bisection.
    model, guide = _scalar_pair()
    x = torch.zeros(12, 1)
    kw = {"r": 0.6, "bisection_steps": 6, "steps": 6, "restarts": 1, "radius_max": 4.0}
    for tolerance in (None, 0.05):
        tree = empirical_margin(
            model, guide, x, num_samples="auto", tolerance=tolerance, box=None, seed=0, **kw
        )
        rob = tree["robustness"]
        width = (rob["margin_upper"] - rob["margin"]).values
        settled = rob["decision_at_margin"].values == ABOUT_HALF
        assert np.all(width[~settled] <= 4.0 / 2**6 * (1 + 1e-6))
        assert np.all(width[settled] == 0)
        assert np.all(rob["broken"].values)  # every input bracketed: the test says something
