"""Lipschitz building blocks: orthonormality, Lipschitz constants by construction and verified."""

import math

import pyro
import pytest
import torch
from torch.func import jacrev, vmap

from pyrobust.models.lipschitz import (
    BjorckLinear,
    GroupSort,
    LipschitzConstants,
    LipschitzDecoder,
    LipschitzEncoder,
    LipschitzFixedStdEncoder,
    LipschitzMLP,
    bjorck_orthonormalize,
    lipschitz_constants,
)


def _max_jacobian_norm(f, x):
    """Largest spectral norm of the Jacobian of f over the rows of x (a lower bound of Lip(f))."""
    jac = vmap(jacrev(f))(x)  # (n, *out, *in)
    jac = jac.reshape(x.shape[0], -1, math.prod(x.shape[1:]))
    return torch.linalg.matrix_norm(jac, ord=2).max().item()


# --- Björck ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "n_iter"), [((32, 16), 20), ((16, 32), 20), ((24, 24), 40)])
def test_bjorck_singular_values_are_one(shape, n_iter):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sv = torch.linalg.svdvals(bjorck_orthonormalize(w, n_iter))
    assert sv.sub(1).abs().max() < 1e-3
    # orthonormal columns (tall) or rows (wide)
    q = bjorck_orthonormalize(w, n_iter)
    gram = q.mT @ q if shape[0] >= shape[1] else q @ q.mT
    torch.testing.assert_close(gram, torch.eye(min(shape), dtype=w.dtype), atol=1e-3, rtol=0)


def test_bjorck_is_contractive_before_convergence():
    """The Lipschitz guarantee does not depend on convergence: sigma_max <= 1 at every step."""
    w = torch.randn(20, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for n_iter in range(6):
        sv = torch.linalg.svdvals(bjorck_orthonormalize(w, n_iter))
        assert sv.max() <= 1 + 1e-12
    # and it converges to the orthogonal polar factor U V^T
    u, _, vh = torch.linalg.svd(w)
    torch.testing.assert_close(bjorck_orthonormalize(w, 60), u @ vh, atol=1e-6, rtol=0)


def test_bjorck_linear_gradients_and_cache():
    layer = BjorckLinear(6, 4, scale=2.0)
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn(4, 6))
    x = torch.randn(5, 6)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    # without a graph the orthonormal weight is cached, and refreshed when the weight changes
    with torch.no_grad():
        w1 = layer.orthonormal_weight()
        assert layer.orthonormal_weight() is w1
        layer.weight.add_(0.1)
        w2 = layer.orthonormal_weight()
    assert w2 is not w1 and not torch.allclose(w1, w2)
    # eval mode still trains (only frozen weights or no_grad use the cache)
    layer.eval()
    assert layer.orthonormal_weight().requires_grad
    layer.requires_grad_(False)
    assert layer.orthonormal_weight() is layer.orthonormal_weight()
    torch.testing.assert_close(w2, bjorck_orthonormalize(layer.weight.detach(), layer.n_iter))
    assert layer.lipschitz_bound() == pytest.approx(2.0, abs=1e-4)
    # any leading batch dims
    assert layer(torch.randn(3, 2, 6)).shape == (3, 2, 4)


