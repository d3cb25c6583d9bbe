"""margin_bound against the closed form of the linear-Gaussian VAE (THEORY.md sections 2, 7)."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from scipy import stats
from torch import nn

from pyrobust._results import decode_attrs
from pyrobust.models.sites import Pair
from pyrobust.robustness import margin_bound, r_robustness
from pyrobust.robustness._jacobian import encoder_jacobian
from tests.linear_gaussian import LinearGaussianVAE


@pytest.fixture
def lg():
    return LinearGaussianVAE()


def _inputs(lg, n=3):
    return torch.randn(n, lg.d_x, generator=torch.Generator().manual_seed(1), dtype=lg.dtype)


# p_A = chi2_3.cdf(r^2 / s^2): 0.74 at r = 0.6, 0.93 at r = 0.8
RADII = [0.6, 0.8]


@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_bound_equals_closed_form_and_lies_below_true_margin(lg, norm):
    x = _inputs(lg)
    num_samples = 20000
    tree = margin_bound(lg.model, lg.guide, x, r=RADII, num_samples=num_samples, norm=norm, seed=0)
    rob = tree["robustness"]
    assert rob["bound"].dims == ("obs_id", "radius")
    a_norm = lg.spectral_norm if norm == "spectral" else lg.frobenius_norm
    # exact Jacobian and scale
    np.testing.assert_allclose(rob["jacobian_norm"].values, a_norm, rtol=1e-12)
    np.testing.assert_allclose(rob["min_scale"].values, lg.s, rtol=1e-12)
    # the bound is the closed form evaluated at the estimated p_A ...
    p_a = rob["p_a"].values
    np.testing.assert_allclose(rob["bound"].values, lg.s * stats.norm.ppf(p_a) / a_norm, rtol=1e-12)
    # ... p_A is the chi-square probability within MC error, and so the bound the exact one
    exact_p = lg.p_robust(np.array(RADII), torch.zeros(lg.d_x, dtype=lg.dtype))
    assert np.all(np.abs(p_a - exact_p) <= 4.5 * np.sqrt(exact_p * (1 - exact_p) / num_samples))
    exact_bound = [lg.bound(r, norm=norm) for r in RADII]
    np.testing.assert_allclose(rob["bound"].values, np.broadcast_to(exact_bound, (3, 2)), rtol=0.03)
    true_margin = np.array([lg.true_margin(r) for r in RADII])
    assert np.all(rob["bound"].values < true_margin)
    assert not rob["vacuous"].values.any()


def test_spectral_is_tighter_than_frobenius_and_still_valid(lg):
    x = _inputs(lg)
    kw = {"r": RADII, "num_samples": 5000, "seed": 1}
    fro = margin_bound(lg.model, lg.guide, x, norm="frobenius", **kw)["robustness"]["bound"]
    spec = margin_bound(lg.model, lg.guide, x, norm="spectral", **kw)["robustness"]["bound"]
    assert np.all(spec.values >= fro.values)
    assert np.all(spec.values > 1.2 * fro.values)  # A is 3x6 with distinct singular values
    assert np.all(spec.values < [lg.true_margin(r) for r in RADII])
    # the bound really certifies: at ||delta|| = bound along the worst direction, p_r >= 1/2
    u = torch.linalg.svd(lg.A).Vh[0]  # top right-singular vector: the worst direction
    for r, b in zip(RADII, spec.values[0], strict=True):
        assert lg.p_robust(r, 0.999 * b * u) > 0.5


@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_sample_reference_bound_is_valid(lg, norm):
    radii = [0.8, 1.0]  # p_A = chi2_3.cdf(r^2 / (2 s^2)): 0.69, 0.87
    tree = margin_bound(
        lg.model,
        lg.guide,
        _inputs(lg),
        r=radii,
        num_samples=5000,
        norm=norm,
        reference="sample",
        seed=6,
    )
    bound = tree["robustness"]["bound"].values
    exact = [lg.bound(r, norm=norm, reference="sample") for r in radii]
    np.testing.assert_allclose(bound, np.broadcast_to(exact, bound.shape), rtol=0.06)
    assert np.all(bound < [lg.true_margin(r, reference="sample") for r in radii])


def test_confidence_uses_one_sided_lower_bound(lg):
    x = _inputs(lg)
    kw = {"r": 0.6, "num_samples": 2000, "seed": 2}
    point = margin_bound(lg.model, lg.guide, x, **kw)["robustness"]
    conf = margin_bound(lg.model, lg.guide, x, confidence=0.99, **kw)["robustness"]
    assert "p_a_lower" not in point and point["bound"].dims == ("obs_id",)
    k = conf["num_inside"].values
    np.testing.assert_allclose(conf["p_a_lower"].values, stats.beta.ppf(0.01, k, 2000 - k + 1))
    np.testing.assert_array_equal(conf["p_a"].values, point["p_a"].values)
    assert np.all(conf["p_a_lower"].values < conf["p_a"].values)
    assert np.all(conf["bound"].values < point["bound"].values)
    np.testing.assert_allclose(
        conf["bound"].values,
        lg.s * stats.norm.ppf(conf["p_a_lower"].values) / lg.frobenius_norm,
        rtol=1e-12,
    )


def test_vacuous_when_p_a_at_most_half(lg):
    # r = 0.3: p_A = chi2_3.cdf(1) = 0.20
    tree = margin_bound(lg.model, lg.guide, _inputs(lg), r=[0.3, 0.6], num_samples=2000, seed=3)
    rob = tree["robustness"]
    np.testing.assert_array_equal(rob["vacuous"].values, [[True, False]] * 3)
    np.testing.assert_array_equal(rob["bound"].values[:, 0], 0.0)
    assert lg.true_margin(0.3) == 0.0


def test_p_a_agrees_with_r_robustness(lg):
    x = _inputs(lg)
    kw = {"r": RADII, "num_samples": 500, "seed": 4}
    p_a = margin_bound(lg.model, lg.guide, x, **kw)["robustness"]["p_a"]
    p = r_robustness(lg.model, lg.guide, x, **kw)["robustness"]["probability"]
    np.testing.assert_array_equal(p_a.values, p.values)


class ConvEncoder(nn.Module):
    """A small nonlinear conv encoder on 1x8x8 images."""

    def __init__(self, d_z=3):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2), nn.Softplus()
        )
        self.loc = nn.Linear(4 * 3 * 3, d_z)
        self.scale = nn.Linear(4 * 3 * 3, d_z)

    def forward(self, x):
        h = self.conv(x).flatten(1)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3


class ConvVAE:
    def __init__(self, d_z=3):
        torch.manual_seed(0)
        self.encoder = ConvEncoder(d_z).double()
        self.decoder = nn.Sequential(nn.Linear(d_z, 64), nn.Sigmoid()).double()
        self.d_z = d_z

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.d_z), 1.0).to_event(1))
            probs = self.decoder(z).reshape(-1, 1, 8, 8)
            pyro.sample("x", dist.Bernoulli(probs=probs).to_event(3), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_batched_jacobian_matches_autograd_for_conv_encoder():
    vae = ConvVAE()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loc, scale, jac = encoder_jacobian(Pair.build(vae.model, vae.guide, x), x)
    assert jac.shape == (5, 3, 1, 8, 8)
    expected = torch.stack(
        [torch.autograd.functional.jacobian(lambda xi: vae.encoder(xi[None])[0][0], xi) for xi in x]
    )
    torch.testing.assert_close(jac, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loc, vae.encoder(x)[0].detach())
    # chunking over inputs gives the same Jacobian
    torch.testing.assert_close(
        encoder_jacobian(Pair.build(vae.model, vae.guide, x), x, max_batch=3)[2], jac
    )
    # x untouched, no graph left behind
    assert not x.requires_grad and not jac.requires_grad

    tree = margin_bound(vae.model, vae.guide, x, r=2.0, norm="spectral", num_samples=300, seed=0)
    rob = tree["robustness"]
    np.testing.assert_allclose(
        rob["jacobian_norm"].values,
        torch.linalg.matrix_norm(expected.reshape(5, 3, -1), ord=2).numpy(),
        rtol=1e-10,
    )
    np.testing.assert_allclose(rob["min_scale"].values, scale.min(-1).values.numpy())
    assert tree["observed_data"]["x"].dims == ("obs_id", "channel", "row", "col")


class _NumpyTanh(torch.autograd.Function):
    """tanh whose backward leaves torch (through NumPy), so it cannot run under vmap."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.from_numpy(grad.numpy() * (1 - y.numpy() ** 2))


