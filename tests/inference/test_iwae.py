"""The importance-weighted bound against the linear-Gaussian VAE's exact log p(x) and ELBO."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrobust.inference import importance_log_likelihood
from tests.linear_gaussian import LinearGaussianVAE


@pytest.fixture
def lg():
    return LinearGaussianVAE(d_x=6, d_z=3, s=0.3, obs_scale=0.5)


@pytest.fixture
def x(lg):
    """Four draws from the model's marginal p(x)."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, lg.d_z, generator=g, dtype=lg.dtype)
    return z @ lg.W.T + lg.obs_scale * torch.randn(4, lg.d_x, generator=g, dtype=lg.dtype)


def exact_elbo(lg, x):
    mu = x @ lg.A.T
    s2, v = lg.s**2, lg.obs_scale**2
    kl = 0.5 * (s2 + mu.pow(2) - 1.0 - math.log(s2)).sum(-1)
    resid = (x - mu @ lg.W.T).pow(2).sum(-1) + lg.d_z * s2
    return -0.5 * lg.d_x * math.log(2 * math.pi * v) - resid / (2 * v) - kl


def exact_log_px(lg, x):
    cov = lg.W @ lg.W.T + lg.obs_scale**2 * torch.eye(lg.d_x, dtype=lg.dtype)
    return torch.distributions.MultivariateNormal(
        torch.zeros(lg.d_x, dtype=lg.dtype), cov
    ).log_prob(x)


def mean_bound(lg, x, k, reps, seed=0):
    """E[L_K(x)] estimated from `reps` independent bounds per input."""
    rep = x.repeat(reps, 1)
    ll = importance_log_likelihood(lg.model, lg.guide, rep, num_particles=k, seed=seed)
    ll = ll.reshape(reps, x.shape[0])
    return ll.mean(0), ll.std(0) / math.sqrt(reps)


def test_one_particle_is_the_elbo_in_expectation(lg, x):
    mean, se = mean_bound(lg, x, k=1, reps=4000)
    elbo = exact_elbo(lg, x)
    assert ((mean - elbo).abs() < 4 * se + 1e-3).all()


def test_exact_posterior_guide_gives_log_px_for_every_k(lg, x):
    # q(z|x) = p(z|x) = N(W^T x / (1 + v), v / (1 + v) I) for W^T W = I, v = obs_scale^2
    v = lg.obs_scale**2
    lg.A = lg.W.T / (1 + v)
    lg.s = math.sqrt(v / (1 + v))
    for k in (1, 7):
        ll = importance_log_likelihood(lg.model, lg.guide, x, num_particles=k, seed=0)
        torch.testing.assert_close(ll, exact_log_px(lg, x))


def test_bound_grows_with_k_towards_log_px(lg, x):
    # a guide near the posterior, so that K = 1000 closes most of the gap
    v = lg.obs_scale**2
    noise = torch.randn(lg.d_z, lg.d_x, generator=torch.Generator().manual_seed(0), dtype=lg.dtype)
    lg.A = lg.W.T / (1 + v) + 0.5 * noise
    lg.s = 0.6
    log_px, elbo = exact_log_px(lg, x), exact_elbo(lg, x)
    stats = [mean_bound(lg, x, k, reps=100, seed=k) for k in (1, 10, 100, 1000)]
    for (lo, se_lo), (hi, se_hi) in itertools.pairwise(stats):
        assert (hi > lo - 3 * (se_lo + se_hi)).all()
    first, last = stats[0][0], stats[-1][0]
    assert ((first - elbo).abs() < 4 * stats[0][1]).all()
    assert (last - first > 0.5 * (log_px - elbo)).all()  # most of the gap closed
    assert (last <= log_px + 3 * stats[-1][1]).all()


def test_seed_reproducible_and_global_rng_untouched(lg, x):
    state = torch.get_rng_state()
    a = importance_log_likelihood(lg.model, lg.guide, x, num_particles=20, seed=3)
    b = importance_log_likelihood(lg.model, lg.guide, x, num_particles=20, seed=3)
    assert torch.equal(a, b) and a.shape == (4,)
    assert torch.equal(torch.get_rng_state(), state)


def test_chunked_particles_give_the_same_distribution(lg, x):
    a, se_a = mean_bound(lg, x, k=64, reps=40, seed=1)
    rep = x.repeat(40, 1)
    b = importance_log_likelihood(lg.model, lg.guide, rep, num_particles=64, seed=2, max_batch=1000)
    b = b.reshape(40, 4).mean(0)
    assert ((a - b).abs() < 6 * se_a + 1e-3).all()


def test_bad_input(lg, x):
    with pytest.raises(ValueError, match="num_particles must be >= 1"):
        importance_log_likelihood(lg.model, lg.guide, x, num_particles=0)
    with pytest.raises(ValueError, match="no sample site named 'w'"):
        importance_log_likelihood(lg.model, lg.guide, x, latent_site="w")

    def model_with_global(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        lg.model(x)

    def guide_with_global(x):
        pyro.sample("g", dist.Normal(0.0, 1.0))
        lg.guide(x)

    with pytest.raises(ValueError, match=r"site 'g'.*global latent"):
        importance_log_likelihood(model_with_global, guide_with_global, x)


@pytest.mark.gpu
def test_on_cuda_matches_cpu_in_distribution():
    lg = LinearGaussianVAE(d_x=6, d_z=3, s=0.3, obs_scale=0.5)
    v = lg.obs_scale**2
    lg.A, lg.s = lg.W.T / (1 + v), math.sqrt(v / (1 + v))  # exact posterior: L_K = log p(x)
    x = torch.randn(5, 6, dtype=torch.float64)
    expected = exact_log_px(lg, x)
    lg.A, lg.W = lg.A.cuda(), lg.W.cuda()
    ll = importance_log_likelihood(lg.model, lg.guide, x.cuda(), num_particles=8, seed=0)
    assert ll.is_cuda
    torch.testing.assert_close(ll.cpu(), expected)
