r"""Disentangling objectives as Pyro ELBOs.

Every objective here is a :class:`pyro.infer.TraceMeanField_ELBO` that overrides how the
**latent site** (default ``"z"``) enters the bound; observed sites and any other latent sites
are handled exactly as in :class:`~pyro.infer.TraceMeanField_ELBO` (log-likelihood, analytic
KL where available). So they plug into :class:`pyro.infer.SVI`, support ``num_particles`` and
``vectorize_particles``, and run on the device of the model's tensors, like Pyro's own ELBOs.

All objectives are losses to minimise, summed over the minibatch and scaled by the data
plate's ``size / subsample_size`` exactly like Pyro's ELBOs, so the loss estimates the
objective over the whole dataset. Per data point :math:`x` with encoder
:math:`q(z \mid x)`, prior :math:`p(z)` and aggregate posterior
:math:`q(z) = \frac{1}{N}\sum_n q(z \mid x_n)`:

==================  ========================================================================
objective           maximised per data point
==================  ========================================================================
:class:`BetaELBO`      :math:`E_q[\log p(x|z)] - \beta\,\mathrm{KL}(q(z|x)\,\|\,p(z))`  [1]_
:class:`CapacityELBO`  :math:`E_q[\log p(x|z)] - \gamma\,|\mathrm{KL} - C|` (batch-mean KL) [2]_
:class:`BetaTCELBO`    :math:`E_q[\log p(x|z)] - \alpha\,\mathrm{MI} - \beta\,\mathrm{TC} - \gamma\,\mathrm{dwKL}` [3]_
:class:`FactorVAELoss` :math:`\mathrm{ELBO} - \gamma\,\mathrm{TC}`, TC from a discriminator [4]_
:class:`DIPVAELoss`    :math:`\mathrm{ELBO} - \lambda_{od}\sum_{i\ne j}C_{ij}^2 - \lambda_d\sum_i (C_{ii}-1)^2` [5]_
==================  ========================================================================

:class:`JitBetaELBO`, :class:`JitCapacityELBO`, :class:`JitBetaTCELBO` and
:class:`JitDIPVAELoss` are the same objectives compiled with :func:`pyro.ops.jit.trace`, with
the coefficients as traced inputs (a schedule does not trigger recompilation).

They are reparameterized estimators: every guide site must have ``rsample``. A site that
cannot be reparameterized (a discrete ``y`` as in the semi-supervised VAE) is refused by name
at the first evaluation, validation on or off, rather than trained with its score-function
term silently missing; enumerate it and train with :class:`pyro.infer.TraceEnum_ELBO`
instead (:func:`~pyrobust.inference.fit` accepts any Pyro ELBO).

Each objective records its terms at every evaluation in :attr:`~_SiteELBO.last_terms` (floats,
same units as the loss: summed over the minibatch, scaled to the dataset, averaged over
particles), e.g. ``{"loss", "reconstruction", "kl", "mi", "tc", "dwkl"}``.

References
----------
.. [1] Higgins et al. *beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
   Framework*. ICLR 2017.
.. [2] Burgess et al. *Understanding disentangling in beta-VAE*. arXiv:1804.03599, 2018.
.. [3] Chen, Li, Grosse, Duvenaud. *Isolating Sources of Disentanglement in Variational
   Autoencoders*. NeurIPS 2018.
.. [4] Kim, Mnih. *Disentangling by Factorising*. ICML 2018.
.. [5] Kumar, Sattigeri, Balakrishnan. *Variational Inference of Disentangled Latent Concepts
   from Unlabeled Observations*. ICLR 2018.
"""

from __future__ import annotations

import math
import numbers
import weakref

import pyro.ops.jit
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import torch_item
from torch.distributions import kl_divergence

from pyrobust.inference._protocol import _diag_normal, _get_site
from pyrobust.inference.schedules import Constant, Schedule, as_schedule

__all__ = [
    "BetaELBO",
    "BetaTCELBO",
    "CapacityELBO",
    "DIPVAELoss",
    "FactorVAELoss",
    "JitBetaELBO",
    "JitBetaTCELBO",
    "JitCapacityELBO",
    "JitDIPVAELoss",
    "dip_covariance",
    "log_aggregate_posterior",
    "log_importance_weights",
    "permute_dims",
    "tc_decomposition",
]

ESTIMATORS = ("mss", "mws")


