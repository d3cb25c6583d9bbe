"""Encoder/decoder networks: shapes with any leading batch dims, positivity, configs, errors."""

import json

import pytest
import torch
from torch import nn

from pyrobust.models import (
    BurgessDecoder,
    BurgessEncoder,
    ConvDecoder,
    ConvDecoder28,
    ConvEncoder,
    ConvEncoder28,
    MLPDecoder,
    MLPEncoder,
)

ENCODERS = [
    pytest.param(lambda: MLPEncoder((8, 8), 3, hidden=(16, 8)), id="mlp"),
    pytest.param(lambda: MLPEncoder(5, 2, hidden=()), id="mlp-affine"),
    pytest.param(lambda: ConvEncoder28(3), id="conv28"),
    pytest.param(lambda: BurgessEncoder(), id="burgess"),
    pytest.param(lambda: ConvEncoder((3, 13, 17), 2, channels=(4, 8), hidden=()), id="conv-odd"),
]
DECODERS = [
    pytest.param(lambda: MLPDecoder(3, (8, 8), hidden=(16,)), id="mlp"),
    pytest.param(lambda: MLPDecoder(2, 5, hidden=()), id="mlp-affine"),
    pytest.param(lambda: ConvDecoder28(3), id="conv28"),
    pytest.param(lambda: BurgessDecoder(), id="burgess"),
    pytest.param(lambda: ConvDecoder(2, (3, 13, 17), channels=(4, 8), hidden=()), id="conv-odd"),
]
BATCHES = [(), (0,), (4,), (2, 3)]


@pytest.mark.parametrize("make", ENCODERS)
def test_encoder_shapes_and_batch_folding(make):
    enc = make()
    x = torch.rand(2, 3, *enc.input_shape)
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (2, 3, enc.latent_dim)
    assert (scale >= enc.min_scale).all()
    # Leading dims are folded, not mixed: the same inputs flattened give the same outputs.
    loc_flat, scale_flat = enc(x.reshape(6, *enc.input_shape))
    torch.testing.assert_close(loc_flat.reshape(2, 3, -1), loc)
    torch.testing.assert_close(scale_flat.reshape(2, 3, -1), scale)
    for batch in BATCHES:
        loc, scale = enc(torch.rand(*batch, *enc.input_shape))
        assert loc.shape == scale.shape == (*batch, enc.latent_dim)


@pytest.mark.parametrize("make", DECODERS)
def test_decoder_shapes_and_batch_folding(make):
    dec = make()
    z = torch.randn(2, 3, dec.latent_dim)
    out = dec(z)
    assert out.shape == (2, 3, *dec.output_shape)
    torch.testing.assert_close(dec(z.reshape(6, -1)).reshape(out.shape), out)
    for batch in BATCHES:
        assert dec(torch.randn(*batch, dec.latent_dim)).shape == (*batch, *dec.output_shape)


@pytest.mark.parametrize("make", ENCODERS + DECODERS)
def test_config_rebuilds_an_identical_architecture(make):
    net = make()
    config = json.loads(json.dumps(net.config()))  # JSON-able, and lists are accepted back
    clone = type(net)(**config)
    assert clone.config() == net.config()
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in clone.state_dict().items()} == shapes


def test_scale_positive_and_finite_for_extreme_finite_inputs():
    enc = MLPEncoder(6, 3, hidden=(32,), min_scale=1e-3)
    x = torch.tensor([[1e6, -1e6, 0.0, 3e4, -5e5, 1e-30]]) * torch.linspace(-1, 1, 9)[:, None]
    loc, scale = enc(x)
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert (scale >= 1e-3).all()
    conv = ConvEncoder28(2)
    loc, scale = conv(torch.full((2, 1, 28, 28), -1e5))
    assert torch.isfinite(scale).all() and (scale >= conv.min_scale).all()


def test_affine_mlp_encoder_mean_is_affine():
    enc = MLPEncoder(5, 2, hidden=()).double()
    x1, x2 = torch.randn(2, 5, dtype=torch.float64)
    a = 0.3
    torch.testing.assert_close(enc(a * x1 + (1 - a) * x2)[0], a * enc(x1)[0] + (1 - a) * enc(x2)[0])
    w, b = enc.head.weight[:2], enc.head.bias[:2]
    torch.testing.assert_close(enc(x1)[0], w @ x1 + b)


def test_burgess_architecture_matches_the_paper():
    enc, dec = BurgessEncoder(), BurgessDecoder()
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (4, 4), (2, 2))] * 4
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [256, 256, 20]  # 10 means + 10 scales
    assert linears[0].in_features == 32 * 4 * 4
    deconvs = [m for m in dec.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [d.out_channels for d in deconvs] == [32, 32, 32, 1]
    assert enc.latent_dim == dec.latent_dim == 10


def test_conv_decoder_mirrors_encoder_sizes_for_odd_shapes():
    for shape in [(1, 28, 28), (2, 13, 17), (1, 7, 64)]:
        dec = ConvDecoder(3, shape, channels=(4, 4), hidden=())
        assert dec(torch.randn(2, 3)).shape == (2, *shape)


def test_nets_reject_bad_inputs():
    enc = MLPEncoder((8, 8), 3)
    with pytest.raises(ValueError, match=r"expects x of shape \(\*batch, 8, 8\); got \(4, 64\)"):
        enc(torch.rand(4, 64))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        enc([[0.0] * 8] * 8)
    with pytest.raises(ValueError, match=r"expects z of shape \(\*batch, 3\)"):
        MLPDecoder(3, 4)(torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"Unknown activation 'rleu'.*relu"):
        MLPEncoder(4, 2, activation="rleu")
    with pytest.raises(ValueError, match="latent_dim must be a positive int; got 0"):
        MLPEncoder(4, 0)
    with pytest.raises(TypeError, match="latent_dim must be a positive int"):
        MLPDecoder(2.0, 4)
    with pytest.raises(ValueError, match=r"hidden\[1\] must be a positive int"):
        MLPEncoder(4, 2, hidden=(8, 0))
    with pytest.raises(ValueError, match="too small for 3 conv layers"):
        ConvEncoder((1, 4, 4), 2, channels=(8, 8, 8))
    with pytest.raises(ValueError, match=r"input_shape=\(channels, height, width\)"):
        ConvEncoder((28, 28), 2)
    with pytest.raises(ValueError, match="min_scale"):
        MLPEncoder(4, 2, min_scale=-1.0)
