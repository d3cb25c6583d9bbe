r"""Lipschitz-constrained networks for certifiably robust VAEs [1]_.

A VAE whose decoder mean :math:`g`, encoder mean :math:`\mu` and encoder standard deviation
:math:`\sigma` have known :math:`\ell_2` Lipschitz constants :math:`a, b, c` has a margin of
r-robustness that can be computed *before* seeing any attack
(:func:`pyrobust.robustness.certify.certified_margin`). This module builds such networks:

* :class:`BjorckLinear`: a linear layer whose weight is orthonormalised by Björck's iteration
  [2]_ at every forward pass, so every singular value is (at most, and after convergence
  exactly) one;
* :class:`GroupSort`: the gradient-norm-preserving activation of [2]_ (``group_size=2`` is
  MaxMin), 1-Lipschitz because it only permutes coordinates;
* :class:`LipschitzMLP`: Björck layers and GroupSort, each layer scaled by
  :math:`L^{1/n_\text{layers}}` so the whole net is :math:`L`-Lipschitz;
* :class:`LipschitzEncoder`, :class:`LipschitzFixedStdEncoder`, :class:`LipschitzDecoder`: the
  encoder ``x -> (loc, scale)`` and decoder ``z -> g(z)`` that plug into
  :class:`pyrobust.models.VAE` and guarantee the constants :math:`(a, b, c)` by construction;
* :func:`lipschitz_constants`: the constants *verified* from the trained layers' singular values
  (the product bound), which is what a certificate should be computed with.

The guarantee does not depend on Björck's iteration having converged: the weight is first divided
by an upper bound of its spectral norm, and the iteration
:math:`W \leftarrow W\,(\tfrac32 I - \tfrac12 W^\top W)` maps every singular value
:math:`s \in [0, 1]` to :math:`\tfrac32 s - \tfrac12 s^3 \in [0, 1]`. Convergence only makes the
layer an isometry (tighter, more expressive); the bound :math:`\|W\|_2 \le 1` holds at every
iteration count, up to floating-point rounding, which :func:`lipschitz_constants` measures.

References
----------
.. [1] Barrett, Camuto, Willetts, Rainforth. *Certifiably Robust Variational Autoencoders*.
   AISTATS 2022, arXiv:2102.07559.
.. [2] Anil, Lucas, Grosse. *Sorting out Lipschitz function approximation*. ICML 2019.
.. [3] Björck, Bowie. *An iterative algorithm for computing the best estimate of an orthogonal
   matrix*. SIAM J. Numer. Anal. 8(2), 1971.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BjorckLinear",
    "GroupSort",
    "LipschitzConstants",
    "LipschitzDecoder",
    "LipschitzEncoder",
    "LipschitzFixedStdEncoder",
    "LipschitzMLP",
    "bjorck_orthonormalize",
    "lipschitz_constants",
]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _positive(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; got {type(value).__name__} {value!r}.")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be a finite {need} number; got {value!r}.")
    return value


def _positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _shape(name: str, value) -> tuple[int, ...]:
    shape = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    if not shape or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1 for d in shape
    ):
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of positive ints (an event shape such "
            f"as 64 or (1, 28, 28)); got {value!r}."
        )
    return tuple(int(d) for d in shape)


def _hidden(value, group_size: int) -> tuple[int, ...]:
    hidden = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    for width in hidden:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
            raise ValueError(f"`hidden` must hold positive ints; got {value!r}.")
        if width % group_size:
            raise ValueError(
                f"Every hidden width must be a multiple of group_size={group_size} for GroupSort; "
                f"got hidden={value!r}. Round the widths up to a multiple of {group_size}."
            )
    return tuple(int(w) for w in hidden)


def _flatten_event(x: torch.Tensor, event: tuple[int, ...], name: str) -> torch.Tensor:
    k = len(event)
    if x.dim() < k or tuple(x.shape[x.dim() - k :]) != event:
        raise ValueError(
            f"{name} expects x of shape (*batch, {', '.join(map(str, event))}); got "
            f"{tuple(x.shape)}. Reshape the input or build the module with the right shape."
        )
    return x.reshape(*x.shape[: x.dim() - k], math.prod(event))


# --------------------------------------------------------------------------------------------
# Björck orthonormalisation and the layer
# --------------------------------------------------------------------------------------------
def _spectral_upper_bound(weight: torch.Tensor) -> torch.Tensor:
    r"""A cheap, differentiable upper bound of :math:`\|W\|_2`.

    :math:`\min(\|W\|_F, \sqrt{\|W\|_1 \|W\|_\infty})`; both are upper bounds of the spectral
    norm (Hölder), so the scaled matrix has every singular value in :math:`[0, 1]`.
    """
    frob = torch.linalg.matrix_norm(weight)
    holder = (weight.abs().sum(-2).amax(-1) * weight.abs().sum(-1).amax(-1)).sqrt()
    return torch.minimum(frob, holder).clamp_min(torch.finfo(weight.dtype).tiny)


def bjorck_orthonormalize(weight: torch.Tensor, n_iter: int = 20) -> torch.Tensor:
    r"""Björck's first-order orthonormalisation of a (possibly rectangular) matrix [3]_.

    The matrix is divided by an upper bound of its spectral norm, then iterated

    .. math:: W_{k+1} = W_k \left(\tfrac32 I - \tfrac12 W_k^\top W_k\right)
              = \left(\tfrac32 I - \tfrac12 W_k W_k^\top\right) W_k ,

    which converges to the closest matrix with orthonormal columns (rows when the matrix is
    wide) and is differentiable, so gradients flow to ``weight`` [2]_. The smaller Gram matrix is
    used. Every iterate has spectral norm at most 1 (the scalar map
    :math:`s \mapsto \tfrac32 s - \tfrac12 s^3` sends :math:`[0, 1]` into itself), so the Lipschitz
    guarantee never depends on convergence; convergence is quadratic near 1 and slow for singular
    values near 0 (nearly rank-deficient weights), which is why layers are initialised orthogonal.

    Parameters
    ----------
    weight : torch.Tensor
        Matrix of shape ``(..., out, in)``.
    n_iter : int, default 20
        Number of iterations.

    Returns
    -------
    torch.Tensor
        The orthonormalised matrix, same shape, dtype and device.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(
            f"`weight` must be a tensor of shape (..., out, in); got "
            f"{getattr(weight, 'shape', type(weight).__name__)}."
        )
    n_iter = _positive_int("n_iter", n_iter, minimum=0)
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(
            "`weight` has NaN/inf entries; its orthonormalisation would be NaN. Check the "
            "training (a diverged step) or the loaded weights."
        )
    return _bjorck(weight, n_iter)


