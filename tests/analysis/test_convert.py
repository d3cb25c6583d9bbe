"""from_pyro: the SVI -> DataTree converter, checked against the linear-Gaussian VAE's closed forms
and run through arviz_stats (summary, ess, mcse, hdi, loo) and arviz_plots (forest, dist, ppc)."""

import warnings

import arviz_stats
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.special import logsumexp

from pyrobust._results import STANDARD_ATTRS, decode_attrs
from pyrobust.analysis import from_pyro
from tests.linear_gaussian import LinearGaussianVAE

S = 400


@pytest.fixture(scope="module")
def lg():
    vae = LinearGaussianVAE()
    x = torch.randn(5, vae.d_x, dtype=vae.dtype, generator=torch.Generator().manual_seed(3))
    tree = from_pyro(vae.model, vae.guide, x, num_samples=S, seed=0)
    return vae, x, tree


def test_layout_dims_and_attrs(lg):
    vae, x, tree = lg
    assert set(tree.children) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
    }
    assert tree["posterior"]["z"].dims == ("chain", "draw", "obs_id", "latent")
    assert tree["posterior"]["z"].shape == (1, S, 5, vae.d_z)
    assert tree["posterior_predictive"]["x"].dims == ("chain", "draw", "obs_id", "feature")
    assert tree["log_likelihood"]["x"].dims == ("chain", "draw", "obs_id")
    assert tree["observed_data"]["x"].dims == ("obs_id", "feature")
    np.testing.assert_array_equal(tree["observed_data"]["x"].values, x.numpy())
    for node in [tree, *(tree[g] for g in tree.children)]:
        assert set(STANDARD_ATTRS) <= set(node.attrs), node.name
        assert node.attrs["inference_library"] == "pyro"
        assert node.attrs["creation_library"] == "pyrobust"
    attrs = decode_attrs(tree.attrs)
    assert attrs["num_samples"] == S and attrs["seed"] == 0 and attrs["obs_site"] == ["x"]
    assert len(attrs["model_hash"]) == 64 and attrs["model_name"] == "LinearGaussianVAE"


def test_draws_follow_the_guide_and_the_likelihood(lg):
    vae, x, tree = lg
    z = torch.from_numpy(tree["posterior"]["z"].values[0])  # (S, n, d_z)
    loc = x @ vae.A.T
    # the guide's draws: mean A x and std s (5 sigma of the Monte Carlo error)
    se = vae.s / np.sqrt(S)
    assert (z.mean(0) - loc).abs().max() < 5 * se
    assert z.std(0).mean().item() == pytest.approx(vae.s, rel=0.05)
    # log_likelihood is log N(x; W z, obs_scale^2 I) at the stored draws, exactly
    expected = dist.Normal(z @ vae.W.T, vae.obs_scale).log_prob(x).sum(-1)
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0], expected.numpy(), rtol=1e-12)
    # posterior predictive: x~ = W z + obs_scale * noise
    xt = torch.from_numpy(tree["posterior_predictive"]["x"].values[0])
    resid = xt - z @ vae.W.T
    assert resid.std().item() == pytest.approx(vae.obs_scale, rel=0.05)
    assert resid.mean().abs().item() < 5 * vae.obs_scale / np.sqrt(resid.numel())


def test_arviz_stats_agree_with_the_draws(lg):
    vae, _, tree = lg
    z = tree["posterior"]["z"].values[0]
    s = arviz_stats.summary(tree, var_names=["z"], kind="all")
    np.testing.assert_allclose(s["mean"].to_numpy(), z.mean(0).ravel(), atol=0.01)
    mcse = arviz_stats.mcse(tree, var_names=["z"])["z"].values
    ess = arviz_stats.ess(tree, var_names=["z"])["z"].values
    # independent draws: ESS near S, and the MCSE of the mean is sd / sqrt(ESS)
    assert np.all(ess > 0.6 * S)
    np.testing.assert_allclose(mcse, z.std(0, ddof=1) / np.sqrt(ess), rtol=0.1)
    hdi = arviz_stats.hdi(tree, var_names=["z"], prob=0.9)["z"]
    assert hdi.dims == ("obs_id", "latent", "ci_bound")
    width = (hdi.sel(ci_bound="upper") - hdi.sel(ci_bound="lower")).values
    np.testing.assert_allclose(width, 2 * 1.6449 * vae.s, rtol=0.15)
    ll = tree["log_likelihood"]["x"].values[0]
    with warnings.catch_warnings():  # Pareto k is high for per-input latents (documented)
        warnings.simplefilter("ignore", UserWarning)
        loo = arviz_stats.loo(tree, pointwise=True)
    assert loo.elpd_i.shape == (5,)
    assert float(loo.elpd) == pytest.approx(float(loo.elpd_i.sum()))
    # each elpd_i is a smoothed harmonic mean of p(x_n | z): at most the log of the plain mean
    lppd = logsumexp(ll, axis=0) - np.log(S)
    assert np.all(loo.elpd_i.values <= lppd + 1e-6)


