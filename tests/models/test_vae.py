"""The VAE PyroModule: site protocol, plate scaling, analytic ELBO, training, errors."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyrobust.models import (
    VAE,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
    guide_loc_scale,
    model_mean,
)

F64 = torch.float64
LIKELIHOODS = ["bernoulli", "continuous_bernoulli", "gaussian", "laplace"]


def small_vae(likelihood="bernoulli", d_x=6, d_z=3, hidden=(8,), **kwargs):
    return VAE(
        MLPEncoder(d_x, d_z, hidden=hidden),
        MLPDecoder(d_z, d_x, hidden=hidden),
        likelihood,
        **kwargs,
    )


def linear_gaussian_vae(d_x=6, d_z=3, obs_scale=0.7):
    """MLPs without hidden layers: mu, the scale's pre-activation and g are affine (float64)."""
    vae = VAE(
        MLPEncoder(d_x, d_z, hidden=()),
        MLPDecoder(d_z, d_x, hidden=()),
        GaussianLikelihood(scale=obs_scale),
    ).double()
    with torch.no_grad():
        vae.encoder.head.bias[d_z:] -= 2.0  # encoder std ~ 0.13: a low-variance MC check
    return vae


def exact_loss(vae, x):
    r"""-ELBO in closed form for an affine decoder g(z) = W z + c and Gaussian likelihood.

    E_q[log N(x; W z + c, s^2 I)] = -d/2 log(2 pi s^2) - (|r|^2 + sum_j |W_j|^2 sigma_j^2)/(2 s^2)
    with r = x - W mu - c; KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - 2 log sigma_j).
    Returns the loss and the variance of the one-particle Monte Carlo reconstruction term.
    """
    obs_scale = vae.likelihood.scale.item()
    mu, sigma = vae.encode(x)
    w, c = vae.decoder.head.weight, vae.decoder.head.bias
    r = x - mu @ w.T - c
    d_x = x.shape[-1]
    rec = -0.5 * d_x * math.log(2 * math.pi * obs_scale**2) - (
        r.pow(2).sum(-1) + (sigma.pow(2) * w.pow(2).sum(0)).sum(-1)
    ) / (2 * obs_scale**2)
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1 - 2 * sigma.log()).sum(-1)
    # Var of -(|r - W S eps|^2)/(2 s^2): (4 |S W^T r|^2 + 2 tr((W S^2 W^T)^2)) / (4 s^4)
    m = torch.einsum("ij,nj,kj->nik", w, sigma.pow(2), w)
    var = (
        4 * (sigma * (r @ w)).pow(2).sum(-1) + 2 * (m @ m).diagonal(dim1=-2, dim2=-1).sum(-1)
    ) / (4 * obs_scale**4)
    return -(rec - kl).sum(), var.sum()


# --- the site protocol -----------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_site_protocol_helpers_read_the_vae(likelihood):
    vae = small_vae(likelihood)
    x = torch.rand(5, 6)
    loc, scale = guide_loc_scale(vae.guide, x)
    enc_loc, enc_scale = vae.encode(x)
    assert torch.equal(loc, enc_loc) and torch.equal(scale, enc_scale)
    z = torch.randn(4, 2, 5, 3)
    torch.testing.assert_close(model_mean(vae.model, x, z), vae.decode(z))
    torch.testing.assert_close(vae.reconstruct(x), vae.decode(enc_loc))


def test_trace_structure():
    x = torch.rand(5, 2, 3)
    vae = VAE(MLPEncoder((2, 3), 4, hidden=()), MLPDecoder(4, (2, 3), hidden=()))
    guide_tr = poutine.trace(vae.guide).get_trace(x, size=20)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x, size=20)
    z_q, z_p, x_site = guide_tr.nodes["z"], model_tr.nodes["z"], model_tr.nodes["x"]
    assert isinstance(z_q["fn"], dist.Independent) and z_q["fn"].reinterpreted_batch_ndims == 1
    assert isinstance(z_q["fn"].base_dist, dist.Normal)
    assert z_p["fn"].event_shape == (4,) and z_p["fn"].batch_shape == (5,)
    assert torch.equal(z_p["fn"].base_dist.scale, torch.ones(5, 4))
    assert x_site["is_observed"] and torch.equal(x_site["value"], x)
    assert x_site["fn"].event_shape == (2, 3) and x_site["fn"].batch_shape == (5,)
    frame = x_site["cond_indep_stack"][0]
    assert frame.name == "data" and frame.size == 5 and frame.full_size == 20
    model_tr.compute_log_prob()
    torch.testing.assert_close(x_site["scale"], 4.0)  # N / B = 20 / 5
    x_site["fn"].log_prob(x)  # with validation on


