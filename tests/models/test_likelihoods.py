"""Likelihoods: shapes, closed-form log densities and means g(z), sampling, errors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyrobust.models import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    Likelihood,
    make_likelihood,
)

ALIASES = {
    "bernoulli": BernoulliLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "laplace": LaplaceLikelihood,
}
F64 = torch.float64


def _cb_mean(lam):
    return lam / (2 * lam - 1) + 1 / (2 * np.arctanh(1 - 2 * lam))


def _expected(name, eta, x):
    """Closed-form (log p(x | eta), mean) elementwise, in numpy."""
    eta, x = eta.numpy(), x.numpy()
    lam = 1 / (1 + np.exp(-eta))
    if name == "bernoulli":
        return x * np.log(lam) + (1 - x) * np.log1p(-lam), lam
    if name == "continuous_bernoulli":
        log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
        return log_c + x * np.log(lam) + (1 - x) * np.log1p(-lam), _cb_mean(lam)
    if name == "gaussian":
        return stats.norm.logpdf(x, eta, 1.0), eta
    return stats.laplace.logpdf(x, eta, 1.0), eta


@pytest.mark.parametrize("name", ALIASES)
def test_alias_shapes_log_prob_and_mean(name):
    lik = make_likelihood(name)
    assert type(lik) is ALIASES[name]
    eta = torch.randn(2, 3, 4, 5, dtype=F64) * 2
    x = torch.rand(2, 3, 4, 5, dtype=F64)  # grey levels: valid for every likelihood here
    d = lik(eta, event_dim=2)
    assert d.batch_shape == (2, 3) and d.event_shape == (4, 5)
    log_p, mean = _expected(name, eta, x)
    np.testing.assert_allclose(d.log_prob(x).numpy(), log_p.sum((-1, -2)), rtol=1e-10)
    np.testing.assert_allclose(lik.mean(eta).numpy(), mean, rtol=1e-10)
    torch.testing.assert_close(d.mean, lik.mean(eta))  # g(z) is the distribution's mean
    assert lik(eta).batch_shape == eta.shape  # event_dim=0: elementwise


def test_continuous_bernoulli_mean_is_not_lambda_and_is_stable_near_half():
    lik = ContinuousBernoulliLikelihood()
    eta = torch.tensor([-8.0, -1.0, 0.0, 1e-4, 1.0, 8.0], dtype=F64)
    mean = lik.mean(eta)
    assert torch.isfinite(mean).all()
    assert mean[2] == pytest.approx(0.5) and mean[3] == pytest.approx(0.5, abs=1e-4)
    lam = torch.sigmoid(eta[[0, 1, 4, 5]]).numpy()
    np.testing.assert_allclose(mean[[0, 1, 4, 5]].numpy(), _cb_mean(lam), rtol=1e-10)
    assert abs(mean[4].item() - 0.5) < abs(torch.sigmoid(eta[4]).item() - 0.5)  # pulled to 1/2


def test_bernoulli_accepts_grey_levels_under_validation():
    eta = torch.randn(4, 6)
    x = torch.rand(4, 6)
    log_p = BernoulliLikelihood()(eta, 1).log_prob(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(eta, x, reduction="none")
    torch.testing.assert_close(log_p, -bce.sum(-1))


@pytest.mark.parametrize("cls", [GaussianLikelihood, LaplaceLikelihood])
def test_fixed_and_learned_scale(cls):
    fixed = cls(scale=0.5)
    assert not list(fixed.parameters()) and fixed.scale.item() == pytest.approx(0.5)
    learned = cls(scale=0.5, learn_scale=True, scale_shape=(1, 3))
    assert [n for n, _ in learned.named_parameters()] == ["log_scale"]
    eta, x = torch.zeros(4, 2, 3), torch.ones(4, 2, 3)
    learned(eta, 2).log_prob(x).sum().backward()
    assert learned.log_scale.grad.shape == (1, 3) and (learned.log_scale.grad != 0).all()
    ref = stats.norm if cls is GaussianLikelihood else stats.laplace
    expected = 6 * ref.logpdf(1.0, 0.0, 0.5)
    np.testing.assert_allclose(fixed(eta, 2).log_prob(x).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ALIASES)
def test_sample_matches_mean_and_is_seeded(name):
    lik = make_likelihood(name)
    eta = torch.tensor([-1.5, 0.0, 0.7], dtype=F64).expand(40000, 3)
    draws = lik.sample(eta, generator=torch.Generator().manual_seed(1))
    again = lik.sample(eta, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
    assert draws.shape == eta.shape and torch.isfinite(draws).all()
    std = lik(eta[0]).variance.sqrt()
    err = (draws.mean(0) - lik.mean(eta[0])).abs()
    assert (err < 5 * std / math.sqrt(40000)).all(), (err, std)
    if name == "bernoulli":
        assert set(draws.unique().tolist()) <= {0.0, 1.0}


def test_make_likelihood_errors_and_instances():
    lik = GaussianLikelihood(scale=0.1)
    assert make_likelihood(lik) is lik
    with pytest.raises(ValueError, match=r"Unknown likelihood 'normal'.*'gaussian'"):
        make_likelihood("normal")
    with pytest.raises(TypeError, match="likelihood must be one of"):
        make_likelihood(torch.distributions.Normal)
    with pytest.raises(ValueError, match="scale must be a positive finite float"):
        GaussianLikelihood(scale=0.0)
    with pytest.raises(ValueError, match="scale_shape"):
        LaplaceLikelihood(scale_shape=(0,))
    with pytest.raises(ValueError, match="event_dim=3 exceeds"):
        BernoulliLikelihood()(torch.zeros(2, 2), 3)
    assert isinstance(lik, Likelihood) and "scale=0.1" in repr(lik)
