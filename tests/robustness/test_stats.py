"""Exact binomial intervals, decisions and counting (robustness/_stats.py)."""

import numpy as np
import pytest
import torch
from scipy import stats

from pyrobust.robustness._stats import (
    NOT_ROBUST,
    ROBUST,
    UNDECIDED,
    clopper_pearson,
    clopper_pearson_lower,
    count_inside,
    decide,
    decision_labels,
)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_exact_interval(confidence):
    n = 37
    k = torch.arange(n + 1)
    lower, upper = clopper_pearson(k, n, confidence)
    for ki in range(n + 1):
        ci = stats.binomtest(ki, n).proportion_ci(confidence_level=confidence, method="exact")
        assert lower[ki].item() == pytest.approx(ci.low, abs=1e-12)
        assert upper[ki].item() == pytest.approx(ci.high, abs=1e-12)
    assert lower[0] == 0.0 and upper[-1] == 1.0
    assert lower.dtype == torch.float64 and lower.shape == k.shape


def test_clopper_pearson_tail_identities():
    # Each end leaves alpha/2 in the binomial tail: P(Bin(n, lo) >= k) = P(Bin(n, hi) <= k) = a/2.
    n, confidence = 200, 0.95
    k = torch.tensor([[1, 50], [120, 199]])
    lower, upper = clopper_pearson(k, n, confidence)
    np.testing.assert_allclose(stats.binom.sf(k.numpy() - 1, n, lower.numpy()), 0.025, rtol=1e-8)
    np.testing.assert_allclose(stats.binom.cdf(k.numpy(), n, upper.numpy()), 0.025, rtol=1e-8)


def test_one_sided_lower_bound():
    n, c = 500, 0.99
    k = torch.tensor([0, 1, 250, 499, 500])
    lo = clopper_pearson_lower(k, n, c)
    assert lo[0] == 0.0
    np.testing.assert_allclose(stats.binom.sf(k[1:].numpy() - 1, n, lo[1:].numpy()), 1 - c)
    # A one-sided bound at c equals the two-sided lower limit at 2c - 1.
    two_sided, _ = clopper_pearson(k, n, 2 * c - 1)
    torch.testing.assert_close(lo, two_sided)


def test_counts_must_be_valid():
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(torch.tensor([5]), 4, 0.95)


def test_decide_three_values_and_labels():
    lower = torch.tensor([0.6, 0.2, 0.4, 0.5])
    upper = torch.tensor([0.9, 0.45, 0.7, 0.8])
    codes = decide(lower, upper)
    assert codes.tolist() == [ROBUST, NOT_ROBUST, UNDECIDED, UNDECIDED]
    assert decision_labels(codes).tolist() == ["robust", "not robust", "undecided", "undecided"]


def test_count_inside_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    d = torch.rand(101, 4, 3, generator=g, dtype=torch.float64)
    r = torch.tensor([0.1, 0.5, 0.93])
    k, median = count_inside(d, r)
    assert k.shape == (4, 3, 3)
    torch.testing.assert_close(k, (d.unsqueeze(-1) <= r).sum(0))
    torch.testing.assert_close(median, d.median(0).values)  # odd S: the middle draw
    _, median_even = count_inside(d[:100], r)
    torch.testing.assert_close(median_even, torch.from_numpy(np.median(d[:100].numpy(), 0)))
