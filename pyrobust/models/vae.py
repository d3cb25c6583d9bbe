r"""The Gaussian-encoder VAE as a Pyro model and guide.

.. math::

    p_\theta(x, z) = \mathcal N(z;\ 0, I)\ p_\theta(x \mid g_\theta(z)), \qquad
    q_\phi(z \mid x) = \mathcal N\big(z;\ \mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2\big),

trained by maximising the evidence lower bound [1]_

.. math::

    \mathcal L(x) = \mathbb E_{q_\phi(z \mid x)}[\log p_\theta(x \mid z)]
    - \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p(z)\big).

:class:`VAE` is one instance of pyrobust's site protocol (:mod:`pyrobust.models.sites`): its
``model`` and ``guide`` are ordinary Pyro callables, so ``pyro.infer.SVI``,
``pyro.infer.Predictive`` and every pyrobust robustness function use them directly, exactly
as they use a hand-written pair.

References
----------
.. [1] Kingma, Welling. *Auto-Encoding Variational Bayes*. ICLR 2014.
.. [2] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
   the Robustness of Variational Autoencoders*. AISTATS 2021.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from pyro.params import param_with_module_name
from pyro.util import ignore_jit_warnings
from torch import nn

from pyrobust.models.likelihoods import Likelihood, make_likelihood

__all__ = ["VAE"]


class VAE(PyroModule):
    r"""A VAE with a diagonal-Gaussian encoder, a standard-Normal prior and a pluggable likelihood.

    The pair follows the site protocol: the guide samples the latent site
    ``dist.Normal(loc, scale).to_event(1)``; the model samples it from :math:`\mathcal N(0, I)`
    and observes the input at the observed site, whose distribution's mean is the
    reconstruction :math:`g(z)` of [2]_. Both run inside
    ``pyro.plate("data", size, subsample=x)``, so with ``size=N`` a minibatch of :math:`B`
    inputs contributes :math:`N/B` times its ELBO, an unbiased estimate of the dataset's.

    Parameters
    ----------
    encoder : torch.nn.Module
        ``encoder(x) -> (loc, scale)``, each of shape ``(..., latent_dim)``, ``scale > 0``.
    decoder : torch.nn.Module
        ``decoder(z) -> params``: the likelihood's parameter with the input's event shape.
    likelihood : str or Likelihood, default "bernoulli"
        ``"bernoulli"``, ``"continuous_bernoulli"``, ``"gaussian"``, ``"laplace"``, or an
        instance from :mod:`pyrobust.models.likelihoods` (e.g. a learned-scale Gaussian).
    latent_site, obs_site : str, default "z", "x"
        Names of the latent and observed sample sites.
    latent_dim : int, optional
        :math:`d_z`; read from ``encoder.latent_dim`` or ``decoder.latent_dim`` when omitted.

    Notes
    -----
    SVI trains the parameters through Pyro's param store, under the names
    ``"encoder$$$..."``, ``"decoder$$$..."`` and ``"likelihood$$$..."``. The module is the
    source of truth for its own tensors: each call of ``model`` or ``guide`` binds those
    names to *this* VAE's parameters, replacing entries another model left behind. So several
    VAEs can be built, trained and queried in one process without
    ``pyro.clear_param_store()`` (a plain ``pyro.module`` would silently keep the first
    model's tensors, and SVI would then train those instead). With
    ``pyro.settings.set(module_local_params=True)`` the global store is not used at all.

    Examples
    --------
    >>> from pyrobust.models import MLPDecoder, MLPEncoder
    >>> vae = VAE(MLPEncoder(64, 4, hidden=(32,)), MLPDecoder(4, 64, hidden=(32,)))
    >>> x = torch.rand(10, 64)
    >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    >>> tuple(vae.reconstruct(x).shape)
    (10, 64)
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        likelihood: str | Likelihood = "bernoulli",
        latent_site: str = "z",
        obs_site: str = "x",
        *,
        latent_dim: int | None = None,
    ):
        super().__init__()
        for arg, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise TypeError(
                    f"{arg} must be a torch.nn.Module (so that Pyro can register and train its "
                    f"parameters); got {type(net).__name__}. Wrap a function in an nn.Module."
                )
        for arg, name in (("latent_site", latent_site), ("obs_site", obs_site)):
            if not isinstance(name, str) or not name:
                raise TypeError(f"{arg} must be a non-empty str; got {name!r}.")
        if latent_site == obs_site or "data" in (latent_site, obs_site):
            raise ValueError(
                f"latent_site={latent_site!r} and obs_site={obs_site!r} must differ from each "
                "other and from the plate name 'data'."
            )
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = make_likelihood(likelihood)
        self.latent_site = latent_site
        self.obs_site = obs_site
        self._latent_dim = self._infer_latent_dim(encoder, decoder, latent_dim)

    @staticmethod
    def _infer_latent_dim(encoder, decoder, latent_dim) -> int:
        found = {
            name: getattr(net, "latent_dim", None)
            for name, net in (("encoder", encoder), ("decoder", decoder))
        }
        found = {k: v for k, v in found.items() if v is not None}
        if latent_dim is not None:
            found["latent_dim="] = latent_dim
        values = set(found.values())
        if not values:
            raise TypeError(
                "Cannot tell the latent dimension: neither encoder nor decoder has a "
                "`latent_dim` attribute. Pass latent_dim= to VAE."
            )
        if len(values) > 1:
            raise ValueError(f"Inconsistent latent dimensions {found}; they must agree.")
        (d,) = values
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"latent_dim must be a positive int; got {d!r}.")
        return d

    @property
    def latent_dim(self) -> int:
        """Dimension :math:`d_z` of the latent space."""
        return self._latent_dim

    # --- the Pyro pair ---------------------------------------------------------------------
    @ignore_jit_warnings()
    def _plate_size(self, x, size) -> int:
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise TypeError(
                f"x must be a torch.Tensor of shape (batch, *event); got "
                f"{type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}."
            )
        if size is None:
            return x.shape[0]
        if isinstance(size, bool) or not isinstance(size, int) or size < x.shape[0]:
            raise ValueError(
                f"size is the dataset size N that the minibatch x is drawn from, an int >= "
                f"len(x)={x.shape[0]}; got {size!r}."
            )
        return size

    def _bind_param_store(self) -> None:
        """Point the param-store names of this VAE's parameters at its own tensors."""
        if pyro.settings.get("module_local_params"):
            return
        store = pyro.get_param_store()
        for child, module in self._modules.items():
            prefix = self._pyro_get_fullname(child)
            for name, param in module.named_parameters():
                full = param_with_module_name(prefix, name)
                if full in store and store[full] is not param:
                    del store[full]

    @pyro_method
    def model(self, x: torch.Tensor, size: int | None = None) -> None:
        r"""The generative model :math:`p(z)\,p(x \mid z)` observed at ``x``.

        Parameters
        ----------
        x : torch.Tensor
            A minibatch of shape ``(batch, *event)``.
        size : int, optional
            The dataset size :math:`N` (default ``len(x)``); log densities are scaled by
            :math:`N / \text{batch}`.
        """
        size = self._plate_size(x, size)
        self._bind_param_store()
        event_dim = x.dim() - 1
        with pyro.plate("data", size, subsample=x):
            loc = x.new_zeros(x.shape[0], self.latent_dim)
            z = pyro.sample(self.latent_site, dist.Normal(loc, 1.0).to_event(1))
            params = self.decoder(z)
            recon = tuple(params.shape[params.dim() - event_dim :]) if event_dim else ()
            if recon != tuple(x.shape[1:]):
                raise ValueError(
                    f"x has rows of shape {tuple(x.shape[1:])}, but the decoder reconstructs "
                    f"{recon}: the observed site would score mismatched "
                    "pixels. Pass inputs of the shape the VAE was built for."
                )
            pyro.sample(self.obs_site, self.likelihood(params, event_dim), obs=x)

    @ignore_jit_warnings()
    def _latent_shape_ok(self, loc, scale) -> bool:
        return loc.shape[-1] == self.latent_dim and loc.shape == scale.shape

    @pyro_method
    def guide(self, x: torch.Tensor, size: int | None = None) -> None:
        r"""The encoder :math:`q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)`.

        Parameters
        ----------
        x : torch.Tensor
            A minibatch of shape ``(batch, *event)``.
        size : int, optional
            The dataset size :math:`N` (default ``len(x)``).
        """
        size = self._plate_size(x, size)
        self._bind_param_store()
        with pyro.plate("data", size, subsample=x):
            loc, scale = self.encoder(x)
            if not self._latent_shape_ok(loc, scale):
                raise ValueError(
                    f"The encoder returned loc {tuple(loc.shape)} and scale "
                    f"{tuple(scale.shape)}; both must have shape (batch, "
                    f"latent_dim={self.latent_dim})."
                )
            pyro.sample(self.latent_site, dist.Normal(loc, scale).to_event(1))

    # --- deterministic maps ----------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Encoder statistics :math:`(\mu(x), \sigma(x))`, each ``(*batch, latent_dim)``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        r"""The reconstruction :math:`g(z) = \mathbb E[x \mid z]` (the likelihood's mean)."""
        return self.likelihood.mean(self.decoder(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        r"""The deterministic reconstruction :math:`g(\mu(x))`."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, *, mean: bool = True) -> torch.Tensor:
        r"""Generate ``n`` inputs from the prior, without gradient tracking.

        Draws :math:`z \sim \mathcal N(0, I)` and returns :math:`g(z)` (``mean=True``) or a
        draw :math:`x \sim p(x \mid z)` (``mean=False``).

        Parameters
        ----------
        n : int
            Number of samples.
        seed : int, optional
            Seed of a local ``torch.Generator`` on the model's device (same seed, same answer);
            without it the global torch RNG (``pyro.set_rng_seed``) is used.
        mean : bool, default True
            Return the means :math:`g(z)` instead of draws from the likelihood.

        Returns
        -------
        torch.Tensor
            Shape ``(n, *event)`` on the model's device.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}.")
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), torch.empty(()))
        gen = None
        if seed is not None:
            gen = torch.Generator(device=tensor.device).manual_seed(int(seed))
        z = torch.randn(n, self.latent_dim, generator=gen, device=tensor.device, dtype=tensor.dtype)
        params = self.decoder(z)
        if mean:
            return self.likelihood.mean(params)
        return self.likelihood.sample(params, generator=gen)
