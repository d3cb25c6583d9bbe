r"""Pyro SVI results as ArviZ DataTrees: :func:`from_pyro`.

arviz-base converts MCMC runs of NumPyro, Stan or emcee, but has no converter for Pyro's
stochastic variational inference (arviz-devs/arviz#2453). :func:`from_pyro` is one, for the
amortised models pyrobust works with: a ``model(x, ...)`` and a ``guide(x, ...)`` written the
way Pyro users write them, both with a data plate over the inputs.

Its semantics are those of ``pyro.infer.Predictive(model, guide=guide)``: every latent site is
drawn from the guide at the data and replayed into the model; nothing is drawn from the model's
prior. Unlike ``Predictive``, which returns an observed site as its observed value, the
``posterior_predictive`` group holds fresh draws from each observed site's distribution, and
``log_likelihood`` holds :math:`\log p(x_n \mid z^{(s)}_n)` per input, so ``arviz_stats.loo``,
``plot_ppc_dist`` and ``plot_ppc_pit`` work on the result.

Draws are vectorised by folding them into the data plate (the model sees ``S * n`` inputs at
once), the way pyrobust's robustness queries draw, so a model written for one batch dim works
unchanged; ``max_batch`` bounds the rows of one call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyrobust._results import make_tree, model_identity

__all__ = ["from_pyro"]

#: Default cap on the rows (draws x inputs) of one model call.
DEFAULT_MAX_BATCH = 16384


def _event_dim_names(site: str, event_ndim: int, *, observed: bool, latent: bool) -> list[str]:
    if observed:
        names = {0: [], 1: ["feature"], 2: ["row", "col"], 3: ["channel", "row", "col"]}
        if event_ndim in names:
            return names[event_ndim]
    if latent and event_ndim == 1:
        return ["latent"]
    return [f"{site}_dim_{i}" for i in range(event_ndim)]


def _fold(value: Any, n: int, s: int) -> Any:
    """Repeat a tensor whose leading dim is ``n`` ``s`` times along that dim (draw-major)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
        return value.unsqueeze(0).expand(s, *value.shape).reshape(s * n, *value.shape[1:])
    return value


def _modules(*fns: Callable) -> list[torch.nn.Module]:
    out: list[torch.nn.Module] = []
    for fn in fns:
        for obj in (getattr(fn, "__self__", None), fn):
            if isinstance(obj, torch.nn.Module) and all(obj is not m for m in out):
                out.append(obj)
    return out


@contextlib.contextmanager
def _eval_mode(modules: Sequence[torch.nn.Module]):
    """Switch modules (and their children) to eval mode, restoring each one's flag after."""
    flags = [(m, m.training) for mod in modules for m in mod.modules()]
    try:
        for mod in modules:
            mod.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _data_frame(site: dict, rows: int, data_plate: str | None):
    """The cond-indep frame of the data plate of ``site`` (or None)."""
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and (
            frame.name == data_plate if data_plate is not None else frame.size == rows
        ):
            return frame
    return None


def _batch_axis(site: dict, frame) -> int:
    """Position of the data plate's axis in ``site["value"]``."""
    value = site["value"]
    batch_ndim = value.dim() - site["fn"].event_dim
    return batch_ndim + frame.dim


def _per_input(value: torch.Tensor, axis: int, s: int, n: int) -> torch.Tensor:
    """Move the folded data axis to the front and unfold it into ``(s, n, ...)``."""
    value = value.movedim(axis, 0)
    return value.reshape(s, n, *value.shape[1:])


def _check_args(
    data: Any, num_samples: Any, model_args: Any, model_kwargs: Any, max_batch: Any
) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() < 1 or data.shape[0] < 1:
        raise TypeError(
            "from_pyro: data must be a torch.Tensor of inputs with a leading batch dim "
            f"(n, ...); got {type(data).__name__}"
            + (f" of shape {tuple(data.shape)}" if isinstance(data, torch.Tensor) else "")
            + ". Pass the tensor the model and guide take as their first argument."
        )
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(f"from_pyro: num_samples must be an int >= 1; got {num_samples!r}.")
    if num_samples < 1:
        raise ValueError(f"from_pyro: num_samples must be >= 1; got {num_samples}.")
    if not isinstance(model_args, tuple):
        raise TypeError(
            f"from_pyro: model_args must be a tuple of extra positional arguments; got "
            f"{type(model_args).__name__}. Write model_args=(a,) for one argument."
        )
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise TypeError(
            f"from_pyro: model_kwargs must be a dict or None; got {type(model_kwargs).__name__}."
        )
    if max_batch is not None and (
        isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1
    ):
        raise ValueError(f"from_pyro: max_batch must be an int >= 1 or None; got {max_batch!r}.")


