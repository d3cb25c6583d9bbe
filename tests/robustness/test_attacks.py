"""Attacks on the analytic linear-Gaussian VAE (THEORY sections 3 and 7) and on a small
nonlinear VAE: optimum found, budget and box never left, seeds, errors."""

import functools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from pyrobust.models.sites import Pair
from pyrobust.robustness.attacks import (
    DEFAULT_LAMBDAS,
    _divergence,
    _negative_elbo,
    _project,
    latent_attack,
    max_damage_attack,
    output_attack,
)
from tests.linear_gaussian import LinearGaussianVAE


def expected_damage(lg, eps):
    r"""E||A d + s eta|| at d = eps v1: s * E sqrt(ncx2(d_z, (eps sigma_1 / s)^2))."""
    nc = (eps * lg.spectral_norm / lg.s) ** 2
    return lg.s * stats.ncx2.expect(np.sqrt, args=(lg.d_z, nc))


class TanhVAE:
    """A small nonlinear VAE with pixels in (0, 1): tanh encoder, sigmoid Bernoulli decoder."""

    def __init__(self, d_x, d_z=2, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w_enc = torch.randn(2 * d_z, d_x, generator=g) / math.sqrt(d_x)
        self.w_dec = torch.randn(d_x, d_z, generator=g)
        self.d_z = d_z

    def guide(self, x):
        flat = x.reshape(x.shape[0], -1)
        h = torch.tanh(3 * flat @ self.w_enc.T)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "z",
                dist.Normal(h[:, : self.d_z], 0.1 + torch.sigmoid(h[:, self.d_z :])).to_event(1),
            )

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.d_z), 1.0).to_event(1))
            probs = torch.sigmoid(z @ self.w_dec.T).reshape(x.shape)
            pyro.sample("x", dist.Bernoulli(probs=probs).to_event(x.dim() - 1), obs=x.round())


@pytest.mark.parametrize("method", ["pgd", "lbfgs"])
def test_max_damage_finds_top_singular_direction(method):
    lg = LinearGaussianVAE()
    x = torch.randn(3, lg.d_x, dtype=lg.dtype)
    eps = [0.2, 0.5]
    restarts = 4 if method == "pgd" else 2  # L-BFGS-B loops over inputs: keep it short
    tree = max_damage_attack(
        lg.model,
        lg.guide,
        x,
        eps=eps,
        box=None,
        method=method,
        restarts=restarts,
        eval_samples=4000,
        seed=1,
    )
    rob = tree["robustness"]
    assert rob["damage"].dims == ("obs_id", "eps")
    optimum = np.array([expected_damage(lg, e) for e in eps])
    np.testing.assert_allclose(rob["damage"].values, np.broadcast_to(optimum, (3, 2)), rtol=0.02)
    np.testing.assert_allclose(rob["delta_norm"].values, np.broadcast_to(eps, (3, 2)), rtol=1e-6)
    delta = torch.as_tensor(tree["constant_data"]["delta"].values)
    v1 = torch.linalg.svd(lg.A).Vh[0]
    cosine = (delta @ v1).abs() / delta.norm(dim=-1)
    # At small eps the damage is flat in the angle (the noise dominates): looser there.
    assert bool((cosine[:, 0] > 0.9).all()) and bool((cosine[:, 1] > 0.98).all()), cosine


def test_linf_attack_uses_the_whole_box_of_the_budget():
    # For a linear encoder the damage grows with ||A d||; the linf maximiser is a vertex.
    lg = LinearGaussianVAE()
    x = torch.randn(2, lg.d_x, dtype=lg.dtype)
    tree = max_damage_attack(lg.model, lg.guide, x, eps=0.1, norm="linf", box=None, seed=0)
    delta = tree["constant_data"]["delta"].values
    np.testing.assert_allclose(np.abs(delta), 0.1, rtol=1e-9)
    best = max(
        np.linalg.norm(lg.A.numpy() @ (0.1 * np.array(s)))
        for s in np.array(np.meshgrid(*[[-1, 1]] * lg.d_x)).reshape(lg.d_x, -1).T
    )
    achieved = np.linalg.norm(delta[:, 0] @ lg.A.numpy().T, axis=-1)
    np.testing.assert_allclose(achieved, best, rtol=1e-9)