def test_jacobian_falls_back_when_backward_cannot_be_vmapped():
    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(_NumpyTanh.apply(x @ w.T), 1.0).to_event(1))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x[:, :1])

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, _, jac = encoder_jacobian(Pair.build(model, guide, x), x)
    expected = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: torch.tanh(v @ w.T), xi) for xi in x]
    )
    torch.testing.assert_close(jac, expected)


def test_netcdf_round_trip(lg, tmp_path):
    tree = margin_bound(
        lg.model, lg.guide, _inputs(lg), r=[0.3, 0.6], num_samples=200, confidence=0.9, seed=5
    )
    path = tmp_path / "m.nc"
    tree.to_netcdf(path, engine="h5netcdf")
    back = xr.open_datatree(path, engine="h5netcdf")
    try:
        for group in ("posterior_predictive", "constant_data", "robustness"):
            xr.testing.assert_identical(back[group].to_dataset(), tree[group].to_dataset())
        assert back["robustness"]["vacuous"].dtype == bool
        attrs = decode_attrs(back["robustness"].attrs)
        assert attrs["confidence"] == 0.9 and attrs["norm"] == "frobenius" and attrs["seed"] == 5
    finally:
        back.close()


def test_same_seed_same_answer(lg):
    x = _inputs(lg)
    a = margin_bound(lg.model, lg.guide, x, r=0.6, num_samples=100, seed=9)
    b = margin_bound(lg.model, lg.guide, x, r=0.6, num_samples=100, seed=9)
    left, right = (a["robustness"].to_dataset(), b["robustness"].to_dataset())
    for ds in (left, right):
        ds.attrs.pop("created_at", None)  # a timestamp, not an answer
    xr.testing.assert_identical(left, right)


