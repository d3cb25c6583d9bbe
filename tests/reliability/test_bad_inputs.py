"""The bad-input suite: every public entry point, driven with inputs it must refuse by name.

Each case of the table is ``(entry point, bad input, argument name)``. A case passes when the
call raises a *named pyrobust error*:

* for the Python API, a ``ValueError`` or ``TypeError`` (``FileNotFoundError`` /
  ``FileExistsError`` for paths) raised by pyrobust's own code (the innermost frame of the
  traceback is in the ``pyrobust`` package, so an error from torch, pyro, xarray or h5py that
  merely passes through never counts) whose message contains the argument's name;
* for the command line (``pyrobust.cli.main([...])``), exit status 2 (returned, or
  ``SystemExit(2)`` from argparse) with no traceback and an error line that names the option.

A result, NaN or not, is a failure; so is any other exception. Cases that fail because
another engineer's area is not fixed yet are marked ``xfail(strict=True)`` with the area in the
reason, so that they turn into failures the moment they are fixed and the mark is stale.

The suite counts itself: ``tests/reliability/conftest.py`` prints the number of entry points,
inputs and outcomes at the end of the run (and writes them as JSON to the path in
``PYROBUST_RELIABILITY_JSON`` when set); ``docs/RELIABILITY.md`` quotes those counts.
"""

from __future__ import annotations

import json
import math
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyrobust as pr
from pyrobust import cli
from pyrobust.analysis import combine, load, save
from pyrobust.inference import fit
from pyrobust.models import (
    VAE,
    BjorckLinear,
    BurgessDecoder,
    BurgessEncoder,
    ConvDecoder,
    ConvDecoder28,
    ConvEncoder,
    ConvEncoder28,
    GaussianLikelihood,
    GroupSort,
    LaplaceLikelihood,
    LipschitzDecoder,
    LipschitzEncoder,
    LipschitzFixedStdEncoder,
    LipschitzMLP,
    MLPDecoder,
    MLPEncoder,
    bjorck_orthonormalize,
    guide_loc_scale,
    lipschitz_constants,
    load_model,
    make_likelihood,
    model_config,
    model_from_config,
    model_mean,
    register_module,
    save_model,
)
from tests.analysis._fixtures import margin_tree, robustness_tree

#: Outcome of every case run in this session, read by conftest.py to count the suite.
OUTCOMES: dict[str, dict[str, Any]] = {}

NAN, INF = float("nan"), float("inf")

# owner areas of cases that fail today (see the module docstring)
ROBUSTNESS = "robustness queries (lead, issue 12/13)"
CLI = "cli (issue 13 CLI engineer)"
FIT = "inference.fit (issue 13 training engineer)"
MODELS = "models nets/vae/lipschitz (no owner this round)"
COMBINE = "analysis.combine (issue 14 analysis engineer)"
REPORT = "analysis.report (issue 14 analysis engineer)"
METRICS = "analysis.metrics (no owner this round)"
AUDIT = "audit (issue 17 engineer)"


@dataclass(frozen=True)
class Case:
    entry: str  # the public entry point, as a user writes it
    bad: str  # what is wrong with the input
    arg: str  # the argument (or option) the error must name
    call: Callable[[Path], Any]  # the call, given a fresh temporary directory
    xfail: str | None = None  # "<owner area>: <what>" while another engineer's fix is pending
    files: tuple = (ValueError, TypeError)  # accepted error types
    accept: bool = False  # a valid input in disguise: a result is fine, a raw error is not

    @property
    def id(self) -> str:
        return f"{self.entry}|{self.bad}"


# ---- fixtures shared by the cases (tiny, CPU) ---------------------------------------------------


def _vae():
    torch.manual_seed(0)
    return VAE(MLPEncoder(4, 2, hidden=(8,)), MLPDecoder(2, 4, hidden=(8,)), "gaussian")


def _lvae():
    torch.manual_seed(0)
    return VAE(LipschitzEncoder(4, 2, hidden=(8,)), LipschitzDecoder(2, 4, hidden=(8,)), "gaussian")


VAE_ = _vae()
LVAE = _lvae()
X = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
FAST = {
    "r_robustness": {"r": 1.0, "num_samples": 8, "seed": 0},
    "margin_bound": {"r": 1.0, "num_samples": 8, "seed": 0},
    "certified_margin": {"r": 1.0},
    "max_damage_attack": {
        "eps": 0.1,
        "steps": 2,
        "restarts": 1,
        "eot_samples": 2,
        "eval_samples": 4,
        "seed": 0,
    },
    "empirical_margin": {
        "r": 1.0,
        "steps": 2,
        "restarts": 1,
        "eot_samples": 2,
        "eval_samples": 4,
        "bisection_steps": 2,
        "num_samples": 8,
        "seed": 0,
    },
    "likelihood_degradation": {"num_samples": 4, "seed": 0},
    "latent_attack": {"eps": 0.1, "steps": 2, "seed": 0},
    "output_attack": {"eps": 0.1, "steps": 2, "elbo_samples": 2, "seed": 0},
}
QUERIES = list(FAST)


def _with(x, index, value):
    x = x.clone()
    x.view(-1)[index] = value
    return x


def _query(name: str, x=None, positional=(), vae=None, **kwargs):
    """Call robustness function ``name`` on the tiny VAE with fast settings, ``kwargs`` winning."""
    vae = vae or (LVAE if name == "certified_margin" else VAE_)
    fn = getattr(pr, name)
    extra = {
        "likelihood_degradation": (0.01 * torch.ones(3, 4),),
        "latent_attack": (torch.rand(3, 4),),
        "output_attack": (torch.rand(3, 4),),
    }.get(name, ())
    args = positional or extra
    settings_ = {**FAST[name], **kwargs}
    settings_ = {k: v for k, v in settings_.items() if v is not _DROP}
    return fn(vae.model, vae.guide, X if x is None else x, *args, **settings_)


_DROP = object()


def _q(name, bad, arg, x=None, positional=(), xfail=None, vae=None, accept=False, **kwargs):
    return Case(
        f"pr.{name}",
        bad,
        arg,
        lambda tmp: _query(name, x, positional, vae, **kwargs),
        xfail,
        accept=accept,
    )


# ---- the robustness queries -------------------------------------------------------------------