def _draw_chunk(model, guide, data, s, model_args, model_kwargs, data_plate, obs_sites):
    """One folded pass: guide trace, model replayed on it, per-site tensors ``(s, n, ...)``."""
    n = data.shape[0]
    rows = s * n
    x = _fold(data, n, s)
    args = tuple(_fold(a, n, s) for a in model_args)
    kwargs = {k: _fold(v, n, s) for k, v in model_kwargs.items()}
    guide_tr = poutine.trace(guide).get_trace(x, *args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, *args, **kwargs)
    posterior: dict[str, torch.Tensor] = {}
    event_ndims: dict[str, int] = {}
    plates: dict[str, list[str | None]] = {}
    for name, site in guide_tr.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        frame = _data_frame(site, rows, data_plate)
        if frame is None:
            raise ValueError(
                f"from_pyro: guide site {name!r} is not inside the data plate "
                f"({_plate_text(data_plate)}), so its draws cannot be told apart per input "
                "(a global latent). from_pyro converts amortised guides whose latent sites "
                "all sit in the data plate; for global latents use pyro.infer.Predictive and "
                "arviz_base.from_dict."
            )
        axis = _batch_axis(site, frame)
        posterior[name] = _per_input(site["value"], axis, s, n)
        event_ndims[name] = site["fn"].event_dim
        plates[name] = _plate_names(site, axis)
    observed = [
        name
        for name, site in model_tr.nodes.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("_deterministic", False)  # pyro.deterministic observes too
    ]
    prior_only = [
        name
        for name, site in model_tr.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and name not in guide_tr.nodes
        and not site["infer"].get("_deterministic", False)
    ]
    if prior_only:
        raise ValueError(
            f"from_pyro: model latent site(s) {prior_only} are not sampled by the guide, so "
            "they would be drawn from the prior. Sample them in the guide too (or make them "
            "pyro.deterministic / observed)."
        )
    wanted = observed if obs_sites is None else list(obs_sites)
    unknown = [o for o in wanted if o not in observed]
    if unknown:
        raise ValueError(
            f"from_pyro: obs_site {unknown} is not an observed site of the model (observed "
            f"sites: {observed}); pass one of them, or None for all."
        )
    if not wanted:
        raise ValueError(
            "from_pyro: the model has no observed site (a pyro.sample with obs=); it must "
            "observe the data so that log_likelihood and posterior_predictive exist."
        )
    ppc, loglik, obs_data = {}, {}, {}
    for name in wanted:
        site = model_tr.nodes[name]
        frame = _data_frame(site, rows, data_plate)
        if frame is None:
            raise ValueError(
                f"from_pyro: observed site {name!r} is not inside the data plate "
                f"({_plate_text(data_plate)}); observe the data inside "
                'pyro.plate("data", len(x)) so each input has its own likelihood.'
            )
        fn, axis = site["fn"], _batch_axis(site, frame)
        ppc[name] = _per_input(fn.sample(), axis, s, n)
        obs_data[name] = _per_input(site["value"], axis, s, n)[0]
        lp = fn.log_prob(site["value"])  # batch shape
        lp = lp.movedim(axis, 0).reshape(rows, -1).sum(-1)
        loglik[name] = lp.reshape(s, n)
        event_ndims[name] = fn.event_dim + (site["value"].dim() - fn.event_dim - 1)
    deterministic = {
        name: _per_input(site["value"], 0, s, n)
        for name, site in model_tr.nodes.items()
        if site["type"] == "sample"
        and site["infer"].get("_deterministic", False)
        and site["value"].dim() >= 1
        and site["value"].shape[0] == rows
    }
    params = {
        name: site["value"]
        for tr in (guide_tr, model_tr)
        for name, site in tr.nodes.items()
        if site["type"] == "param"
    }
    return posterior, deterministic, ppc, loglik, obs_data, (event_ndims, plates), params


def _plate_names(site: dict, data_axis: int) -> list[str | None]:
    """Names of the plates over the batch dims of ``site`` other than the data plate."""
    batch_ndim = site["value"].dim() - site["fn"].event_dim
    names: list[str | None] = [None] * batch_ndim
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and 0 <= batch_ndim + frame.dim < batch_ndim:
            names[batch_ndim + frame.dim] = frame.name
    return [nm for i, nm in enumerate(names) if i != data_axis]


def _plate_text(data_plate: str | None) -> str:
    return f"plate {data_plate!r}" if data_plate else "the plate over the inputs"


