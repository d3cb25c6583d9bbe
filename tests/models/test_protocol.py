"""The site protocol's Predictive semantics, checked against pyro.infer.Predictive and torch."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

import pyrobust as pr
from pyrobust.models.sites import Pair


def _scale_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
        s = pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(s * z, 0.01).to_event(1), obs=x)


def _scale_guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("s", dist.LogNormal(x.new_zeros(len(x), 1), 0.01).to_event(1))
        pyro.sample("z", dist.Normal(x, 0.1).to_event(1))


def test_extra_latent_site_is_drawn_from_the_guide_as_predictive_does():
    # The minimal case: with s from the guide (s ~ 1) p(|s z - 1| <= 0.2) = 0.954;
    # with s from the prior it would be ~0.1-0.2.
    x = torch.ones(4, 1)
    tree = pr.r_robustness(_scale_model, _scale_guide, x, r=0.2, num_samples=4000, seed=0)
    p = tree["robustness"]["probability"].values
    np.testing.assert_allclose(p, 0.954, atol=0.015)
    # Independent computation: Predictive draws every guide site and replays it into the model;
    # the reconstruction g = s * z is the mean of the observed site.
    pred = Predictive(
        _scale_model, guide=_scale_guide, num_samples=4000, return_sites=["s", "z"], parallel=True
    )
    draws = pred(x)
    # reference="mean": the guide's centre, z = loc = 1, s = mean of LogNormal(0, 0.01)
    s_mean = float(np.exp(0.01**2 / 2))
    inside = ((draws["s"] * draws["z"] - s_mean).abs() <= 0.2).double().mean(0).squeeze(-1)
    np.testing.assert_allclose(p, inside.numpy(), atol=0.02)
    assert tree.attrs["extra_latent_sites"] == 'json:["s"]'


def test_margin_bound_refuses_extra_latent_sites_by_name():
    with pytest.raises(ValueError, match=r"margin_bound covers a single Gaussian.*\['s'\]"):
        pr.margin_bound(_scale_model, _scale_guide, torch.ones(2, 1), r=0.2)
    with pytest.raises(ValueError, match=r"certified_margin covers a single Gaussian.*\['s'\]"):
        pr.certified_margin(None, _scale_guide, torch.ones(2, 1), r=0.2, a=1.0, b=1.0, c=1.0)


def test_prior_only_model_site_is_refused():
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.1).to_event(1))

    with pytest.raises(ValueError, match=r"latent site\(s\) \['s'\] that the guide does not"):
        pr.r_robustness(_scale_model, guide, torch.ones(2, 1), r=0.2)


class _Tutorial(nn.Module):
    """The Pyro VAE tutorial's shape conventions: encoder x.reshape(-1, D), obs flattened."""

    def __init__(self, d=64, d_z=2):
        super().__init__()
        self.enc = nn.Linear(d, 2 * d_z)
        self.dec = nn.Linear(d_z, d)
        self.d, self.d_z = d, d_z

    def model(self, x):
        pyro.module("decoder", self.dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.d_z), 1.0).to_event(1))
            probs = torch.sigmoid(self.dec(z))
            pyro.sample("x", dist.Bernoulli(probs).to_event(1), obs=x.reshape(-1, self.d))

    def guide(self, x):
        pyro.module("encoder", self.enc)
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x.reshape(-1, self.d))
            loc, scale = h[:, : self.d_z], nn.functional.softplus(h[:, self.d_z :]) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_observed_site_keeps_its_own_shape():
    torch.manual_seed(0)
    vae = _Tutorial()
    x = torch.rand(5, 1, 8, 8)
    pair = Pair.build(vae.model, vae.guide, x)
    assert pair.obs_event == (64,)
    tree = pr.r_robustness(vae.model, vae.guide, x, r=1.0, num_samples=300, seed=0)
    # Independent computation with plain torch: distances of sigmoid(dec(mu + eta sigma)).
    with torch.no_grad():
        h = vae.enc(x.reshape(-1, 64))
        loc, scale = h[:, :2], nn.functional.softplus(h[:, 2:]) + 1e-3
        ref = torch.sigmoid(vae.dec(loc))
        eta = torch.randn(20000, 5, 2, generator=torch.Generator().manual_seed(1))
        d = (torch.sigmoid(vae.dec(loc + eta * scale)) - ref).norm(dim=-1)
        p_torch = (d <= 1.0).double().mean(0).numpy()
    p = tree["robustness"]["probability"].values
    np.testing.assert_allclose(p, p_torch, atol=4 * np.sqrt(0.25 / 300))
    out = pr.output_attack(vae.model, vae.guide, x, torch.rand(64), lam=1.0, steps=5, seed=0)
    assert out["constant_data"]["target"].dims == ("obs_id", "feature")
    assert out["constant_data"]["delta"].dims == ("obs_id", "lam", "channel", "row", "col")
    with pytest.raises(ValueError, match=r"observed site 'x' should score.*\(64,\)"):
        pr.output_attack(vae.model, vae.guide, x, torch.rand(1, 8, 8), lam=1.0, steps=5)