def test_probability_at_attacked_input_matches_ncx2():
    lg = LinearGaussianVAE()
    x = torch.randn(4, lg.d_x, dtype=lg.dtype)
    tree = max_damage_attack(
        lg.model, lg.guide, x, eps=[0.0, 0.2], r=0.8, num_samples=4000, box=None, seed=2
    )
    rob = tree["robustness"]
    delta = torch.as_tensor(tree["constant_data"]["delta"].values)
    exact = lg.p_robust(0.8, delta)
    p = rob["probability"].values
    assert np.all(np.abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / 4000) + 1e-3)
    ci = rob["ci"]
    assert ci.dims == ("obs_id", "eps", "ci_bound")
    assert np.all(ci.sel(ci_bound="lower").values <= p)
    assert np.all(p <= ci.sel(ci_bound="upper").values)
    assert set(np.unique(rob["decision"].values[:, 0])) == {1}  # robust
    assert rob["decision"].attrs["flag_meanings"] == "not_robust undecided robust"
    # the answer is the mean of the indicator draws ArviZ reads
    inside = tree["posterior_predictive"]["inside"]
    np.testing.assert_allclose(inside.mean(("chain", "draw")).values, p)
    assert tree["posterior_predictive"]["distance"].dims == ("chain", "draw", "obs_id", "eps")


def test_same_seed_same_answer_and_attrs():
    lg = LinearGaussianVAE()
    x = torch.randn(2, lg.d_x, dtype=lg.dtype)
    a = max_damage_attack(lg.model, lg.guide, x, eps=0.3, box=None, steps=5, seed=7)
    b = max_damage_attack(lg.model, lg.guide, x, eps=0.3, box=None, steps=5, seed=7)
    np.testing.assert_array_equal(a["constant_data"]["delta"], b["constant_data"]["delta"])
    assert a.attrs["steps"] == 5 and a.attrs["box"] == "json:null"


@settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 3),
    shape=st.sampled_from([(5,), (2, 3), (1, 3, 2)]),
    eps=st.floats(0.0, 3.0),
    norm=st.sampled_from(["l2", "linf"]),
    restarts=st.integers(1, 2),
    method=st.sampled_from(["pgd", "lbfgs"]),
    seed=st.integers(0, 2**16),
)
def test_attack_never_leaves_budget_or_box(n, shape, eps, norm, restarts, method, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    x[0].view(-1)[0] = 0.0  # an input on the boundary of the box
    vae = TanhVAE(math.prod(shape), seed=seed)
    tree = max_damage_attack(
        vae.model,
        vae.guide,
        x,
        eps=[eps, eps / 3],
        norm=norm,
        steps=4,
        restarts=restarts,
        method=method,
        eot_samples=2,
        eval_samples=4,
        seed=seed,
        step_size=0.7,
    )
    delta = torch.as_tensor(tree["constant_data"]["delta"].values)
    assert delta.shape == (n, 2, *shape)
    flat = delta.reshape(n, 2, -1)
    size = flat.abs().amax(-1) if norm == "linf" else flat.norm(dim=-1)
    budget = torch.tensor([eps, eps / 3], dtype=size.dtype)
    assert bool((size <= budget * (1 + 1e-6) + 1e-12).all())
    attacked = x.unsqueeze(1) + delta
    assert bool((attacked >= 0).all()) and bool((attacked <= 1).all())


def test_projection_is_the_euclidean_projection():
    # Box inactive: radial scaling; box active: the KKT form clamp(t * delta) with ||.|| = eps.
    x = torch.full((1, 3), 0.5, dtype=torch.float64)
    d = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)
    out = _project(d, x, torch.tensor([1.0], dtype=torch.float64), "l2", None)
    torch.testing.assert_close(out, d / 5)
    out = _project(d, x, torch.tensor([0.65], dtype=torch.float64), "l2", (0.0, 1.0))
    # clamp(t d) saturates the second coordinate at t = 1/8 with norm 0.625 < 0.65, so the
    # answer is (3t, 0.5, 0) with 9 t^2 + 0.25 = 0.4225.
    torch.testing.assert_close(out, torch.tensor([[math.sqrt(0.1725), 0.5, 0.0]]).double())
    # Optimality: no feasible point on a fine grid is closer to d.
    grid = torch.stack(
        torch.meshgrid(*[torch.linspace(-0.5, 0.5, 101, dtype=torch.float64)] * 2, indexing="ij"),
        -1,
    ).reshape(-1, 2)
    feasible = grid[grid.norm(dim=-1) <= 0.65]
    assert (d[0, :2] - feasible).norm(dim=-1).min() >= (d - out).norm() - 1e-9


