r"""Encoder and decoder networks for Gaussian-encoder VAEs.

Every network is a :class:`torch.nn.Module` that

* accepts any number of leading batch dimensions (``(*batch, *input_shape)`` in,
  ``(*batch, latent_dim)`` out for encoders; the reverse for decoders), so a sample dimension
  and a data dimension can be stacked without reshaping;
* derives every layer size from its constructor arguments (nothing is hard-coded);
* has a JSON-able :meth:`config` so :func:`pyrobust.models.load_model` can rebuild it:
  ``type(net)(**net.config())`` is an identical, freshly initialised network.

Encoders return the parameters of the diagonal Gaussian :math:`q(z \mid x) =
\mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)`, with

.. math::

    \sigma(x) = \operatorname{softplus}(h_\sigma(x)) + \sigma_{\min},

positive by construction and finite for every finite pre-activation :math:`h_\sigma(x)`
(softplus never overflows: :math:`\operatorname{softplus}(h) \le \max(h, 0) + \log 2`).
Decoders return the unconstrained parameters of the likelihood (e.g. Bernoulli logits); the
likelihood (:mod:`pyrobust.models.likelihoods`) maps them to the reconstruction :math:`g(z)`.

References
----------
.. [1] Kingma, Welling. *Auto-Encoding Variational Bayes*. ICLR 2014.
.. [2] Burgess, Higgins, Pal, Matthey, Watters, Desjardins, Lerchner. *Understanding
   disentangling in beta-VAE*. NeurIPS workshop 2017, arXiv:1804.03599 (2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.util import ignore_jit_warnings
from torch import nn

__all__ = [
    "BurgessDecoder",
    "BurgessEncoder",
    "ConvDecoder",
    "ConvDecoder28",
    "ConvEncoder",
    "ConvEncoder28",
    "MLPDecoder",
    "MLPEncoder",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}


# --- argument validation ---------------------------------------------------------------------
def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int; got {type(value).__name__} {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value}.")
    return value


def _int_tuple(value, name: str, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(
            f"{name} must be a sequence of positive ints, e.g. (28, 28); got "
            f"{type(value).__name__} {value!r}."
        )
    out = tuple(_positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty; got {value!r}.")
    return out


def _activation(name: str) -> type[nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def _min_scale(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"min_scale must be a non-negative float; got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"min_scale must be a finite float >= 0; got {value}.")
    return float(value)


@ignore_jit_warnings()
def _split_batch(x, event_shape: tuple[int, ...], arg: str, owner: str) -> torch.Size:
    """Leading batch shape of ``x``, after checking that it ends in ``event_shape``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects {arg} to be a torch.Tensor; got {type(x).__name__}.")
    k = len(event_shape)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != event_shape:
        raise ValueError(
            f"{owner} expects {arg} of shape (*batch, {', '.join(map(str, event_shape))}); got "
            f"{tuple(x.shape)}. Reshape the input or build the network for this shape."
        )
    return x.shape[: x.dim() - k]


def _mlp(width: int, hidden: tuple[int, ...], activation: str) -> tuple[nn.Sequential, int]:
    act = _activation(activation)
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    return nn.Sequential(*layers), width


