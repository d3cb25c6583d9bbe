r"""The site protocol: how any Pyro VAE plugs into pyrobust.

A VAE is a pair of Pyro callables ``model(x, *args, **kwargs)`` and ``guide(x, *args,
**kwargs)``, written the way Pyro users write them:

* the guide samples a **latent site** (default ``"z"``) from a diagonal Normal,
  ``dist.Normal(loc, scale).to_event(1)``, inside a data plate; it may sample other latent
  sites too (discrete or continuous, e.g. the digit ``"y"`` of an SS-VAE);
* the model samples the same sites from its priors and an **observed site** (default ``"x"``)
  whose distribution's ``.mean`` is the reconstruction :math:`g(z)` of [1]_. The observed site
  has its own shape (a flattened image, another modality, a conditional VAE's target):
  distances are norms over *its* event dims.

The reference semantics is ``pyro.infer.Predictive(model, guide=guide)``: every latent site of
the guide is drawn jointly from the guide at the (perturbed) input and replayed into the model;
nothing is ever drawn from the model's prior. Extra arguments ``model_args`` /
``model_kwargs`` are passed to both, as Predictive does; tensors among them whose leading dim is
the number of inputs follow their input when sample draws are folded into the data plate.

What the protocol cannot support is refused with a :class:`ValueError` that names the site or
plate and the fix: a guide that subsamples its data plate, latent sites of the model that the
guide does not sample, a latent site that is not a diagonal Normal, an observed site whose mean
does not have one row per input or is not finite.

Modules in training mode (batch norm, dropout) would make answers random and update running
statistics with perturbed inputs: every query runs under :func:`eval_mode`, which switches each
module to evaluation mode just before it first runs and restores the caller's flags afterwards.

Public here: :func:`guide_loc_scale` and :func:`model_mean`. The private :class:`Pair` is what the
robustness functions build on.

References
----------
.. [1] Camuto, Willetts, Roberts, Holmes, Rainforth. *Towards a Theoretical Understanding of
   the Robustness of Variational Autoencoders*. AISTATS 2021.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch import nn

__all__ = ["guide_loc_scale", "model_mean"]

#: Module classes whose behaviour depends on ``module.training``.
_MODE_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
)


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------
def check_model_args(model_args: Any, model_kwargs: Any) -> tuple[tuple, dict]:
    """Validate ``model_args`` (a tuple or list) and ``model_kwargs`` (a mapping or None)."""
    if model_args is None:
        model_args = ()
    if not isinstance(model_args, (tuple, list)):
        raise TypeError(
            f"`model_args` must be a tuple of extra positional arguments of model and guide "
            f"(called as model(x, *model_args, **model_kwargs)); got {type(model_args).__name__}. "
            "For one argument y pass model_args=(y,)."
        )
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
        raise TypeError(
            "`model_kwargs` must be a dict of keyword arguments of model and guide; got "
            f"{type(model_kwargs).__name__}."
        )
    return tuple(model_args), dict(model_kwargs)


def _fold(value: Any, n: int, reps: int) -> Any:
    """Repeat a per-input tensor (leading dim ``n``) ``reps`` times along dim 0."""
    if reps != 1 and isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
        return value.repeat(reps, *([1] * (value.dim() - 1)))
    return value


def _event_dims(event_ndim: int) -> tuple[str, ...]:
    names = {0: (), 1: ("feature",), 2: ("row", "col"), 3: ("channel", "row", "col")}
    return names.get(event_ndim, tuple(f"event_dim_{i}" for i in range(event_ndim)))


def _output_dims(obs_event, x_event, obs_site) -> tuple[str, ...]:
    names = _event_dims(len(obs_event))
    x_names = dict(zip(_event_dims(len(x_event)), x_event, strict=True))
    if any(x_names.get(name, size) != size for name, size in zip(names, obs_event, strict=True)):
        names = tuple(f"{obs_site}_{name}" for name in names)
    return names


def _reads_x_shape_only(model) -> bool:
    """True for :class:`pyrobust.models.VAE`'s own model, which reads only the shape, dtype
    and device of ``x`` when the latent site is given (and the observed value, never scored by
    the queries). Its draws can then be decoded with a zero-stride view instead of a copy of
    ``x`` per draw. Any other model may use the values of ``x`` (a conditional decoder)."""
    from pyrobust.models.vae import VAE

    return getattr(model, "__func__", None) is VAE.model and isinstance(model.__self__, VAE)


@contextlib.contextmanager
def _restore_rng(device: torch.device) -> Iterator[None]:
    """Leave torch's global generators (CPU, and ``device``'s when CUDA) as they were."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global generators Pyro samples from (CPU, and ``device``'s when CUDA) inside
    the block, restoring them afterwards: draws that go through ``pyro.sample`` become
    reproducible without touching the caller's RNG state (other CUDA devices included)."""
    with _restore_rng(device):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[device.index or 0].manual_seed(seed)
        yield


