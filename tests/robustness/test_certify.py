"""Certified margins [BAR]: closed forms, the chi-square tail, and the certificate holding."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from pyrobust._results import decode_attrs
from pyrobust.models import VAE
from pyrobust.models.lipschitz import (
    LipschitzDecoder,
    LipschitzEncoder,
    LipschitzFixedStdEncoder,
    lipschitz_constants,
)
from pyrobust.robustness.certify import (
    _u_star,
    certified_margin,
    chi2_tail_bound,
    design_lipschitz,
)
from pyrobust.robustness.query import r_robustness
from tests.linear_gaussian import LinearGaussianVAE


def _guide_with_scale(scale):
    """A guide whose encoder std is the fixed vector ``scale`` for every input."""
    scale = torch.as_tensor(scale, dtype=torch.float64)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = x[:, : scale.shape[0]]
            pyro.sample("z", dist.Normal(loc, scale.expand_as(loc)).to_event(1))

    return guide


def _margin(tree, var="certified_margin"):
    return tree["robustness"][var].values


# --- the chi-square tail ---------------------------------------------------------------------
def test_inglot_bound_dominates_chi2_tail():
    for m in [2, 3, 5, 10, 32, 100, 400]:
        u = np.concatenate([np.linspace(0, 3 * m + 60, 400), np.geomspace(1e-3, 1e4, 200)])
        bound = chi2_tail_bound(u, m)
        assert np.all(bound >= stats.chi2.sf(u, m) * (1 - 1e-12))
        assert np.all(bound <= 1.0)
        np.testing.assert_array_equal(bound[u <= m - 2], 1.0)
    # it is a useful bound, not just 1: within a factor ~3 of the tail far out
    assert chi2_tail_bound(60.0, 10) / stats.chi2.sf(60.0, 10) < 3.0
    # torch in, torch out
    t = chi2_tail_bound(torch.tensor([5.0, 20.0]), 4)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), chi2_tail_bound(np.array([5.0, 20.0]), 4), rtol=1e-6)


@pytest.mark.parametrize("m", [2, 3, 8, 50])
def test_u_star_is_where_the_tail_reaches_one_half(m):
    assert chi2_tail_bound(_u_star(m, "inglot"), m) == pytest.approx(0.5, rel=1e-9)
    assert stats.chi2.sf(_u_star(m, "exact"), m) == pytest.approx(0.5, rel=1e-9)
    assert _u_star(m, "exact") < _u_star(m, "inglot")


def test_tail_bound_input_errors():
    with pytest.raises(ValueError, match="m >= 2"):
        chi2_tail_bound(3.0, 1)
    with pytest.raises(ValueError, match="non-negative"):
        chi2_tail_bound(-1.0, 3)


# --- Bound 1 and Bound 2 ---------------------------------------------------------------------
def test_bound1_paper_value():
    """a = b = c = 5, s = 0.1, r = 8 gives 0.139 (THEORY section 4)."""
    guide = _guide_with_scale([0.05, 0.05, 0.05, 0.05])  # ||sigma||_2 = 0.1
    tree = certified_margin(
        None, guide, torch.zeros(3, 6, dtype=torch.float64), r=8.0, a=5, b=5, c=5
    )
    np.testing.assert_allclose(_margin(tree, "s"), 0.1)
    assert np.round(_margin(tree, "bound1"), 3).tolist() == [0.139] * 3
    # closed form: at R1 the Markov bound is exactly 1/2
    R = _margin(tree, "bound1")[0]
    assert 25 * (25 * R**2 + (0.2 + 5 * R) ** 2) / 64 == pytest.approx(0.5, rel=1e-10)
    # it is the larger bound here, and what is reported
    np.testing.assert_allclose(_margin(tree), _margin(tree, "bound1"))
    assert tree["robustness"]["best_bound"].values.tolist() == [1, 1, 1]


@pytest.mark.parametrize("fixed", [True, False])
def test_bound2_closed_form_solves_the_tail_equation(fixed):
    m, a, b, c, s_i, r = 5, 2.0, 3.0, 1.5, 0.02, 4.0
    guide = _guide_with_scale([s_i] * m)
    kw = {"gamma": s_i} if fixed else {"c": c}
    tree = certified_margin(
        None, guide, torch.zeros(2, m, dtype=torch.float64), r=r, a=a, b=b, **kw
    )
    R = _margin(tree, "bound2")[0]
    s = s_i * math.sqrt(m)
    u = (r / a - b * R) ** 2 / (2 * s_i**2 if fixed else (c * R + 2 * s) ** 2)
    assert chi2_tail_bound(u, m) == pytest.approx(0.5, rel=1e-8)
    # fixed std: the tail bound wins; learned std: the (c delta + 2 s) factor makes Bound 1 win
    assert tree["robustness"]["best_bound"].values.tolist() == ([2, 2] if fixed else [1, 1])
    best = np.maximum(_margin(tree, "bound1"), _margin(tree, "bound2"))
    np.testing.assert_allclose(_margin(tree), best)


def test_vacuous_bounds_are_zero():
    # s >= r / (2 sqrt(2) a): Bound 1 vacuous; so much noise that Bound 2 is too
    guide = _guide_with_scale([1.0, 1.0])
    tree = certified_margin(
        None, guide, torch.zeros(2, 2, dtype=torch.float64), r=1.0, a=1, b=1, c=1
    )
    np.testing.assert_array_equal(_margin(tree), 0.0)
    assert tree["robustness"]["best_bound"].values.tolist() == [0, 0]


def test_radius_sweep_is_vectorised_and_monotone():
    guide = _guide_with_scale([0.03, 0.01, 0.02])
    x = torch.zeros(4, 3, dtype=torch.float64)
    r = [0.5, 1.0, 2.0, 4.0]
    tree = certified_margin(None, guide, x, r=r, a=2, b=3, c=1)
    ds = tree["robustness"]
    assert ds["certified_margin"].dims == ("obs_id", "radius")
    np.testing.assert_allclose(ds["radius"].values, r)
    assert np.all(np.diff(ds["certified_margin"].values, axis=1) > 0)
    for j, rj in enumerate(r):
        single = certified_margin(None, guide, x, r=rj, a=2, b=3, c=1)
        np.testing.assert_allclose(_margin(single), ds["certified_margin"].values[:, j])
        assert single["robustness"]["certified_margin"].dims == ("obs_id",)
    attrs = decode_attrs(tree.attrs)
    assert attrs["a"] == 2 and attrs["gamma"] is None and attrs["tail"] == "inglot"
    assert attrs["latent_dim"] == 3 and attrs["reference"] == "sample"


# --- the certificate holds --------------------------------------------------------------------
@pytest.mark.parametrize("tail", ["inglot", "exact"])
@pytest.mark.parametrize("r", [0.8, 1.5, 3.0])
def test_certificate_below_exact_margin_of_linear_gaussian(r, tail):
    """Linear-Gaussian VAE: a = 1 (orthonormal W), b = ||A||_2, fixed std; exact margin known."""
    lg = LinearGaussianVAE(d_x=6, d_z=3, s=0.2)
    x = torch.randn(3, lg.d_x, dtype=lg.dtype)
    tree = certified_margin(
        lg.model, lg.guide, x, r=r, a=1.0, b=lg.spectral_norm, gamma=lg.s, tail=tail
    )
    true = lg.true_margin(r, reference="sample")
    got = _margin(tree)
    assert np.all(got <= true)
    assert np.all(got > 0.3 * true)  # and not vacuous: within a small factor of the truth


def test_random_perturbations_at_the_certified_radius_keep_robustness():
    """Monte Carlo on a Lipschitz VAE: every delta with ||delta|| = R keeps p_r >= 1/2."""
    torch.manual_seed(0)
    vae = VAE(
        LipschitzEncoder(8, 2, (8,), loc_lipschitz=1.0, scale_lipschitz=1.0, max_scale_norm=0.3),
        LipschitzDecoder(2, 8, (8,), lipschitz=1.0, output="identity"),
        likelihood="gaussian",
    )
    x = torch.rand(4, 8)
    r = 1.5
    tree = certified_margin(vae.model, vae.guide, x, r=r)
    R = torch.as_tensor(_margin(tree), dtype=x.dtype)
    assert torch.all(R > 0)
    assert decode_attrs(tree.attrs)["constants_source"].startswith("verified")
    g = torch.Generator().manual_seed(1)
    u = torch.randn(16, *x.shape, generator=g)
    delta = u / u.norm(dim=-1, keepdim=True) * R[:, None]
    res = r_robustness(
        vae.model, vae.guide, x, r=r, delta=delta, reference="sample", num_samples=400, seed=0
    )["robustness"]
    assert np.all(res["probability"].values >= 0.5)
    assert not np.any(res["decision"].values == -1)  # never "not robust"


def test_constants_derived_from_a_lipschitz_vae_are_the_verified_ones():
    enc = LipschitzFixedStdEncoder(6, 2, (4,), loc_lipschitz=2.0, std=0.05)
    dec = LipschitzDecoder(2, 6, (4,), lipschitz=3.0, output="logits")
    vae = VAE(enc, dec, likelihood="bernoulli")
    x = torch.rand(5, 6)
    derived = certified_margin(vae.model, vae.guide, x, r=2.0)
    lc = lipschitz_constants(enc, dec)
    given = certified_margin(vae.model, vae.guide, x, r=2.0, **lc._asdict())
    np.testing.assert_allclose(_margin(derived), _margin(given))
    attrs = decode_attrs(derived.attrs)
    assert attrs["gamma"] == 0.05 and attrs["c"] == 0.0 and attrs["a"] == pytest.approx(3.0)


def test_mismatched_likelihood_is_rejected():
    vae = VAE(
        LipschitzEncoder(6, 2, (4,)),
        LipschitzDecoder(2, 6, (4,), output="logits"),
        likelihood="gaussian",
    )
    with pytest.raises(ValueError, match=r"not the mean of its LipschitzDecoder.*output='logits'"):
        certified_margin(vae.model, vae.guide, torch.rand(2, 6), r=1.0)


# --- bad input --------------------------------------------------------------------------------
_X = torch.zeros(2, 4, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"r": 1.0, "a": 0.0, "b": 1, "c": 1}, ValueError, "`a` must be a finite positive"),
        ({"r": 1.0, "a": 1, "b": -2, "c": 1}, ValueError, "`b` must be a finite positive"),
        ({"r": 1.0, "a": 1, "b": 1, "c": 0.0}, ValueError, "`c` must be a finite positive"),
        ({"r": 1.0, "a": math.nan, "b": 1, "c": 1}, ValueError, "`a`"),
        ({"r": 1.0, "a": "5", "b": 1, "c": 1}, TypeError, "`a` must be a real number"),
        ({"r": 0.0, "a": 1, "b": 1, "c": 1}, ValueError, "`r` must be positive"),
        ({"r": [1.0, -1.0], "a": 1, "b": 1, "c": 1}, ValueError, "`r` must be positive"),
        ({"r": [[1.0]], "a": 1, "b": 1, "c": 1}, ValueError, "1-D"),
        ({"r": 1.0, "a": 1, "b": 1, "c": 1, "tail": "x"}, ValueError, "`tail` must be one of"),
        ({"r": 1.0, "a": 1, "b": 1, "gamma": 0.5}, ValueError, "gamma.*fixed-std encoders only"),
        ({"r": 1.0, "a": 1, "b": 1, "c": 1, "gamma": 0.1}, ValueError, "fixed std has c = 0"),
        ({"r": 1.0, "a": 1, "b": 1}, TypeError, "needs the Lipschitz constants c"),
    ],
)
def test_bad_input(kwargs, err, match):
    with pytest.raises(err, match=match):
        certified_margin(None, _guide_with_scale([0.1, 0.1]), _X, **kwargs)


def test_one_latent_dimension_needs_exact_tail():
    guide = _guide_with_scale([0.1])
    with pytest.raises(ValueError, match=r"m >= 2; got m=1.*tail='exact'"):
        certified_margin(None, guide, _X, r=1.0, a=1, b=1, c=1)
    tree = certified_margin(None, guide, _X, r=1.0, a=1, b=1, c=1, tail="exact")
    assert np.all(_margin(tree) > 0)


# --- the design helper ------------------------------------------------------------------------
def test_design_cap_certifies_exactly_the_target():
    d = design_lipschitz(8.0, 0.139, 4, a=5.0, b=5.0, c=5.0)
    assert d.margin == pytest.approx(0.139, rel=1e-9)
    guide = _guide_with_scale([d.max_scale_norm / 2] * 4)
    tree = certified_margin(None, guide, _X, r=8.0, a=5, b=5, c=5)
    np.testing.assert_allclose(_margin(tree), 0.139, rtol=1e-9)


@pytest.mark.parametrize("fixed_std", [False, True])
def test_design_solves_for_a_common_constant(fixed_std):
    d = design_lipschitz(2.0, 0.05, 6, max_scale_norm=0.05, fixed_std=fixed_std)
    assert d.a == d.b and (d.c == 0.0 if fixed_std else d.c == d.a)
    assert d.margin == pytest.approx(0.05, rel=1e-6) and d.margin >= 0.05
    if fixed_std:
        assert d.gamma == pytest.approx(0.05 / math.sqrt(6))
        guide = _guide_with_scale([d.gamma] * 6)
        tree = certified_margin(None, guide, torch.zeros(1, 6), r=2.0, a=d.a, b=d.b, gamma=d.gamma)
        assert _margin(tree)[0] == pytest.approx(0.05, rel=1e-5)


def test_design_says_when_none_exists():
    with pytest.raises(ValueError, match="even a deterministic encoder"):
        design_lipschitz(8.0, 1.0, 4, a=5.0, b=5.0, c=5.0)
    with pytest.raises(ValueError, match="encoder noise alone uses up the radius"):
        design_lipschitz(8.0, 0.1, 4, a=50.0, max_scale_norm=0.1)
    with pytest.raises(ValueError, match="give max_scale_norm"):
        design_lipschitz(8.0, 0.1, 4)
    with pytest.raises(ValueError, match="`margin` must be a finite positive"):
        design_lipschitz(8.0, 0.0, 4, a=1, b=1, c=1)


@pytest.mark.slow
def test_no_max_damage_attack_beats_the_certificate():
    """Trained fixed-std Lipschitz VAE on digits; attack at 0.99x the certified radius."""
    from pyrobust.data.digits import load_digits
    from pyrobust.robustness.attacks import max_damage_attack

    x, _ = load_digits()
    x = x.reshape(len(x), -1)
    train, test = x[:1500], x[1500:1512]
    vae = VAE(
        LipschitzFixedStdEncoder(64, 4, (64, 64), loc_lipschitz=2.0, std=0.05),
        LipschitzDecoder(4, 64, (64, 64), lipschitz=2.0, output="logits"),
        likelihood="bernoulli",
    )
    svi = pyro.infer.SVI(
        vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-3}), pyro.infer.Trace_ELBO()
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        svi.step(train[torch.randint(len(train), (128,), generator=g)], size=len(train))
    vae.eval().requires_grad_(False)  # Björck weights computed once, not at every attack step
    r = 1.0
    tree = certified_margin(vae.model, vae.guide, test, r=r)
    R = float(_margin(tree).min())  # fixed std: the same margin for every input
    assert R > 0
    attacked = max_damage_attack(
        vae.model,
        vae.guide,
        test,
        eps=[0.99 * R, 10 * R],
        r=r,
        reference="sample",
        steps=30,
        num_samples=500,
        seed=0,
    )["robustness"]
    decision = attacked["decision"].values  # (obs_id, eps)
    assert not np.any(decision[:, 0] == -1)  # never "not robust"
    assert np.all(attacked["ci"].sel(ci_bound="upper").values[:, 0] >= 0.5)
    # the attack has teeth: at 10x the certified radius it breaks inputs
    assert np.any(decision[:, 1] == -1)


@pytest.mark.slow
def test_tradeoff_example_runs(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "lipschitz_tradeoff.py"
    spec = importlib.util.spec_from_file_location("lipschitz_tradeoff", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    tree = example.main(example.parse_args(["--quick", "--out", str(tmp_path)]))
    ds = tree["robustness"]
    assert ds["certified_margin"].dims == ("lipschitz", "obs_id")
    # smaller L, larger certificate
    assert np.all(ds["certified_margin"].values[0] > ds["certified_margin"].values[1])
    assert (tmp_path / "tradeoff.nc").exists() and (tmp_path / "tradeoff.png").exists()


@pytest.mark.gpu
def test_certificate_on_cuda_matches_cpu():
    enc = LipschitzEncoder(16, 3, (8,), loc_lipschitz=2.0, scale_lipschitz=1.0, max_scale_norm=0.2)
    vae = VAE(enc, LipschitzDecoder(3, 16, (8,), lipschitz=2.0), likelihood="gaussian")
    x = torch.rand(6, 16)
    cpu = certified_margin(vae.model, vae.guide, x, r=[1.0, 2.0])
    vae.cuda()
    gpu = certified_margin(vae.model, vae.guide, x.cuda(), r=[1.0, 2.0])
    np.testing.assert_allclose(_margin(gpu), _margin(cpu), rtol=1e-5)
    assert decode_attrs(gpu.attrs)["a"] == pytest.approx(decode_attrs(cpu.attrs)["a"], rel=1e-5)