def test_arviz_plots_run(lg, tmp_path):
    pytest.importorskip("matplotlib")
    import arviz_plots

    _, _, tree = lg
    arviz_plots.plot_forest(tree, var_names=["z"], backend="matplotlib")
    arviz_plots.plot_dist(tree, var_names=["z"], coords={"obs_id": [0]}, backend="matplotlib")
    pc = arviz_plots.plot_ppc_dist(tree, backend="matplotlib")
    pc.savefig(tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").stat().st_size > 1000
    # plot_ppc_pit (arviz_plots 0.8) takes one value per observation: a scalar observed site

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    scalar = from_pyro(model, guide, torch.randn(30), num_samples=100, seed=0)
    assert scalar["observed_data"]["x"].dims == ("obs_id",)
    arviz_plots.plot_ppc_pit(scalar, backend="matplotlib")


def test_same_seed_same_bits_and_global_rng_untouched(lg):
    vae, x, tree = lg
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again = from_pyro(vae.model, vae.guide, x, num_samples=S, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    for g in ("posterior", "posterior_predictive", "log_likelihood"):
        np.testing.assert_array_equal(
            again[g].to_dataset()["z" if g == "posterior" else "x"].values,
            tree[g].to_dataset()["z" if g == "posterior" else "x"].values,
        )
    # chunked draws (max_batch) have the same law
    small = from_pyro(vae.model, vae.guide, x, num_samples=S, seed=1, max_batch=7)
    assert small["posterior"]["z"].shape == tree["posterior"]["z"].shape
    diff = small["posterior"]["z"].mean("draw") - tree["posterior"]["z"].mean("draw")
    assert float(abs(diff).max()) < 6 * vae.s / np.sqrt(S / 2)
    # seed=None follows pyro.set_rng_seed and records the seed it used
    pyro.set_rng_seed(4)
    a = from_pyro(vae.model, vae.guide, x, num_samples=20)
    pyro.set_rng_seed(4)
    b = from_pyro(vae.model, vae.guide, x, num_samples=20)
    np.testing.assert_array_equal(a["posterior"]["z"].values, b["posterior"]["z"].values)
    c = from_pyro(vae.model, vae.guide, x, num_samples=20, seed=decode_attrs(a.attrs)["seed"])
    np.testing.assert_array_equal(a["posterior"]["z"].values, c["posterior"]["z"].values)


def test_images_per_input_args_and_training_mode_restored():
    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
            self.dec = torch.nn.Linear(2 + 1, 16)
            self.drop = torch.nn.Dropout(0.5)

        def model(self, x, y):
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
                logits = self.drop(self.dec(torch.cat([z, y[:, None]], -1)))
                pyro.sample("x", dist.Bernoulli(logits=logits.reshape(x.shape)).to_event(3), obs=x)

        def guide(self, x, y):
            with pyro.plate("data", len(x)):
                out = self.enc(x)
                pyro.sample("z", dist.Normal(out[:, :2], out[:, 2:].exp()).to_event(1))

    pair = Pair().train()
    x = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    y = torch.tensor([0.0, 1.0, 2.0])
    tree = from_pyro(pair.model, pair.guide, x, model_args=(y,), num_samples=6, seed=0)
    assert pair.training and pair.drop.training  # restored
    assert tree["posterior_predictive"]["x"].dims == (
        "chain",
        "draw",
        "obs_id",
        "channel",
        "row",
        "col",
    )
    # in eval mode (no dropout) the likelihood of each draw is recomputable from z and y
    z = torch.from_numpy(tree["posterior"]["z"].values[0])  # (S, n, 2)
    with torch.no_grad():
        logits = pair.dec(torch.cat([z, y.expand(6, 3)[..., None]], -1)).reshape(6, 3, 1, 4, 4)
    expected = dist.Bernoulli(logits=logits).log_prob(x).sum((-1, -2, -3))
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0], expected.numpy(), rtol=1e-5)
    # model_hash follows the weights
    h0 = decode_attrs(tree.attrs)["model_hash"]
    with torch.no_grad():
        pair.dec.bias.add_(1.0)
    h1 = decode_attrs(from_pyro(pair.model, pair.guide, x, model_args=(y,), num_samples=2).attrs)
    assert h1["model_hash"] != h0 and h1["model_name"] == "Pair"