def _take(value: Any, n: int, index: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
        return value[index.to(value.device)]
    return value


# --------------------------------------------------------------------------------------------
# evaluation mode
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(
    switched: list[str] | None = None, modules: list[nn.Module] | None = None
) -> Iterator[None]:
    """Run every ``torch.nn.Module`` that executes inside the block in evaluation mode.

    A global forward pre-hook sets ``module.training = False`` just before a module first runs
    (so batch-norm statistics are never updated and dropout is off) and the caller's flags are
    restored on exit. Class names of mode-dependent modules (batch norm, instance norm,
    dropout) that were in training mode are appended to ``switched``; every module that ran
    is appended to ``modules``.
    """
    flags: dict[nn.Module, bool] = {}

    def hook(module, args):
        if module not in flags:
            flags[module] = module.training
            if modules is not None:
                modules.append(module)
            if module.training:
                module.training = False
                if switched is not None and isinstance(module, _MODE_DEPENDENT):
                    switched.append(type(module).__name__)
            _check_module_inputs(module, args)

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        for module, flag in flags.items():
            module.training = flag


def _check_module_inputs(module: nn.Module, args: tuple) -> None:
    """Name a dtype/device mismatch between the inputs and a module's parameters (not under
    autocast, where mixed dtypes are intended)."""
    param = next(module.parameters(recurse=False), None)
    if param is None or not param.dtype.is_floating_point:
        return
    if torch.is_autocast_enabled(param.device.type):
        return
    for a in args:
        if isinstance(a, torch.Tensor) and a.dtype.is_floating_point:
            if a.dtype != param.dtype:
                raise TypeError(
                    f"`x` reaches the network {type(module).__name__} as {a.dtype}, but its "
                    f"parameters are {param.dtype}. Convert the inputs to the model's dtype, "
                    f"e.g. x.to({param.dtype}) (numpy arrays default to float64)."
                )
            if a.device != param.device:
                raise ValueError(
                    f"`x` is on {a.device} but the network {type(module).__name__} is on "
                    f"{param.device}. Move the inputs to the model's device, e.g. "
                    f"x.to('{param.device}'), or the model with model.to(x.device)."
                )
            return


# --------------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------------
def _unwrap(fn):
    base = fn
    while isinstance(base, (torch.distributions.Independent, dist.MaskedDistribution)):
        base = base.base_dist
    return base


def _diag_normal(fn, latent_site: str) -> tuple[torch.Tensor, torch.Tensor]:
    base = _unwrap(fn)
    if not isinstance(base, torch.distributions.Normal):
        raise ValueError(
            f"The guide's latent site {latent_site!r} must be a diagonal Normal, "
            f"dist.Normal(loc, scale).to_event(1); found {type(fn).__name__} "
            f"(base distribution {type(base).__name__}). pyrobust needs the encoder mean and "
            "standard deviation; rewrite the guide's latent site as a diagonal Normal, or name "
            "another site with `latent_site=`."
        )
    loc, scale = torch.broadcast_tensors(base.loc, base.scale)
    return loc, scale


def _centre(fn, name: str) -> torch.Tensor:
    """The documented value an extra latent site is held at: mean (continuous), mode (discrete)."""
    discrete = getattr(fn.support, "is_discrete", False)
    try:
        value = fn.mode if discrete else fn.mean
    except NotImplementedError as err:
        kind = "mode" if discrete else "mean"
        raise ValueError(
            f"The guide's site {name!r} ({type(fn).__name__}) has no {kind}; reference='mean' "
            f"holds every extra latent site at its {kind}. Use reference='sample'."
        ) from err
    if not bool(torch.isfinite(value.float() if not value.is_floating_point() else value).all()):
        kind = "mode (a tie, e.g. Bernoulli(0.5))" if discrete else "mean"
        raise ValueError(
            f"The guide's site {name!r} ({type(fn).__name__}) has a non-finite {kind}; "
            f"reference='mean' holds extra latent sites at their {'mode' if discrete else 'mean'}"
            ". Use reference='sample'."
        )
    return value


class _AtCentre(Messenger):
    """Sets the latent site to its loc and every other guide site to its mean/mode."""

    def __init__(self, latent_site: str):
        super().__init__()
        self.latent_site = latent_site

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        if msg["name"] == self.latent_site:
            msg["value"] = _diag_normal(msg["fn"], self.latent_site)[0]
        else:
            msg["value"] = _centre(msg["fn"], msg["name"])
        msg["done"] = True


class _Reparam(Messenger):
    """Draws the latent site as ``loc + eta * scale`` with the given noise ``eta``."""

    def __init__(self, latent_site: str, eta: torch.Tensor):
        super().__init__()
        self.latent_site, self.eta = latent_site, eta

    def _pyro_sample(self, msg) -> None:
        if msg["name"] == self.latent_site and not msg["is_observed"]:
            loc, scale = _diag_normal(msg["fn"], self.latent_site)
            msg["value"] = loc + self.eta * scale
            msg["done"] = True


def _latents(trace) -> dict[str, dict]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not isinstance(site["fn"], _Subsample)
    }


