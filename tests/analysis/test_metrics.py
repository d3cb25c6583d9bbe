"""Disentanglement metrics: limits (1 on codes = factors, 0 / chance on independent codes),
hand-computed values on small fixed examples, agreement with disentanglement_lib's reference
formulas, and clear errors."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from pyrobust.analysis import beta_vae_score, dci, factor_vae_score, mig, sap
from pyrobust.analysis.metrics import dci_from_importance, factor_vae_accuracy


def _value(tree, name):
    return float(tree["metrics"][name])


@pytest.fixture(scope="module")
def grid():
    rng = np.random.default_rng(0)
    n = 1500
    factors = np.stack([rng.integers(0, s, n) for s in (3, 6, 10)], axis=1)
    noise = rng.standard_normal((n, 4))
    return factors, noise


class ToyGroundTruth:
    """A ground-truth dataset whose 'images' are the factor values themselves."""

    factor_sizes = (3, 4, 5)
    factor_names = ("shape", "scale", "posx")
    num_factors = 3

    def sample_factors(self, n, seed):
        rng = np.random.default_rng(seed)
        return np.stack([rng.integers(0, s, n) for s in self.factor_sizes], axis=1)

    def images(self, factors):
        return torch.as_tensor(factors, dtype=torch.float32)


class NoiseRepresentation:
    """Codes independent of the input."""

    def __init__(self, dim=4):
        self.gen = torch.Generator().manual_seed(0)
        self.dim = dim

    def __call__(self, x):
        return torch.randn(x.shape[0], self.dim, generator=self.gen)


# ---------------------------------------------------------------------------- limits


def test_mig_histogram_limits(grid):
    factors, noise = grid
    perfect = mig(factors.astype(float), factors, num_bootstrap=20)
    assert _value(perfect, "mig_histogram") == pytest.approx(1.0, abs=0.02)
    lo, hi = perfect["metrics"]["mig_histogram_ci"].values
    assert 0.95 < lo < hi <= 1.0
    assert _value(mig(noise, factors, num_bootstrap=0), "mig_histogram") < 0.03


def test_mig_sampled_limits_and_torch_input(grid):
    factors, noise = grid
    loc = torch.as_tensor(factors, dtype=torch.float64)
    perfect = mig(
        loc,
        factors,
        estimator="sampled",
        scale=0.05 * torch.ones_like(loc),
        num_samples=400,
        num_bootstrap=20,
    )
    assert _value(perfect, "mig_sampled") == pytest.approx(1.0, abs=0.03)
    indep = mig(
        noise,
        factors,
        estimator="sampled",
        scale=np.full(noise.shape, 0.3),
        num_samples=400,
        num_bootstrap=0,
    )
    assert _value(indep, "mig_sampled") < 0.03
    assert "mig_histogram" not in indep["metrics"]


def test_sap_limits(grid):
    factors, noise = grid
    binary = factors % 2
    disc = sap(binary.astype(float), binary, num_bootstrap=0)
    # each code predicts its own factor perfectly; another code only at chance (1/2), so the
    # discrete SAP of a perfect code is 1 - 1/2 (the top-two gap of accuracies)
    np.testing.assert_allclose(np.diag(disc["details"]["score_matrix"].values), 1.0)
    assert _value(disc, "sap") == pytest.approx(0.5, abs=0.05)
    cont = sap(factors.astype(float), factors, continuous_factors=True, num_bootstrap=20)
    assert _value(cont, "sap") == pytest.approx(1.0, abs=0.01)
    assert _value(sap(noise, factors, num_bootstrap=0), "sap") < 0.05
    assert _value(sap(noise, factors, continuous_factors=True, num_bootstrap=0), "sap") < 0.02


def test_dci_limits(grid):
    factors, noise = grid
    small = {"n_estimators": 10, "max_depth": 2}
    perfect = dci(factors.astype(float)[:600], factors[:600], model_kwargs=small, num_bootstrap=0)
    for name in ("disentanglement", "completeness", "informativeness_test"):
        assert _value(perfect, name) == pytest.approx(1.0, abs=0.01), name
    indep = dci(noise[:600], factors[:600], model_kwargs=small, num_bootstrap=2)
    assert _value(indep, "disentanglement") < 0.15
    assert _value(indep, "completeness") < 0.15
    assert indep["details"]["importance"].dims == ("latent", "factor")


def test_beta_vae_score_limits():
    data = ToyGroundTruth()
    kw = {"batch_size": 8, "num_train": 300, "num_eval": 400, "num_bootstrap": 50}
    assert _value(beta_vae_score(lambda x: x, data, **kw), "beta_vae") == 1.0
    chance = beta_vae_score(NoiseRepresentation(), data, **kw)
    assert _value(chance, "beta_vae") == pytest.approx(1 / 3, abs=0.08)
    assert chance.attrs["chance_level"] == pytest.approx(1 / 3)
    lo, hi = chance["metrics"]["beta_vae_ci"].values
    assert lo <= _value(chance, "beta_vae") <= hi
    assert lo < 1 / 3 < hi  # the population accuracy of independent codes is chance


def test_factor_vae_score_limits():
    data = ToyGroundTruth()
    kw = {"batch_size": 8, "num_train": 300, "num_eval": 400, "num_variance_estimate": 500}
    perfect = factor_vae_score(lambda x: x, data, **kw)
    assert _value(perfect, "factor_vae") == 1.0
    assert list(perfect["details"]["factor"].values) == list(data.factor_names)
    chance = factor_vae_score(NoiseRepresentation(), data, **kw)
    assert _value(chance, "factor_vae") == pytest.approx(1 / 3, abs=0.08)
    lo, hi = chance["metrics"]["factor_vae_ci"].values
    assert lo <= _value(chance, "factor_vae") <= hi


def test_factor_vae_prunes_collapsed_codes():
    data = ToyGroundTruth()
    # code 0 is constant (collapsed): it is never voted for, and the score stays perfect
    rep = lambda x: torch.cat([torch.zeros(x.shape[0], 1), x], dim=1)  # noqa: E731
    out = factor_vae_score(
        rep,
        data,
        batch_size=8,
        num_train=100,
        num_eval=100,
        num_variance_estimate=300,
        num_bootstrap=0,
    )
    assert _value(out, "num_active_dims") == 3
    assert float(out["details"]["votes"].isel(latent=0).sum()) == 0
    assert _value(out, "factor_vae") == 1.0


# ---------------------------------------------------------------------------- hand values


def test_mig_histogram_matches_hand_computation():
    a = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    b = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    code1 = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    codes = np.stack([a, code1], 1).astype(float)
    log = math.log
    i0a, i0b = log(2), 0.0
    i1a = 3 / 8 * log(2) + 1 / 8 * log(2 / 5) + 1 / 2 * log(8 / 5)
    i1b = (
        2 / 8 * log((2 / 8) / (3 / 16))
        + 2 / 8 * log((2 / 8) / (5 / 16))
        + 1 / 8 * log((1 / 8) / (3 / 16))
        + 3 / 8 * log((3 / 8) / (5 / 16))
    )
    expected = 0.5 * ((i0a - i1a) / log(2) + (i1b - i0b) / log(2))
    out = mig(codes, np.stack([a, b], 1), num_bins=2, num_bootstrap=0)
    assert _value(out, "mig_histogram") == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(
        out["details"]["mutual_information"].values, [[i0a, i0b], [i1a, i1b]], atol=1e-12
    )
    np.testing.assert_allclose(out["details"]["factor_entropy"].values, [log(2), log(2)])


def test_mig_histogram_equals_disentanglement_lib_reference():
    rng = np.random.default_rng(3)
    codes = rng.standard_normal((500, 3)) + rng.integers(0, 4, (500, 1))
    factors = np.stack([rng.integers(0, 4, 500), rng.integers(0, 7, 500)], 1)
    factors[:, 0] = np.clip(np.round(codes[:, 0]), 0, 3)
    # disentanglement_lib: utils._histogram_discretize, discrete_mutual_info, discrete_entropy
    disc = np.stack([np.digitize(c, np.histogram(c, 20)[1][:-1]) for c in codes.T])
    m = np.array([[mutual_info_score(f, d) for f in factors.T] for d in disc])
    h = np.array([mutual_info_score(f, f) for f in factors.T])
    s = np.sort(m, axis=0)[::-1]
    reference = np.mean((s[0] - s[1]) / h)
    out = mig(codes, factors, num_bootstrap=0)
    assert _value(out, "mig_histogram") == pytest.approx(reference, rel=1e-10)
    np.testing.assert_allclose(out["details"]["mutual_information"].values, m, atol=1e-12)


def test_mig_sampled_matches_exact_mixture_entropies():
    # two well-separated groups, one factor: I(z0; v) -> H(v) = log 2, and z1 carries nothing
    factors = np.array([0, 0, 1, 1])[:, None]
    loc = np.array([[-50.0, 0.0], [-50.0, 0.0], [50.0, 0.0], [50.0, 0.0]])
    out = mig(
        loc,
        factors,
        estimator="sampled",
        scale=np.ones_like(loc),
        num_samples=4000,
        num_bootstrap=0,
    )
    mi = out["details"]["mutual_information"].values
    assert mi[0, 0] == pytest.approx(math.log(2), abs=1e-9)
    assert mi[1, 0] == pytest.approx(0.0, abs=1e-9)
    assert _value(out, "mig_sampled") == pytest.approx(1.0, abs=1e-8)


def test_sap_continuous_matches_hand_computation():
    f = np.array([0.0, 1.0, 2.0, 3.0])[:, None]
    codes = np.stack([f[:, 0], [0.0, 1.0, 0.0, 1.0]], 1)
    # corr(code1, f)^2 = (1/3)^2 / (1/3 * 5/3) = 0.2; code0 = f has 1
    out = sap(codes, f, continuous_factors=True, num_bootstrap=0)
    np.testing.assert_allclose(out["details"]["score_matrix"].values, [[1.0], [0.2]])
    assert _value(out, "sap") == pytest.approx(0.8)


def test_dci_from_importance_matches_hand_computation():
    assert dci_from_importance(np.eye(2)) == pytest.approx(
        {"disentanglement": 1.0, "completeness": 1.0}
    )
    # one code explains both factors: not disentangled, but complete
    assert dci_from_importance([[1.0, 1.0], [0.0, 0.0]]) == pytest.approx(
        {"disentanglement": 0.0, "completeness": 1.0}, abs=1e-9
    )
    r = np.array([[0.6, 0.2], [0.0, 0.2]])

    def h2(p):
        p = np.asarray(p) / np.sum(p)
        return -sum(q * math.log(q, 2) for q in p if q > 0)

    d = 0.8 * (1 - h2([0.6, 0.2])) + 0.2 * (1 - h2([0, 0.2]))
    c = 0.6 * (1 - h2([0.6, 0])) + 0.4 * (1 - h2([0.2, 0.2]))
    assert dci_from_importance(r) == pytest.approx(
        {"disentanglement": d, "completeness": c}, abs=1e-9
    )


def test_factor_vae_accuracy_hand_votes():
    votes = np.array([[5, 1], [2, 4], [0, 3]])
    assert factor_vae_accuracy(votes) == pytest.approx(9 / 15)
    assert factor_vae_accuracy(votes, classifier=[1, 2]) == pytest.approx(5 / 15)


# ---------------------------------------------------------------------------- seeds, errors


def test_same_seed_same_answer(grid):
    factors, noise = grid
    a = mig(noise, factors, num_bootstrap=30, seed=5)["bootstrap"]["mig_histogram"].values
    b = mig(noise, factors, num_bootstrap=30, seed=5)["bootstrap"]["mig_histogram"].values
    c = mig(noise, factors, num_bootstrap=30, seed=6)["bootstrap"]["mig_histogram"].values
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "fn", [mig, sap, dci, lambda c, f: mig(c, f, estimator="sampled", scale=np.ones_like(c))]
)
def test_different_lengths_raise(fn):
    with pytest.raises(ValueError, match=r"same number of points.*codes has 10, factors has 9"):
        fn(np.zeros((10, 2)), np.zeros((9, 2), dtype=int))


def test_bad_inputs_raise_clear_errors():
    codes = np.random.default_rng(0).standard_normal((20, 2))
    factors = np.random.default_rng(1).integers(0, 3, (20, 2))
    with pytest.raises(ValueError, match="discrete"):
        mig(codes, factors + 0.5)
    with pytest.raises(ValueError, match="needs scale="):
        mig(codes, factors, estimator="sampled")
    with pytest.raises(ValueError, match="'histogram' or 'sampled'"):
        mig(codes, factors, estimator="kde")
    with pytest.raises(ValueError, match="scale must have the shape"):
        mig(codes, factors, estimator="sampled", scale=np.ones((20, 3)))
    with pytest.raises(ValueError, match="2-D array"):
        sap(np.zeros((4, 2, 2)), factors[:4])
    with pytest.raises(ValueError, match="confidence"):
        sap(codes, factors, confidence=1.5)
    with pytest.raises(TypeError, match="ground-truth dataset"):
        beta_vae_score(lambda x: x, object())
    with pytest.raises(ValueError, match="one code vector per image"):
        factor_vae_score(lambda x: x[:1], ToyGroundTruth(), num_variance_estimate=10)


@pytest.mark.gpu
def test_mig_sampled_runs_on_the_device_of_its_inputs(grid):
    factors, _ = grid
    loc = torch.as_tensor(factors, dtype=torch.float64, device="cuda")
    out = mig(
        loc,
        factors,
        estimator="sampled",
        scale=0.05 * torch.ones_like(loc),
        num_samples=400,
        num_bootstrap=10,
    )
    assert _value(out, "mig_sampled") == pytest.approx(1.0, abs=0.03)


# ---------------------------------------------------------------------------- intervals


def _ci(tree, name):
    return tree["metrics"][f"{name}_ci"].values


_SMALL_TREES = {"n_estimators": 10, "max_depth": 2}


def _examples():
    """(name, codes, factors): independent codes (the reported failure) and structured ones."""
    rng = np.random.default_rng(11)
    n = 300
    noise_f = rng.integers(0, 3, (n, 5))
    f = np.stack([rng.integers(0, s, n) for s in (3, 4, 5)], axis=1)
    mixed = np.concatenate([f[:, :2] + 0.7 * rng.standard_normal((n, 2)), rng.random((n, 2))], 1)
    entangled = np.stack([f[:, 0] + f[:, 1], f[:, 1] - f[:, 2], f[:, 2]], 1) + 0.3 * (
        rng.standard_normal((n, 3))
    )
    return [
        ("independent", rng.standard_normal((n, 4)), noise_f),
        ("partly informative", mixed, f),
        ("entangled", entangled, f),
        ("perfect", f.astype(float), f),
    ]


@pytest.mark.parametrize("case", _examples(), ids=lambda c: c[0])
def test_intervals_contain_the_estimate(case):
    # a naive percentile bootstrap put e.g. MIG 0.0069 of independent codes in [0.013, 0.021]
    _, codes, factors = case
    runs = [
        ("mig_histogram", mig(codes, factors, num_bootstrap=30)),
        (
            "mig_sampled",
            mig(
                codes,
                factors,
                estimator="sampled",
                scale=np.full(codes.shape, 0.3),
                num_samples=200,
                num_bootstrap=30,
            ),
        ),
        ("sap", sap(codes, factors, num_bootstrap=30)),
        ("sap", sap(codes, factors, continuous_factors=True, num_bootstrap=30)),
    ]
    tree = dci(codes, factors, model_kwargs=_SMALL_TREES, num_bootstrap=4)
    runs += [(name, tree) for name in tree["metrics"].data_vars if not name.endswith("_ci")]
    for name, out in runs:
        lo, hi = _ci(out, name)
        assert 0.0 <= lo <= _value(out, name) <= hi <= 1.0, (name, lo, _value(out, name), hi)
        # the stored replicates are those whose equal-tailed interval is the reported one
        reps = out["bootstrap"][name].values.ravel()
        np.testing.assert_allclose(np.quantile(reps, [0.025, 0.975]), [lo, hi], atol=1e-12)


def test_mig_interval_brackets_a_known_population_value():
    # binary factor v, code z = v / 2 + U(0, 1): half of each class's mass lies in [0.5, 1),
    # where v is a coin flip, the other half determines v; 15 bins over [0, 1.5] put edges at
    # 0.5 and 1. So I(z_k; v_k) = H(v_k) / 2, I(z_j; v_k) = 0 for j != k: MIG = 1/2.
    rng = np.random.default_rng(0)
    f = rng.integers(0, 2, (20000, 2))
    out = mig(0.5 * f + rng.random(f.shape), f, num_bins=15, num_bootstrap=50)
    lo, hi = _ci(out, "mig_histogram")
    assert lo < 0.5 < hi
    assert hi - lo < 0.02


def test_sap_interval_brackets_a_known_population_value():
    # z_k = v_k + 2 eps, v_k uniform on 0..9 (variance 8.25): corr^2 = 8.25 / 12.25 for the
    # matching code and 0 for the others, so SAP = 8.25 / 12.25
    rng = np.random.default_rng(0)
    f = rng.integers(0, 10, (4000, 2))
    codes = np.concatenate([f + 2.0 * rng.standard_normal(f.shape), rng.random((4000, 1))], 1)
    out = sap(codes, f, continuous_factors=True, num_bootstrap=50)
    lo, hi = _ci(out, "sap")
    assert lo < 8.25 / 12.25 < hi
    assert hi - lo < 0.05


def test_half_samples_have_no_duplicates_and_full_sample_variance():
    from pyrobust.analysis.metrics import _half_samples

    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    idx, rescale = _half_samples(np.arange(200), 4000, rng)
    assert idx.shape == (4000, 100)
    assert all(np.unique(row).size == 100 for row in idx[:50])
    # rescaled deviations of a half-sample mean have the variance of the full-sample mean
    dev = rescale * (x[idx].mean(1) - x.mean())
    assert dev.var() == pytest.approx(x.var(ddof=1) / 200, rel=0.1)


def test_no_bootstrap_gives_nan_intervals_and_no_bootstrap_group(grid):
    factors, noise = grid
    codes, factors = noise[:300], factors[:300]
    trees = {
        "mig_histogram": mig(codes, factors, num_bootstrap=0),
        "sap": sap(codes, factors, num_bootstrap=0),
        "disentanglement": dci(codes, factors, model_kwargs=_SMALL_TREES, num_bootstrap=0),
    }
    for name, tree in trees.items():
        assert np.isfinite(_value(tree, name))
        assert np.isnan(_ci(tree, name)).all()
        assert "bootstrap" not in tree.children