def test_model_args_follow_their_inputs_and_agree_with_predictive():
    # A conditional pair model(x, y): the decoder mean is z + y, so the per-input y must stay
    # with its input when draws are folded into the data plate.
    def model(x, y):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z + y, 0.1).to_event(1), obs=x)

    def guide(x, y):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x - y, 0.3 * (1 + y.abs())).to_event(1))

    x = torch.tensor([[0.0], [1.0], [2.0]])
    y = torch.tensor([[0.0], [3.0], [-1.0]])
    tree = pr.r_robustness(
        model, guide, x, r=0.3, model_args=(y,), obs_site="obs", num_samples=4000, seed=0
    )
    # ||Delta|| = |eta| * 0.3 (1 + |y|): p = P(|N(0,1)| <= 1 / (1 + |y|))
    from scipy import stats

    want = 2 * stats.norm.cdf(1.0 / (1 + y.abs().squeeze(-1).numpy())) - 1
    np.testing.assert_allclose(tree["robustness"]["probability"].values, want, atol=0.025)
    with pytest.raises(TypeError, match=r"`model_args` must be a tuple"):
        pr.r_robustness(model, guide, x, r=0.3, model_args=y, obs_site="obs")


def test_training_mode_modules_run_in_eval_mode_and_are_restored():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 4))
    dec = nn.Linear(2, 4)

    def guide(x):
        with pyro.plate("data", len(x)):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[:, :2], nn.functional.softplus(h[:, 2:])).to_event(1))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.1).to_event(1), obs=x)

    enc.train()
    stats_before = enc[1].running_mean.clone()
    x = torch.randn(6, 4)
    a = pr.r_robustness(model, guide, x, r=2.0, num_samples=200, seed=0, delta=0.1 * x)
    b = pr.r_robustness(model, guide, x, r=2.0, num_samples=200, seed=0, delta=0.1 * x)
    np.testing.assert_array_equal(
        a["posterior_predictive"]["distance"].values, b["posterior_predictive"]["distance"].values
    )
    assert enc.training and enc[1].training and enc[2].training  # the caller's flags
    torch.testing.assert_close(enc[1].running_mean, stats_before)  # no statistics updated
    assert a.attrs["eval_mode_modules"] == 'json:["BatchNorm1d", "Dropout"]'
    # the answer is the eval-mode answer
    enc.eval()
    c = pr.r_robustness(model, guide, x, r=2.0, num_samples=200, seed=0, delta=0.1 * x)
    np.testing.assert_array_equal(
        a["posterior_predictive"]["distance"].values, c["posterior_predictive"]["distance"].values
    )


def test_subsampling_guide_is_refused_by_name():
    def guide(x):
        with pyro.plate("data", len(x), subsample_size=2) as idx:
            pyro.sample("z", dist.Normal(x[idx], 0.1).to_event(1))

    def model(x):
        with pyro.plate("data", len(x), subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(x.new_zeros(2, 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x[idx])

    with pytest.raises(ValueError, match=r"subsamples its plate 'data'.*subsample_size"):
        pr.r_robustness(model, guide, torch.zeros(5, 1), r=0.2)


def test_nan_reconstructions_are_never_counted_inside():
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.1).to_event(1))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            loc = torch.where(torch.arange(len(x)).unsqueeze(-1) == 1, z * float("nan"), z)
            pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"NaN or infinite for input\(s\) obs_id=\[1\]"):
        pr.r_robustness(model, guide, torch.zeros(3, 1), r=0.2)
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        pr.margin_bound(model, guide, torch.zeros(3, 1), r=0.2)

    def cauchy_model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Cauchy(z, 0.1).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"NaN or infinite"):
        pr.r_robustness(cauchy_model, guide, torch.zeros(3, 1), r=0.2)