def test_divergences_match_torch():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    s1, s2 = torch.rand(4, 3, generator=g) + 0.1, torch.rand(4, 3, generator=g) + 0.1
    kl = torch.distributions.kl_divergence(
        dist.Normal(m1, s1).to_event(1), dist.Normal(m2, s2).to_event(1)
    )
    torch.testing.assert_close(_divergence(m1, s1, m2, s2, "kl"), kl)
    w2 = (m1 - m2).pow(2).sum(-1) + (s1 - s2).pow(2).sum(-1)
    torch.testing.assert_close(_divergence(m1, s1, m2, s2, "w2"), w2)


@pytest.mark.parametrize("divergence", ["kl", "w2"])
def test_latent_attack_distance_falls_as_lam_falls(divergence):
    lg = LinearGaussianVAE()
    x = torch.randn(2, lg.d_x, dtype=lg.dtype)
    target = torch.randn(lg.d_x, dtype=lg.dtype)
    tree = latent_attack(lg.model, lg.guide, x, target, divergence=divergence, box=None, seed=0)
    rob = tree["robustness"]
    assert rob.sizes == {"obs_id": 2, "lam": 50}
    np.testing.assert_allclose(rob["lam"].values, DEFAULT_LAMBDAS)
    dist_t = rob["recon_distance"].values
    clean = (lg.A @ (x - target).T).T.norm(dim=-1).numpy()  # ||W A (x - x_t)||
    np.testing.assert_allclose(dist_t[:, -1], clean, rtol=1e-6)  # lam = 2^20: no attack
    assert np.all(dist_t[:, 0] < 0.05 * clean)  # lam = 2^-20: the target's code is reached
    # Monotone up to optimiser noise: a smaller penalty never leaves the reconstruction farther.
    assert np.all(np.diff(dist_t, axis=-1) >= -0.01 * clean[:, None])
    assert np.all(np.isfinite(rob["auc"].values)) and np.all(rob["auc"].values > 0)


def test_hard_latent_attack_reaches_target_within_budget():
    lg = LinearGaussianVAE()
    x = torch.randn(2, lg.d_x, dtype=lg.dtype)
    target = torch.randn(2, lg.d_x, dtype=lg.dtype)
    need = (torch.linalg.pinv(lg.A) @ (lg.A @ (target - x).T)).norm(dim=0)  # min-norm solution
    big = 2 * need.max().item()
    tree = latent_attack(lg.model, lg.guide, x, target, eps=[0.5, big], box=None, seed=0)
    rob = tree["robustness"]
    assert np.all(rob["distortion"].values <= np.array([0.5, big]) * (1 + 1e-9))
    assert np.all(rob["divergence"].values[:, 1] < 1e-3)
    np.testing.assert_allclose(rob["distortion"].values[:, 0], 0.5, rtol=1e-6)  # 0.5 < need
    assert bool((need > 0.5).all())


def test_output_attack_moves_reconstruction_to_target():
    lg = LinearGaussianVAE()
    x = torch.randn(3, lg.d_x, dtype=lg.dtype)
    target = torch.randn(3, lg.d_x, dtype=lg.dtype)
    tree = output_attack(lg.model, lg.guide, x, target, lam=[1e-6, 1e6], box=None, seed=0)
    rob = tree["robustness"]
    clean = (x @ lg.A.T @ lg.W.T - target).norm(dim=-1).numpy()  # ||W A x - x_t||
    np.testing.assert_allclose(rob["target_distance"].values[:, 1], clean, rtol=1e-6)
    # -ELBO(x_t; N(mu, s^2)) = ||x_t - W mu||^2 / (2 obs^2) + ||mu||^2 / 2 + const is minimised
    # by mu* = W^T x_t / (1 + obs^2), reachable as mu(x + d) = A (x + d) with A of full rank.
    best = (target @ lg.W @ lg.W.T / (1 + lg.obs_scale**2) - target).norm(dim=-1).numpy()
    np.testing.assert_allclose(rob["target_distance"].values[:, 0], best, rtol=0.01)


