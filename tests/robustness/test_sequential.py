"""Anytime-valid sequential decisions (robustness/_sequential.py, docs/SEQUENTIAL.md).

Validity is checked three ways: the decision thresholds against independently computed
Clopper-Pearson intervals; the exact probability of a wrong decision by dynamic programming over
the looks; and simulation, each error rate reported with its own Clopper-Pearson interval.
"""

import numpy as np
import pytest
import torch
from scipy import stats

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