def test_float64_inputs_to_a_float32_net_are_named():
    vae = _Tutorial()
    with pytest.raises(TypeError, match=r"`x` reaches the network Linear as torch.float64"):
        pr.r_robustness(vae.model, vae.guide, torch.rand(2, 64, dtype=torch.float64), r=1.0)


def test_no_gradient_path_and_deterministic_observed_site_are_named():
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.1).to_event(1))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.deterministic("y", (2 * z).detach(), event_dim=1)

    x = torch.full((2, 1), 0.5)
    with pytest.raises(ValueError, match=r"observed site 'y'\) has no gradient path"):
        pr.max_damage_attack(model, guide, x, eps=0.1, steps=2, obs_site="y")
    with pytest.raises(ValueError, match=r"'y' is a pyro.deterministic site"):
        pr.output_attack(model, guide, x, torch.zeros(1), lam=1.0, obs_site="y")
    # the values themselves are still answered (no gradient needed)
    tree = pr.r_robustness(model, guide, x, r=0.3, obs_site="y", num_samples=100, seed=0)
    assert tree["robustness"]["probability"].shape == (2,)


def test_output_attack_uses_the_whole_log_joint():
    # A prior written Stan-style as an observed site: the -ELBO must include it.
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 1), 10.0).to_event(1))
            pyro.sample("z_prior", dist.Normal(0.0, 1.0).expand([len(x), 1]).to_event(1), obs=z)
            pyro.factor("penalty", -0.5 * z.pow(2).sum(-1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.2).to_event(1))

    from pyrobust.robustness.attacks import _negative_elbo

    x = torch.tensor([[0.3], [-0.5]])
    target = torch.tensor([[1.0], [0.0]])
    eta = torch.randn(3, 2, 1, generator=torch.Generator().manual_seed(0))
    got = _negative_elbo(Pair.build(model, guide, x), x, target, eta)
    z = x + 0.2 * eta
    log_q = dist.Normal(x, 0.2).log_prob(z).sum(-1)
    log_p = (
        dist.Normal(0.0, 10.0).log_prob(z).sum(-1)
        + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - 0.5 * z.pow(2).sum(-1)
        + dist.Normal(z, 0.1).log_prob(target).sum(-1)
    )
    torch.testing.assert_close(got, (log_q - log_p).mean(0))


def test_plate_less_model_is_supported():
    def model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(2))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 0.1).to_event(2), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(x.expand(len(x), 2), 0.2).to_event(2))

    x = torch.zeros(3, 1)
    tree = pr.r_robustness(model, guide, x, r=0.3, num_samples=4000, seed=0)
    # ||Delta|| = |0.2 (eta_1 + eta_2)| = 0.2 sqrt(2) |N(0, 1)|
    from scipy import stats

    want = 2 * stats.norm.cdf(0.3 / (0.2 * np.sqrt(2))) - 1
    np.testing.assert_allclose(tree["robustness"]["probability"].values, want, atol=0.025)


def test_return_sites_keeps_joint_guide_draws_in_posterior():
    x = torch.ones(3, 1)
    delta = torch.stack([0.0 * x, 0.5 * x])
    tree = pr.r_robustness(
        _scale_model,
        _scale_guide,
        x,
        r=0.2,
        delta=delta,
        num_samples=50,
        seed=0,
        return_sites=["z", "s"],
    )
    post = tree["posterior"]
    assert post["z"].dims == ("chain", "draw", "obs_id", "perturbation", "latent")
    assert post["s"].dims == ("chain", "draw", "obs_id", "perturbation", "s_dim_0")
    # the draws are the guide's at x + delta: z ~ N(x + delta, 0.1), s ~ LogNormal(0, 0.01)
    z = post["z"].values[0, :, :, :, 0]
    np.testing.assert_allclose(z.mean(0), [[1.0, 1.5]] * 3, atol=0.06)
    np.testing.assert_allclose(post["s"].values.mean(), 1.0, atol=0.01)
    # and the reconstruction was computed from exactly these draws (s * z vs ref)
    d = tree["posterior_predictive"]["distance"].values[0]
    s_mean = float(np.exp(0.01**2 / 2))
    np.testing.assert_allclose(d, np.abs(post["s"].values[0, ..., 0] * z - s_mean), rtol=1e-5)
    with pytest.raises(ValueError, match=r"`return_sites` names \['w'\]"):
        pr.r_robustness(_scale_model, _scale_guide, x, r=0.2, return_sites=["w"])