def _loc_scale(out: torch.Tensor, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    loc, raw = out.chunk(2, dim=-1)
    return loc, F.softplus(raw) + min_scale


def _conv_sizes(size: int, n_layers: int, k: int, s: int, p: int, arg: str) -> list[int]:
    sizes = [size]
    for _ in range(n_layers):
        nxt = (sizes[-1] + 2 * p - k) // s + 1
        if nxt < 1:
            raise ValueError(
                f"input_shape: its {arg} {size} is too small for {n_layers} conv layers with "
                f"kernel_size={k}, stride={s}, padding={p} (sizes {sizes} then {nxt}). Use "
                "fewer channels (layers) or a larger input_shape."
            )
        sizes.append(nxt)
    return sizes


# --- MLPs ------------------------------------------------------------------------------------
class MLPEncoder(nn.Module):
    r"""Fully connected Gaussian encoder for inputs of any shape.

    .. math::

        h = \mathrm{MLP}(\operatorname{flatten}(x)), \quad
        \mu(x) = W_\mu h + b_\mu, \quad
        \sigma(x) = \operatorname{softplus}(W_\sigma h + b_\sigma) + \sigma_{\min}.

    With ``hidden=()`` the mean is affine in :math:`x` (a linear-Gaussian encoder).

    Parameters
    ----------
    input_shape : int or sequence of int
        Event shape of one input, e.g. ``(1, 28, 28)`` or ``64``.
    latent_dim : int
        Dimension :math:`d_z` of the latent space.
    hidden : sequence of int, default (400,)
        Widths of the hidden layers; empty for an affine encoder.
    activation : str, default "relu"
        One of ``"elu", "gelu", "leaky_relu", "relu", "silu", "softplus", "tanh"``.
    min_scale : float, default 1e-3
        Floor :math:`\sigma_{\min}` added to every standard deviation.

    Examples
    --------
    >>> enc = MLPEncoder((8, 8), latent_dim=2, hidden=(16,))
    >>> loc, scale = enc(torch.rand(5, 3, 8, 8))
    >>> tuple(loc.shape), bool((scale > 0).all())
    ((5, 3, 2), True)
    """

    def __init__(
        self,
        input_shape,
        latent_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        min_scale: float = 1e-3,
    ):
        super().__init__()
        self.input_shape = _int_tuple(input_shape, "input_shape", allow_empty=False)
        self.latent_dim = _positive_int(latent_dim, "latent_dim")
        self.hidden = _int_tuple(hidden, "hidden", allow_empty=True)
        self.activation = activation
        self.min_scale = _min_scale(min_scale)
        self.body, width = _mlp(math.prod(self.input_shape), self.hidden, activation)
        self.head = nn.Linear(width, 2 * self.latent_dim)

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the net."""
        return {
            "input_shape": list(self.input_shape),
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "min_scale": self.min_scale,
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``, each of shape ``(*batch, latent_dim)``."""
        batch = _split_batch(x, self.input_shape, "x", type(self).__name__)
        h = self.body(x.reshape(*batch, math.prod(self.input_shape)))
        return _loc_scale(self.head(h), self.min_scale)


class MLPDecoder(nn.Module):
    r"""Fully connected decoder: latent codes to likelihood parameters of any output shape.

    .. math::

        \eta(z) = \operatorname{reshape}\big(W\,\mathrm{MLP}(z) + b\big),

    the unconstrained parameter (logits or location) from which the likelihood forms
    :math:`g(z)`. With ``hidden=()`` it is affine in :math:`z`.

    Parameters
    ----------
    latent_dim : int
        Dimension :math:`d_z` of the latent space.
    output_shape : int or sequence of int
        Event shape of one reconstruction, e.g. ``(1, 28, 28)``.
    hidden : sequence of int, default (400,)
        Widths of the hidden layers; empty for an affine decoder.
    activation : str, default "relu"
        Hidden-layer activation (see :class:`MLPEncoder`).

    Examples
    --------
    >>> dec = MLPDecoder(2, (8, 8), hidden=(16,))
    >>> tuple(dec(torch.randn(4, 5, 2)).shape)
    (4, 5, 8, 8)
    """

    def __init__(
        self,
        latent_dim: int,
        output_shape,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
    ):
        super().__init__()
        self.latent_dim = _positive_int(latent_dim, "latent_dim")
        self.output_shape = _int_tuple(output_shape, "output_shape", allow_empty=False)
        self.hidden = _int_tuple(hidden, "hidden", allow_empty=True)
        self.activation = activation
        self.body, width = _mlp(self.latent_dim, self.hidden, activation)
        self.head = nn.Linear(width, math.prod(self.output_shape))

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the net."""
        return {
            "latent_dim": self.latent_dim,
            "output_shape": list(self.output_shape),
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return likelihood parameters of shape ``(*batch, *output_shape)``."""
        batch = _split_batch(z, (self.latent_dim,), "z", type(self).__name__)
        return self.head(self.body(z)).reshape(*batch, *self.output_shape)


# --- convolutional ---------------------------------------------------------------------------
class ConvEncoder(nn.Module):
    r"""Convolutional Gaussian encoder for images ``(channels, height, width)``.

    ``len(channels)`` convolutions (kernel ``kernel_size``, ``stride``, ``padding``), each
    followed by the activation, then a fully connected MLP with widths ``hidden`` and the
    Gaussian head of :class:`MLPEncoder`. The flattened size is computed from the conv
    arithmetic :math:`n_{l+1} = \lfloor (n_l + 2p - k)/s \rfloor + 1`.

    Parameters
    ----------
    input_shape : sequence of 3 int
        ``(channels, height, width)`` of one image.
    latent_dim : int
        Dimension :math:`d_z` of the latent space.
    channels : sequence of int, default (32, 64)
        Output channels of each conv layer.
    kernel_size, stride, padding : int, default 4, 2, 1
        Conv hyper-parameters (shared by all conv layers).
    hidden : sequence of int, default (256,)
        Widths of the fully connected layers after the convs.
    activation : str, default "relu"
        Activation after every layer (see :class:`MLPEncoder`).
    min_scale : float, default 1e-3
        Floor :math:`\sigma_{\min}` added to every standard deviation.
    """

    def __init__(
        self,
        input_shape,
        latent_dim: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 4,
        stride: int = 2,
        padding: int = 1,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        min_scale: float = 1e-3,
    ):
        super().__init__()
        self.input_shape = _int_tuple(input_shape, "input_shape", allow_empty=False)
        if len(self.input_shape) != 3:
            raise ValueError(
                f"{type(self).__name__} needs input_shape=(channels, height, width); got "
                f"{input_shape!r}. Use MLPEncoder for flat inputs."
            )
        self.latent_dim = _positive_int(latent_dim, "latent_dim")
        self.channels = _int_tuple(channels, "channels", allow_empty=False)
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.stride = _positive_int(stride, "stride")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an int >= 0; got {padding!r}.")
        self.padding = padding
        self.hidden = _int_tuple(hidden, "hidden", allow_empty=True)
        self.activation = activation
        self.min_scale = _min_scale(min_scale)
        act = _activation(activation)
        k, s, p, n = self.kernel_size, self.stride, self.padding, len(self.channels)
        c, h, w = self.input_shape
        hs = _conv_sizes(h, n, k, s, p, "height")
        ws = _conv_sizes(w, n, k, s, p, "width")
        convs: list[nn.Module] = []
        for c_out in self.channels:
            convs += [nn.Conv2d(c, c_out, k, s, p), act()]
            c = c_out
        self.convs = nn.Sequential(*convs)
        self.body, width = _mlp(c * hs[-1] * ws[-1], self.hidden, activation)
        self.head = nn.Linear(width, 2 * self.latent_dim)

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the net."""
        return {
            "input_shape": list(self.input_shape),
            "latent_dim": self.latent_dim,
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "min_scale": self.min_scale,
        }

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``, each of shape ``(*batch, latent_dim)``."""
        batch = _split_batch(x, self.input_shape, "x", type(self).__name__)
        h = self.convs(x.reshape(math.prod(batch), *self.input_shape)).flatten(1)
        loc, scale = _loc_scale(self.head(self.body(h)), self.min_scale)
        return loc.reshape(*batch, self.latent_dim), scale.reshape(*batch, self.latent_dim)


class ConvDecoder(nn.Module):
    r"""Transposed-convolution decoder, the mirror image of :class:`ConvEncoder`.

    An MLP maps :math:`z` to ``channels[-1]`` feature maps of the smallest spatial size the
    matching encoder reaches; ``len(channels)`` transposed convolutions (``output_padding``
    chosen per layer so every size matches the encoder's exactly) then upsample back to
    ``output_shape``. The last layer has no activation: it returns the likelihood's
    unconstrained parameter (e.g. logits).

    Parameters
    ----------
    latent_dim : int
        Dimension :math:`d_z` of the latent space.
    output_shape : sequence of 3 int
        ``(channels, height, width)`` of one reconstruction.
    channels, kernel_size, stride, padding, hidden, activation
        As for :class:`ConvEncoder` (given in the *encoder's* order).
    """

    def __init__(
        self,
        latent_dim: int,
        output_shape,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 4,
        stride: int = 2,
        padding: int = 1,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
    ):
        super().__init__()
        self.latent_dim = _positive_int(latent_dim, "latent_dim")
        self.output_shape = _int_tuple(output_shape, "output_shape", allow_empty=False)
        if len(self.output_shape) != 3:
            raise ValueError(
                f"{type(self).__name__} needs output_shape=(channels, height, width); got "
                f"{output_shape!r}. Use MLPDecoder for flat outputs."
            )
        self.channels = _int_tuple(channels, "channels", allow_empty=False)
        self.kernel_size = _positive_int(kernel_size, "kernel_size")
        self.stride = _positive_int(stride, "stride")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an int >= 0; got {padding!r}.")
        self.padding = padding
        self.hidden = _int_tuple(hidden, "hidden", allow_empty=True)
        self.activation = activation
        act = _activation(activation)
        k, s, p, n = self.kernel_size, self.stride, self.padding, len(self.channels)
        c_img, h, w = self.output_shape
        hs = _conv_sizes(h, n, k, s, p, "height")
        ws = _conv_sizes(w, n, k, s, p, "width")
        self._start = (self.channels[-1], hs[-1], ws[-1])
        mlp, width = _mlp(self.latent_dim, self.hidden, activation)
        self.body = nn.Sequential(*mlp, nn.Linear(width, math.prod(self._start)), act())
        outs = [c_img, *self.channels[:-1]]
        layers: list[nn.Module] = []
        for i in reversed(range(n)):
            pad_h = hs[i] - ((hs[i + 1] - 1) * s - 2 * p + k)
            pad_w = ws[i] - ((ws[i + 1] - 1) * s - 2 * p + k)
            layers.append(
                nn.ConvTranspose2d(
                    self.channels[i], outs[i], k, s, p, output_padding=(pad_h, pad_w)
                )
            )
            if i > 0:
                layers.append(act())
        self.deconvs = nn.Sequential(*layers)

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the net."""
        return {
            "latent_dim": self.latent_dim,
            "output_shape": list(self.output_shape),
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return likelihood parameters of shape ``(*batch, *output_shape)``."""
        batch = _split_batch(z, (self.latent_dim,), "z", type(self).__name__)
        h = self.body(z.reshape(math.prod(batch), self.latent_dim))
        out = self.deconvs(h.reshape(h.shape[0], *self._start))
        return out.reshape(*batch, *self.output_shape)


class _PresetConvEncoder(ConvEncoder):
    """A :class:`ConvEncoder` with fixed architecture: only the channels, activation and scale
    floor are constructor arguments."""

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the net."""
        return {
            "latent_dim": self.latent_dim,
            "in_channels": self.input_shape[0],
            "activation": self.activation,
            "min_scale": self.min_scale,
        }


class _PresetConvDecoder(ConvDecoder):
    """A :class:`ConvDecoder` with fixed architecture: only the channels and activation are
    constructor arguments."""

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the net."""
        return {
            "latent_dim": self.latent_dim,
            "out_channels": self.output_shape[0],
            "activation": self.activation,
        }


class ConvEncoder28(_PresetConvEncoder):
    r"""Conv encoder for 28x28 images (MNIST, Fashion-MNIST).

    Two convolutions (32 and 64 channels, kernel 4, stride 2, padding 1: 28 -> 14 -> 7), one
    fully connected layer of 256 units, then the Gaussian head.

    Parameters
    ----------
    latent_dim : int
        Dimension :math:`d_z` of the latent space.
    in_channels : int, default 1
        Image channels.
    activation : str, default "relu"
    min_scale : float, default 1e-3
    """

    def __init__(
        self,
        latent_dim: int,
        in_channels: int = 1,
        activation: str = "relu",
        min_scale: float = 1e-3,
    ):
        in_channels = _positive_int(in_channels, "in_channels")
        super().__init__(
            (in_channels, 28, 28),
            latent_dim,
            channels=(32, 64),
            hidden=(256,),
            activation=activation,
            min_scale=min_scale,
        )


class ConvDecoder28(_PresetConvDecoder):
    r"""Transposed-conv decoder for 28x28 images, the mirror of :class:`ConvEncoder28`.

    Parameters
    ----------
    latent_dim : int
        Dimension :math:`d_z` of the latent space.
    out_channels : int, default 1
        Image channels.
    activation : str, default "relu"
    """

    def __init__(self, latent_dim: int, out_channels: int = 1, activation: str = "relu"):
        out_channels = _positive_int(out_channels, "out_channels")
        super().__init__(
            latent_dim,
            (out_channels, 28, 28),
            channels=(32, 64),
            hidden=(256,),
            activation=activation,
        )


class BurgessEncoder(_PresetConvEncoder):
    r"""The 64x64 encoder of Burgess et al. 2018 [2]_ (dSprites).

    Four convolutions of 32 channels (kernel 4, stride 2, padding 1: 64 -> 32 -> 16 -> 8 -> 4),
    two fully connected layers of 256 units, ReLU throughout, then the Gaussian head for
    ``latent_dim`` (10 in the paper) latent dimensions.

    Parameters
    ----------
    latent_dim : int, default 10
    in_channels : int, default 1
    activation : str, default "relu"
    min_scale : float, default 1e-3

    References
    ----------
    .. [2] Burgess et al. *Understanding disentangling in beta-VAE*. arXiv:1804.03599, 2018.
    """

    def __init__(
        self,
        latent_dim: int = 10,
        in_channels: int = 1,
        activation: str = "relu",
        min_scale: float = 1e-3,
    ):
        in_channels = _positive_int(in_channels, "in_channels")
        super().__init__(
            (in_channels, 64, 64),
            latent_dim,
            channels=(32, 32, 32, 32),
            hidden=(256, 256),
            activation=activation,
            min_scale=min_scale,
        )


class BurgessDecoder(_PresetConvDecoder):
    r"""The 64x64 decoder of Burgess et al. 2018 [2]_, the transpose of :class:`BurgessEncoder`.

    Two fully connected layers of 256 units, one to :math:`32 \times 4 \times 4`, then four
    transposed convolutions (kernel 4, stride 2: 4 -> 8 -> 16 -> 32 -> 64) ending in
    ``out_channels`` logits.

    Parameters
    ----------
    latent_dim : int, default 10
    out_channels : int, default 1
    activation : str, default "relu"

    References
    ----------
    .. [2] Burgess et al. *Understanding disentangling in beta-VAE*. arXiv:1804.03599, 2018.
    """

    def __init__(self, latent_dim: int = 10, out_channels: int = 1, activation: str = "relu"):
        out_channels = _positive_int(out_channels, "out_channels")
        super().__init__(
            latent_dim,
            (out_channels, 64, 64),
            channels=(32, 32, 32, 32),
            hidden=(256, 256),
            activation=activation,
        )
