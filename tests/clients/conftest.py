"""Shared fixtures of the client zoo: each client is trained once per session.

Training happens outside any test's function-scoped fixtures, so it sets its own seed, Pyro
validation and a single torch thread (same seed, same bits).
"""

from __future__ import annotations

import importlib

import pyro
import pytest
import torch

#: Clients every query must answer for (module names in this package).
SUPPORTED = (
    "tutorial_vae",
    "ss_vae_m2",
    "cvae",
    "lognormal_scale",
    "scanvi_library",
    "pyroved_ivae",
    "plateless",
    "prodlda",
)
#: Clients whose guide samples latent sites besides the latent site.
MULTI_LATENT = ("ss_vae_m2", "lognormal_scale", "scanvi_library")
SINGLE_LATENT = tuple(c for c in SUPPORTED if c not in MULTI_LATENT)

_CACHE: dict = {}


def get_client(name: str):
    """The trained client ``name`` (trained on first use, then cached for the session)."""
    if name not in _CACHE:
        module = importlib.import_module(f"tests.clients.{name}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with pyro.validation_enabled(True):
                _CACHE[name] = module.train()
        finally:
            torch.set_num_threads(threads)
            pyro.clear_param_store()
    return _CACHE[name]


@pytest.fixture(scope="module", params=SUPPORTED)
def client(request):
    return get_client(request.param)


@pytest.fixture(scope="module", params=SINGLE_LATENT)
def single(request):
    return get_client(request.param)


@pytest.fixture(scope="module", params=MULTI_LATENT)
def multi(request):
    return get_client(request.param)


@pytest.fixture(scope="module")
def air():
    return get_client("air_subsample")


@pytest.fixture(scope="module")
def prodlda():
    return get_client("prodlda")