def test_custom_site_names():
    vae = small_vae(latent_site="code", obs_site="image")
    x = torch.rand(3, 6)
    loc, _ = guide_loc_scale(vae.guide, x, latent_site="code")
    torch.testing.assert_close(loc, vae.encode(x)[0])
    z = torch.randn(3, 3)
    g = model_mean(vae.model, x, z, latent_site="code", obs_site="image")
    torch.testing.assert_close(g, vae.decode(z))
    with pytest.raises(ValueError, match=r"no sample site named 'z'.*\['code'\]"):
        guide_loc_scale(vae.guide, x)


def test_predictive_draws_latents_and_observations():
    vae = small_vae()
    x = torch.rand(5, 6)
    draws = Predictive(vae.model, guide=vae.guide, num_samples=7, parallel=True)(x)
    assert draws["z"].shape == (7, 5, 3) and draws["x"].shape == (7, 5, 6)


# --- the ELBO --------------------------------------------------------------------------------
def test_minibatch_elbo_scales_as_n_over_b():
    vae = small_vae("continuous_bernoulli")
    x = torch.rand(8, 6)
    elbo = Trace_ELBO(num_particles=3)
    pyro.set_rng_seed(3)
    full = elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    scaled = elbo.loss(vae.model, vae.guide, x, size=100)
    assert scaled == pytest.approx(100 / 8 * full, rel=1e-6)


def test_minibatch_estimates_average_to_the_dataset_elbo():
    # With a constant decoder (W = 0) the mean-field ELBO is deterministic, so the identity
    # mean_k (N/B) loss(batch_k) = loss(data) over a partition holds to rounding.
    vae = linear_gaussian_vae()
    torch.nn.init.zeros_(vae.decoder.head.weight)
    x = torch.randn(12, 6, dtype=F64)
    elbo = TraceMeanField_ELBO()
    full = elbo.loss(vae.model, vae.guide, x)
    parts = [elbo.loss(vae.model, vae.guide, xb, size=12) for xb in x.split(4)]
    assert sum(parts) / len(parts) == pytest.approx(full, rel=1e-12)
    assert full == pytest.approx(exact_loss(vae, x)[0].item(), rel=1e-12)


def test_linear_gaussian_elbo_matches_closed_form():
    vae = linear_gaussian_vae()
    x = torch.randn(4, 6, dtype=F64)
    exact, var = exact_loss(vae, x)
    particles = 20000
    elbo = TraceMeanField_ELBO(num_particles=particles, vectorize_particles=True)
    estimate = elbo.loss(vae.model, vae.guide, x)
    se = math.sqrt(var.item() / particles)
    assert se < 1e-3 * abs(exact.item())  # the check is tight
    assert abs(estimate - exact.item()) < 5 * se, (estimate, exact.item(), se)


def test_training_on_digits_lowers_the_loss():
    datasets = pytest.importorskip("sklearn.datasets")
    data = torch.as_tensor(datasets.load_digits().data / 16.0, dtype=torch.float32)
    vae = VAE(MLPEncoder(64, 4, hidden=(64,)), MLPDecoder(4, 64, hidden=(64,)))
    elbo = TraceMeanField_ELBO()

    def dataset_loss():
        pyro.set_rng_seed(1)
        with torch.no_grad():
            return elbo.loss(vae.model, vae.guide, data) / len(data)

    before = dataset_loss()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threading only adds overhead
    try:
        for _ in range(200):
            idx = torch.randint(len(data), (100,), generator=g)
            svi.step(data[idx], size=len(data))
    finally:
        torch.set_num_threads(threads)
    after = dataset_loss()
    assert after < before - 5.0, (before, after)  # nats per image; starts near 64 log 2


def test_learned_likelihood_scale_is_trained_by_svi():
    vae = small_vae(GaussianLikelihood(scale=1.0, learn_scale=True))
    x = torch.randn(16, 6) * 0.1
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(20):
        svi.step(x)
    assert "likelihood$$$log_scale" in pyro.get_param_store()
    assert vae.likelihood.scale.item() < 0.5  # the data are far tighter than scale 1