def _query_cases() -> list[Case]:
    cases = []
    for name in QUERIES:
        cases += [
            _q(name, "x with NaN", "x", x=_with(X, 5, NAN)),
            _q(name, "x with inf", "x", x=_with(X, 0, INF)),
            _q(name, "x of the wrong event shape", "x", x=torch.rand(3, 5)),
            _q(name, "x empty batch", "x", x=torch.rand(0, 4)),
            _q(name, "x a list", "x", x=[[0.1, 0.2, 0.3, 0.4]]),
            _q(name, "x of integer dtype", "x", x=torch.ones(3, 4, dtype=torch.int64)),
            _q(name, "x on another device (meta)", "x", x=X.to("meta")),
            _q(name, "x a float64 tensor (numpy's default)", "x", x=X.double(), accept=True),
            _q(name, "latent_site not in the guide", "latent_site", latent_site="nope"),
            _q(name, "model_kwargs not a dict", "model_kwargs", model_kwargs=[1]),
        ]
        if name not in ("certified_margin",):
            cases.append(_q(name, "obs_site not in the model", "obs_site", obs_site="nope"))
        if name not in ("certified_margin", "likelihood_degradation"):
            cases.append(_q(name, "seed a string", "seed", seed="abc"))
    r_queries = ("r_robustness", "margin_bound", "certified_margin", "empirical_margin")
    for name in r_queries:
        cases += [
            _q(name, "r negative", "r", r=-1.0),
            _q(name, "r NaN", "r", r=NAN),
            _q(name, "r a string", "r", r="big"),
        ]
    for name in ("r_robustness", "margin_bound", "empirical_margin"):
        cases += [
            _q(name, "num_samples 0", "num_samples", num_samples=0),
            _q(name, "num_samples negative", "num_samples", num_samples=-5),
            _q(name, "num_samples a float", "num_samples", num_samples=2.5),
            _q(name, "num_samples True", "num_samples", num_samples=True),
            _q(name, "reference unknown", "reference", reference="median"),
            _q(name, "max_batch 0", "max_batch", max_batch=0),
        ]
    for name in ("r_robustness", "empirical_margin", "max_damage_attack"):
        cases += [
            _q(name, "confidence 1.5", "confidence", confidence=1.5, r=1.0),
            _q(name, "confidence NaN", "confidence", confidence=NAN, r=1.0),
        ]
    cases += [
        _q("r_robustness", "confidence 0", "confidence", confidence=0.0),
        _q("r_robustness", "delta with NaN", "delta", delta=_with(torch.zeros(3, 4), 1, NAN)),
        _q("r_robustness", "delta of the wrong shape", "delta", delta=torch.zeros(3, 5)),
        _q("r_robustness", "eps negative", "eps", eps=-0.5, family="sphere"),
        _q("r_robustness", "eps NaN", "eps", eps=NAN, family="sphere"),
        _q("r_robustness", "family unknown", "family", eps=0.5, family="cube"),
        _q("r_robustness", "delta and eps together", "eps", delta=torch.zeros(3, 4), eps=0.1),
        _q("margin_bound", "norm unknown", "norm", norm="nuclear"),
        _q("margin_bound", "confidence 1.0", "confidence", confidence=1.0),
        _q("certified_margin", "a negative", "a", a=-1.0, b=1.0, c=1.0),
        _q("certified_margin", "b NaN", "b", a=1.0, b=NAN, c=1.0),
        _q("certified_margin", "c inf", "c", a=1.0, b=1.0, c=INF),
        _q("certified_margin", "tail unknown", "tail", tail="gaussian"),
        _q("certified_margin", "gamma negative", "gamma", gamma=-0.1),
        _q("certified_margin", "non-Lipschitz model, no constants", "a", vae=VAE_),
        _q("max_damage_attack", "eps negative", "eps", eps=-0.1),
        _q("max_damage_attack", "eps NaN", "eps", eps=NAN),
        _q("max_damage_attack", "norm unknown", "norm", norm="l3"),
        _q("max_damage_attack", "steps 0", "steps", steps=0),
        _q("max_damage_attack", "restarts 0", "restarts", restarts=0),
        _q("max_damage_attack", "eot_samples 0", "eot_samples", eot_samples=0),
        _q("max_damage_attack", "box reversed", "box", box=(1.0, 0.0)),
        _q("max_damage_attack", "method unknown", "method", method="cw"),
        _q("max_damage_attack", "step_size negative", "step_size", step_size=-1.0),
        _q("max_damage_attack", "x outside the box", "x", x=X + 2.0),
        _q("empirical_margin", "radius_max negative", "radius_max", radius_max=-1.0),
        _q("empirical_margin", "bisection_steps 0", "bisection_steps", bisection_steps=0),
        _q("empirical_margin", "norm unknown", "norm", norm="l0"),
        _q("empirical_margin", "tolerance an unknown word", "tolerance", tolerance="fast"),
        _q("empirical_margin", "tolerance with a fixed design", "tolerance", tolerance=0.05),
        _q("empirical_margin", "tolerance 0.7", "tolerance", tolerance=0.7, num_samples="auto"),
        _q(
            "likelihood_degradation",
            "delta with NaN",
            "delta",
            positional=(_with(torch.zeros(3, 4), 2, NAN),),
        ),
        _q(
            "likelihood_degradation",
            "delta of the wrong shape",
            "delta",
            positional=(torch.zeros(2, 4),),
        ),
        _q("likelihood_degradation", "num_samples 0", "num_samples", num_samples=0),
        _q("latent_attack", "target with NaN", "target", positional=(_with(X, 3, NAN),)),
        _q("latent_attack", "target of the wrong shape", "target", positional=(torch.rand(3, 7),)),
        _q("latent_attack", "divergence unknown", "divergence", divergence="tv"),
        _q("latent_attack", "lam and eps together", "lam", lam=1.0, eps=0.1),
        _q("latent_attack", "steps 0", "steps", steps=0),
        _q("latent_attack", "lam negative", "lam", lam=-1.0, eps=_DROP),
        _q("output_attack", "target with inf", "target", positional=(_with(X, 3, INF),)),
        _q("output_attack", "target of the wrong shape", "target", positional=(torch.rand(2, 4),)),
        _q("output_attack", "elbo_samples 0", "elbo_samples", elbo_samples=0),
        _q("output_attack", "norm unknown", "norm", norm="l7"),
        _q("output_attack", "restarts 0", "restarts", restarts=0),
    ]
    cases += [
        Case(
            "pr.design_lipschitz",
            "r negative",
            "r",
            lambda t: pr.design_lipschitz(-1.0, 0.1, 2, max_scale_norm=0.5),
        ),
        Case(
            "pr.design_lipschitz",
            "margin 0",
            "margin",
            lambda t: pr.design_lipschitz(1.0, 0.0, 2, max_scale_norm=0.5),
        ),
        Case(
            "pr.design_lipschitz",
            "margin NaN",
            "margin",
            lambda t: pr.design_lipschitz(1.0, NAN, 2, max_scale_norm=0.5),
        ),
        Case(
            "pr.design_lipschitz",
            "latent_dim 0",
            "latent_dim",
            lambda t: pr.design_lipschitz(1.0, 0.1, 0, max_scale_norm=0.5),
        ),
        Case(
            "pr.design_lipschitz",
            "latent_dim a float",
            "latent_dim",
            lambda t: pr.design_lipschitz(1.0, 0.1, 2.5, max_scale_norm=0.5),
        ),
        Case(
            "pr.design_lipschitz",
            "max_scale_norm negative",
            "max_scale_norm",
            lambda t: pr.design_lipschitz(1.0, 0.1, 2, max_scale_norm=-0.5),
        ),
        Case(
            "pr.design_lipschitz",
            "tail unknown",
            "tail",
            lambda t: pr.design_lipschitz(1.0, 0.1, 2, max_scale_norm=0.5, tail="x"),
        ),
        Case(
            "pr.design_lipschitz",
            "a negative",
            "a",
            lambda t: pr.design_lipschitz(1.0, 0.1, 2, a=-1.0, b=1.0, c=1.0),
        ),
    ]
    return cases