def test_negative_elbo_matches_closed_form():
    lg = LinearGaussianVAE()
    x = torch.randn(3, lg.d_x, dtype=lg.dtype)
    target = torch.randn(3, lg.d_x, dtype=lg.dtype)
    eta = torch.randn(4, 3, lg.d_z, dtype=lg.dtype)
    pair = Pair.build(lg.model, lg.guide, x)
    got = _negative_elbo(pair, x, target, eta)
    loc = x @ lg.A.T
    z = loc + eta * lg.s
    log_q = dist.Normal(loc, lg.s).log_prob(z).sum(-1)
    log_p = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(
        z @ lg.W.T, lg.obs_scale
    ).log_prob(target).sum(-1)
    torch.testing.assert_close(got, (log_q - log_p).mean(0))


def test_bad_input_raises_clear_errors():
    lg = LinearGaussianVAE()
    x = torch.randn(2, lg.d_x, dtype=lg.dtype)
    target = torch.randn(lg.d_x, dtype=lg.dtype)
    kw = {"box": None}
    with pytest.raises(ValueError, match=r"every eps must be finite and >= 0; got -0.1"):
        max_damage_attack(lg.model, lg.guide, x, eps=-0.1, **kw)
    with pytest.raises(ValueError, match=r"`norm`='l3'; choose one of 'l2', 'linf'"):
        max_damage_attack(lg.model, lg.guide, x, eps=0.1, norm="l3", **kw)
    with pytest.raises(ValueError, match=r"`method`='adam'; choose one of 'pgd', 'lbfgs'"):
        max_damage_attack(lg.model, lg.guide, x, eps=0.1, method="adam", **kw)
    with pytest.raises(ValueError, match=r"`steps` must be >= 1; got 0"):
        max_damage_attack(lg.model, lg.guide, x, eps=0.1, steps=0, **kw)
    with pytest.raises(ValueError, match=r"outside box=\(0, 1\).*box=None"):
        max_damage_attack(lg.model, lg.guide, x, eps=0.1, box=(0, 1))
    with pytest.raises(ValueError, match=r"target must have the input's event shape \(6,\)"):
        latent_attack(lg.model, lg.guide, x, target[:4], **kw)
    with pytest.raises(ValueError, match=r"observed site .x. should score.*got \(3, 6\)"):
        output_attack(lg.model, lg.guide, x, target.expand(3, 6), **kw)
    with pytest.raises(ValueError, match=r"either lam= .* or eps="):
        latent_attack(lg.model, lg.guide, x, target, lam=1.0, eps=1.0, **kw)
    with pytest.raises(ValueError, match=r"every lam must be finite and > 0"):
        latent_attack(lg.model, lg.guide, x, target, lam=[1.0, 0.0], **kw)
    with pytest.raises(ValueError, match=r"`divergence`='js'"):
        latent_attack(lg.model, lg.guide, x, target, divergence="js", **kw)
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor"):
        max_damage_attack(lg.model, lg.guide, x.numpy(), eps=0.1, **kw)


# --------------------------------------------------------------------------------------------
# a conv VAE trained on scikit-learn digits (slow: trains for ~30 s on one core)
# --------------------------------------------------------------------------------------------
@functools.cache
def _digits_state(epochs=30, latent_dim=4):
    from pyrobust.data.digits import load_digits
    from pyrobust.inference.fit import fit

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    x, _ = load_digits()
    vae = _digits_vae(latent_dim)
    fit(vae, x[:1500], epochs=epochs, batch_size=32, lr=2e-3, seed=0)
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}, x[1500:]


def _digits_vae(latent_dim=4):
    from pyrobust.models import VAE, ConvDecoder, ConvEncoder

    kw = {"channels": (16, 32), "hidden": (64,)}
    return VAE(
        ConvEncoder((1, 8, 8), latent_dim, **kw),
        ConvDecoder(latent_dim, (1, 8, 8), **kw),
        likelihood="bernoulli",
    )