def _bjorck(weight: torch.Tensor, n_iter: int) -> torch.Tensor:
    """:func:`bjorck_orthonormalize` without input checks (the layers' hot path)."""
    w = weight / _spectral_upper_bound(weight)[..., None, None]
    tall = w.shape[-2] >= w.shape[-1]
    for _ in range(n_iter):
        if tall:
            w = 1.5 * w - 0.5 * w @ (w.mT @ w)
        else:
            w = 1.5 * w - 0.5 * (w @ w.mT) @ w
    return w


class BjorckLinear(nn.Module):
    r"""Linear layer :math:`y = \kappa\, \mathrm{Bjorck}(W) x + b`, :math:`\kappa`-Lipschitz in l2.

    The stored parameter ``weight`` is unconstrained; the layer uses its Björck
    orthonormalisation (:func:`bjorck_orthonormalize`) times the fixed scale ``scale``
    :math:`=\kappa`, so :math:`\|\kappa\,\mathrm{Bjorck}(W)\|_2 \le \kappa` [2]_.

    The orthonormalised weight is recomputed at every forward pass while it needs a gradient
    (training). When it does not (under ``torch.no_grad()``, or with frozen weights) it is cached
    and reused until the weight changes. Freeze a trained model before attacking it,
    ``vae.eval().requires_grad_(False)`` (Pyro expects frozen modules in eval mode): attacks
    differentiate in the input only, and then pay for the iteration once instead of at every
    step.

    Parameters
    ----------
    in_features, out_features : int
        Sizes.
    bias : bool, default True
        Whether to learn an additive bias (it does not change the Lipschitz constant).
    scale : float, default 1.0
        The layer's Lipschitz constant :math:`\kappa > 0`.
    n_iter : int, default 20
        Björck iterations per forward pass.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        scale: float = 1.0,
        n_iter: int = 20,
    ):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.scale = _positive("scale", scale)
        self.n_iter = _positive_int("n_iter", n_iter, minimum=1)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        nn.init.orthogonal_(self.weight)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    def orthonormal_weight(self, n_iter: int | None = None) -> torch.Tensor:
        """The orthonormalised weight (without ``scale``), of shape ``(out, in)``."""
        n_iter = self.n_iter if n_iter is None else n_iter
        if torch.is_grad_enabled() and self.weight.requires_grad:
            self._cache = None
            return _bjorck(self.weight, n_iter)
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, n_iter)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, _bjorck(w, n_iter))
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.scale * self.orthonormal_weight(), self.bias)

    def lipschitz_bound(self) -> float:
        r"""Verified Lipschitz constant :math:`\kappa\,\sigma_{\max}(\mathrm{Bjorck}(W))`."""
        with torch.no_grad():
            w = self.orthonormal_weight().double()
            return self.scale * torch.linalg.matrix_norm(w, ord=2).item()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scale={self.scale:.4g}, n_iter={self.n_iter}"
        )


class GroupSort(nn.Module):
    r"""GroupSort activation [2]_: sort each group of ``group_size`` consecutive features.

    It permutes coordinates, so it is 1-Lipschitz in l2 and preserves gradient norms (ReLU is
    also 1-Lipschitz but loses the norm, which makes Lipschitz nets far less expressive [2]_).
    ``group_size=2`` is MaxMin, :math:`(x_1, x_2) \mapsto (\max, \min)`.

    Parameters
    ----------
    group_size : int, default 2
        Features per group; the last dim must be a multiple of it.
    """

    def __init__(self, group_size: int = 2):
        super().__init__()
        self.group_size = _positive_int("group_size", group_size, minimum=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, g = x.shape[-1], self.group_size
        if n % g:
            raise ValueError(
                f"GroupSort(group_size={g}) needs a last dim that is a multiple of {g}; got "
                f"input of shape {tuple(x.shape)}."
            )
        groups = x.unflatten(-1, (n // g, g))
        if g == 2:
            a, b = groups.unbind(-1)
            out = torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=-1)
        else:
            out = groups.sort(dim=-1, descending=True).values
        return out.flatten(-2)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class LipschitzMLP(nn.Module):
    r"""An MLP that is :math:`L`-Lipschitz in l2: Björck layers and GroupSort activations.

    With :math:`n` linear layers each scaled by :math:`L^{1/n}` and 1-Lipschitz activations,

    .. math:: \|f(x) - f(x')\|_2 \le \prod_{i=1}^n L^{1/n} \|x - x'\|_2 = L \|x - x'\|_2 .

    Parameters
    ----------
    in_features, out_features : int
        Sizes.
    hidden : int or sequence of int, default (64, 64)
        Hidden widths (multiples of ``group_size``); empty for a single linear layer.
    lipschitz : float, default 1.0
        The target constant :math:`L > 0`.
    group_size : int, default 2
        GroupSort group size (2 = MaxMin).
    n_iter : int, default 20
        Björck iterations per forward pass.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int | Sequence[int] = (64, 64),
        *,
        lipschitz: float = 1.0,
        group_size: int = 2,
        n_iter: int = 20,
    ):
        super().__init__()
        self.lipschitz = _positive("lipschitz", lipschitz)
        group_size = _positive_int("group_size", group_size, minimum=2)
        widths = (
            _positive_int("in_features", in_features),
            *_hidden(hidden, group_size),
            _positive_int("out_features", out_features),
        )
        n_layers = len(widths) - 1
        per_layer = self.lipschitz ** (1.0 / n_layers)
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
            layers.append(BjorckLinear(n_in, n_out, scale=per_layer, n_iter=n_iter))
            if i < n_layers - 1:
                layers.append(GroupSort(group_size))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def output_layer(self) -> BjorckLinear:
        return self.net[-1]

    def lipschitz_bound(self) -> float:
        """Verified constant: the product of the layers' scaled largest singular values."""
        return math.prod(m.lipschitz_bound() for m in self.net if isinstance(m, BjorckLinear))


