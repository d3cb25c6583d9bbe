"""Objectives against closed forms and identities (THEORY.md section 5)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from scipy import special, stats

from pyrobust.inference import (
    BetaELBO,
    BetaTCELBO,
    CapacityELBO,
    DIPVAELoss,
    FactorVAELoss,
    JitBetaELBO,
    JitBetaTCELBO,
    JitCapacityELBO,
    JitDIPVAELoss,
    log_aggregate_posterior,
    log_importance_weights,
    schedules,
    tc_decomposition,
)
from tests.inference._models import MLPPair, binary_data
from tests.linear_gaussian import LinearGaussianVAE


@pytest.fixture
def lg():
    return LinearGaussianVAE(d_x=6, d_z=3, s=0.3, obs_scale=0.5)


@pytest.fixture
def x():
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def exact_terms(lg, x):
    """Analytic E_q[log p(x|z)] and KL(q(z|x) || p(z)) summed over the batch."""
    mu = x @ lg.A.T
    s2, v = lg.s**2, lg.obs_scale**2
    kl = 0.5 * (s2 + mu.pow(2) - 1.0 - math.log(s2)).sum()
    resid = (x - mu @ lg.W.T).pow(2).sum(-1) + lg.d_z * s2
    recon = (-0.5 * lg.d_x * math.log(2 * math.pi * v) - resid / (2 * v)).sum()
    return recon.item(), kl.item()


def loss_with_seed(elbo, model, guide, x, seed=3):
    pyro.set_rng_seed(seed)
    return elbo.loss(model, guide, x)


# ----------------------------------------------------------------------------------------
# beta-VAE and capacity
# ----------------------------------------------------------------------------------------
def test_beta_one_is_trace_mean_field_elbo(lg, x):
    a = loss_with_seed(TraceMeanField_ELBO(), lg.model, lg.guide, x)
    b = loss_with_seed(BetaELBO(1.0), lg.model, lg.guide, x)
    assert a == b


def test_beta_one_gradients_match_trace_mean_field():
    pair, x = MLPPair(), binary_data(32)
    grads = []
    for elbo in (TraceMeanField_ELBO(), BetaELBO(1.0)):
        pyro.set_rng_seed(5)
        loss = elbo.differentiable_loss(pair.model, pair.guide, x)
        params = [*pair.enc.parameters(), *pair.dec.parameters()]
        grads.append(torch.autograd.grad(loss, params))
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_beta_scales_the_analytic_kl(lg, x, beta):
    elbo = BetaELBO(beta)
    loss = loss_with_seed(elbo, lg.model, lg.guide, x)
    terms = elbo.last_terms
    _, kl = exact_terms(lg, x)
    assert terms["kl"] == pytest.approx(kl, rel=1e-12)
    assert loss == pytest.approx(-terms["reconstruction"] + beta * kl, rel=1e-12)
    assert terms["loss"] == pytest.approx(loss, rel=1e-12)


def test_beta_schedule_drives_the_coefficient(lg, x):
    elbo = BetaELBO(beta=schedules.Linear(0.0, 2.0, num_steps=10))
    elbo.set_step(5)
    assert elbo.coefficient("beta") == 1.0
    loss = loss_with_seed(elbo, lg.model, lg.guide, x)
    _, kl = exact_terms(lg, x)
    assert loss == pytest.approx(-elbo.last_terms["reconstruction"] + 1.0 * kl, rel=1e-12)
    elbo.set_step(100)
    loss = loss_with_seed(elbo, lg.model, lg.guide, x)
    assert loss == pytest.approx(-elbo.last_terms["reconstruction"] + 2.0 * kl, rel=1e-12)


@pytest.mark.parametrize("capacity", [0.0, 2.0, 50.0])
def test_capacity_penalty_is_gamma_abs_kl_minus_c(lg, x, capacity):
    gamma = 7.0
    elbo = CapacityELBO(gamma=gamma, capacity=capacity)
    loss = loss_with_seed(elbo, lg.model, lg.guide, x)
    _, kl = exact_terms(lg, x)
    n = x.shape[0]
    expected = -elbo.last_terms["reconstruction"] + gamma * n * abs(kl / n - capacity)
    assert loss == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------
# beta-TCVAE
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_beta_tc_with_unit_weights_is_the_sampled_elbo(lg, x, estimator):
    # MI + TC + dwKL = log q(z|x) - log p(z) sample by sample, so with alpha=beta=gamma=1 the
    # objective is Trace_ELBO's estimate with the same draws.
    a = loss_with_seed(Trace_ELBO(), lg.model, lg.guide, x)
    b = loss_with_seed(BetaTCELBO(1.0, 1.0, 1.0, estimator=estimator), lg.model, lg.guide, x)
    assert b == pytest.approx(a, rel=1e-12)


def test_beta_tc_with_unit_weights_equals_the_elbo_in_expectation(lg, x):
    elbo = BetaTCELBO(1.0, 1.0, 1.0, num_particles=4000, vectorize_particles=True)
    loss = loss_with_seed(elbo, lg.model, lg.guide, x)
    recon, kl = exact_terms(lg, x)
    # standard error of the 4000-particle mean is about 0.2 here; -ELBO is about 130
    assert loss == pytest.approx(-(recon - kl), abs=1.0)
    assert elbo.last_terms["kl"] == pytest.approx(kl, abs=0.5)


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_mi_tc_dwkl_sum_to_the_sampled_kl(estimator):
    g = torch.Generator().manual_seed(0)
    z, loc = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64)
    scale = torch.rand(3, 7, 4, generator=g, dtype=torch.float64) + 0.2
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    t = tc_decomposition(z, loc, scale, log_pz, dataset_size=50, estimator=estimator)
    log_qzx = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    torch.testing.assert_close(t["mi"] + t["tc"] + t["dwkl"], log_qzx - log_pz)
    torch.testing.assert_close(t["kl"], log_qzx - log_pz)
    assert t["mi"].shape == (3, 7)


def test_mss_weights_by_hand():
    n, m = 10, 4
    w = log_importance_weights(m, n, "mss", dtype=torch.float64).exp()
    s = (n - m + 1) / (n * (m - 1))
    o = 1 / (m - 1)
    d = 1 / n
    expected = torch.tensor(
        [[d, s, o, o], [o, d, s, o], [o, o, d, s], [s, o, o, d]], dtype=torch.float64
    )
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(w.sum(-1), torch.ones(m, dtype=torch.float64))


def test_mss_is_unbiased_for_the_aggregate_posterior():
    """Average the MSS estimate of q(z) over every ordered minibatch of a tiny dataset."""
    n, m, d = 5, 3, 2
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.3
    points = torch.randn(4, d, generator=g, dtype=torch.float64)  # where q(z) is evaluated
    batches = torch.tensor(list(itertools.permutations(range(n), m)))  # (60, m)
    z = points[:, None, None, :].expand(4, len(batches), m, d)
    log_qz, log_qz_marg = log_aggregate_posterior(
        z, loc[batches], scale[batches], dataset_size=n, estimator="mss"
    )
    normal = torch.distributions.Normal(loc, scale)
    exact = normal.log_prob(points[:, None, :]).sum(-1).exp().mean(-1)  # (4,)
    exact_marg = normal.log_prob(points[:, None, :]).exp().mean(-2)  # (4, d)
    for i in range(m):
        for n0 in range(n):
            rows = batches[:, i] == n0  # the minibatches in which the sample is x_{n0}'s
            torch.testing.assert_close(log_qz[:, rows, i].exp().mean(-1), exact)
            torch.testing.assert_close(log_qz_marg[:, rows, i].exp().mean(-2), exact_marg)
    # MWS with Chen et al.'s log(NM) constant estimates q(z) / N instead
    log_qz_mws, _ = log_aggregate_posterior(
        z, loc[batches], scale[batches], dataset_size=n, estimator="mws"
    )
    torch.testing.assert_close(log_qz_mws.exp().mean((-1, -2)), exact / n)


def test_mws_matches_an_independent_computation():
    n, m, d = 40, 6, 3
    rng = np.random.default_rng(3)
    z, loc = rng.normal(size=(2, m, d))
    scale = rng.uniform(0.3, 1.5, size=(m, d))
    log_qz, log_marg = log_aggregate_posterior(
        *(torch.from_numpy(a) for a in (z, loc, scale)), dataset_size=n, estimator="mws"
    )
    for i in range(m):
        dens = [stats.norm.logpdf(z[i], loc[j], scale[j]) for j in range(m)]  # m x (d,)
        joint = special.logsumexp([dj.sum() for dj in dens]) - math.log(n * m)
        assert log_qz[i].item() == pytest.approx(joint, rel=1e-12)
        for k in range(d):
            marg = special.logsumexp([dj[k] for dj in dens]) - math.log(n * m)
            assert log_marg[i, k].item() == pytest.approx(marg, rel=1e-12)


def _tc_mean(loc, scale, reps=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = loc + scale * torch.randn(reps, *loc.shape, generator=g, dtype=loc.dtype)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    t = tc_decomposition(z, loc, scale, log_pz, dataset_size=loc.shape[0], estimator="mss")
    return t["tc"].mean().item()


def test_tc_is_near_zero_for_independent_latents():
    grid = torch.linspace(-2.0, 2.0, 6, dtype=torch.float64)
    # a product grid of encoder means: q(z) = q(z_1) q(z_2) exactly
    loc = torch.cartesian_prod(grid, grid)
    scale = torch.full_like(loc, 0.4)
    tc_independent = _tc_mean(loc, scale)
    # the same marginal grid on the diagonal: z_1 = z_2 in q(z)
    loc_dep = torch.stack([grid.repeat(6), grid.repeat(6)], -1)
    tc_dependent = _tc_mean(loc_dep, scale)
    assert abs(tc_independent) < 0.05
    assert tc_dependent > 0.5
    # identical posteriors for every point: every MSS row sums to 1, so TC is 0 exactly
    same = torch.zeros(10, 3, dtype=torch.float64)
    assert abs(_tc_mean(same, torch.full_like(same, 0.7))) < 1e-12


def test_beta_tc_dataset_size_from_the_plate_and_terms():
    pair, x = MLPPair(), binary_data(64)
    xb = x[:16]
    elbo = BetaTCELBO(beta=6.0)
    pyro.set_rng_seed(0)
    loss = elbo.loss(pair.model, pair.guide, xb, size=64)
    t = elbo.last_terms
    assert t["kl"] == pytest.approx(t["mi"] + t["tc"] + t["dwkl"], rel=1e-6)
    assert loss == pytest.approx(
        -t["reconstruction"] + t["mi"] + 6.0 * t["tc"] + t["dwkl"], rel=1e-5
    )
    # the explicit dataset_size gives the same numbers
    explicit = BetaTCELBO(beta=6.0, dataset_size=64)
    pyro.set_rng_seed(0)
    assert explicit.loss(pair.model, pair.guide, xb, size=64) == pytest.approx(loss, rel=1e-6)


# ----------------------------------------------------------------------------------------
# DIP-VAE
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_penalty_matches_hand_computation(lg, x, kind):
    lam_od, lam_d = 3.0, 5.0
    dip = DIPVAELoss(kind, lambda_od=lam_od, lambda_d=lam_d)
    loss = loss_with_seed(dip, lg.model, lg.guide, x)
    base = loss_with_seed(TraceMeanField_ELBO(), lg.model, lg.guide, x)
    mu = (x @ lg.A.T).numpy()
    cov = np.cov(mu, rowvar=False, bias=True)
    if kind == "ii":
        cov = cov + np.eye(lg.d_z) * lg.s**2
    off = (cov**2).sum() - (np.diag(cov) ** 2).sum()
    on = ((np.diag(cov) - 1.0) ** 2).sum()
    penalty = x.shape[0] * (lam_od * off + lam_d * on)
    assert loss - base == pytest.approx(penalty, rel=1e-10)
    assert dip.last_terms["dip_offdiag"] == pytest.approx(off, rel=1e-10)
    assert dip.last_terms["dip_diag"] == pytest.approx(on, rel=1e-10)


def test_dip_default_weights():
    assert DIPVAELoss("i", lambda_od=2.0).coefficient("lambda_d") == 20.0
    assert DIPVAELoss("ii", lambda_od=2.0).coefficient("lambda_d") == 2.0


# ----------------------------------------------------------------------------------------
# FactorVAE
# ----------------------------------------------------------------------------------------
def test_factor_vae_discriminator_learns_to_separate_permuted_codes():
    torch.manual_seed(0)
    loss = FactorVAELoss(hidden_dim=32, num_layers=3, lr=3e-3)

    def codes(m=256):
        u = torch.randn(m, 1)
        return torch.cat([u, u + 0.1 * torch.randn(m, 1), torch.randn(m, 1)], -1)

    first = loss.discriminator_step(codes())
    for _ in range(100):
        last = loss.discriminator_step(codes())
    assert first[1] < 0.7
    assert last[1] > 0.8
    assert last[0] < first[0]


def test_factor_vae_svi_step_trains_the_discriminator_apart_from_the_param_store():
    pair, x = MLPPair(), binary_data(32)
    loss = FactorVAELoss(gamma=2.0, hidden_dim=8, num_layers=2)
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-2}), loss=loss)
    svi.step(x)
    before = [p.clone() for p in loss.discriminator.parameters()]
    svi.step(x)
    after = list(loss.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    names = list(pyro.get_param_store().keys())
    assert names and all(n.startswith("t_") for n in names)
    t = loss.last_terms
    assert {"tc", "kl", "discriminator_loss", "discriminator_accuracy"} <= set(t)
    assert t["loss"] == pytest.approx(-t["reconstruction"] + t["kl"] + 2.0 * t["tc"], rel=1e-5)


# ----------------------------------------------------------------------------------------
# every objective: the ELBO contract
# ----------------------------------------------------------------------------------------
OBJECTIVES = {
    "beta": lambda **kw: BetaELBO(4.0, **kw),
    "capacity": lambda **kw: CapacityELBO(10.0, 1.0, **kw),
    "beta_tc_mss": lambda **kw: BetaTCELBO(beta=6.0, **kw),
    "beta_tc_mws": lambda **kw: BetaTCELBO(beta=6.0, estimator="mws", **kw),
    "factor": lambda **kw: FactorVAELoss(hidden_dim=8, num_layers=2, **kw),
    "dip_i": lambda **kw: DIPVAELoss("i", **kw),
    "dip_ii": lambda **kw: DIPVAELoss("ii", **kw),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("vectorize", [False, True])
def test_objective_contract(name, vectorize):
    pair, x = MLPPair(), binary_data(32)
    elbo = OBJECTIVES[name](num_particles=3, vectorize_particles=vectorize)
    loss = elbo.differentiable_loss(pair.model, pair.guide, x)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pair.enc.parameters())
    t = elbo.last_terms
    assert {"loss", "reconstruction", "kl"} <= set(t)
    assert t["loss"] == pytest.approx(loss.item(), rel=1e-5)
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
    assert math.isfinite(svi.step(x))


def test_missing_latent_site_is_named():
    lg = LinearGaussianVAE()
    x = torch.randn(4, lg.d_x, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"no sample site named 'w'.*latent_site="):
        BetaTCELBO(latent_site="w").loss(lg.model, lg.guide, x)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------
def test_negative_coefficients_are_rejected():
    with pytest.raises(ValueError, match="beta must be >= 0"):
        BetaELBO(-1.0)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        BetaTCELBO(gamma=-0.1)
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        CapacityELBO(capacity=schedules.Linear(0.0, -3.0, 10))
    with pytest.raises(TypeError, match="beta must be a real number"):
        BetaELBO("big")


def test_unknown_estimator_and_kind():
    with pytest.raises(ValueError, match=r"estimator must be one of \('mss', 'mws'\)"):
        BetaTCELBO(estimator="exact")
    with pytest.raises(ValueError, match="kind must be 'i' or 'ii'"):
        DIPVAELoss("iii")


def test_dataset_size_smaller_than_the_batch():
    pair, x = MLPPair(), binary_data(32)
    with pytest.raises(
        ValueError, match=r"dataset_size \(8\) is smaller than the minibatch \(32\)"
    ):
        BetaTCELBO(dataset_size=8).loss(pair.model, pair.guide, x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_on_cuda(name):
    pair, x = MLPPair(), binary_data(32).cuda()
    pair.enc.cuda()
    pair.dec.cuda()
    elbo = OBJECTIVES[name](num_particles=2, vectorize_particles=True)
    svi = SVI(pair.model, pair.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
    assert math.isfinite(svi.step(x))
    assert math.isfinite(elbo.last_terms["kl"])


# ----------------------------------------------------------------------------------------
# JIT-compiled variants: coefficients are traced inputs
# ----------------------------------------------------------------------------------------
JIT_PAIRS = {
    "beta": (BetaELBO, JitBetaELBO, {"beta": schedules.Linear(0.0, 2.0, 10)}),
    "beta_tc": (BetaTCELBO, JitBetaTCELBO, {"beta": schedules.Cyclical(1.0, 6.0, period=8)}),
    "capacity": (CapacityELBO, JitCapacityELBO, {"capacity": schedules.Linear(0.0, 5.0, 10)}),
    "dip": (DIPVAELoss, JitDIPVAELoss, {"lambda_od": 2.0, "lambda_d": schedules.Linear(0, 9, 9)}),
}


@pytest.mark.parametrize("name", sorted(JIT_PAIRS))
def test_jit_variant_matches_eager_and_compiles_once(name):
    eager_cls, jit_cls, kw = JIT_PAIRS[name]
    pair, x = MLPPair(), binary_data(32)
    eager, jit = eager_cls(**kw), jit_cls(ignore_jit_warnings=True, **kw)
    jit.loss(pair.model, pair.guide, x)  # compile (draws twice: capture run + trace)
    for step in (0, 4, 30):
        eager.set_step(step)
        jit.set_step(step)
        a = loss_with_seed(eager, pair.model, pair.guide, x)
        b = loss_with_seed(jit, pair.model, pair.guide, x)
        assert b == pytest.approx(a, rel=1e-6)
        assert jit.last_terms == pytest.approx(eager.last_terms, rel=1e-5, abs=1e-6)
    (compiled,) = jit._jit_loss.values()
    assert len(compiled.compiled) == 1  # new coefficient values, no recompilation


def test_jit_variant_trains_with_fit():
    from pyrobust.inference import fit

    pair = MLPPair()
    elbo = JitBetaTCELBO(beta=schedules.Linear(1.0, 4.0, 8), ignore_jit_warnings=True)
    h = fit(pair, binary_data(64), elbo=elbo, epochs=3, batch_size=16, lr=1e-2)["history"]
    assert h["coef_beta"].values[-1] == 4.0
    assert np.isfinite(h["tc"].values).all()
    assert h["train_loss"].values[-1] < h["train_loss"].values[0]
