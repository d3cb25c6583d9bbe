r"""Likelihoods :math:`p(x \mid z)`: decoder output to a distribution over the input.

A likelihood is a :class:`torch.nn.Module` (so a learned scale is an ordinary parameter that
Pyro registers and ``state_dict`` saves). Called as ``likelihood(eta, event_dim)`` on the
decoder output :math:`\eta(z)` of shape ``(*batch, *event)``, it returns a Pyro distribution
with batch shape ``batch`` and event shape ``event``, for the observed site ``"x"``.

The reconstruction of [1]_ is :math:`g(z) = \mathbb E[x \mid z]`, the mean of that
distribution, which :meth:`Likelihood.mean` returns and
:func:`pyrobust.models.model_mean` reads from any model's observed site.

=========================  ==================================  ====================================
alias                      distribution of each pixel          :math:`g(z)`
=========================  ==================================  ====================================
``"bernoulli"``            Bernoulli(logits :math:`\eta`)      :math:`\operatorname{sigmoid}(\eta)`
``"continuous_bernoulli"`` ContinuousBernoulli(logits          :math:`\frac{\lambda}{2\lambda-1}+
                           :math:`\eta`) [2]_                  \frac{1}{2\operatorname{artanh}
                                                               (1-2\lambda)}`, :math:`\lambda =
                                                               \operatorname{sigmoid}(\eta)`
``"gaussian"``             Normal(:math:`\eta`, :math:`s`)     :math:`\eta`
``"laplace"``              Laplace(:math:`\eta`, :math:`b`)    :math:`\eta`
=========================  ==================================  ====================================

References
----------
.. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
   the Robustness of Variational Autoencoders*. AISTATS 2021.
.. [2] Loaiza-Ganem, Cunningham. *The continuous Bernoulli: fixing a pervasive error in
   variational autoencoders*. NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

__all__ = [
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "Likelihood",
    "make_likelihood",
]


class Likelihood(nn.Module):
    r"""Base class: maps decoder output :math:`\eta` to :math:`p(x \mid z)`.

    Subclasses implement :meth:`distribution` (the elementwise distribution) and
    :meth:`config`; they may override :meth:`sample` (the default inverts the CDF).
    """

    #: Whether the distribution validates its arguments and observations (Pyro/torch default).
    _validate_args: bool | None = None

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The elementwise distribution (batch shape ``params.shape``, event shape ``()``)."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds it."""
        return {}

    def forward(self, params: torch.Tensor, event_dim: int = 0) -> dist.TorchDistribution:
        r"""The distribution of :math:`x` with the last ``event_dim`` dims as its event.

        Parameters
        ----------
        params : torch.Tensor
            Decoder output :math:`\eta(z)`, shape ``(*batch, *event)``.
        event_dim : int, default 0
            Number of rightmost dims of ``params`` that form one observation.
        """
        if isinstance(event_dim, bool) or not isinstance(event_dim, int) or event_dim < 0:
            raise ValueError(f"event_dim must be an int >= 0; got {event_dim!r}.")
        if event_dim > params.dim():
            raise ValueError(
                f"event_dim={event_dim} exceeds the {params.dim()} dims of the decoder output "
                f"of shape {tuple(params.shape)}."
            )
        d = self.distribution(params)
        if event_dim == 0:
            return d
        return dist.Independent(d, event_dim, validate_args=self._validate_args)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        r"""The reconstruction :math:`g(z) = \mathbb E[x \mid z]`, shape ``params.shape``."""
        return self.distribution(params).mean

    def sample(
        self, params: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""Draw :math:`x \sim p(x \mid z)` using ``generator`` (inverse-CDF sampling)."""
        u = torch.rand(params.shape, generator=generator, dtype=params.dtype, device=params.device)
        tiny = torch.finfo(params.dtype).tiny
        return self.distribution(params).icdf(u.clamp(min=tiny))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


class BernoulliLikelihood(Likelihood):
    r"""Bernoulli likelihood on logits; :math:`g(z) = \operatorname{sigmoid}(\eta(z))`.

    .. math::

        \log p(x \mid z) = \sum_i x_i \log \lambda_i + (1 - x_i) \log(1 - \lambda_i),
        \qquad \lambda = \operatorname{sigmoid}(\eta(z)).

    Observations may be grey levels in :math:`[0, 1]`, as is usual for MNIST-like data and as
    in [1]_: the log-likelihood is then the negative binary cross-entropy, which is not a
    normalised density on :math:`[0, 1]` (use :class:`ContinuousBernoulliLikelihood` for
    that). Support validation is therefore switched off for this likelihood.

    References
    ----------
    .. [1] Camuto et al. *Towards a Theoretical Understanding of the Robustness of Variational
       Autoencoders*. AISTATS 2021.
    """

    _validate_args = False

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=params, validate_args=False)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(
        self, params: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class ContinuousBernoulliLikelihood(Likelihood):
    r"""Continuous Bernoulli likelihood [1]_ on logits, a normalised density on :math:`[0, 1]`.

    .. math::

        p(x \mid \lambda) = C(\lambda)\, \lambda^x (1 - \lambda)^{1 - x}, \quad
        C(\lambda) = \frac{2 \operatorname{artanh}(1 - 2\lambda)}{1 - 2\lambda},

    with :math:`\lambda = \operatorname{sigmoid}(\eta(z))` and reconstruction

    .. math::

        g(z) = \mathbb E[x] = \frac{\lambda}{2\lambda - 1}
        + \frac{1}{2 \operatorname{artanh}(1 - 2\lambda)} \quad (= 1/2 \text{ at } \lambda = 1/2),

    which is *not* :math:`\lambda`: the mean is pulled towards 1/2.

    References
    ----------
    .. [1] Loaiza-Ganem, Cunningham. *The continuous Bernoulli: fixing a pervasive error in
       variational autoencoders*. NeurIPS 2019.
    """

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=params)


class _LocScaleLikelihood(Likelihood):
    """Shared code of the Gaussian and Laplace likelihoods: a location and a scale."""

    def __init__(self, scale: float = 1.0, learn_scale: bool = False, scale_shape=()):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a positive float; got {type(scale).__name__}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite float; got {scale}.")
        if not isinstance(learn_scale, bool):
            raise TypeError(f"learn_scale must be a bool; got {learn_scale!r}.")
        if isinstance(scale_shape, int):
            scale_shape = (scale_shape,)
        if not isinstance(scale_shape, Sequence) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in scale_shape
        ):
            raise ValueError(
                f"scale_shape must be a tuple of positive ints broadcastable to the input's "
                f"event shape, e.g. () or (1, 28, 28); got {scale_shape!r}."
            )
        self.learn_scale = learn_scale
        self.scale_shape = tuple(scale_shape)
        self._init_scale = float(scale)
        log_scale = torch.full(self.scale_shape, math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        """The current scale :math:`\\exp(\\text{log\\_scale})`."""
        return self.log_scale.exp()

    def config(self) -> dict:
        return {
            "scale": self._init_scale,
            "learn_scale": self.learn_scale,
            "scale_shape": list(self.scale_shape),
        }

    def _scale_for(self, params: torch.Tensor) -> torch.Tensor:
        return self.log_scale.to(dtype=params.dtype).exp()


class GaussianLikelihood(_LocScaleLikelihood):
    r"""Gaussian likelihood with fixed or learned scale; :math:`g(z) = \eta(z)`.

    .. math::

        \log p(x \mid z) = \sum_i \log \mathcal N(x_i;\ \eta_i(z),\ s_i^2).

    Parameters
    ----------
    scale : float, default 1.0
        The standard deviation :math:`s` (its initial value when learned).
    learn_scale : bool, default False
        Learn :math:`\log s` as a parameter (trained by SVI with everything else).
    scale_shape : tuple of int, default ()
        Shape of :math:`s`, broadcast against the event: ``()`` for one shared scale,
        e.g. ``(1, 28, 28)`` for one per pixel.
    """

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(params, self._scale_for(params))

    def sample(
        self, params: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(
            params.shape, generator=generator, dtype=params.dtype, device=params.device
        )
        return params + self._scale_for(params) * eps


class LaplaceLikelihood(_LocScaleLikelihood):
    r"""Laplace likelihood with fixed or learned scale; :math:`g(z) = \eta(z)`.

    .. math::

        \log p(x \mid z) = \sum_i -\log(2 b_i) - |x_i - \eta_i(z)| / b_i.

    Parameters
    ----------
    scale : float, default 1.0
        The scale :math:`b` (its initial value when learned); the standard deviation is
        :math:`\sqrt 2\, b`.
    learn_scale : bool, default False
        Learn :math:`\log b` as a parameter.
    scale_shape : tuple of int, default ()
        Shape of :math:`b`, broadcast against the event.
    """

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return dist.Laplace(params, self._scale_for(params))


_ALIASES: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "laplace": LaplaceLikelihood,
}


def make_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """A likelihood from its alias (with default arguments) or an instance, returned as is.

    Parameters
    ----------
    likelihood : {"bernoulli", "continuous_bernoulli", "gaussian", "laplace"} or Likelihood
        For a non-default scale pass an instance, e.g. ``GaussianLikelihood(scale=0.1)``.

    Raises
    ------
    ValueError
        For an unknown alias (the valid ones are listed).
    TypeError
        For anything that is neither a string nor a :class:`Likelihood`.
    """
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str):
        if likelihood not in _ALIASES:
            raise ValueError(
                f"Unknown likelihood {likelihood!r}; choose one of {sorted(_ALIASES)} or pass a "
                "Likelihood instance such as GaussianLikelihood(scale=0.1)."
            )
        return _ALIASES[likelihood]()
    raise TypeError(
        f"likelihood must be one of {sorted(_ALIASES)} or a pyrobust.models.Likelihood; got "
        f"{type(likelihood).__name__}. Wrap a custom distribution in a Likelihood subclass."
    )