# --------------------------------------------------------------------------------------------
# The base class: one hook for the latent site
# --------------------------------------------------------------------------------------------
class _SiteELBO(TraceMeanField_ELBO):
    """A :class:`~pyro.infer.TraceMeanField_ELBO` whose latent-site term is a hook.

    Subclasses implement :meth:`_latent_term`, returning the latent site's contribution to the
    ELBO (a scalar tensor, to be *added*) and a dict of detached scalar terms to log.
    Coefficients, registered with :meth:`_set_coefficient`, may be numbers or
    :class:`~pyrobust.inference.schedules.Schedule` s; :meth:`set_step` advances them.
    """

    def __init__(
        self,
        *,
        latent_site: str = "z",
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        retain_graph: bool | None = None,
    ):
        if not isinstance(latent_site, str):
            raise TypeError(f"latent_site must be a str; got {type(latent_site).__name__}.")
        if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
            raise TypeError(f"num_particles must be an int; got {num_particles!r}.")
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1; got {num_particles}.")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )
        self.latent_site = latent_site
        self._schedules: dict[str, Schedule] = {}
        self._values: dict[str, float] = {}
        self._tensors: dict[tuple, torch.Tensor] = {}
        self._step = 0
        self._acc: dict[str, torch.Tensor | float] = {}
        self._last_terms: dict[str, float] = {}

    # -- coefficients ---------------------------------------------------------------------
    def _set_coefficient(self, name: str, value, *, nonnegative: bool = True) -> None:
        sched = as_schedule(value, name, nonnegative=nonnegative)
        self._schedules[name] = sched
        self._values[name] = float(sched(self._step))

    def set_step(self, step: int) -> None:
        """Set the optimisation step that drives scheduled coefficients (called by ``fit``)."""
        self._step = int(step)
        for name, sched in self._schedules.items():
            self._values[name] = float(sched(self._step))
        for (name, _, _), t in self._tensors.items():
            t.fill_(self._values[name])

    @property
    def step(self) -> int:
        """The current step of the coefficient schedules."""
        return self._step

    def coefficient(self, name: str) -> float:
        """Current value of coefficient ``name`` (e.g. ``"beta"``)."""
        if name not in self._values:
            raise KeyError(
                f"{type(self).__name__} has no coefficient {name!r}; it has {sorted(self._values)}."
            )
        return self._values[name]

    def _coef(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The coefficient as a 0-dim tensor on ``like``'s device, updated in place per step."""
        key = (name, like.device, like.dtype)
        t = self._tensors.get(key)
        if t is None:
            t = torch.tensor(self._values[name], dtype=like.dtype, device=like.device)
            self._tensors[key] = t
        return t

    def settings(self) -> dict:
        """The objective's settings (for the attrs of a training history)."""
        out: dict = {
            "objective": type(self).__name__,
            "latent_site": self.latent_site,
            "num_particles": self.num_particles,
        }
        for name, sched in self._schedules.items():
            out[name] = sched.value if isinstance(sched, Constant) else sched.to_dict()
        return out

    # -- state (for checkpoints) --------------------------------------------------------------
    def state_dict(self) -> dict:
        """State beyond the param store (e.g. a discriminator), for checkpoints."""
        return {"step": self._step}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.set_step(int(state.get("step", 0)))

    # -- logging ----------------------------------------------------------------------------
    @property
    def last_terms(self) -> dict[str, float]:
        """Terms of the last evaluation, as floats, averaged over particles.

        ``loss`` is the value returned; ``reconstruction`` the expected log-likelihood of the
        observed sites; ``kl`` the KL term of the latent site (unweighted); subclasses add
        their own (``mi``, ``tc``, ``dwkl``, ``capacity_penalty``, ``dip_offdiag``, ...).
        """
        if self._acc:
            n = self.num_particles
            self._last_terms = {k: torch_item(v) / n for k, v in self._acc.items()}
            self._acc = {}
        return dict(self._last_terms)

    def _record(self, terms: dict) -> None:
        for k, v in terms.items():
            v = v.detach() if torch.is_tensor(v) else v
            self._acc[k] = self._acc[k] + v if k in self._acc else v

    def _get_traces(self, model, guide, args, kwargs):
        self._acc = {}
        self._last_terms = {}
        yield from super()._get_traces(model, guide, args, kwargs)

    # -- the ELBO -------------------------------------------------------------------------
    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo = 0.0
        recon = 0.0
        found = False
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                recon = recon + model_site["log_prob_sum"]
                elbo = elbo + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes.get(name)
            if guide_site is None:
                raise ValueError(
                    f"The model's latent site {name!r} has no counterpart in the guide; "
                    f"{type(self).__name__} needs every latent site sampled by the guide."
                )
            _check_reparameterized(guide_site, type(self).__name__)
            if name == self.latent_site:
                found = True
                term, terms = self._latent_term(model_site, guide_site)
                elbo = elbo + term
                self._record(terms)
            else:
                elbo = elbo - _kl(guide_site, model_site).sum()
        if not found:
            _get_site(guide_trace, self.latent_site, "the latent site", "latent_site", "The guide")
            _get_site(model_trace, self.latent_site, "the latent site", "latent_site", "The model")
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                if not guide_site["infer"].get("is_auxiliary"):
                    raise ValueError(
                        f"The guide's site {name!r} is not in the model; mark auxiliary guide "
                        "sites with infer={'is_auxiliary': True}."
                    )
                _check_reparameterized(guide_site, type(self).__name__)
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
        loss = -elbo
        self._record({"loss": loss, "reconstruction": recon})
        out = loss.detach() if torch._C._get_tracing_state() else torch_item(loss)
        return out, loss

    def _latent_term(self, model_site, guide_site):  # pragma: no cover - abstract
        raise NotImplementedError


def _check_reparameterized(guide_site, objective: str) -> None:
    """Refuse a guide site without ``rsample`` (every step, validation on or off).

    These objectives differentiate through the guide's samples only; a site that cannot be
    reparameterized (a discrete ``Categorical``, a ``Bernoulli``, ...) would need a
    score-function term, which they do not have, so training would silently follow a wrong
    gradient. Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` refuses such sites only with
    validation on.
    """
    fn = guide_site["fn"]
    if fn.has_rsample:
        return
    name = guide_site["name"]
    raise ValueError(
        f"The guide's site {name!r} ({type(fn).__name__}) cannot be reparameterized, and "
        f"{objective} differentiates through the guide's samples only: its score-function "
        "term would be silently missing. Fix: enumerate the discrete site, i.e. decorate the "
        "guide with pyro.infer.config_enumerate (or sample it with "
        "infer={'enumerate': 'parallel'}) and train with pyro.infer.TraceEnum_ELBO("
        "max_plate_nesting=1) (pyrobust.inference.fit accepts any Pyro ELBO); or use "
        "pyro.infer.TraceGraph_ELBO (score-function gradients); or replace the site by a "
        "reparameterizable relaxation (e.g. dist.RelaxedOneHotCategorical)."
    )


def _kl(guide_site, model_site) -> torch.Tensor:
    """KL(q || p) per batch element of the site, scaled and masked like Pyro's log-probs.

    Analytic where torch registers it, else the single-sample estimate log q(z) - log p(z).
    """
    try:
        kl = kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        z = guide_site["value"]
        kl = guide_site["fn"].log_prob(z) - model_site["fn"].log_prob(z)
    kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
    if not torch.is_tensor(kl):
        kl = torch.as_tensor(kl)
    return kl


def _n_eff(guide_site, batch_shape) -> torch.Tensor:
    """Number of data points the site stands for: sum of plate scales over the batch."""
    value = guide_site["value"]
    ones = value.new_ones(batch_shape)
    w = scale_and_mask(ones, scale=guide_site["scale"], mask=guide_site["mask"])
    return w if torch.is_tensor(w) else ones * w


def _plate_size(frame, rows) -> int:
    """The dataset size a data plate stands for.

    ``pyro.plate("data", N, subsample=x)`` gives ``N`` (its ``full_size``); a plate without
    a size (``pyro.plate("data")``, size ``-1``: inferred from broadcasting) is read as the
    minibatch itself, ``rows``, like ``pyro.plate("data", len(x))``.
    """
    n = frame.full_size if frame.full_size is not None else frame.size
    if torch.is_tensor(n) and n.dim() == 0:  # under torch.jit tracing
        n = int(n)
    if n is None or n < 1:
        return int(rows)
    return int(n)


def _data_frame(guide_site, latent_site: str):
    """The plate frame of the data dim (the rightmost batch dim) of the latent site."""
    for frame in guide_site["cond_indep_stack"]:
        if frame.vectorized and frame.dim == -1:
            return frame
    raise ValueError(
        f"The latent site {latent_site!r} is not inside a data plate at dim=-1; found plates "
        f"{[(f.name, f.dim) for f in guide_site['cond_indep_stack']]}. Sample it inside "
        "pyro.plate('data', size, subsample=x) (the site protocol)."
    )


# --------------------------------------------------------------------------------------------
# beta-VAE and capacity annealing
# --------------------------------------------------------------------------------------------
class BetaELBO(_SiteELBO):
    r"""The :math:`\beta`-VAE objective of Higgins et al. [1]_.

    .. math::
        \mathcal{L}_\beta(x) = E_{q(z|x)}[\log p(x \mid z)]
            - \beta\, \mathrm{KL}\big(q(z \mid x)\,\|\,p(z)\big)

    The KL of the latent site is analytic where torch registers it (as in
    :class:`~pyro.infer.TraceMeanField_ELBO`), so ``BetaELBO(1.0)`` *is*
    ``TraceMeanField_ELBO``. Scaling the KL by :math:`\beta` is the same as scaling the latent
    site by :math:`\beta` in both the model and the guide.

    Parameters
    ----------
    beta : float or Schedule, default 1.0
        Weight of the KL term (>= 0); a schedule gives a KL warm-up.
    latent_site : str, default "z"
        Name of the latent sample site.
    **kwargs
        ``num_particles``, ``vectorize_particles``, ``max_plate_nesting``, ``retain_graph``,
        as for :class:`pyro.infer.ELBO`.

    Examples
    --------
    >>> import pyro
    >>> from pyrobust.inference import BetaELBO, schedules
    >>> elbo = BetaELBO(beta=schedules.Linear(0.0, 4.0, num_steps=1000))
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)  # doctest: +SKIP

    References
    ----------
    .. [1] Higgins et al. *beta-VAE: Learning Basic Visual Concepts with a Constrained
       Variational Framework*. ICLR 2017.
    """

    def __init__(self, beta=1.0, *, latent_site: str = "z", **kwargs):
        super().__init__(latent_site=latent_site, **kwargs)
        self._set_coefficient("beta", beta)

    def _latent_term(self, model_site, guide_site):
        kl = _kl(guide_site, model_site).sum()
        return -self._coef("beta", kl) * kl, {"kl": kl}


class CapacityELBO(_SiteELBO):
    r"""Capacity-annealed :math:`\beta`-VAE of Burgess et al. [1]_.

    .. math::
        \mathcal{L}_C = \sum_{n} E_{q(z|x_n)}[\log p(x_n \mid z)]
            - \gamma\, N\, \big|\overline{\mathrm{KL}} - C\big|,
        \qquad \overline{\mathrm{KL}} = \frac{1}{N}\sum_n \mathrm{KL}(q(z|x_n)\,\|\,p(z))

    where the sums run over the minibatch scaled to the dataset (the minibatch-mean KL, as in
    the paper) and the capacity :math:`C` (nats per data point) rises during training, usually
    ``schedules.Linear(0.0, C_max, num_steps)``.

    Parameters
    ----------
    gamma : float or Schedule, default 1000.0
        Weight of the capacity penalty (>= 0).
    capacity : float or Schedule, default 0.0
        Target KL per data point :math:`C` in nats (>= 0).
    latent_site : str, default "z"
    **kwargs
        As for :class:`pyro.infer.ELBO`.

    References
    ----------
    .. [1] Burgess, Higgins, Pal, Matthey, Watters, Desjardins, Lerchner. *Understanding
       disentangling in beta-VAE*. arXiv:1804.03599, 2018.
    """

    def __init__(self, gamma=1000.0, capacity=0.0, *, latent_site: str = "z", **kwargs):
        super().__init__(latent_site=latent_site, **kwargs)
        self._set_coefficient("gamma", gamma)
        self._set_coefficient("capacity", capacity)

    def _latent_term(self, model_site, guide_site):
        kl_vec = _kl(guide_site, model_site)
        kl = kl_vec.sum()
        n = _n_eff(guide_site, kl_vec.shape).sum()
        c = self._coef("capacity", kl)
        penalty = self._coef("gamma", kl) * (kl - n * c).abs()
        return -penalty, {"kl": kl, "capacity_penalty": penalty}


# --------------------------------------------------------------------------------------------
# beta-TCVAE
# --------------------------------------------------------------------------------------------
def log_importance_weights(
    batch_size: int,
    dataset_size: int,
    estimator: str = "mss",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Log weights :math:`\log W_{ij}` of the minibatch estimators of :math:`q(z)` [1]_.

    With minibatch size :math:`M` from a dataset of size :math:`N`, the aggregate posterior at
    the sample :math:`z_i` of the :math:`i`-th member is estimated by
    :math:`\hat q(z_i) = \sum_j W_{ij}\, q(z_i \mid x_j)`, with

    * ``"mws"`` (minibatch weighted sampling): :math:`W_{ij} = 1/(NM)`, Chen et al.'s formula
      including its :math:`\log(NM)` constant;
    * ``"mss"`` (minibatch stratified sampling): :math:`W_{ii} = 1/N`,
      :math:`W_{i,(i+1) \bmod M} = (N - M + 1)/(N(M-1))` and :math:`W_{ij} = 1/(M-1)` otherwise.
      Every row sums to 1 and :math:`\hat q(z_i)` is unbiased for :math:`q(z_i)` when the other
      members are a uniform sample of the rest of the dataset. For :math:`M = 1` the only
      member gets :math:`1/N` (the MWS weight).

    Returns
    -------
    torch.Tensor
        ``(batch_size, batch_size)`` matrix of :math:`\log W_{ij}`.

    References
    ----------
    .. [1] Chen, Li, Grosse, Duvenaud. *Isolating Sources of Disentanglement in Variational
       Autoencoders*. NeurIPS 2018, Appendix C.
    """
    m, n = _check_sizes(batch_size, dataset_size)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")
    if estimator == "mws" or m == 1:
        return torch.full((m, m), -math.log(n * m), dtype=dtype, device=device)
    w = torch.full((m, m), 1.0 / (m - 1), dtype=torch.float64)
    idx = torch.arange(m)
    w[idx, idx] = 1.0 / n
    w[idx, (idx + 1) % m] = (n - m + 1) / (n * (m - 1))
    return w.log().to(dtype=dtype, device=device)


def _check_sizes(batch_size, dataset_size):
    # under torch.jit tracing, shapes and plate sizes arrive as 0-dim tensors
    batch_size, dataset_size = (
        int(v) if torch.is_tensor(v) and v.dim() == 0 else v for v in (batch_size, dataset_size)
    )
    for name, v in (("batch_size", batch_size), ("dataset_size", dataset_size)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}.")
    if dataset_size < batch_size:
        raise ValueError(
            f"dataset_size ({dataset_size}) is smaller than the minibatch ({batch_size}); the "
            "aggregate-posterior estimators need dataset_size >= batch size. Pass the number of "
            "training points as dataset_size (or let the data plate's size provide it)."
        )
    return int(batch_size), int(dataset_size)


def log_aggregate_posterior(
    z: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    dataset_size: int,
    estimator: str = "mss",
    *,
    log_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Minibatch estimates of :math:`\log q(z_i)` and of :math:`\log q(z_{ij})` per dimension.

    .. math::
        \log \hat q(z_i) = \operatorname{logsumexp}_j
            \Big[\log W_{ij} + \sum_d \log q(z_{id} \mid x_j)\Big], \qquad
        \log \hat q(z_{id}) = \operatorname{logsumexp}_j
            \big[\log W_{ij} + \log q(z_{id} \mid x_j)\big]

    with :math:`q(\cdot \mid x_j) = \mathcal{N}(\mu_j, \operatorname{diag}\sigma_j^2)` and the
    weights of :func:`log_importance_weights`.

    Parameters
    ----------
    z, loc, scale : torch.Tensor
        Shape ``(*batch, M, D)``: samples :math:`z_i \sim q(z \mid x_i)` and the encoder
        statistics of the same minibatch (leading dims, e.g. particles, are independent).
    dataset_size : int
        :math:`N`.
    estimator : {"mss", "mws"}
    log_weights : torch.Tensor, optional
        Precomputed ``(M, M)`` weights (overrides ``estimator``).

    Returns
    -------
    log_qz : torch.Tensor
        Shape ``(*batch, M)``.
    log_qz_marginals : torch.Tensor
        Shape ``(*batch, M, D)``.

    References
    ----------
    .. [1] Chen, Li, Grosse, Duvenaud. *Isolating Sources of Disentanglement in Variational
       Autoencoders*. NeurIPS 2018, Section 4.1 and Appendix C.
    """
    if z.dim() < 2:
        raise ValueError(f"z must have shape (*batch, M, D); got {tuple(z.shape)}.")
    m = z.shape[-2]
    if log_weights is None:
        log_weights = log_importance_weights(
            m, dataset_size, estimator, dtype=z.dtype, device=z.device
        )
    # pair[..., i, j, d] = log q(z_id | x_j)
    pair = torch.distributions.Normal(loc.unsqueeze(-3), scale.unsqueeze(-3)).log_prob(
        z.unsqueeze(-2)
    )
    log_qz = torch.logsumexp(log_weights + pair.sum(-1), dim=-1)
    log_qz_marginals = torch.logsumexp(log_weights.unsqueeze(-1) + pair, dim=-2)
    return log_qz, log_qz_marginals


def tc_decomposition(
    z: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    log_pz: torch.Tensor,
    dataset_size: int,
    estimator: str = "mss",
) -> dict[str, torch.Tensor]:
    r"""Per-sample decomposition of the KL term into MI, TC and dimension-wise KL [1]_.

    .. math::
        \underbrace{\log q(z|x) - \log p(z)}_{\mathrm{KL}}
        = \underbrace{\log q(z|x) - \log q(z)}_{\mathrm{MI}}
        + \underbrace{\log q(z) - \textstyle\sum_d \log q(z_d)}_{\mathrm{TC}}
        + \underbrace{\textstyle\sum_d \log q(z_d) - \log p(z)}_{\mathrm{dwKL}}

    with :math:`q(z)` and :math:`q(z_d)` from :func:`log_aggregate_posterior`. The identity
    holds sample by sample, whatever the estimator.

    Parameters
    ----------
    z, loc, scale : torch.Tensor
        Shape ``(*batch, M, D)``.
    log_pz : torch.Tensor
        :math:`\log p(z_i)`, shape ``(*batch, M)``.
    dataset_size : int
    estimator : {"mss", "mws"}

    Returns
    -------
    dict of torch.Tensor
        ``"mi"``, ``"tc"``, ``"dwkl"``, ``"kl"`` (their sum) and ``"log_qz_x"``, each
        ``(*batch, M)``.

    References
    ----------
    .. [1] Chen, Li, Grosse, Duvenaud. *Isolating Sources of Disentanglement in Variational
       Autoencoders*. NeurIPS 2018.
    """
    log_qz_x = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
    log_qz, log_qz_marg = log_aggregate_posterior(z, loc, scale, dataset_size, estimator)
    log_prod = log_qz_marg.sum(-1)
    mi = log_qz_x - log_qz
    tc = log_qz - log_prod
    dwkl = log_prod - log_pz
    return {"mi": mi, "tc": tc, "dwkl": dwkl, "kl": mi + tc + dwkl, "log_qz_x": log_qz_x}


class BetaTCELBO(_SiteELBO):
    r""":math:`\beta`-TCVAE objective of Chen et al. [1]_.

    .. math::
        \mathcal{L} = E_{q(z|x)}[\log p(x \mid z)] - \alpha\,\mathrm{MI} - \beta\,\mathrm{TC}
            - \gamma\,\mathrm{dwKL}

    with the terms of :func:`tc_decomposition`, estimated from the minibatch with the
    stratified (``"mss"``) or weighted (``"mws"``) estimator of the aggregate posterior. The
    three terms sum to the single-sample KL, so with :math:`\alpha=\beta=\gamma=1` this is the
    ELBO (with a sampled KL) in expectation and sample by sample.

    Parameters
    ----------
    alpha, beta, gamma : float or Schedule
        Weights of MI, TC and dimension-wise KL (>= 0). Defaults 1, 6, 1.
    dataset_size : int, optional
        :math:`N`. By default the data plate's ``size`` (``pyro.plate("data", size,
        subsample=x)``), or the minibatch size when the plate is not subsampled or has no
        size (``pyro.plate("data")``).
    estimator : {"mss", "mws"}, default "mss"
    latent_site : str, default "z"
        The latent site; the guide's must be ``dist.Normal(loc, scale).to_event(1)`` inside
        the data plate.
    **kwargs
        As for :class:`pyro.infer.ELBO`.

    Raises
    ------
    ValueError
        For a negative coefficient, an unknown estimator, or (at the first step) a
        ``dataset_size`` smaller than the minibatch.

    References
    ----------
    .. [1] Chen, Li, Grosse, Duvenaud. *Isolating Sources of Disentanglement in Variational
       Autoencoders*. NeurIPS 2018.
    """

    def __init__(
        self,
        alpha=1.0,
        beta=6.0,
        gamma=1.0,
        *,
        dataset_size: int | None = None,
        estimator: str = "mss",
        latent_site: str = "z",
        **kwargs,
    ):
        super().__init__(latent_site=latent_site, **kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"estimator must be one of {ESTIMATORS} (minibatch stratified / weighted "
                f"sampling); got {estimator!r}."
            )
        if dataset_size is not None and (
            isinstance(dataset_size, bool)
            or not isinstance(dataset_size, numbers.Integral)
            or dataset_size < 1
        ):
            raise ValueError(f"dataset_size must be a positive int or None; got {dataset_size!r}.")
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.estimator = estimator
        self._set_coefficient("alpha", alpha)
        self._set_coefficient("beta", beta)
        self._set_coefficient("gamma", gamma)
        self._weights: dict[tuple, torch.Tensor] = {}

    def settings(self) -> dict:
        return {
            **super().settings(),
            "dataset_size": self.dataset_size,
            "estimator": self.estimator,
        }

    def _log_weights(self, m, n, like):
        key = (m, n, like.dtype, like.device)
        w = self._weights.get(key)
        if w is None:
            w = log_importance_weights(m, n, self.estimator, dtype=like.dtype, device=like.device)
            self._weights = {key: w}
        return w

    def _latent_term(self, model_site, guide_site):
        z = guide_site["value"]
        loc, scale = _diag_normal(guide_site["fn"], self.latent_site)
        frame = _data_frame(guide_site, self.latent_site)
        m = z.shape[-2]
        n = self.dataset_size if self.dataset_size is not None else _plate_size(frame, m)
        _check_sizes(m, n)
        log_w = self._log_weights(m, n, z)
        log_qz, log_qz_marg = log_aggregate_posterior(z, loc, scale, n, log_weights=log_w)
        log_qz_x = guide_site["fn"].log_prob(z)
        log_pz = model_site["fn"].log_prob(z)
        log_prod = log_qz_marg.sum(-1)
        parts = {"mi": log_qz_x - log_qz, "tc": log_qz - log_prod, "dwkl": log_prod - log_pz}
        parts = {
            k: scale_and_mask(v, scale=guide_site["scale"], mask=guide_site["mask"]).sum()
            for k, v in parts.items()
        }
        penalty = (
            self._coef("alpha", z) * parts["mi"]
            + self._coef("beta", z) * parts["tc"]
            + self._coef("gamma", z) * parts["dwkl"]
        )
        parts["kl"] = parts["mi"] + parts["tc"] + parts["dwkl"]
        return -penalty, parts


# --------------------------------------------------------------------------------------------
# FactorVAE
# --------------------------------------------------------------------------------------------
def _mlp_discriminator(latent_dim: int, hidden_dim: int, num_layers: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    d = latent_dim
    for _ in range(num_layers - 1):
        layers += [torch.nn.Linear(d, hidden_dim), torch.nn.LeakyReLU(0.2)]
        d = hidden_dim
    layers.append(torch.nn.Linear(d, 1))
    return torch.nn.Sequential(*layers)


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Shuffle every latent dimension independently across the minibatch (dim ``-2``).

    Samples of the permuted codes follow :math:`\prod_d q(z_d)` when ``z`` follows
    :math:`q(z)` (Kim & Mnih [1]_, Algorithm 1).

    Parameters
    ----------
    z : torch.Tensor
        Codes of shape ``(*batch, M, D)``.
    generator : torch.Generator, optional
        On ``z``'s device; default the global RNG.

    References
    ----------
    .. [1] Kim, Mnih. *Disentangling by Factorising*. ICML 2018.
    """
    noise = torch.rand(z.shape, generator=generator, device=z.device)
    idx = noise.argsort(dim=-2)
    return z.gather(-2, idx)


class FactorVAELoss(_SiteELBO):
    r"""FactorVAE objective of Kim & Mnih [1]_: the ELBO minus :math:`\gamma` times a
    discriminator estimate of the total correlation.

    .. math::
        \mathcal{L} = E_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x)\,\|\,p(z))
            - \gamma \log\frac{D(z)}{1 - D(z)}, \qquad z \sim q(z \mid x)

    The discriminator :math:`D` (an MLP with LeakyReLU, outputting the logit of "drawn from
    :math:`q(z)`") is trained with its own Adam optimizer to tell codes from codes whose
    dimensions were permuted across the minibatch (:func:`permute_dims`): after every
    ``loss_and_grads`` (i.e. every ``SVI.step``) one discriminator step is taken on the same
    minibatch's codes, detached. Its parameters are not in Pyro's param store, so SVI's
    optimizer never touches them; its state is in :meth:`state_dict` for checkpoints.

    Parameters
    ----------
    gamma : float or Schedule, default 6.4
        Weight of the TC penalty (>= 0).
    discriminator : torch.nn.Module, optional
        Maps ``(..., D)`` codes to ``(..., 1)`` logits. Default: built at the first call with
        ``num_layers`` layers of ``hidden_dim`` units (the paper: 6 x 1000).
    hidden_dim, num_layers : int
    lr : float, default 1e-4
    betas : tuple of float, default (0.5, 0.9)
        Discriminator Adam settings (the paper's).
    latent_site : str, default "z"
    **kwargs
        As for :class:`pyro.infer.ELBO`.

    References
    ----------
    .. [1] Kim, Mnih. *Disentangling by Factorising*. ICML 2018.
    """

    def __init__(
        self,
        gamma=6.4,
        *,
        discriminator: torch.nn.Module | None = None,
        hidden_dim: int = 1000,
        num_layers: int = 6,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        latent_site: str = "z",
        **kwargs,
    ):
        super().__init__(latent_site=latent_site, **kwargs)
        self._set_coefficient("gamma", gamma)
        if discriminator is not None and not isinstance(discriminator, torch.nn.Module):
            raise TypeError(
                f"discriminator must be a torch.nn.Module; got {type(discriminator).__name__}."
            )
        for name, v in (("hidden_dim", hidden_dim), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}.")
        if not (isinstance(lr, numbers.Real) and lr > 0):
            raise ValueError(f"lr must be a positive number; got {lr!r}.")
        self.hidden_dim, self.num_layers = int(hidden_dim), int(num_layers)
        self.lr, self.betas = float(lr), tuple(betas)
        self.discriminator = discriminator
        self._optimizer: torch.optim.Optimizer | None = None
        self._latent_dim: int | None = None
        self._last_z: torch.Tensor | None = None
        if discriminator is not None:
            self._make_optimizer()
            discriminator.requires_grad_(False)

    def settings(self) -> dict:
        return {
            **super().settings(),
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "discriminator_lr": self.lr,
        }

    def _make_optimizer(self):
        self._optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.lr, betas=self.betas
        )

    def _ensure_discriminator(self, z: torch.Tensor) -> torch.nn.Module:
        if self.discriminator is None:
            self._latent_dim = z.shape[-1]
            self.discriminator = _mlp_discriminator(
                z.shape[-1], self.hidden_dim, self.num_layers
            ).to(device=z.device, dtype=z.dtype)
            self.discriminator.requires_grad_(False)
            self._make_optimizer()
        else:
            p = next(self.discriminator.parameters(), None)
            if p is not None and (p.device != z.device or p.dtype != z.dtype):
                self.discriminator.to(device=z.device, dtype=z.dtype)
        return self.discriminator

    def _latent_term(self, model_site, guide_site):
        kl = _kl(guide_site, model_site).sum()
        z = guide_site["value"]
        disc = self._ensure_discriminator(z)
        logits = disc(z).squeeze(-1)
        tc = scale_and_mask(logits, scale=guide_site["scale"], mask=guide_site["mask"]).sum()
        self._last_z = z.detach()
        return -kl - self._coef("gamma", kl) * tc, {"kl": kl, "tc": tc}

    def discriminator_step(self, z: torch.Tensor) -> tuple[float, float]:
        r"""One optimizer step of the discriminator on codes ``z`` of shape ``(*batch, M, D)``.

        Minimises :math:`-\frac12\big(\log D(z) + \log(1 - D(\tilde z))\big)` averaged over the
        minibatch, with :math:`\tilde z` = :func:`permute_dims` ``(z)``.

        Returns
        -------
        loss, accuracy : float
            The discriminator's loss before the step and its accuracy on both sets.
        """
        if not torch.is_tensor(z) or z.dim() < 2:
            raise ValueError(f"z must be a tensor of shape (*batch, M, D); got {z!r}.")
        z = z.detach()
        disc = self._ensure_discriminator(z)
        z_perm = permute_dims(z)
        disc.requires_grad_(True)
        try:
            real, fake = disc(z).squeeze(-1), disc(z_perm).squeeze(-1)
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            loss = 0.5 * (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))
            self._optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._optimizer.step()
        finally:
            disc.requires_grad_(False)
        with torch.no_grad():
            acc = 0.5 * ((real > 0).float().mean() + (fake <= 0).float().mean())
        return torch_item(loss.detach()), torch_item(acc)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """As :meth:`pyro.infer.Trace_ELBO.loss_and_grads`, then one discriminator step."""
        loss = super().loss_and_grads(model, guide, *args, **kwargs)
        terms = self.last_terms
        if self._last_z is not None:
            d_loss, d_acc = self.discriminator_step(self._last_z)
            self._last_z = None
            terms.update(discriminator_loss=d_loss, discriminator_accuracy=d_acc)
            self._last_terms = terms
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["discriminator_optimizer"] = self._optimizer.state_dict()
            state["latent_dim"] = self._latent_dim
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "discriminator" not in state:
            return
        if self.discriminator is None:
            d = state.get("latent_dim")
            if d is None:
                raise ValueError("The checkpoint's discriminator has no latent_dim to rebuild it.")
            first = next(iter(state["discriminator"].values()))
            self._latent_dim = int(d)
            self.discriminator = _mlp_discriminator(int(d), self.hidden_dim, self.num_layers).to(
                device=first.device, dtype=first.dtype
            )
            self.discriminator.requires_grad_(False)
            self._make_optimizer()
        self.discriminator.load_state_dict(state["discriminator"])
        self._optimizer.load_state_dict(state["discriminator_optimizer"])


# --------------------------------------------------------------------------------------------
# DIP-VAE
# --------------------------------------------------------------------------------------------
def dip_covariance(loc: torch.Tensor, scale: torch.Tensor, kind: str = "i") -> torch.Tensor:
    r"""The covariance matrix :math:`C` penalised by DIP-VAE [1]_, over the minibatch (dim -2).

    .. math::
        C_{\mathrm{I}} = \operatorname{Cov}_{p(x)}[\mu(x)], \qquad
        C_{\mathrm{II}} = E_{p(x)}[\operatorname{diag}\sigma^2(x)] + \operatorname{Cov}_{p(x)}[\mu(x)]

    with the (biased, :math:`1/M`) minibatch covariance.

    Parameters
    ----------
    loc, scale : torch.Tensor
        Encoder means and standard deviations of a minibatch, shape ``(*batch, M, D)``.
    kind : {"i", "ii"}, default "i"

    Returns
    -------
    torch.Tensor
        Shape ``(*batch, D, D)``.

    References
    ----------
    .. [1] Kumar, Sattigeri, Balakrishnan. *Variational Inference of Disentangled Latent
       Concepts from Unlabeled Observations*. ICLR 2018, Eqs. (6)-(7).
    """
    centred = loc - loc.mean(-2, keepdim=True)
    cov = centred.transpose(-1, -2) @ centred / loc.shape[-2]
    if kind == "ii":
        cov = cov + torch.diag_embed(scale.pow(2).mean(-2))
    return cov


class DIPVAELoss(_SiteELBO):
    r"""DIP-VAE objective of Kumar et al. [1]_.

    .. math::
        \mathcal{L} = \sum_n \mathrm{ELBO}(x_n) - N\Big(\lambda_{od}\sum_{i \ne j} C_{ij}^2
            + \lambda_d \sum_i (C_{ii} - 1)^2\Big)

    with :math:`C` from :func:`dip_covariance` on the minibatch (type ``"i"`` or ``"ii"``)
    and :math:`N` the number of data points the minibatch stands for (the plate's scale
    times its size), so the penalty keeps its per-data-point weight of the paper while the
    ELBO is summed as in Pyro.

    Parameters
    ----------
    kind : {"i", "ii"}, default "i"
    lambda_od : float or Schedule, default 10.0
        Weight of the off-diagonal penalty (>= 0).
    lambda_d : float or Schedule, optional
        Weight of the diagonal penalty (>= 0); default ``10 * lambda_od`` for ``"i"`` and
        ``lambda_od`` for ``"ii"`` (the paper's settings).
    latent_site : str, default "z"
    **kwargs
        As for :class:`pyro.infer.ELBO`.

    References
    ----------
    .. [1] Kumar, Sattigeri, Balakrishnan. *Variational Inference of Disentangled Latent
       Concepts from Unlabeled Observations*. ICLR 2018.
    """

    def __init__(
        self, kind: str = "i", lambda_od=10.0, lambda_d=None, *, latent_site: str = "z", **kwargs
    ):
        super().__init__(latent_site=latent_site, **kwargs)
        if kind not in ("i", "ii"):
            raise ValueError(f"kind must be 'i' or 'ii' (DIP-VAE-I or -II); got {kind!r}.")
        self.kind = kind
        self._set_coefficient("lambda_od", lambda_od)
        if lambda_d is None:
            if isinstance(lambda_od, Schedule):
                raise ValueError("With a scheduled lambda_od, pass lambda_d explicitly.")
            lambda_d = 10.0 * lambda_od if kind == "i" else lambda_od
        self._set_coefficient("lambda_d", lambda_d)

    def settings(self) -> dict:
        return {**super().settings(), "kind": self.kind}

    def _latent_term(self, model_site, guide_site):
        kl_vec = _kl(guide_site, model_site)
        kl = kl_vec.sum()
        loc, scale = _diag_normal(guide_site["fn"], self.latent_site)
        cov = dip_covariance(loc, scale, self.kind)
        diag = torch.diagonal(cov, dim1=-2, dim2=-1)
        off = cov.pow(2).sum((-2, -1)) - diag.pow(2).sum(-1)
        on = (diag - 1.0).pow(2).sum(-1)
        n = _n_eff(guide_site, kl_vec.shape).sum(-1)
        penalty = ((self._coef("lambda_od", kl) * off + self._coef("lambda_d", kl) * on) * n).sum()
        return -kl - penalty, {
            "kl": kl,
            "dip_offdiag": off.sum(),
            "dip_diag": on.sum(),
            "dip_penalty": penalty,
        }


# --------------------------------------------------------------------------------------------
# JIT-compiled variants
# --------------------------------------------------------------------------------------------
class _JitMixin:
    """Compile ``differentiable_loss`` with :func:`pyro.ops.jit.trace`.

    The coefficients enter the compiled function as traced 0-dim tensor *inputs* (not
    constants), so a schedule changes their values without recompiling; the logged terms are
    a second output. As for Pyro's ``JitTrace*_ELBO``: the model must have static structure
    and every minibatch the same size (pick a ``batch_size`` that divides the dataset).
    """

    def __init__(self, *args, ignore_jit_warnings: bool = False, jit_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ignore_jit_warnings = ignore_jit_warnings
        self.jit_options = jit_options
        self._jit_loss: dict = {}
        self._term_keys: list[str] = []
        self._traced_coefs: dict[str, torch.Tensor] | None = None

    def _coef(self, name, like):
        if self._traced_coefs is not None:
            return self._traced_coefs[name].to(dtype=like.dtype, device=like.device)
        return super()._coef(name, like)

    def _compile(self, model, guide, names):
        weakself = weakref.ref(self)

        @pyro.ops.jit.trace(ignore_warnings=self.ignore_jit_warnings, jit_options=self.jit_options)
        def jit_loss(*coefs_and_args, **kwargs):
            kwargs.pop("_pyro_model_id")
            kwargs.pop("_pyro_guide_id")
            self = weakself()
            coefs, args = coefs_and_args[: len(names)], coefs_and_args[len(names) :]
            self._traced_coefs = dict(zip(names, coefs, strict=True))
            try:
                loss = 0.0
                for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                    _, particle = self._differentiable_loss_particle(model_trace, guide_trace)
                    loss = loss + particle / self.num_particles
            finally:
                self._traced_coefs = None
            acc, self._acc = self._acc, {}
            self._term_keys = list(acc)
            terms = torch.stack(
                [torch.as_tensor(acc[k], dtype=loss.dtype, device=loss.device) for k in acc]
            )
            return loss, terms.detach() / self.num_particles

        return jit_loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a differentiable tensor, from the compiled function."""
        like = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), None)
        if like is None:
            raise TypeError(
                f"{type(self).__name__} needs a floating-point tensor among the model's "
                "positional arguments (the data), to place the coefficients."
            )
        names = list(self._schedules)
        # bound methods are new objects at every attribute access: key them by their parts
        key = (_callable_key(model), _callable_key(guide))
        if key not in self._jit_loss:
            self._jit_loss[key] = self._compile(model, guide, names)
        kwargs = {**kwargs, "_pyro_model_id": key[0], "_pyro_guide_id": key[1]}
        coefs = [super(_JitMixin, self)._coef(n, like) for n in names]
        loss, terms = self._jit_loss[key](*coefs, *args, **kwargs)
        self._acc = {}
        self._last_terms = dict(zip(self._term_keys, terms.tolist(), strict=True))
        return loss

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """The loss as a float, after ``backward`` on the compiled loss."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)


def _callable_key(fn) -> tuple:
    owner, func = getattr(fn, "__self__", None), getattr(fn, "__func__", None)
    return (id(owner), id(func)) if owner is not None and func is not None else (id(fn),)


class JitBetaELBO(_JitMixin, BetaELBO):
    """:class:`BetaELBO` compiled with :func:`pyro.ops.jit.trace`; ``beta`` is a traced input.

    Extra parameters: ``ignore_jit_warnings`` and ``jit_options`` as for
    :class:`pyro.infer.JitTraceMeanField_ELBO`. See :class:`_JitMixin` for the restrictions.
    """


class JitCapacityELBO(_JitMixin, CapacityELBO):
    """:class:`CapacityELBO` compiled with :func:`pyro.ops.jit.trace` (see :class:`JitBetaELBO`)."""


class JitBetaTCELBO(_JitMixin, BetaTCELBO):
    """:class:`BetaTCELBO` compiled with :func:`pyro.ops.jit.trace` (see :class:`JitBetaELBO`)."""


class JitDIPVAELoss(_JitMixin, DIPVAELoss):
    """:class:`DIPVAELoss` compiled with :func:`pyro.ops.jit.trace` (see :class:`JitBetaELBO`)."""