def _sample_site_names(trace) -> list[str]:
    return [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and not isinstance(s["fn"], _Subsample)
    ]


def _get_site(trace, name: str, role: str, arg: str, owner: str) -> dict:
    site = trace.nodes.get(name)
    if site is None or site["type"] != "sample" or isinstance(site["fn"], _Subsample):
        raise ValueError(
            f"{owner} has no sample site named {name!r} ({role}); its sample sites are "
            f"{_sample_site_names(trace)}. Pass the right name with `{arg}=`."
        )
    return site


def per_row_log_prob(site: dict, rows: int, owner: str) -> torch.Tensor:
    """The unscaled log-density of one site summed per data row, shape ``(rows,)``.

    Sites inside the data plate have ``rows`` as a batch dim; a plate-less site that declares
    the rows as event dims (``.to_event(2)``) is read from its base distribution, whose
    log-density factorises over rows.
    """
    fn, value = site["fn"], site["value"]
    lp = fn.log_prob(value)
    if site.get("mask") is not None and site["mask"] is not True:
        lp = lp * site["mask"]
    if lp.dim() >= 1 and lp.shape[0] == rows:
        return lp.reshape(rows, -1).sum(-1)
    base = _unwrap(fn)
    if base is not fn:
        lp = base.log_prob(value)
        if lp.dim() >= 1 and lp.shape[0] == rows:
            return lp.reshape(rows, -1).sum(-1)
    if rows == 1:
        return lp.reshape(1, -1).sum(-1)
    raise ValueError(
        f"{owner}'s site {site['name']!r} has a log-density of shape {tuple(lp.shape)}, not one "
        f"value per input ({rows} rows). Put it inside the data plate, "
        "pyro.plate('data', len(x))."
    )