# --- GroupSort ------------------------------------------------------------------------------
@pytest.mark.parametrize("group_size", [2, 4])
def test_groupsort_sorts_groups_and_is_norm_preserving(group_size):
    x = torch.randn(7, 3, 8)
    y = GroupSort(group_size)(x)
    groups = y.unflatten(-1, (8 // group_size, group_size))
    assert torch.all(groups[..., :-1] >= groups[..., 1:])
    torch.testing.assert_close(
        groups.sort(-1).values, x.unflatten(-1, (8 // group_size, group_size)).sort(-1).values
    )
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    x2 = torch.randn(7, 3, 8)
    assert torch.all((y - GroupSort(group_size)(x2)).norm(dim=-1) <= (x - x2).norm(dim=-1) + 1e-6)


def test_groupsort_bad_width():
    with pytest.raises(ValueError, match=r"multiple of 2"):
        GroupSort()(torch.randn(3, 5))
    with pytest.raises(ValueError, match="group_size"):
        GroupSort(1)


# --- networks -------------------------------------------------------------------------------
@pytest.mark.parametrize("lipschitz", [0.5, 3.0])
def test_mlp_lipschitz_constant(lipschitz):
    net = LipschitzMLP(10, 6, (16, 16), lipschitz=lipschitz).double()
    with torch.no_grad():  # move off the orthogonal initialisation
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    assert net.lipschitz_bound() <= lipschitz * (1 + 1e-6)
    assert net.lipschitz_bound() == pytest.approx(lipschitz, rel=1e-3)
    x = torch.randn(64, 10, dtype=torch.float64)
    assert _max_jacobian_norm(net, x) <= lipschitz * (1 + 1e-6)


def test_encoder_constants_shapes_and_cap():
    enc = LipschitzEncoder(
        (1, 4, 4), 3, (8,), loc_lipschitz=2.0, scale_lipschitz=0.5, max_scale_norm=0.2
    ).double()
    x = torch.rand(2, 5, 1, 4, 4, dtype=torch.float64)
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (2, 5, 3)
    assert torch.all(scale > 0)
    assert torch.all(scale.norm(dim=-1) <= 0.2 + 1e-12)
    flat = torch.rand(32, 1, 4, 4, dtype=torch.float64)
    assert _max_jacobian_norm(lambda v: enc(v)[0], flat) <= 2.0 * (1 + 1e-6)
    assert _max_jacobian_norm(lambda v: enc(v)[1], flat) <= 0.5 * (1 + 1e-6)
    # rebuilt from its config
    clone = LipschitzEncoder(**enc.config()).double()
    clone.load_state_dict(enc.state_dict())
    torch.testing.assert_close(clone(x), enc(x))


def test_fixed_std_encoder():
    enc = LipschitzFixedStdEncoder(6, 2, (4,), loc_lipschitz=1.5, std=0.07)
    loc, scale = enc(torch.rand(9, 6))
    assert loc.shape == (9, 2)
    torch.testing.assert_close(scale, torch.full_like(loc, 0.07))


@pytest.mark.parametrize("output", ["sigmoid", "logits", "identity"])
def test_decoder_mean_is_a_lipschitz(output):
    dec = LipschitzDecoder(3, (2, 5), (8, 8), lipschitz=1.2, output=output).double()
    z = 3 * torch.randn(40, 3, dtype=torch.float64)
    assert dec(z).shape == (40, 2, 5)
    if output == "sigmoid":
        assert torch.all((dec(z) > 0) & (dec(z) < 1))
    if output == "logits":
        torch.testing.assert_close(dec.mean(z), torch.sigmoid(dec(z)))
    assert _max_jacobian_norm(dec.mean, z) <= 1.2 * (1 + 1e-6)


def test_lipschitz_constants_verified_after_training():
    enc = LipschitzEncoder(8, 2, (8,), loc_lipschitz=5.0, scale_lipschitz=4.0)
    dec = LipschitzDecoder(2, 8, (8,), lipschitz=3.0)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=0.05)
    x = torch.rand(16, 8)
    for _ in range(5):
        opt.zero_grad()
        loc, scale = enc(x)
        (dec(loc + scale) - x).pow(2).sum().backward()
        opt.step()
    got = lipschitz_constants(enc, dec)
    assert isinstance(got, LipschitzConstants) and got.gamma is None
    for value, nominal in zip(got[:3], (3.0, 5.0, 4.0), strict=True):
        assert value <= nominal * (1 + 1e-5)
        assert value == pytest.approx(nominal, rel=1e-2)
    fixed = lipschitz_constants(LipschitzFixedStdEncoder(8, 2, (8,), std=0.3), dec)
    assert fixed.c == 0.0 and fixed.gamma == 0.3


def test_lipschitz_constants_rejects_other_nets():
    with pytest.raises(TypeError, match="LipschitzDecoder"):
        lipschitz_constants(LipschitzEncoder(4, 2, ()), torch.nn.Linear(2, 4))
    with pytest.raises(TypeError, match="LipschitzEncoder"):
        lipschitz_constants(torch.nn.Linear(4, 2), LipschitzDecoder(2, 4, ()))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: LipschitzMLP(4, 2, (5,)), "multiple of group_size=2"),
        (lambda: LipschitzMLP(4, 2, (4,), lipschitz=0.0), "lipschitz"),
        (lambda: LipschitzMLP(4, 2, (4,), lipschitz=-1.0), "positive"),
        (lambda: LipschitzEncoder(4, 2, max_scale_norm=0.0), "max_scale_norm"),
        (lambda: LipschitzEncoder(4, 2, min_scale=0.2, init_scale=0.1), "init_scale"),
        (lambda: LipschitzDecoder(2, 4, output="softmax"), "output"),
        (lambda: LipschitzDecoder(2, (0, 4)), "output_shape"),
        (lambda: BjorckLinear(3, 2, scale=math.inf), "scale"),
    ],
)
def test_bad_construction(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_bad_input_shapes():
    with pytest.raises(ValueError, match=r"\(\*batch, 1, 4, 4\)"):
        LipschitzEncoder((1, 4, 4), 2, (4,))(torch.rand(3, 16))
    with pytest.raises(ValueError, match=r"\(\*batch, 2\)"):
        LipschitzDecoder(2, 4, (4,))(torch.rand(3, 3))


def test_plugs_into_vae_and_trains():
    from pyrobust.models import VAE

    vae = VAE(
        LipschitzEncoder((1, 4, 4), 2, (8,), loc_lipschitz=2.0),
        LipschitzDecoder(2, (1, 4, 4), (8,), lipschitz=2.0, output="logits"),
        likelihood="bernoulli",
    )
    x = torch.rand(10, 1, 4, 4).round()
    elbo = pyro.infer.Trace_ELBO()
    optim = pyro.optim.Adam({"lr": 0.02})
    svi = pyro.infer.SVI(vae.model, vae.guide, optim, elbo)
    losses = [svi.step(x) for _ in range(20)]
    assert losses[-1] < losses[0]
    torch.testing.assert_close(vae.decode(torch.zeros(1, 2)), vae.decoder.mean(torch.zeros(1, 2)))
    a, b, _, _ = lipschitz_constants(vae.encoder, vae.decoder)
    assert a <= 2.0 * (1 + 1e-5) and b <= 2.0 * (1 + 1e-5)