def test_refusals():
    vae = LinearGaussianVAE()
    x = torch.randn(4, vae.d_x, dtype=vae.dtype)

    def global_guide(x):
        pyro.sample("w", dist.Normal(torch.zeros(()), 1.0))
        vae.guide(x)

    def model_w(x):
        pyro.sample("w", dist.Normal(torch.zeros(()), 1.0))
        vae.model(x)

    with pytest.raises(ValueError, match="'w' is not inside the data plate"):
        from_pyro(model_w, global_guide, x, num_samples=3)
    with pytest.raises(ValueError, match=r"\['w'\] are not sampled by the guide"):
        from_pyro(model_w, vae.guide, x, num_samples=3)
    with pytest.raises(ValueError, match="not an observed site"):
        from_pyro(vae.model, vae.guide, x, num_samples=3, obs_site="y")
    with pytest.raises(TypeError, match=r"data must be a torch\.Tensor"):
        from_pyro(vae.model, vae.guide, x.numpy(), num_samples=3)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        from_pyro(vae.model, vae.guide, x, num_samples=0)
    with pytest.raises(TypeError, match="model_args must be a tuple"):
        from_pyro(vae.model, vae.guide, x, num_samples=2, model_args=[1])


def test_dims_from_nested_plates():
    """A latent per (input, group) in a nested plate gets the plate's name as its dim."""

    def model(x):
        with pyro.plate("data", len(x), dim=-2):
            with pyro.plate("groups", 3, dim=-1):
                u = pyro.sample("u", dist.Normal(torch.zeros(len(x), 3), 1.0))
            pyro.sample("x", dist.Normal(u.sum(-1, keepdim=True), 1.0), obs=x)  # (n, 1)

    def guide(x):
        with pyro.plate("data", len(x), dim=-2):
            with pyro.plate("groups", 3, dim=-1):
                pyro.sample("u", dist.Normal(x.expand(len(x), 3) / 3, 0.5))

    x = torch.randn(4, 1)
    tree = from_pyro(model, guide, x, num_samples=7, seed=0, max_batch=10)
    assert tree["posterior"]["u"].dims == ("chain", "draw", "obs_id", "groups")
    assert tree["posterior"]["u"].shape == (1, 7, 4, 3)
    # the draws follow the guide: per input, loc x/3 for each group
    u = torch.from_numpy(tree["posterior"]["u"].values[0])
    ll = dist.Normal(u.sum(-1, keepdim=True), 1.0).log_prob(x).sum(-1)
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0], ll.numpy(), rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_from_pyro_on_gpu():
    vae = LinearGaussianVAE()
    vae.A, vae.W = vae.A.cuda(), vae.W.cuda()
    x = torch.randn(5, vae.d_x, dtype=vae.dtype, device="cuda")
    before = torch.cuda.get_rng_state()
    tree = from_pyro(vae.model, vae.guide, x, num_samples=50, seed=0)
    assert torch.equal(torch.cuda.get_rng_state(), before)
    z = torch.from_numpy(tree["posterior"]["z"].values[0])
    expected = dist.Normal(z @ vae.W.T.cpu(), vae.obs_scale).log_prob(x.cpu()).sum(-1)
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0], expected.numpy(), rtol=1e-10)


def test_deterministic_sites_go_to_the_posterior():
    vae = LinearGaussianVAE()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], vae.d_z), 1.0).to_event(1))
            mean = pyro.deterministic("mean", z @ vae.W.T, event_dim=1)
            pyro.sample("x", dist.Normal(mean, vae.obs_scale).to_event(1), obs=x)

    x = torch.randn(3, vae.d_x, dtype=vae.dtype)
    tree = from_pyro(model, vae.guide, x, num_samples=10, seed=0)
    assert set(tree["posterior"].data_vars) == {"z", "mean"}
    assert set(tree["posterior_predictive"].data_vars) == {"x"}
    assert set(tree["log_likelihood"].data_vars) == {"x"}
    z = tree["posterior"]["z"].values
    np.testing.assert_allclose(tree["posterior"]["mean"].values, z @ vae.W.T.numpy())