def from_pyro(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    *,
    num_samples: int,
    model_args: tuple = (),
    model_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = None,
    obs_site: str | Sequence[str] | None = None,
    latent_site: str = "z",
    data_plate: str | None = None,
    max_batch: int | None = DEFAULT_MAX_BATCH,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    r"""Convert a Pyro model and its (SVI-trained) guide, at some data, to an ArviZ DataTree.

    For draws :math:`s = 1..S` and inputs :math:`n = 1..N`:

    * ``posterior``: every latent site of the guide, :math:`z^{(s)}_n \sim q(z \mid x_n)`,
      plus the model's ``pyro.deterministic`` sites;
    * ``posterior_predictive``: each observed site redrawn,
      :math:`\tilde x^{(s)}_n \sim p(x \mid z^{(s)}_n)`, named as the site;
    * ``log_likelihood``: :math:`\log p(x_n \mid z^{(s)}_n)` per input (summed over the site's
      event dims and any plate other than the data plate), so ``arviz_stats.loo`` estimates the
      expected log pointwise predictive density of the amortised posterior
      (Vehtari, Gelman and Gabry 2017);
    * ``observed_data``: the observed value of each observed site.

    Every variable has dims ``(chain, draw, obs_id, ...)`` with one chain; the data plate (the
    plate whose size is the number of inputs, or ``data_plate``) becomes ``obs_id``; event dims
    are ``latent`` for ``latent_site``, ``feature`` / ``row, col`` / ``channel, row, col`` for
    observed sites, else ``<site>_dim_<i>``. The attrs record the settings, the model identity
    (:func:`pyrobust._results.model_identity` of the param sites the traces read) and ArviZ's
    standard attrs.

    Parameters
    ----------
    model, guide : callable
        Called as ``model(data, *model_args, **model_kwargs)``, as ``pyro.infer.Predictive``
        calls them. Modules in training mode are switched to eval for the draws and restored.
    data : torch.Tensor
        Inputs ``(N, ...)``, the model's and guide's first argument.
    num_samples : int
        Draws :math:`S` per input.
    model_args : tuple, default ()
        Extra positional arguments; tensors whose leading dim is ``N`` follow their input.
    model_kwargs : dict, optional
        Extra keyword arguments; tensors whose leading dim is ``N`` follow their input.
    seed : int, optional
        Seeds the draws (torch's global generator is forked and restored, so the caller's
        stream is untouched). ``None``: a seed drawn from torch's global generator, so
        ``pyro.set_rng_seed`` governs it; the seed used is stored in the attrs.
    obs_site : str or sequence of str, optional
        Observed sites to convert (default: all).
    latent_site : str, default "z"
        The latent site whose single event dim is named ``latent``.
    data_plate : str, optional
        Name of the data plate (default: the plate whose size is the number of rows).
    max_batch : int or None, default 16384
        At most this many rows (draws x inputs) per model call; ``None``: all at once.
    dims : mapping of {variable: dims}, optional
        Dims after ``(chain, draw, obs_id)`` for any variable, overriding the defaults.
    coords : mapping of {dim: values}, optional
        Coordinates (e.g. ``obs_id`` labels).
    attrs : mapping, optional
        Extra root attrs (e.g. ``run_dir``, ``objective``).

    Returns
    -------
    xarray.DataTree

    Raises
    ------
    ValueError
        If a guide latent site lies outside the data plate (a global latent), a model latent
        site is not sampled by the guide (it would come from the prior), an ``obs_site`` is not
        observed, or the model observes nothing.

    Notes
    -----
    In a VAE each input has its own latent :math:`z_n`, so leaving :math:`x_n` out leaves
    :math:`z_n` at its prior, and PSIS-LOO's estimate of :math:`\log p(x_n \mid x_{-n})`
    becomes the harmonic-mean estimate :math:`-\log \frac1S \sum_s 1/p(x_n \mid z^{(s)}_n)`
    of :math:`\log p(x_n)`, whose importance weights have heavy tails: expect Pareto
    :math:`\hat k > 0.7` and take ``loo`` as a diagnostic that ranks models fitted to the same
    data. ``pyrobust.inference.importance_log_likelihood`` is the better estimate of
    :math:`\log p(x_n)` itself. ``arviz_plots.plot_ppc_pit`` (0.8) takes one value per
    observation, so it works on a scalar observed site; ``plot_ppc_dist`` works on any.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch, arviz_stats
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5).to_event(1))
    >>> tree = from_pyro(model, guide, torch.randn(20, 1), num_samples=100, seed=0)
    >>> tree["posterior"]["z"].dims
    ('chain', 'draw', 'obs_id', 'latent')
    >>> import warnings
    >>> with warnings.catch_warnings():  # Pareto k is high for per-input latents (see Notes)
    ...     warnings.simplefilter("ignore")
    ...     elpd = float(arviz_stats.loo(tree).elpd)
    >>> elpd < 0
    True
    """
    model_kwargs = dict(model_kwargs or {})
    _check_args(data, num_samples, model_args, model_kwargs, max_batch)
    obs_sites = [obs_site] if isinstance(obs_site, str) else obs_site
    n = int(data.shape[0])
    num_samples = int(num_samples)
    seed_used = int(torch.randint(0, 2**62, ()).item()) if seed is None else int(seed)
    per_call = num_samples if max_batch is None else max(1, int(max_batch) // n)
    chunks = [min(per_call, num_samples - i) for i in range(0, num_samples, per_call)]
    devices = []
    if data.device.type == "cuda":  # fork (and restore) the generator of data's GPU too
        index = data.device.index
        devices = [torch.cuda.current_device() if index is None else index]
    parts: list[tuple] = []
    with (
        torch.random.fork_rng(devices=devices),
        torch.no_grad(),
        _eval_mode(_modules(model, guide)),
    ):
        torch.manual_seed(seed_used)
        for s in chunks:
            parts.append(
                _draw_chunk(model, guide, data, s, model_args, model_kwargs, data_plate, obs_sites)
            )
    posterior = _cat([p[0] for p in parts])
    deterministic = _cat([p[1] for p in parts])
    ppc = _cat([p[2] for p in parts])
    loglik = _cat([p[3] for p in parts])
    obs_data = parts[0][4]
    (event_ndims, plates), params = parts[0][5], parts[0][6]
    clash = sorted(set(deterministic) & set(posterior))
    if clash:  # pragma: no cover - pyro forbids duplicate site names
        raise ValueError(f"from_pyro: site names {clash} appear in the guide and the model.")
    all_dims: dict[str, list[str]] = {}
    for name, value in {**posterior, **deterministic}.items():
        k = event_ndims.get(name, value.dim() - 2)
        extra = value.dim() - 2 - k  # batch dims other than the data plate
        names = plates.get(name, [])
        all_dims[name] = [
            "obs_id",
            *[
                names[i] if i < len(names) and names[i] else f"{name}_plate_{i}"
                for i in range(extra)
            ],
            *_event_dim_names(name, k, observed=False, latent=name == latent_site),
        ]
    for name, value in ppc.items():
        k = value.dim() - 2
        all_dims[name] = ["obs_id", *_event_dim_names(name, k, observed=True, latent=False)]
    for name, value in (dims or {}).items():
        all_dims[name] = ["obs_id", *list(value)]
    groups: dict[str, dict[str, Any]] = {}
    if posterior or deterministic:
        groups["posterior"] = {k: v.unsqueeze(0) for k, v in {**posterior, **deterministic}.items()}
    groups["posterior_predictive"] = {k: v.unsqueeze(0) for k, v in ppc.items()}
    groups["observed_data"] = dict(obs_data)
    tree_coords: dict[str, Any] = {"obs_id": np.arange(n), **dict(coords or {})}
    identity = model_identity(model, guide, _with_module_params(params, model, guide))
    settings = {
        "query": "from_pyro",
        "num_samples": num_samples,
        "seed": seed_used,
        "latent_site": latent_site,
        "obs_site": list(ppc),
        "latent_sites": list(posterior),
        "data_plate": data_plate,
        "max_batch": max_batch,
        "log_likelihood": "log p(x_n | z_n^(s)), summed over event dims and inner plates",
        **identity,
        **dict(attrs or {}),
    }
    tree = make_tree(groups, dims=all_dims, coords=tree_coords, attrs=settings)
    # log_likelihood shares the observed site's name with posterior_predictive but has other
    # dims (obs_id only); from_dict takes one dims entry per name, so it is built apart.
    ll_tree = make_tree(
        {"log_likelihood": {k: v.unsqueeze(0) for k, v in loglik.items()}},
        dims={k: ["obs_id"] for k in loglik},
        coords=tree_coords,
    )
    tree["log_likelihood"] = ll_tree["log_likelihood"]
    tree["log_likelihood"].attrs = dict(tree["posterior_predictive"].attrs)
    return tree


def _with_module_params(params: dict[str, torch.Tensor], model, guide) -> dict[str, Any]:
    out = dict(params)
    for mod in _modules(model, guide):
        for name, p in mod.named_parameters():
            out.setdefault(f"module.{name}", p)
    return out


def _cat(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not dicts or not dicts[0]:
        return {}
    return {k: torch.cat([d[k] for d in dicts], dim=0) for k in dicts[0]}