def test_our_vae_decodes_from_a_view_of_x_with_the_same_answer():
    from pyrobust.models import VAE, MLPDecoder, MLPEncoder

    torch.manual_seed(0)
    vae = VAE(MLPEncoder(16, 3, hidden=(8,)), MLPDecoder(3, 16, hidden=(8,)))
    x = torch.rand(4, 16)
    assert Pair.build(vae.model, vae.guide, x).x_values_unused
    wrapped = Pair.build(lambda x: vae.model(x), vae.guide, x)
    assert not wrapped.x_values_unused  # a user's function may read x's values: copied
    kw = {"r": [0.5, 1.0], "delta": 0.1 * x, "num_samples": 64, "seed": 0, "max_batch": 40}
    a = pr.r_robustness(vae.model, vae.guide, x, **kw)
    b = pr.r_robustness(lambda x: vae.model(x), vae.guide, x, **kw)
    np.testing.assert_array_equal(
        a["posterior_predictive"]["distance"].values, b["posterior_predictive"]["distance"].values
    )


def test_margin_bound_refuses_a_nan_jacobian():
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample(
                "z", dist.Normal(x * torch.sqrt(x - 1.0).nan_to_num(0.0) + x, 0.1).to_event(1)
            )

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    # sqrt(x - 1) at x = 0 is NaN (zeroed in the value), but its derivative stays NaN
    with pytest.raises(ValueError, match=r"Jacobian or standard deviation is NaN/inf"):
        pr.margin_bound(model, guide, torch.zeros(2, 1), r=0.5, confidence=0.9, num_samples=50)


def test_review_regressions_are_refused_or_fixed():
    # 1. a global guide latent would be shared by every folded draw: refused by name
    def gguide(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x + w, 0.01).to_event(1))

    def gmodel(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"site\(s\) \['w'\] without one row per input"):
        pr.r_robustness(gmodel, gguide, torch.zeros(4, 1), r=1.0)

    # 2. an encoder mean with no path to x (through numpy) certifies no infinite margin
    enc = nn.Linear(4, 2)

    def nguide(x):
        with pyro.plate("data", len(x)):
            loc = enc(torch.as_tensor(x.detach().numpy()))
            pyro.sample("z", dist.Normal(loc, 0.1).to_event(1))

    def nmodel(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + x, 0.1).to_event(1), obs=x)

    x4 = torch.rand(4, 4)
    with pytest.raises(ValueError, match=r"does not depend differentiably on x"):
        pr.margin_bound(nmodel, nguide, x4, r=1.0, confidence=0.9, num_samples=50)
    with pytest.raises(ValueError, match=r"encoder mean .* has no gradient path"):
        pr.latent_attack(nmodel, nguide, x4, x4.flip(0), eps=0.1, steps=2, box=None)

    # 3. the resolved seed is recorded (and repeats the answer); 4. no gradient left on params
    tree = pr.latent_attack(
        nmodel, _scale_guide_like(enc), x4, x4.flip(0), lam=1.0, steps=3, box=None
    )
    seed = int(tree.attrs["seed"])
    assert all(p.grad is None for p in enc.parameters())
    again = pr.latent_attack(
        nmodel, _scale_guide_like(enc), x4, x4.flip(0), lam=1.0, steps=3, box=None, seed=seed
    )
    np.testing.assert_array_equal(
        tree["constant_data"]["delta"].values, again["constant_data"]["delta"].values
    )

    # 5. numpy per-input arguments are named; 6. the caller's RNG is left as it was
    with pytest.raises(TypeError, match=r"`model_args\[0\]` is a ndarray"):
        pr.r_robustness(gmodel, gguide, torch.zeros(4, 1), r=1.0, model_args=(np.zeros(4),))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    pr.r_robustness(_scale_model, _scale_guide, torch.ones(2, 1), r=0.2, num_samples=20, seed=1)
    torch.testing.assert_close(torch.rand(3), expected)


def _scale_guide_like(enc):
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(enc(x), 0.1).to_event(1))

    return guide


def test_autocast_mixed_dtypes_are_not_refused():
    vae = _Tutorial()
    x = torch.rand(3, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tree = pr.r_robustness(vae.model, vae.guide, x, r=2.0, num_samples=20, seed=0)
    assert np.isfinite(tree["robustness"]["probability"].values).all()