def test_encoder_mean_without_gradient_is_rejected():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = (2.0 * x).detach()
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="does not depend differentiably on x"):
        margin_bound(model, guide, torch.zeros(2, 3), r=1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": -1.0}, ValueError, r"`r` must be positive"),
        ({"num_samples": 0}, ValueError, r"`num_samples` must be >= 1"),
        ({"confidence": 0.0}, ValueError, r"`confidence` must lie strictly between 0 and 1"),
        ({"norm": "nuclear"}, ValueError, r"Unknown `norm`='nuclear'.*'frobenius', 'spectral'"),
        ({"reference": "x"}, ValueError, r"Unknown `reference`"),
        ({"latent_site": "w"}, ValueError, r"no sample site named 'w'.*latent_site="),
    ],
)
def test_bad_input(lg, kwargs, error, match):
    kwargs = {"r": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        margin_bound(lg.model, lg.guide, _inputs(lg), **kwargs)


def test_bad_x(lg):
    x = _inputs(lg)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="`x` must be finite"):
        margin_bound(lg.model, lg.guide, x, r=0.5)


def test_whitened_bound_is_the_tightest_valid_one():
    # An anisotropic encoder: sigma differs per latent dim, so dividing J's rows by sigma_i is
    # tighter than min_i sigma_i / ||J||_2; all three lie below the true margin.
    A = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    sig = torch.tensor([0.05, 0.4], dtype=torch.float64)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A.T, sig.expand(x.shape[0], 2)).to_event(1))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    x = torch.zeros(3, 2, dtype=torch.float64)
    kw = {"r": 0.6, "num_samples": 4000, "seed": 0}
    b = {
        norm: margin_bound(model, guide, x, norm=norm, **kw)["robustness"]["bound"].values
        for norm in ("frobenius", "spectral", "whitened")
    }
    assert np.all(b["frobenius"] <= b["spectral"]) and np.all(b["spectral"] < b["whitened"])
    # closed form of the whitened bound: Phi^-1(p_A) / max_i(A_ii / sigma_i)
    p_a = margin_bound(model, guide, x, norm="whitened", **kw)["robustness"]["p_a"].values
    np.testing.assert_allclose(b["whitened"], stats.norm.ppf(p_a) / max(1 / 0.05, 2 / 0.4))
    # validity: an attack along the most sensitive direction at 0.99x the bound stays r-robust
    delta = torch.tensor([[0.99 * float(b["whitened"].min()), 0.0]], dtype=torch.float64)
    p = r_robustness(model, guide, x[:1], r=0.6, delta=delta, num_samples=4000, seed=1)
    assert float(p["robustness"]["probability"].values.squeeze()) > 0.5