# ---- models ------------------------------------------------------------------------------------


def _m(entry, bad, arg, fn, xfail=None):
    return Case(f"pr.models.{entry}", bad, arg, fn, xfail)


def _model_cases() -> list[Case]:
    enc, dec = MLPEncoder(4, 2, hidden=(8,)), MLPDecoder(2, 4, hidden=(8,))
    return [
        _m("MLPEncoder", "latent_dim 0", "latent_dim", lambda t: MLPEncoder(4, 0)),
        _m("MLPEncoder", "latent_dim a float", "latent_dim", lambda t: MLPEncoder(4, 2.5)),
        _m("MLPEncoder", "input_shape 0", "input_shape", lambda t: MLPEncoder(0, 2)),
        _m("MLPEncoder", "hidden negative", "hidden", lambda t: MLPEncoder(4, 2, hidden=(-3,))),
        _m(
            "MLPEncoder",
            "activation unknown",
            "activation",
            lambda t: MLPEncoder(4, 2, activation="swishy"),
        ),
        _m(
            "MLPEncoder",
            "min_scale negative",
            "min_scale",
            lambda t: MLPEncoder(4, 2, min_scale=-1.0),
        ),
        _m("MLPDecoder", "latent_dim negative", "latent_dim", lambda t: MLPDecoder(-2, 4)),
        _m("MLPDecoder", "output_shape empty", "output_shape", lambda t: MLPDecoder(2, ())),
        _m("MLPDecoder", "hidden with 0", "hidden", lambda t: MLPDecoder(2, 4, hidden=(0,))),
        _m(
            "ConvEncoder",
            "input_shape too small",
            "input_shape",
            lambda t: ConvEncoder((1, 2, 2), 2),
        ),
        _m(
            "ConvEncoder",
            "kernel_size 0",
            "kernel_size",
            lambda t: ConvEncoder((1, 16, 16), 2, kernel_size=0),
        ),
        _m("ConvDecoder", "output_shape 1-d", "output_shape", lambda t: ConvDecoder(2, (16,))),
        _m("ConvEncoder28", "latent_dim 0", "latent_dim", lambda t: ConvEncoder28(0)),
        _m(
            "ConvDecoder28",
            "out_channels 0",
            "out_channels",
            lambda t: ConvDecoder28(2, out_channels=0),
        ),
        _m(
            "BurgessEncoder",
            "in_channels negative",
            "in_channels",
            lambda t: BurgessEncoder(2, in_channels=-1),
        ),
        _m("BurgessDecoder", "latent_dim a string", "latent_dim", lambda t: BurgessDecoder("2")),
        _m("GaussianLikelihood", "scale 0", "scale", lambda t: GaussianLikelihood(0.0)),
        _m("GaussianLikelihood", "scale NaN", "scale", lambda t: GaussianLikelihood(NAN)),
        _m("LaplaceLikelihood", "scale negative", "scale", lambda t: LaplaceLikelihood(-1.0)),
        _m("make_likelihood", "unknown name", "likelihood", lambda t: make_likelihood("cauchy")),
        _m("make_likelihood", "an int", "likelihood", lambda t: make_likelihood(3)),
        _m(
            "LipschitzEncoder",
            "loc_lipschitz 0",
            "loc_lipschitz",
            lambda t: LipschitzEncoder(4, 2, loc_lipschitz=0.0),
        ),
        _m(
            "LipschitzEncoder",
            "max_scale_norm negative",
            "max_scale_norm",
            lambda t: LipschitzEncoder(4, 2, max_scale_norm=-1.0),
        ),
        _m(
            "LipschitzDecoder",
            "lipschitz NaN",
            "lipschitz",
            lambda t: LipschitzDecoder(2, 4, lipschitz=NAN),
        ),
        _m(
            "LipschitzDecoder",
            "output unknown",
            "output",
            lambda t: LipschitzDecoder(2, 4, output="tanh2"),
        ),
        _m(
            "LipschitzFixedStdEncoder",
            "std 0",
            "std",
            lambda t: LipschitzFixedStdEncoder(4, 2, std=0.0),
        ),
        _m(
            "LipschitzMLP", "group_size 0", "group_size", lambda t: LipschitzMLP(4, 2, group_size=0)
        ),
        _m("BjorckLinear", "n_iter 0", "n_iter", lambda t: BjorckLinear(4, 2, n_iter=0)),
        _m("GroupSort", "group_size 0", "group_size", lambda t: GroupSort(0)),
        _m(
            "bjorck_orthonormalize",
            "weight with NaN",
            "weight",
            lambda t: bjorck_orthonormalize(_with(torch.eye(3), 1, NAN)),
        ),
        _m(
            "bjorck_orthonormalize",
            "weight 1-d",
            "weight",
            lambda t: bjorck_orthonormalize(torch.ones(3)),
        ),
        _m(
            "lipschitz_constants",
            "non-Lipschitz nets",
            "decoder",
            lambda t: lipschitz_constants(enc, dec),
        ),
        _m("VAE", "encoder not a module", "encoder", lambda t: VAE(lambda x: x, dec)),
        _m("VAE", "likelihood unknown", "likelihood", lambda t: VAE(enc, dec, "poisson")),
        _m("VAE", "latent_site empty", "latent_site", lambda t: VAE(enc, dec, latent_site="")),
        _m(
            "VAE",
            "obs_site equal to latent_site",
            "obs_site",
            lambda t: VAE(enc, dec, latent_site="z", obs_site="z"),
        ),
        _m(
            "VAE",
            "latent_dim disagreeing with the nets",
            "latent_dim",
            lambda t: VAE(enc, dec, latent_dim=5),
        ),
        _m(
            "VAE.encode", "x of the wrong event shape", "x", lambda t: VAE_.encode(torch.rand(3, 5))
        ),
        _m("VAE.decode", "z of the wrong latent dim", "z", lambda t: VAE_.decode(torch.rand(3, 7))),
        _m("VAE.reconstruct", "x a list", "x", lambda t: VAE_.reconstruct([[0.0] * 4])),
        _m("VAE.sample", "n negative", "n", lambda t: VAE_.sample(-2)),
        _m("VAE.model", "x of the wrong event shape", "x", lambda t: VAE_.model(torch.rand(3, 5))),
        _m(
            "guide_loc_scale",
            "latent_site not sampled",
            "latent_site",
            lambda t: guide_loc_scale(VAE_.guide, X, latent_site="w"),
        ),
        _m(
            "guide_loc_scale",
            "model_args not a sequence",
            "model_args",
            lambda t: guide_loc_scale(VAE_.guide, X, model_args=5),
        ),
        _m(
            "model_mean",
            "z of the wrong shape",
            "z",
            lambda t: model_mean(VAE_.model, X, torch.rand(3, 9)),
        ),
        _m(
            "model_mean",
            "obs_site not in the model",
            "obs_site",
            lambda t: model_mean(VAE_.model, X, torch.rand(3, 2), obs_site="y"),
        ),
        _m("model_config", "not a VAE", "VAE", lambda t: model_config(enc)),
        _m("model_from_config", "not a dict", "config", lambda t: model_from_config([1])),
        _m(
            "model_from_config",
            "size out of range",
            "config",
            lambda t: model_from_config(
                {
                    **model_config(VAE_),
                    "encoder": {
                        "class": "MLPEncoder",
                        "config": {"input_shape": 4, "latent_dim": 10**13},
                    },
                }
            ),
        ),
        _m(
            "register_module",
            "not a module class",
            "register_module",
            lambda t: register_module(int),
        ),
        _m("save_model", "not a VAE", "VAE", lambda t: save_model(enc, t / "m.pt")),
        _m("save_model", "path a number", "path", lambda t: save_model(VAE_, 5)),
        _m("save_model", "path a directory", "path", lambda t: save_model(VAE_, t)),
        _m("save_model", "NaN weights", "weight", lambda t: save_model(_nan_vae(), t / "m.pt")),
        _m("load_model", "path None", "path", lambda t: load_model(None)),
        _m(
            "load_model",
            "map_location unknown",
            "map_location",
            lambda t: load_model(save_model(VAE_, t / "m.pt"), map_location="gpu9"),
        ),
        _m(
            "load_model",
            "random bytes",
            "pyrobust model file",
            lambda t: load_model(_bytes(t / "m.pt", os.urandom(999))),
        ),
        _m(
            "load_model",
            "empty file",
            "pyrobust model file",
            lambda t: load_model(_bytes(t / "m.pt", b"")),
        ),
        _m(
            "load_model",
            "truncated model file",
            "pyrobust model file",
            lambda t: load_model(_truncated(save_model(VAE_, t / "m.pt"))),
        ),
        _m(
            "load_model",
            "a foreign torch file",
            "pyrobust model file",
            lambda t: load_model(_torch_file(t / "m.pt", {"w": torch.zeros(2)})),
        ),
        _m(
            "load_model",
            "a pickle payload",
            "weights_only",
            lambda t: load_model(_torch_file(t / "m.pt", {"format": "pyrobust.VAE", "x": _Evil()})),
        ),
        _m(
            "load_model",
            "100000-deep JSON config",
            "config",
            lambda t: load_model(_crafted_model(t, "[" * 100_000 + "]" * 100_000)),
        ),
        _m(
            "load_model",
            "hidden=[10**12] in the config",
            "hidden",
            lambda t: load_model(_crafted_model(t, hidden=[10**12])),
        ),
        _m("load_model", "NaN weights", "NaN", lambda t: load_model(_crafted_model(t, nan=True))),
    ]
    # (a missing path is a FileNotFoundError naming the path: counted with the file errors)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _nan_vae():
    vae = _vae()
    with torch.no_grad():
        vae.decoder.head.weight.fill_(NAN)
    return vae


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    return _bytes(path, data[: len(data) // 2])


def _torch_file(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _crafted_model(tmp: Path, config_text=None, hidden=None, nan=False) -> Path:
    path = save_model(VAE_, tmp / "crafted.pt")
    payload = torch.load(path, weights_only=True)
    if config_text is not None:
        payload["config"] = config_text
    if hidden is not None:
        config = json.loads(payload["config"])
        config["encoder"]["config"]["hidden"] = hidden
        payload["config"] = json.dumps(config)
    if nan:
        payload["state_dict"]["encoder.head.weight"][0, 0] = NAN
    return _torch_file(path, payload)


# ---- inference.fit -------------------------------------------------------------------------------


def _fit(**kwargs):
    settings_ = {"epochs": 1, "batch_size": 4, "lr": 1e-2, **kwargs}
    data = settings_.pop("data", (X > 0.5).float())
    vae = settings_.pop("vae", VAE(MLPEncoder(4, 2, hidden=(8,)), MLPDecoder(2, 4, hidden=(8,))))
    return fit(vae, data, **settings_)


def _f(bad, arg, xfail=None, **kwargs):
    return Case("pr.inference.fit", bad, arg, lambda t: _fit(**kwargs), xfail)


def _fit_cases() -> list[Case]:
    return [
        _f("data with NaN", "data", data=_with((X > 0.5).float(), 1, NAN)),
        _f("data with inf", "data", data=_with((X > 0.5).float(), 1, INF)),
        _f("data empty", "data", data=torch.zeros(0, 4)),
        _f("data of the wrong event shape", "data", data=torch.ones(6, 5)),
        _f("data a string", "data", data="digits"),
        _f("epochs 0", "epochs", epochs=0),
        _f("epochs 1.5", "epochs", epochs=1.5),
        _f("epochs True", "epochs", epochs=True),
        _f("batch_size 0", "batch_size", batch_size=0),
        _f("batch_size negative", "batch_size", batch_size=-4),
        _f("lr negative", "lr", lr=-1e-3),
        _f("lr NaN", "lr", lr=NAN),
        _f("lr True", "lr", lr=True),
        _f("optimizer unknown", "optimizer", optimizer="lbfgs2"),
        _f("checkpoint_every 0", "checkpoint_every", checkpoint_every=0),
        _f("resume without checkpoint_dir", "checkpoint_dir", resume=True),
        _f("device unknown", "device", device="tpu"),
        _f("seed a string", "seed", seed="abc"),
        _f("val_data of the wrong shape", "val_data", val_data=torch.ones(2, 7)),
        _f("val_data with NaN", "val_data", val_data=_with((X > 0.5).float(), 0, NAN)),
        _f("elbo not an objective", "elbo", elbo="elbo"),
        _f("model not a VAE or pair", "vae_or_pair", vae=42),
        _f("model_kwargs not a mapping", "model_kwargs", model_kwargs=[1, 2]),
    ]


# ---- analysis.save / load / combine --------------------------------------------------------------


def _a(entry, bad, arg, fn, xfail=None, files=(ValueError, TypeError)):
    return Case(f"pr.analysis.{entry}", bad, arg, fn, xfail, files)


_FILE = (ValueError, TypeError, FileNotFoundError, FileExistsError)


def _object_tree():
    t = margin_tree()
    t["robustness"] = xr.DataTree(xr.Dataset({"obj": ("obs_id", np.array([object()] * 4))}))
    return t


def _crafted_result(tmp: Path, suffix: str, edit) -> Path:
    path = save(robustness_tree(), tmp / f"r{suffix}")
    edit(path)
    return path


def _deep_attr(tmp: Path, suffix: str) -> Path:
    t = margin_tree()
    t.attrs["deep"] = "json:" + "[" * 100_000 + "]" * 100_000
    return save(t, tmp / f"deep{suffix}")


def _zarr_pickle(tmp: Path) -> Path:
    """A zarr v2 store whose variable claims an object dtype with the pickle codec."""
    path = save(margin_tree(), tmp / "evil.zarr")
    meta = json.loads((path / ".zmetadata").read_text())
    key = next(k for k in meta["metadata"] if k.endswith(".zarray"))
    meta["metadata"][key].update(dtype="|O", filters=[{"id": "pickle", "protocol": 5}])
    (path / ".zmetadata").write_text(json.dumps(meta))
    (path / key).write_text(json.dumps(meta["metadata"][key]))
    return path


def _analysis_cases() -> list[Case]:
    def dmg_zarr(p: Path):
        (p / ".zmetadata").write_text("{")

    def dmg_chunk(p: Path):
        chunk = next(c for c in sorted(p.rglob("*")) if c.is_file() and c.name[0].isdigit())
        chunk.write_bytes(b"garbage" * 9)

    return [
        _a("save", "tree a dict", "tree", lambda t: save({"a": 1}, t / "r.nc")),
        _a("save", "path a number", "path", lambda t: save(margin_tree(), 3)),
        _a("save", "unknown extension", "path", lambda t: save(margin_tree(), t / "r.txt")),
        _a(
            "save",
            "format unknown",
            "format",
            lambda t: save(margin_tree(), t / "r.nc", format="hdf4"),
        ),
        _a(
            "save",
            "missing directory",
            "path",
            lambda t: save(margin_tree(), t / "no" / "r.nc"),
            files=_FILE,
        ),
        _a(
            "save",
            "a directory that is not a store",
            "path",
            lambda t: save(margin_tree(), _project(t), format="zarr"),
        ),
        _a("save", "object dtype variable", "obj", lambda t: save(_object_tree(), t / "r.nc")),
        _a(
            "save",
            "overwrite a string",
            "overwrite",
            lambda t: save(margin_tree(), t / "r.nc", overwrite="no"),
        ),
        _a(
            "save",
            "overwrite=False onto a result",
            "overwrite",
            lambda t: save(margin_tree(), save(margin_tree(), t / "r.nc"), overwrite=False),
            files=_FILE,
        ),
        _a("save", "kind a number", "kind", lambda t: save(margin_tree(), t / "r.nc", kind=3)),
        _a("load", "path None", "path", lambda t: load(None)),
        _a("load", "missing file", "r.nc", lambda t: load(t / "r.nc"), files=_FILE),
        _a("load", "unknown extension", "path", lambda t: load(_bytes(t / "r.txt", b"x"))),
        _a(
            "load",
            "random bytes as netCDF",
            "not a pyrobust result",
            lambda t: load(_bytes(t / "r.nc", os.urandom(2048))),
        ),
        _a(
            "load",
            "truncated netCDF",
            "not a pyrobust result",
            lambda t: load(_crafted_result(t, ".nc", _truncated)),
        ),
        _a("load", "foreign netCDF", "pyrobust_version", lambda t: load(_foreign_nc(t / "f.nc"))),
        _a(
            "load",
            "damaged zarr metadata",
            "not a pyrobust result",
            lambda t: load(_crafted_result(t, ".zarr", dmg_zarr)),
        ),
        _a(
            "load",
            "damaged zarr chunk",
            "not a pyrobust result",
            lambda t: load(_crafted_result(t, ".zarr", dmg_chunk)),
        ),
        _a(
            "load", "deeply nested JSON attr (netCDF)", "deep", lambda t: load(_deep_attr(t, ".nc"))
        ),
        _a(
            "load", "deeply nested JSON attr (zarr)", "deep", lambda t: load(_deep_attr(t, ".zarr"))
        ),
        _a(
            "load",
            "zarr variable with the pickle codec",
            "evil.zarr",
            lambda t: load(_zarr_pickle(t)),
        ),
        _a(
            "load",
            "format unknown",
            "format",
            lambda t: load(save(margin_tree(), t / "r.nc"), format="grib"),
        ),
        _a("combine", "empty list", "trees", lambda t: combine([])),
        _a("combine", "a tree, not a list", "trees", lambda t: combine(margin_tree())),
        _a("combine", "a list with a dict", "trees[1]", lambda t: combine([margin_tree(), {}])),
        _a(
            "combine",
            "different kinds",
            "trees",
            lambda t: combine([margin_tree(), robustness_tree()]),
        ),
        _a(
            "combine",
            "coords of the wrong length",
            "coords",
            lambda t: combine([margin_tree(), margin_tree(seed=1)], coords=[1, 2, 3]),
        ),
        _a("combine", "dim a number", "dim", lambda t: combine([margin_tree()] * 2, dim=3)),
        _a(
            "combine",
            "dim already present",
            "obs_id",
            lambda t: combine([margin_tree()] * 2, dim="obs_id"),
        ),
        _a(
            "combine",
            "join unknown",
            "join",
            lambda t: combine([margin_tree(), margin_tree(seed=1)], coords=[1, 2], join="sideways"),
        ),
    ]


def _project(tmp: Path) -> Path:
    project = tmp / "my_project"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    return project


def _foreign_nc(path: Path) -> Path:
    xr.Dataset({"a": ("x", np.arange(3))}).to_netcdf(path, engine="h5netcdf")
    return path


# ---- the command line ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase(Case):
    pass


def _c(command, bad, arg, argv, xfail=None):
    """A CLI case; ``argv`` may use {run} (a trained run dir), {tmp} and {file} (a text file)."""

    def call(tmp: Path):
        try:
            run = _cli_run(tmp) if any("{run}" in a for a in argv) else None
        except Exception as err:
            raise FixtureError(f"the fixture run could not be trained: {err!r}") from err
        text = tmp / "notes.txt"
        text.write_text("not a result")
        args = [a.format(run=run, tmp=tmp, file=text) for a in argv]
        return _cli([command, *args])

    return CliCase(f"pyrobust {command}", bad, arg, call, xfail)


_RUN: dict[str, Path] = {}


def _cli_run(tmp: Path) -> Path:
    """A tiny trained run directory (digits, 1 epoch), made once per session."""
    if "run" not in _RUN:
        out = tmp.parent / "cli-run" / "run"  # the session's base temp dir
        if not (out / "model.pt").exists():
            rc = cli.main(
                [
                    "train",
                    "--out",
                    str(out),
                    "--epochs",
                    "1",
                    "--n",
                    "120",
                    "--hidden",
                    "8",
                    "--latent-dim",
                    "2",
                    "--batch-size",
                    "32",
                ]
            )
            assert rc == 0, "the CLI could not train the fixture run"
        _RUN["run"] = out
    return _RUN["run"]


def _cli(argv: list[str]):
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


QUERY_COMMANDS = ("robustness", "margin", "attack", "certify", "metrics")
ALL_COMMANDS = ("demo", "train", *QUERY_COMMANDS, "report", "reproduce")


def _cli_cases() -> list[Case]:
    fast = {
        "demo": ["--epochs", "1", "--out", "{tmp}/demo"],
        "train": ["--epochs", "1", "--n", "60", "--hidden", "4", "--out", "{tmp}/t"],
        "robustness": ["--run", "{run}", "--n-inputs", "2", "--num-samples", "8"],
        "margin": ["--run", "{run}", "--n-inputs", "2", "--num-samples", "8"],
        "attack": ["--run", "{run}", "--n-inputs", "2", "--steps", "2", "--restarts", "1"],
        "certify": ["--run", "{run}", "--n-inputs", "2"],
        "metrics": ["--run", "{run}", "--n-inputs", "20", "--num-bootstrap", "0"],
        "report": ["{file}", "--out", "{tmp}/rep"],
        "reproduce": ["--quick", "--out", "{tmp}/rp", "--datasets", "digits"],
        "audit": [
            "--run",
            "{run}",
            "--n-inputs",
            "2",
            "--num-samples",
            "8",
            "--out",
            "{tmp}/a.zarr",
        ],
    }
    cases = []
    for cmd in ALL_COMMANDS:
        base = fast[cmd]
        cases += [
            _c(cmd, "unknown option", "--colour", [*base, "--colour", "red"]),
            _c(cmd, "seed not an int", "--seed", [*base, "--seed", "abc"]),
            _c(cmd, "device unknown", "--device", [*base, "--device", "foo"]),
            _c(cmd, "threads 0", "--threads", [*base, "--threads", "0"]),
            _c(cmd, "threads 100000", "--threads", [*base, "--threads", "100000"]),
            _c(cmd, "config file missing", "--config", [*base, "--config", "{tmp}/none.toml"]),
            _c(cmd, "config not TOML", "--config", [*base, "--config", "{file}"]),
        ]
    for cmd in QUERY_COMMANDS:
        base = fast[cmd]
        cases += [
            _c(cmd, "run dir missing", "--run", [*base[2:], "--run", "{tmp}/nowhere"]),
            _c(cmd, "run dir without a model", "--run", [*base[2:], "--run", "{tmp}"]),
            _c(cmd, "n-inputs negative", "--n-inputs", [*base, "--n-inputs", "-1"]),
            _c(cmd, "n-inputs 0", "--n-inputs", [*base, "--n-inputs", "0"]),
        ]
    cases += [
        _c("train", "epochs 0", "--epochs", [*fast["train"], "--epochs", "0"]),
        _c("train", "epochs 1.5", "--epochs", [*fast["train"], "--epochs", "1.5"]),
        _c("train", "batch-size 0", "--batch-size", [*fast["train"], "--batch-size", "0"]),
        _c("train", "lr negative", "--lr", [*fast["train"], "--lr", "-1"]),
        _c("train", "n negative", "--n", [*fast["train"], "--n", "-5"]),
        _c("train", "hidden not a list of ints", "--hidden", [*fast["train"], "--hidden", "a,b"]),
        _c("train", "latent-dim 0", "--latent-dim", [*fast["train"], "--latent-dim", "0"]),
        _c("train", "dataset unknown", "--dataset", [*fast["train"], "--dataset", "cifar"]),
        _c("train", "arch unknown", "--arch", [*fast["train"], "--arch", "transformer"]),
        _c(
            "train",
            "likelihood unknown",
            "--likelihood",
            [*fast["train"], "--likelihood", "poisson"],
        ),
        _c("train", "objective unknown", "--objective", [*fast["train"], "--objective", "gan"]),
        _c("train", "beta negative", "--beta", [*fast["train"], "--beta", "-1"]),
        _c("train", "out is a file", "--out", [*fast["train"], "--out", "{file}"]),
        _c("robustness", "r negative", "--r", [*fast["robustness"], "--r", "-1"]),
        _c(
            "robustness",
            "num-samples 0",
            "--num-samples",
            [*fast["robustness"], "--num-samples", "0"],
        ),
        _c(
            "robustness", "confidence 2", "--confidence", [*fast["robustness"], "--confidence", "2"]
        ),
        _c(
            "robustness",
            "reference unknown",
            "--reference",
            [*fast["robustness"], "--reference", "median"],
        ),
        _c(
            "robustness",
            "family unknown",
            "--family",
            [*fast["robustness"], "--eps", "0.1", "--family", "cube"],
        ),
        _c("robustness", "eps negative", "--eps", [*fast["robustness"], "--eps", "-0.1"]),
        _c("robustness", "r not a number", "--r", [*fast["robustness"], "--r", "big"]),
        _c("margin", "norm unknown", "--norm", [*fast["margin"], "--norm", "nuclear"]),
        _c("margin", "r NaN", "--r", [*fast["margin"], "--r", "nan"]),
        _c("attack", "eps negative", "--eps", [*fast["attack"], "--eps", "-0.5"]),
        _c("attack", "norm unknown", "--norm", [*fast["attack"], "--norm", "l3"]),
        _c("attack", "steps 0", "--steps", [*fast["attack"], "--steps", "0"]),
        _c("attack", "empirical without r", "--r", [*fast["attack"], "--empirical"]),
        _c("certify", "r negative", "--r", [*fast["certify"], "--r", "-2"]),
        _c("audit", "engine unknown", "--engine", [*fast["audit"], "--engine", "spark"]),
        _c("audit", "shard-size 0", "--shard-size", [*fast["audit"], "--shard-size", "0"]),
        _c("audit", "r negative", "--r", [*fast["audit"], "--r", "-1"]),
        _c("certify", "a negative", "--a", [*fast["certify"], "--a", "-1"]),
        _c(
            "metrics",
            "num-bootstrap negative",
            "--num-bootstrap",
            [*fast["metrics"], "--num-bootstrap", "-3"],
        ),
        _c("metrics", "a digits run (no factors)", "--run", fast["metrics"]),
        _c("report", "input missing", "nowhere.nc", ["{tmp}/nowhere.nc", "--out", "{tmp}/rep"]),
        _c("report", "input not a result", "notes.txt", fast["report"]),
        _c("report", "out is a file", "--out", ["{file}", "--out", "{file}"]),
        _c("demo", "epochs 0", "--epochs", ["--epochs", "0", "--out", "{tmp}/demo"]),
        _c("demo", "r negative", "--r", [*fast["demo"], "--r", "-1"]),
        _c(
            "reproduce",
            "datasets unknown",
            "--datasets",
            ["--quick", "--out", "{tmp}/rp", "--datasets", "cifar"],
        ),
        _c("reproduce", "betas negative", "--betas", [*fast["reproduce"], "--betas", "-1"]),
        _c(
            "reproduce",
            "objectives unknown",
            "--objectives",
            [*fast["reproduce"], "--objectives", "gan"],
        ),
    ]
    return cases


# ---- the table, its expected failures, and the test ---------------------------------------------


def _audit(tmp: Path, **kwargs):
    settings_ = {
        "queries": {"r_robustness": {"r": 1.0, "num_samples": 8}},
        "out": tmp / "audit.zarr",
        "shard_size": 2,
        "seed": 0,
        "progress": False,
        **kwargs,
    }
    model = settings_.pop("model", VAE_)
    data = settings_.pop("data", X)
    return pr.audit(model, data, **settings_)


def _audit_cases() -> list[Case]:
    def au(bad, arg, files=(ValueError, TypeError), **kwargs):
        return Case("pr.audit", bad, arg, lambda t: _audit(t, **kwargs), files=files)

    return [
        au("data with NaN", "data", data=_with(X, 2, NAN)),
        au("data empty", "data", data=torch.rand(0, 4)),
        au("data of the wrong event shape", "data", data=torch.rand(3, 6)),
        au("model a number", "model_or_run", model=42),
        au("model a missing run", "model_or_run", files=_FILE, model="/nonexistent/run"),
        au("queries unknown", "queries", queries={"robustest": {}}),
        au("queries with a bad setting", "r", queries={"r_robustness": {"r": -1.0}}),
        au("engine unknown", "engine", engine="spark"),
        au("shard_size 0", "shard_size", shard_size=0),
        au("max_retries negative", "max_retries", max_retries=-1),
        au("threads 0", "threads", threads=0),
        au("device unknown", "device", device="tpu"),
        au("overwrite a string", "overwrite", overwrite="yes"),
        Case(
            "pr.audit",
            "out a directory that is not a store",
            "out",
            lambda t: _audit(t, out=_project(t), overwrite=True),
        ),
    ]


def _d(entry, bad, arg, fn, xfail=None, files=(ValueError, TypeError)):
    return Case(f"pr.data.{entry}", bad, arg, fn, xfail, files)


def _data_cases() -> list[Case]:
    from pyrobust import data

    return [
        _d("load_digits", "n_class 0", "n_class", lambda t: data.load_digits(n_class=0)),
        _d("load_digits", "n_class 11", "n_class", lambda t: data.load_digits(n_class=11)),
        _d("load_digits", "dtype an int", "dtype", lambda t: data.load_digits(dtype=torch.int64)),
        _d(
            "load_idx",
            "missing file",
            "none.idx",
            lambda t: data.load_idx(t / "none.idx"),
            files=_FILE,
        ),
        _d(
            "load_idx",
            "random bytes",
            "idx",
            lambda t: data.load_idx(_bytes(t / "x.idx", os.urandom(64))),
        ),
        _d(
            "load_idx",
            "header claiming 10**9 items",
            "idx",
            lambda t: data.load_idx(
                _bytes(t / "x.idx", b"\x00\x00\x08\x01" + (10**9).to_bytes(4, "big"))
            ),
        ),
        _d("load_mnist", "split unknown", "split", lambda t: data.load_mnist(t, split="dev")),
        _d(
            "load_mnist", "root missing", "none", lambda t: data.load_mnist(t / "none"), files=_FILE
        ),
        _d(
            "load_dsprites_npz",
            "random bytes",
            "npz",
            lambda t: data.load_dsprites_npz(_bytes(t / "d.npz", os.urandom(256))),
        ),
        _d(
            "load_mnist5k",
            "random bytes",
            "m.csv.gz",
            lambda t: data.load_mnist5k(_bytes(t / "m.csv.gz", os.urandom(256))),
        ),
        _d("minibatches", "batch_size 0", "batch_size", lambda t: data.minibatches(X, 0)),
        _d("minibatches", "data a string", "data", lambda t: data.minibatches("abc", 2)),
        _d(
            "train_test_split",
            "test_fraction 1.5",
            "test_fraction",
            lambda t: data.train_test_split(10, 1.5),
        ),
        _d(
            "train_test_split",
            "test_fraction NaN",
            "test_fraction",
            lambda t: data.train_test_split(10, NAN),
        ),
        _d("train_test_split", "n negative", "n_or_tensor", lambda t: data.train_test_split(-3)),
        _d(
            "DSpritesDataset",
            "indices out of range",
            "indices",
            lambda t: data.DSpritesDataset(indices=[10**9]),
        ),
    ]


def _metric_cases() -> list[Case]:
    from pyrobust.analysis import dci, mig, report, sap

    rng = np.random.default_rng(0)
    codes, factors = rng.normal(size=(50, 3)), rng.integers(0, 3, size=(50, 2))
    bad = codes.copy()
    bad[3, 1] = NAN
    return [
        _a("mig", "codes with NaN", "codes", lambda t: mig(bad, factors)),
        _a(
            "mig",
            "codes and factors of different lengths",
            "factors",
            lambda t: mig(codes, factors[:40]),
        ),
        _a(
            "mig",
            "num_bootstrap negative",
            "num_bootstrap",
            lambda t: mig(codes, factors, num_bootstrap=-1),
        ),
        _a(
            "sap", "codes with inf", "codes", lambda t: sap(np.where(bad != bad, INF, bad), factors)
        ),
        _a("sap", "codes 1-d", "codes", lambda t: sap(codes[:, 0], factors)),
        _a("dci", "codes and factors empty", "codes", lambda t: dci(codes[:0], factors[:0])),
        _a("report", "empty list", "trees_or_paths", lambda t: report([], t)),
        _a(
            "report",
            "names of the wrong length",
            "names",
            lambda t: report([margin_tree()], t, names=["a", "b"]),
        ),
        _a(
            "report",
            "out_dir a file",
            "out_dir",
            lambda t: report(margin_tree(), _bytes(t / "f.txt", b"keep")),
        ),
        _a(
            "report", "an item that is not a result", "trees_or_paths[0]", lambda t: report([42], t)
        ),
    ]


CASES: list[Case] = [
    *_query_cases(),
    *_audit_cases(),
    *_data_cases(),
    *_metric_cases(),
    *_model_cases(),
    *_fit_cases(),
    *_analysis_cases(),
    *_cli_cases(),
]

#: Cases that fail today in another engineer's area: id -> "<owner area>: <what>".
PENDING: dict[str, str] = {}


def _names(message: str, arg: str) -> bool:
    """Whether ``message`` names ``arg`` as a word (``--r`` is not named by ``--run``)."""
    return re.search(rf"(?<![\w-]){re.escape(arg)}(?![\w-])", message) is not None


class FixtureError(RuntimeError):
    """The case could not be set up (not an outcome of the bad input)."""


def _classify(case: Case, tmp: Path, capsys) -> tuple[str, str]:
    """("named" | "result" | "raw" | "unnamed", detail) for one case."""
    try:
        value = case.call(tmp)
    except FixtureError:
        raise
    except Exception as err:
        frames = traceback.extract_tb(err.__traceback__)
        where = frames[-1].filename if frames else ""
        ours = f"{os.sep}pyrobust{os.sep}" in where and "site-packages" not in where
        msg = f"{type(err).__name__}: {str(err)[:300]} [raised in {Path(where).name}]"
        if not (isinstance(err, case.files) and ours):
            return "raw", msg
        return ("named" if _names(str(err), case.arg) else "unnamed"), msg
    if not isinstance(case, CliCase):
        return ("accepted" if case.accept else "result"), f"returned {type(value).__name__}"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if value != 2:
        return "result", f"exit status {value!r}; stderr: {err[-300:]}"
    if "Traceback" in err or not lines:
        return "raw", f"exit 2 with stderr {err[-300:]!r}"
    named = _names(lines[-1], case.arg) and "error" in lines[-1]
    return ("named" if named else "unnamed"), lines[-1][:300]


def _params():
    out = []
    for case in CASES:
        reason = case.xfail or PENDING.get(case.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused_by_name(case: Case, tmp_path, capsys):
    outcome, detail = _classify(case, tmp_path, capsys)
    OUTCOMES[case.id] = {
        "entry": case.entry,
        "bad": case.bad,
        "arg": case.arg,
        "outcome": outcome,
        "detail": detail,
    }
    good = ("named", "accepted") if case.accept else ("named",)
    assert outcome in good, f"{case.entry} with {case.bad}: {outcome}: {detail}"


# ---- property-based cases (hypothesis): random positions, values and bytes -----------------------

PROPERTY = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _record(name: str, entry: str, ok: bool) -> None:
    row = OUTCOMES.setdefault(f"{name} ({entry})", {"entry": entry, "examples": 0, "named": 0})
    row["examples"] += 1
    row["named"] += int(ok)


@PROPERTY
@given(
    index=st.integers(0, 11),
    value=st.sampled_from([NAN, INF, -INF]),
    name=st.sampled_from(["r_robustness", "margin_bound", "max_damage_attack", "latent_attack"]),
)
def test_property_non_finite_x_anywhere(index, value, name):
    x = _with(X, index, value)
    with pytest.raises((ValueError, TypeError), match="x") as info:
        _query(name, x)
    _record("property: x with NaN/inf at a random position", f"pr.{name}", True)
    assert "pyrobust" in info.traceback[-1].path.as_posix()


@PROPERTY
@given(data=st.binary(min_size=0, max_size=4096), suffix=st.sampled_from([".nc", ".pt"]))
def test_property_random_bytes_are_refused(tmp_path, data, suffix):
    path = _bytes(tmp_path / f"f{suffix}", data)
    loader = load if suffix == ".nc" else load_model
    with pytest.raises(ValueError, match=r"not a (pyrobust result|readable pyrobust model file)"):
        loader(path)
    entry = "pr.analysis.load" if suffix == ".nc" else "pr.models.load_model"
    _record("property: random bytes as a result / model file", entry, True)


@PROPERTY
@given(
    num_samples=st.one_of(
        st.integers(max_value=0),
        st.floats(0.1, 1e6).filter(lambda v: not float(v).is_integer()),
        st.booleans(),
    ),
)
def test_property_bad_counts(num_samples):
    with pytest.raises((ValueError, TypeError), match="num_samples"):
        _query("r_robustness", num_samples=num_samples)
    _record("property: num_samples not a positive int", "pr.r_robustness", True)


@PROPERTY
@given(confidence=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), st.just(NAN)))
def test_property_bad_confidence(confidence):
    with pytest.raises((ValueError, TypeError), match="confidence"):
        _query("r_robustness", confidence=confidence)
    _record("property: confidence outside (0, 1)", "pr.r_robustness", True)


def test_every_public_entry_point_is_in_the_table():
    """The table covers pyrobust.__all__'s functions, fit, save/load/combine and every command."""
    entries = {c.entry for c in CASES}
    functions = [n for n in pr.__all__ if callable(getattr(pr, n)) and not n.startswith("_")]
    functions = [n for n in functions if not isinstance(getattr(pr, n), type(pr))]
    missing = [n for n in functions if f"pr.{n}" not in entries]
    missing += [c for c in cli.COMMANDS if f"pyrobust {c}" not in entries]
    missing += [f for f in ("fit",) if f"pr.inference.{f}" not in entries]
    missing += [f for f in ("save", "load", "combine") if f"pr.analysis.{f}" not in entries]
    assert not missing, f"entry points without bad-input cases: {missing}"
    assert math.isfinite(len(CASES))