# --------------------------------------------------------------------------------------------
# encoders and decoder
# --------------------------------------------------------------------------------------------
class _Configurable(nn.Module):
    """Modules rebuilt from ``config()`` by :func:`pyrobust.models.load_model`."""

    _config: dict

    def config(self) -> dict:
        """Constructor arguments, JSON-able (for saving and loading)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._config.items()}


def _project_norm(scale: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Project onto the l2 ball of radius ``max_norm`` (1-Lipschitz, keeps positivity)."""
    norm = torch.linalg.vector_norm(scale, dim=-1, keepdim=True)
    return scale * (max_norm / norm.clamp_min(max_norm)).clamp_max(1.0)


class LipschitzEncoder(_Configurable):
    r"""Gaussian encoder with :math:`b`-Lipschitz mean and :math:`c`-Lipschitz std [1]_.

    .. math::
        \mu(x) = f_\mu(x), \qquad
        \sigma(x) = \Pi_{\|\cdot\|_2 \le \bar s}\!\left(\operatorname{softplus}(f_\sigma(x))
        + \sigma_{\min}\right),

    with :math:`f_\mu` a :math:`b`-Lipschitz and :math:`f_\sigma` a :math:`c`-Lipschitz
    :class:`LipschitzMLP`. Softplus (slope below 1), the shift and the projection :math:`\Pi` onto
    the ball of radius :math:`\bar s` = ``max_scale_norm`` are 1-Lipschitz, so
    :math:`\|\mu(x)-\mu(x')\| \le b\|x-x'\|` and :math:`\|\sigma(x)-\sigma(x')\| \le c\|x-x'\|`,
    and :math:`s = \|\sigma(x)\|_2 \le \bar s` for every input, which bounds the certified
    margin from below everywhere (:func:`pyrobust.robustness.certify.design_lipschitz`).

    Parameters
    ----------
    input_shape : int or tuple of int
        Event shape of one input (e.g. ``64`` or ``(1, 28, 28)``); trailing dims of ``x``.
    latent_dim : int
        :math:`d_z`.
    hidden : int or sequence of int, default (64, 64)
        Hidden widths of both nets.
    loc_lipschitz : float, default 1.0
        :math:`b`.
    scale_lipschitz : float, default 1.0
        :math:`c`.
    max_scale_norm : float, optional
        The cap :math:`\bar s` on :math:`\|\sigma(x)\|_2`; no cap when ``None``.
    min_scale : float, default 1e-3
        :math:`\sigma_{\min}`, keeps the std positive.
    init_scale : float, default 0.1
        Per-dimension std at initialisation (through the last layer's bias).
    group_size, n_iter : int
        Passed to :class:`LipschitzMLP`.

    Notes
    -----
    ``forward(x)`` returns ``(loc, scale)`` of shape ``(*batch, latent_dim)`` for ``x`` of shape
    ``(*batch, *input_shape)``, the encoder contract of :class:`pyrobust.models.VAE`.
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        latent_dim: int,
        hidden: int | Sequence[int] = (64, 64),
        *,
        loc_lipschitz: float = 1.0,
        scale_lipschitz: float = 1.0,
        max_scale_norm: float | None = None,
        min_scale: float = 1e-3,
        init_scale: float = 0.1,
        group_size: int = 2,
        n_iter: int = 20,
    ):
        super().__init__()
        self._config = {
            "input_shape": input_shape,
            "latent_dim": latent_dim,
            "hidden": hidden,
            "loc_lipschitz": loc_lipschitz,
            "scale_lipschitz": scale_lipschitz,
            "max_scale_norm": max_scale_norm,
            "min_scale": min_scale,
            "init_scale": init_scale,
            "group_size": group_size,
            "n_iter": n_iter,
        }
        self.input_shape = _shape("input_shape", input_shape)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.loc_lipschitz = _positive("loc_lipschitz", loc_lipschitz)
        self.scale_lipschitz = _positive("scale_lipschitz", scale_lipschitz)
        self.min_scale = _positive("min_scale", min_scale)
        init_scale = _positive("init_scale", init_scale)
        if init_scale <= self.min_scale:
            raise ValueError(
                f"`init_scale` ({init_scale}) must exceed `min_scale` ({self.min_scale})."
            )
        self.max_scale_norm = None
        if max_scale_norm is not None:
            self.max_scale_norm = _positive("max_scale_norm", max_scale_norm)
        d_in = math.prod(self.input_shape)
        kw = {"hidden": hidden, "group_size": group_size, "n_iter": n_iter}
        self.loc_net = LipschitzMLP(d_in, self.latent_dim, lipschitz=self.loc_lipschitz, **kw)
        self.scale_net = LipschitzMLP(d_in, self.latent_dim, lipschitz=self.scale_lipschitz, **kw)
        with torch.no_grad():  # softplus^{-1}(init_scale - min_scale)
            shift = init_scale - self.min_scale
            self.scale_net.output_layer.bias.fill_(shift + math.log(-math.expm1(-shift)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _flatten_event(x, self.input_shape, type(self).__name__)
        loc = self.loc_net(h)
        scale = F.softplus(self.scale_net(h)) + self.min_scale
        if self.max_scale_norm is not None:
            scale = _project_norm(scale, self.max_scale_norm)
        return loc, scale


class LipschitzFixedStdEncoder(_Configurable):
    r"""Gaussian encoder with :math:`b`-Lipschitz mean and a fixed std :math:`\gamma` [1]_.

    :math:`\mu(x) = f_\mu(x)` with :math:`f_\mu` a :math:`b`-Lipschitz :class:`LipschitzMLP`,
    :math:`\sigma(x) = \gamma \mathbf 1`: :math:`c = 0` and the tighter fixed-std chi-square bound
    applies, with :math:`u = (r/a - b\delta)^2 / (2\gamma^2)`.

    Parameters
    ----------
    input_shape : int or tuple of int
        Event shape of one input.
    latent_dim : int
        :math:`d_z`.
    hidden : int or sequence of int, default (64, 64)
        Hidden widths.
    loc_lipschitz : float, default 1.0
        :math:`b`.
    std : float, default 0.1
        :math:`\gamma`, the std of every latent dimension.
    group_size, n_iter : int
        Passed to :class:`LipschitzMLP`.
    """

    def __init__(
        self,
        input_shape: int | Sequence[int],
        latent_dim: int,
        hidden: int | Sequence[int] = (64, 64),
        *,
        loc_lipschitz: float = 1.0,
        std: float = 0.1,
        group_size: int = 2,
        n_iter: int = 20,
    ):
        super().__init__()
        self._config = {
            "input_shape": input_shape,
            "latent_dim": latent_dim,
            "hidden": hidden,
            "loc_lipschitz": loc_lipschitz,
            "std": std,
            "group_size": group_size,
            "n_iter": n_iter,
        }
        self.input_shape = _shape("input_shape", input_shape)
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.loc_lipschitz = _positive("loc_lipschitz", loc_lipschitz)
        self.std = _positive("std", std)
        self.loc_net = LipschitzMLP(
            math.prod(self.input_shape),
            self.latent_dim,
            hidden,
            lipschitz=self.loc_lipschitz,
            group_size=group_size,
            n_iter=n_iter,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.loc_net(_flatten_event(x, self.input_shape, type(self).__name__))
        return loc, torch.full_like(loc, self.std)


_DECODER_OUTPUTS = ("sigmoid", "logits", "identity")


class LipschitzDecoder(_Configurable):
    r"""Decoder whose mean :math:`g(z)` is :math:`a`-Lipschitz in l2 [1]_.

    ``output="sigmoid"`` (default): :math:`g(z) = \mathrm{sigmoid}(f(z))` with :math:`f` a
    :math:`4a`-Lipschitz :class:`LipschitzMLP`; the elementwise sigmoid has slope at most
    :math:`1/4`, so :math:`g` is :math:`a`-Lipschitz. The module returns :math:`g(z)` in
    :math:`(0, 1)`: the mean of a Gaussian (or continuous Bernoulli-style) likelihood.
    ``output="logits"``: the same net, returning :math:`f(z)`, for a Bernoulli likelihood
    parameterised by logits whose mean is :math:`g(z) = \mathrm{sigmoid}(f(z))`.
    ``output="identity"``: :math:`g = f` is :math:`a`-Lipschitz and unbounded.

    In every case the attribute ``lipschitz`` is :math:`a`, the constant of the *mean* the
    robustness definitions use, not of the raw output.

    Parameters
    ----------
    latent_dim : int
        :math:`d_z`.
    output_shape : int or tuple of int
        Event shape of one reconstruction (e.g. ``64`` or ``(1, 28, 28)``).
    hidden : int or sequence of int, default (64, 64)
        Hidden widths.
    lipschitz : float, default 1.0
        :math:`a`.
    output : {"sigmoid", "logits", "identity"}, default "sigmoid"
        What ``forward`` returns (see above).
    group_size, n_iter : int
        Passed to :class:`LipschitzMLP`.
    """

    def __init__(
        self,
        latent_dim: int,
        output_shape: int | Sequence[int],
        hidden: int | Sequence[int] = (64, 64),
        *,
        lipschitz: float = 1.0,
        output: str = "sigmoid",
        group_size: int = 2,
        n_iter: int = 20,
    ):
        super().__init__()
        self._config = {
            "latent_dim": latent_dim,
            "output_shape": output_shape,
            "hidden": hidden,
            "lipschitz": lipschitz,
            "output": output,
            "group_size": group_size,
            "n_iter": n_iter,
        }
        if output not in _DECODER_OUTPUTS:
            raise ValueError(f"`output` must be one of {_DECODER_OUTPUTS}; got {output!r}.")
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.output_shape = _shape("output_shape", output_shape)
        self.lipschitz = _positive("lipschitz", lipschitz)
        self.output = output
        self._slope = 1.0 if output == "identity" else 0.25
        self.net = LipschitzMLP(
            self.latent_dim,
            math.prod(self.output_shape),
            hidden,
            lipschitz=self.lipschitz / self._slope,
            group_size=group_size,
            n_iter=n_iter,
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1:] != (self.latent_dim,):
            raise ValueError(
                f"LipschitzDecoder expects z of shape (*batch, {self.latent_dim}); got "
                f"{tuple(z.shape)}."
            )
        out = self.net(z)
        if self.output == "sigmoid":
            out = torch.sigmoid(out)
        return out.unflatten(-1, self.output_shape)

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`g(z)`, whatever ``output`` is."""
        out = self.forward(z)
        return torch.sigmoid(out) if self.output == "logits" else out


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------
class LipschitzConstants(NamedTuple):
    r"""l2 Lipschitz constants of a VAE, as THEORY section 4 names them.

    Attributes
    ----------
    a : float
        Decoder mean :math:`g`.
    b : float
        Encoder mean :math:`\mu`.
    c : float
        Encoder std :math:`\sigma` (0 for a fixed-std encoder).
    gamma : float or None
        The fixed per-dimension std :math:`\gamma` of a fixed-std encoder, else ``None``.
    """

    a: float
    b: float
    c: float
    gamma: float | None = None