def test_several_vaes_in_one_process_each_train_their_own_parameters():
    x = torch.rand(16, 6)
    first, second = small_vae(), small_vae()  # same parameter names in Pyro's store
    snapshot = {k: v.clone() for k, v in first.state_dict().items()}
    elbo = TraceMeanField_ELBO()
    svi = SVI(second.model, second.guide, pyro.optim.Adam({"lr": 0.05}), elbo)
    guide_loc_scale(first.guide, x)  # first registers its tensors in the store
    before = second.decoder.head.weight.clone()
    for _ in range(5):
        svi.step(x)
    assert not torch.equal(second.decoder.head.weight, before)  # SVI trained `second` ...
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in snapshot.items())  # ... only
    assert pyro.param("decoder$$$head.weight") is second.decoder.head.weight
    loc, _ = guide_loc_scale(first.guide, x)  # and `first` still answers with its own weights
    torch.testing.assert_close(loc, first.encode(x)[0])
    assert pyro.param("encoder$$$head.weight") is first.encoder.head.weight


def test_module_local_params_and_a_torch_optimizer():
    x = torch.randn(16, 6) * 0.1
    with pyro.settings.context(module_local_params=True):
        vae = small_vae(GaussianLikelihood(scale=1.0, learn_scale=True))
        opt = torch.optim.Adam(vae.parameters(), lr=0.05)
        elbo = Trace_ELBO()
        for _ in range(20):
            opt.zero_grad()
            elbo.differentiable_loss(vae.model, vae.guide, x).backward()
            opt.step()
    assert len(pyro.get_param_store()) == 0  # the global store was never touched
    assert vae.likelihood.scale.item() < 0.5


# --- sampling --------------------------------------------------------------------------------
def test_sample_is_seeded():
    vae = small_vae()
    a, b, c = vae.sample(5, seed=1), vae.sample(5, seed=1), vae.sample(5, seed=2)
    assert a.shape == (5, 6) and torch.equal(a, b) and not torch.equal(a, c)
    assert ((a > 0) & (a < 1)).all() and not a.requires_grad
    draws = vae.sample(5, seed=1, mean=False)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    torch.manual_seed(0)
    d = vae.sample(3)
    torch.manual_seed(0)
    assert torch.equal(d, vae.sample(3))


# --- errors ----------------------------------------------------------------------------------
def test_constructor_errors():
    enc, dec = MLPEncoder(6, 3), MLPDecoder(3, 6)
    with pytest.raises(TypeError, match=r"encoder must be a torch\.nn\.Module"):
        VAE(lambda x: x, dec)
    with pytest.raises(ValueError, match="Unknown likelihood 'bernouli'"):
        VAE(enc, dec, "bernouli")
    with pytest.raises(ValueError, match="must differ"):
        VAE(enc, dec, latent_site="x")
    with pytest.raises(ValueError, match="Inconsistent latent dimensions"):
        VAE(enc, MLPDecoder(4, 6))
    with pytest.raises(TypeError, match="Pass latent_dim= to VAE"):
        VAE(torch.nn.Linear(6, 3), torch.nn.Linear(3, 6))
    assert VAE(torch.nn.Linear(6, 3), torch.nn.Linear(3, 6), latent_dim=3).latent_dim == 3


def test_call_errors():
    vae = small_vae()
    x = torch.rand(5, 6)
    with pytest.raises(ValueError, match=r"size is the dataset size N.*len\(x\)=5; got 4"):
        vae.model(x, size=4)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        vae.guide(x.numpy())
    with pytest.raises(ValueError, match="n must be a positive int"):
        vae.sample(0)

    class Bad(torch.nn.Module):
        latent_dim = 3

        def forward(self, x):
            return x[..., :2], x[..., :2].exp()

    with pytest.raises(ValueError, match=r"latent_dim=3"):
        VAE(Bad(), MLPDecoder(3, 6)).guide(x)


@pytest.mark.gpu
def test_runs_on_the_device_of_its_parameters():
    vae = small_vae(ContinuousBernoulliLikelihood()).cuda()
    x = torch.rand(5, 6, device="cuda")
    assert vae.sample(4, seed=0).device.type == "cuda"
    torch.testing.assert_close(vae.sample(4, seed=0), vae.sample(4, seed=0))
    loss = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert loss.device.type == "cuda"
    z = torch.randn(2, 5, 3, device="cuda")
    torch.testing.assert_close(model_mean(vae.model, x, z), vae.decode(z))