def trained_digits_vae():
    """A conv VAE (d_z = 4) trained 30 epochs on 1500 digits, and the 297 held-out digits."""
    state, test = _digits_state()
    vae = _digits_vae()
    vae.load_state_dict(state)
    return vae.eval(), test


@pytest.mark.slow
def test_latent_attack_on_conv_vae_distance_falls_as_lam_falls():
    vae, test = trained_digits_vae()
    x, target = test[:4], test[10]
    tree = latent_attack(vae.model, vae.guide, x, target, lam=np.geomspace(1e-4, 1e2, 8), seed=0)
    dist_t = tree["robustness"]["recon_distance"].values  # (obs_id, lam), lam increasing
    assert np.all(dist_t[:, 0] < 0.5 * dist_t[:, -1])
    assert np.all(np.diff(dist_t, axis=-1) >= -0.05 * dist_t[:, -1:])
    assert np.all(tree["robustness"]["distortion"].values[:, 0] > 0)


def test_projection_variational_inequality_in_many_dimensions():
    # P is the projection onto the convex set K iff <y - P(y), z - P(y)> <= 0 for every z in K.
    # Random high-dimensional inputs, some on the box's faces, zero and tiny deltas, eps = 0.
    g = torch.Generator().manual_seed(3)
    b, d = 64, 50
    x = torch.rand(b, d, generator=g, dtype=torch.float64)
    x[:, :3], x[:, 3:5] = 0.0, 1.0
    y = 3 * torch.randn(b, d, generator=g, dtype=torch.float64) * torch.rand(b, 1, generator=g)
    y[0], y[1, 1:], y[2] = 0.0, 0.0, 1e-9
    eps = 2 * torch.rand(b, generator=g, dtype=torch.float64)
    eps[3] = 0.0
    p = _project(y, x, eps, "l2", (0.0, 1.0))
    assert bool((p.norm(dim=-1) <= eps * (1 + 1e-12) + 1e-15).all())
    assert bool((x + p >= 0).all()) and bool((x + p <= 1).all())
    # feasible points: random directions inside the box, scaled into the ball
    z = torch.rand(b, 200, d, generator=g, dtype=torch.float64) - x.unsqueeze(1)
    z = z * (eps.unsqueeze(-1) / z.norm(dim=-1).clamp_min(1e-30)).clamp(max=1.0).unsqueeze(-1)
    inner = ((y - p).unsqueeze(1) * (z - p.unsqueeze(1))).sum(-1)
    assert float(inner.max()) <= 1e-10


def test_projected_ascent_stop_ends_inputs_early():
    # A stop that finishes input 1 before step 2: from then on the objective sees only the
    # other inputs' rows (keep), and input 1's restarts all hold the candidate it accepted.
    from pyrobust.robustness.attacks import _projected_ascent

    x = torch.full((3, 2), 0.5, dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    seen, accepted = [], {}

    def objective(delta, keep=None):
        rows = target.repeat(2, 1) if keep is None else target[keep].repeat(2, 1)
        seen.append(delta.shape[0])
        return -((0.5 + delta - rows) ** 2).sum(-1)

    def stop(cand, keep):
        accepted["cand"], accepted["keep"] = cand.clone(), keep.clone()
        return keep == 1

    kw = {"norm": "l2", "box": (0.0, 1.0), "steps": 6, "step_size": 0.3, "restarts": 2}
    eps = torch.full((3,), 0.4).double()
    gen = torch.Generator().manual_seed(0)
    out = _projected_ascent(objective, x, eps, stop=stop, stop_at={2}, gen=gen, **kw)
    assert seen == [6, 6, 4, 4, 4, 4]
    assert accepted["keep"].tolist() == [0, 1, 2]
    torch.testing.assert_close(out[0, 1], accepted["cand"][1])
    torch.testing.assert_close(out[1, 1], accepted["cand"][1])
    # the others went on exactly as in the plain ascent (same starts, six full steps)
    seen.clear()
    plain = _projected_ascent(objective, x, eps, gen=torch.Generator().manual_seed(0), **kw)
    assert seen == [6] * 6
    torch.testing.assert_close(out[:, [0, 2]], plain[:, [0, 2]], rtol=0, atol=1e-15)
    assert not torch.equal(out[:, 1], plain[:, 1])