def lipschitz_constants(encoder: nn.Module, decoder: nn.Module) -> LipschitzConstants:
    r"""Lipschitz constants of a trained Lipschitz VAE, verified from its layers.

    For each net the product bound over its Björck layers,

    .. math:: \mathrm{Lip}(f) \le \prod_i \kappa_i\, \sigma_{\max}(\mathrm{Bjorck}(W_i)),

    is computed from the actual largest singular values (float64 SVD) of the weights the layers
    use, times the slope of the output map (1/4 for a sigmoid, 1 for softplus, the projection and
    GroupSort). The result is at most the nominal constants the modules were built with (up to
    rounding, ~1e-6): pass *these* to
    :func:`~pyrobust.robustness.certify.certified_margin`, which is what it does by itself when
    given a Lipschitz VAE and no constants.

    Parameters
    ----------
    encoder : LipschitzEncoder or LipschitzFixedStdEncoder
    decoder : LipschitzDecoder

    Returns
    -------
    LipschitzConstants
        ``(a, b, c, gamma)``.

    Raises
    ------
    TypeError
        If the modules are not Lipschitz modules of this module.
    """
    if not isinstance(decoder, LipschitzDecoder):
        raise TypeError(
            f"`decoder` must be a LipschitzDecoder; got {type(decoder).__name__}. Constants of "
            "other nets cannot be verified here: pass a, b, c to certified_margin yourself."
        )
    a = decoder.net.lipschitz_bound() * decoder._slope
    if isinstance(encoder, LipschitzEncoder):
        return LipschitzConstants(
            a, encoder.loc_net.lipschitz_bound(), encoder.scale_net.lipschitz_bound(), None
        )
    if isinstance(encoder, LipschitzFixedStdEncoder):
        return LipschitzConstants(a, encoder.loc_net.lipschitz_bound(), 0.0, encoder.std)
    raise TypeError(
        "`encoder` must be a LipschitzEncoder or LipschitzFixedStdEncoder; got "
        f"{type(encoder).__name__}. Pass a, b, c to certified_margin yourself for other nets."
    )