# --------------------------------------------------------------------------------------------
# the pair
# --------------------------------------------------------------------------------------------
class Pair:
    """A model/guide pair bound to its inputs' extra arguments and site names (private).

    Built once per public call by :meth:`Pair.build`, which traces the guide and the model at
    the inputs, checks the protocol and records the site structure:

    * ``extra``: names of the guide's latent sites other than ``latent_site``;
    * ``fast``: no extra sites, so :math:`\\mu, \\sigma` depend on ``x`` only and a draw is
      ``loc + eta * scale`` decoded by the model (no guide call per draw);
    * ``obs_event``: the observed site's event shape; ``obs_value``: its observed value at the
      inputs (``None`` when not observed).
    """

    def __init__(self, model, guide, n, args, kwargs, latent_site, obs_site):
        self.model, self.guide, self.n = model, guide, n
        self.args, self.kwargs = args, kwargs
        self.latent_site, self.obs_site = latent_site, obs_site
        self.extra: tuple[str, ...] = ()
        self.fast = True
        self.d_z = 0
        self.obs_event: tuple[int, ...] = ()
        self.obs_value: torch.Tensor | None = None
        self.obs_deterministic = False
        self.switched: list[str] = []
        self.params: list[torch.Tensor] = []
        self.x_values_unused = _reads_x_shape_only(model)
        self._folded: dict[int, tuple[tuple, dict]] = {}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        *,
        model_args: Any = (),
        model_kwargs: Any = None,
        latent_site: str = "z",
        obs_site: str = "x",
    ) -> Pair:
        """Trace ``guide`` and ``model`` at ``x`` and check the protocol (see the class doc)."""
        for arg, value in (("model", model), ("guide", guide)):
            if not callable(value):
                raise TypeError(
                    f"`{arg}` must be a Pyro callable (a function or method running Pyro "
                    f"primitives); got {type(value).__name__}."
                )
        args, kwargs = check_model_args(model_args, model_kwargs)
        pair = cls(model, guide, x.shape[0], args, kwargs, latent_site, obs_site)
        pair._check_args(x)
        modules: list[nn.Module] = []
        with (
            torch.no_grad(),
            eval_mode(pair.switched, modules),
            pyro.validation_enabled(False),
            _restore_rng(x.device),
        ):
            guide_tr = poutine.trace(guide).get_trace(x, *args, **kwargs)
            pair._check_guide(guide_tr)
            model_tr = pair._model_trace(x, {k: s["value"] for k, s in _latents(guide_tr).items()})
            pair._check_model(model_tr, guide_tr)
        pair._collect_params(modules, guide_tr, model_tr)
        return pair

    def _check_args(self, x: torch.Tensor) -> None:
        """Refuse extra arguments the folding cannot carry along, by name."""
        if "x" in self.kwargs:
            raise ValueError(
                "`model_kwargs` holds 'x', but the inputs are passed as the first argument "
                "(model(x, *model_args, **model_kwargs)). Pass x as the query's x."
            )
        named = [(f"model_args[{i}]", v) for i, v in enumerate(self.args)]
        named += [(f"model_kwargs[{k!r}]", v) for k, v in self.kwargs.items()]
        for name, value in named:
            if isinstance(value, np.ndarray) or (
                isinstance(value, (list, tuple)) and len(value) == self.n and self.n > 1
            ):
                raise TypeError(
                    f"`{name}` is a {type(value).__name__}; per-input values must be torch "
                    "tensors with leading dim len(x), so that they follow their input when "
                    f"draws are folded into the data plate. Convert it: torch.as_tensor(...)."
                )
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == self.n:
                if value.device != x.device:
                    raise ValueError(
                        f"`{name}` is on {value.device} but x is on {x.device}; move it with "
                        f".to(x.device)."
                    )

    def _collect_params(self, modules, *traces) -> None:
        """The tensors the pair computes with: params of the modules that ran, and param sites."""
        seen: dict[int, torch.Tensor] = {}
        for module in modules:
            for p in module.parameters(recurse=False):
                seen.setdefault(id(p), p)
            for b in module.buffers(recurse=False):
                seen.setdefault(id(b), b)
        for trace in traces:
            for site in trace.nodes.values():
                if site["type"] == "param":
                    seen.setdefault(id(site["value"]), site["value"])
        self.params = list(seen.values())

    def identity(self) -> dict[str, Any]:
        """``model_hash`` (SHA-256 of the tensors used) and ``model_name``, for result attrs."""
        from pyrobust._results import model_identity

        return model_identity(self.model, self.guide, self.params)

    @classmethod
    def build_guide(
        cls,
        guide: Callable,
        x: torch.Tensor,
        *,
        model_args: Any = (),
        model_kwargs: Any = None,
        latent_site: str = "z",
    ) -> Pair:
        """Like :meth:`build` for functions that need the guide only (no model checks)."""
        if not callable(guide):
            raise TypeError(f"`guide` must be a Pyro callable; got {type(guide).__name__}.")
        args, kwargs = check_model_args(model_args, model_kwargs)
        pair = cls(None, guide, x.shape[0], args, kwargs, latent_site, None)
        pair._check_args(x)
        modules: list[nn.Module] = []
        with torch.no_grad(), eval_mode(pair.switched, modules), pyro.validation_enabled(False):
            trace = pair._guide_trace(x)
            pair._check_guide(trace)
        pair._collect_params(modules, trace)
        return pair

    def _check_guide(self, trace) -> None:
        n = self.n
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and isinstance(site["fn"], _Subsample):
                fn = site["fn"]
                if fn.subsample_size is not None and 0 < fn.subsample_size < fn.size:
                    raise ValueError(
                        f"The guide subsamples its plate {name!r} (size {fn.size}, "
                        f"subsample_size {fn.subsample_size}): its statistics would be paired "
                        "with the wrong inputs. Queries need one row per input: call the plate "
                        f"without subsample_size, e.g. pyro.plate({name!r}, len(x))."
                    )
        latents = _latents(trace)
        if self.latent_site not in latents:
            _get_site(trace, self.latent_site, "the latent site", "latent_site", "The guide")
            raise ValueError(
                f"The guide's site {self.latent_site!r} is observed; the latent site must be "
                "sampled by the guide. Pass the right name with `latent_site=`."
            )
        loc, _ = _diag_normal(latents[self.latent_site]["fn"], self.latent_site)
        if loc.dim() != 2 or loc.shape[0] != n:
            raise ValueError(
                f"The guide's latent site {self.latent_site!r} has loc of shape "
                f"{tuple(loc.shape)}; the protocol needs (len(x), d_z) = ({n}, d_z): one row per "
                "input inside a data plate, pyro.plate('data', len(x)), with "
                "dist.Normal(loc, scale).to_event(1)."
            )
        self.d_z = loc.shape[-1]
        self.extra = tuple(k for k in latents if k != self.latent_site)
        shared = [
            k
            for k in self.extra
            if not isinstance(latents[k]["value"], torch.Tensor)
            or latents[k]["value"].dim() == 0
            or latents[k]["value"].shape[0] != n
        ]
        if shared:
            raise ValueError(
                f"The guide samples site(s) {shared} without one row per input (outside the "
                "data plate): folded into the data plate, every draw would share one value of "
                "them, unlike pyro.infer.Predictive. Sample them inside "
                "pyro.plate('data', len(x)), or fix them with poutine.condition."
            )
        self.fast = not self.extra

    def _check_model(self, trace, guide_trace) -> None:
        site = _get_site(trace, self.obs_site, "the observed site", "obs_site", "The model")
        _get_site(trace, self.latent_site, "the latent site", "latent_site", "The model")
        guide_latents = set(_latents(guide_trace))
        prior_only = [
            k for k, s in _latents(trace).items() if k not in guide_latents and k != self.obs_site
        ]
        if prior_only:
            raise ValueError(
                f"The model samples latent site(s) {prior_only} that the guide does not; they "
                "would be drawn from the prior behind your back. Sample them in the guide "
                "(Predictive semantics replays every guide site), or observe them."
            )
        self.obs_deterministic = bool(site["infer"].get("_deterministic", False))
        mean = self._mean(site, self.n)
        self.obs_event = tuple(mean.shape[1:])
        if site["is_observed"]:
            value = site["value"]
            if isinstance(value, torch.Tensor) and value.shape[:1] == (self.n,):
                self.obs_value = value.detach()

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The context every query runs its model/guide calls in: modules in eval mode, Pyro
        validation off (inputs were validated once at the public boundary)."""
        with eval_mode(self.switched), pyro.validation_enabled(False):
            yield

    def attrs(self) -> dict[str, Any]:
        """Settings describing how the pair was read, for a result's attrs."""
        return {
            **self.identity(),
            "latent_site": self.latent_site,
            "obs_site": self.obs_site,
            "extra_latent_sites": list(self.extra),
            "extra_sites_in_reference": "guide mean (continuous) / mode (discrete)"
            if self.extra
            else "none",
            "eval_mode_modules": sorted(set(self.switched)),
            "obs_event_shape": list(self.obs_event),
        }

    def observed(self, x: torch.Tensor) -> tuple[dict, dict]:
        """``observed_data`` content and dims: the observed site's value at the inputs ``x``.

        When that value is ``x`` itself (same shape and values), ``x`` is observed and belongs
        in ``observed_data`` only: see :meth:`x_is_observed`.
        """
        if self.obs_value is None:
            return {}, {}
        names = _output_dims(self.obs_event, tuple(x.shape[1:]), self.obs_site)
        return {self.obs_site: self.obs_value}, {self.obs_site: ["obs_id", *names]}

    def x_is_observed(self, x: torch.Tensor) -> bool:
        """Whether the observed site's value at ``x`` is ``x`` itself."""
        v = self.obs_value
        return v is not None and v.shape == x.shape and bool(torch.equal(v, x.detach()))

    def subset(self, index: slice | torch.Tensor) -> Pair:
        """The pair restricted to some inputs (per-input arguments taken along).

        ``index`` is a slice of the inputs, or a LongTensor of rows of a folded batch (row
        ``i`` belongs to input ``i % n``, the layout of ``x.repeat(k, ...)``).
        """
        if isinstance(index, slice):
            index = torch.arange(self.n)[index]
        index = index.reshape(-1) % self.n
        out = Pair.__new__(Pair)
        out.__dict__.update(self.__dict__)
        out.n, out._folded = int(index.numel()), {}
        out.args = tuple(_take(a, self.n, index) for a in self.args)
        out.kwargs = {k: _take(v, self.n, index) for k, v in self.kwargs.items()}
        if self.obs_value is not None:
            out.obs_value = self.obs_value[index.to(self.obs_value.device)]
        return out

    # -- folded calls --------------------------------------------------------------------------
    def folded_args(self, rows: int) -> tuple[tuple, dict]:
        """``model_args``/``model_kwargs`` for ``rows`` = k * n folded rows."""
        reps = rows // self.n
        if reps not in self._folded:
            args = tuple(_fold(a, self.n, reps) for a in self.args)
            kwargs = {k: _fold(v, self.n, reps) for k, v in self.kwargs.items()}
            self._folded[reps] = (args, kwargs)
        return self._folded[reps]

    def _model_trace(self, x_rows: torch.Tensor, values: Mapping[str, torch.Tensor]):
        args, kwargs = self.folded_args(x_rows.shape[0])
        conditioned = poutine.condition(self.model, data=dict(values))
        return poutine.trace(conditioned).get_trace(x_rows, *args, **kwargs)

    def _guide_trace(self, x_rows: torch.Tensor, handler: Messenger | None = None):
        args, kwargs = self.folded_args(x_rows.shape[0])
        guide = self.guide if handler is None else handler(self.guide)
        return poutine.trace(guide).get_trace(x_rows, *args, **kwargs)

    def _mean(self, site: dict, rows: int) -> torch.Tensor:
        try:
            mean = site["fn"].mean
        except NotImplementedError as err:
            raise ValueError(
                f"The model's observed site {self.obs_site!r} has distribution "
                f"{type(site['fn']).__name__}, whose mean is not implemented; pyrobust reads the "
                "reconstruction g(z) as that mean. Use a likelihood with a mean."
            ) from err
        if mean.dim() == 0 or mean.shape[0] not in (rows, 1):
            raise ValueError(
                f"The mean of the model's observed site {self.obs_site!r} has shape "
                f"{tuple(mean.shape)}; the protocol needs one row per input ({rows} rows) "
                "first, e.g. obs=x.reshape(len(x), -1) inside pyro.plate('data', len(x))."
            )
        if mean.shape[0] != rows:
            mean = mean.expand(rows, *mean.shape[1:])
        return mean

    # -- the quantities ------------------------------------------------------------------------
    def encode(self, x_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`(\\mu, \\sigma)` of the latent site at ``x_rows`` (extra sites at their centre)."""
        trace = self._guide_trace(x_rows, _AtCentre(self.latent_site))  # no draw: no RNG used
        return _diag_normal(trace.nodes[self.latent_site]["fn"], self.latent_site)

    def rows_like(self, x: torch.Tensor, reps: int) -> torch.Tensor:
        """``x`` (n, *event) repeated ``reps`` times for the model's data plate.

        A copy, except for models that read only the shape of ``x`` (:func:`_reads_x_shape_only`),
        which get a zero-stride view: no memory per draw.
        """
        if self.x_values_unused:
            return x.new_zeros(()).expand(reps * x.shape[0], *x.shape[1:])
        return x.expand(reps, *x.shape).reshape(reps * x.shape[0], *x.shape[1:])

    def decode(self, x_rows: torch.Tensor, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The observed site's mean given latent ``values``, ``(rows, *obs_event)``."""
        trace = self._model_trace(x_rows, values)
        return self._mean(trace.nodes[self.obs_site], x_rows.shape[0])

    def centre(self, x_rows: torch.Tensor) -> torch.Tensor:
        """The reference :math:`g(\\mu(x))` with extra sites at their mean/mode."""
        trace = self._guide_trace(x_rows, _AtCentre(self.latent_site))
        return self.decode(x_rows, {k: s["value"] for k, s in _latents(trace).items()})

    def draw(self, x_rows: torch.Tensor, eta: torch.Tensor):
        """One joint guide draw per row (latent site ``loc + eta * scale``) and its trace."""
        return self._guide_trace(x_rows, _Reparam(self.latent_site, eta))

    def reconstruct(
        self, x_rows: torch.Tensor, eta: torch.Tensor, values: dict | None = None
    ) -> torch.Tensor:
        """:math:`g(z)` for joint guide draws at ``x_rows`` with latent noise ``eta``.

        The drawn latent values are written into ``values`` (a dict) when one is given.
        """
        if self.fast:
            loc, scale = self.encode(x_rows)
            drawn = {self.latent_site: loc + eta * scale}
        else:
            drawn = {k: s["value"] for k, s in _latents(self.draw(x_rows, eta)).items()}
        if values is not None:
            values.update(drawn)
        return self.decode(x_rows, drawn)

    def require_single_latent(self, fn: str) -> None:
        """Refuse extra guide sites where the theory covers one Gaussian latent only."""
        if self.extra:
            raise ValueError(
                f"{fn} covers a single Gaussian latent site; the guide also samples "
                f"{list(self.extra)}. Its theory has no term for them: use r_robustness, "
                "max_damage_attack or empirical_margin, which replay every guide site."
            )


# --------------------------------------------------------------------------------------------
# public helpers
# --------------------------------------------------------------------------------------------
def guide_loc_scale(
    guide: Callable,
    x: torch.Tensor,
    *,
    latent_site: str = "z",
    model_args: Sequence = (),
    model_kwargs: Mapping | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Encoder statistics :math:`(\mu(x), \sigma(x))` read from a trace of ``guide(x, ...)``.

    Other latent sites of the guide, if any, are held at their mean (continuous) or mode
    (discrete) while the latent site's distribution is read.

    Parameters
    ----------
    guide : callable
        A Pyro guide whose latent site is ``dist.Normal(loc, scale).to_event(1)``.
    x : torch.Tensor
        A batch of inputs, shaped as the guide expects (leading dim = data).
    latent_site : str, default "z"
        Name of the latent sample site.
    model_args, model_kwargs
        Extra arguments: the guide is called as ``guide(x, *model_args, **model_kwargs)``.

    Returns
    -------
    loc, scale : torch.Tensor
        Tensors of shape ``(batch, d_z)``, differentiable with respect to ``x``.

    Raises
    ------
    ValueError
        If the guide has no site ``latent_site`` or it is not a diagonal Normal.
    """
    args, kwargs = check_model_args(model_args, model_kwargs)
    trace = poutine.trace(_AtCentre(latent_site)(guide)).get_trace(x, *args, **kwargs)
    site = _get_site(trace, latent_site, "the latent site", "latent_site", "The guide")
    return _diag_normal(site["fn"], latent_site)


def model_mean(
    model: Callable,
    x: torch.Tensor,
    z: torch.Tensor,
    *,
    latent_site: str = "z",
    obs_site: str = "x",
    model_args: Sequence = (),
    model_kwargs: Mapping | None = None,
    latents: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""The reconstruction :math:`g(z)`: the mean of the model's observed site given ``z``.

    The model is run on ``x`` with the latent site conditioned on ``z`` (and any other latent
    sites on ``latents``); the observed site's distribution ``.mean`` is returned, in the
    observed site's own shape (never a sample: sampling costs 3x and is noise the robustness
    definitions do not include).

    Parameters
    ----------
    model : callable
        A Pyro model with a latent site and an observed site.
    x : torch.Tensor
        Inputs of shape ``(batch, *event)``.
    z : torch.Tensor
        Latent codes of shape ``(*sample, batch, d_z)``. Leading sample dims are folded into
        the data dim, so a model written for a single batch dim works unchanged.
    latent_site, obs_site : str
        Site names.
    model_args, model_kwargs
        Extra arguments of ``model(x, *model_args, **model_kwargs)``; per-input tensors are
        folded with the sample dims like ``x``.
    latents : mapping, optional
        Values of the model's other latent sites, each ``(*sample, batch, ...)``.

    Returns
    -------
    torch.Tensor
        :math:`g(z)` of shape ``(*sample, batch, *obs_event)``, differentiable in ``z``.

    Raises
    ------
    ValueError
        If a site is missing, the model samples a latent site not given (it would come from the
        prior), or the observed site's mean has no row per input.
    """
    batch = x.shape[0]
    if z.dim() < 2 or z.shape[-2] != batch:
        raise ValueError(
            f"z must have shape (*sample, batch={batch}, d_z) to match x of shape "
            f"{tuple(x.shape)}; got {tuple(z.shape)}."
        )
    sample_shape = z.shape[:-2]
    n = math.prod(sample_shape)
    args, kwargs = check_model_args(model_args, model_kwargs)
    pair = Pair(model, None, batch, args, kwargs, latent_site, obs_site)
    x_rep = x if n == 1 else x.unsqueeze(0).expand(n, *x.shape).reshape(n * batch, *x.shape[1:])
    values = {latent_site: z.reshape(n * batch, z.shape[-1])}
    for name, v in (latents or {}).items():
        values[name] = v.reshape(n * batch, *v.shape[len(sample_shape) + 1 :])
    trace = pair._model_trace(x_rep, values)
    _get_site(trace, latent_site, "the latent site", "latent_site", "The model")
    site = _get_site(trace, obs_site, "the observed site", "obs_site", "The model")
    prior_only = [k for k in _latents(trace) if k != obs_site]
    if prior_only:
        raise ValueError(
            f"The model samples latent site(s) {prior_only} besides {latent_site!r}; pass their "
            "values with `latents=` (they would otherwise be drawn from the prior)."
        )
    mean = pair._mean(site, n * batch)
    return mean.reshape(*sample_shape, batch, *mean.shape[1:])
