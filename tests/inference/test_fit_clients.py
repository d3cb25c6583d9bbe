"""fit trains the client zoo's VAEs as their authors wrote them (tests/clients), and records
their loss per data point, checked against Pyro's own ELBO on the whole training set.

The parameters are held still (SGD with a step of 1e-30), so the epoch's ``train_loss`` is a
one-particle estimate of :math:`-\\mathrm{ELBO}/N` at the initial parameters, over all
``N`` points in minibatches of ``B = N/4``: a plate-scaling mistake shows as a factor of 4.
"""

from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyrobust._results import decode_attrs
from pyrobust.inference import BetaELBO, fit
from tests.clients import cvae, plateless, pyroved_ivae, ss_vae_m2, tutorial_vae
from tests.clients._data import digits

N, B = 256, 64


def _tutorial():
    net = tutorial_vae.VAE()
    return net.model, net.guide, digits(N)[0], (), Trace_ELBO  # inputs (N, 1, 8, 8)


def _pyroved():
    net = pyroved_ivae.iVAE()  # model(x, y=None, **kwargs), plate("data", x.shape[0])
    images = digits(N)[0].reshape(-1, pyroved_ivae.H, pyroved_ivae.W)
    return net.model, net.guide, images, (), Trace_ELBO


def _plateless():
    net = plateless.PlatelessVAE()
    return net.model, net.guide, digits(N)[0].reshape(N, -1), (), Trace_ELBO


def _cvae():
    net = cvae.CVAE()  # model(xs, ys): the masked input and the full image; sizeless plates
    images = digits(N)[0]
    return net.model, net.guide, cvae.masked(images), (images,), Trace_ELBO


def _ss_vae():
    net = ss_vae_m2.SSVAE()  # a discrete digit "y" in the guide, enumerated
    guide = config_enumerate(net.guide, "parallel", expand=False)
    data = digits(N)[0].reshape(N, -1)
    return net.model, guide, data, (), lambda **kw: TraceEnum_ELBO(max_plate_nesting=1, **kw)


CLIENTS = {
    "tutorial": _tutorial,
    "pyroved_kwargs": _pyroved,
    "plateless": _plateless,
    "cvae_model_args": _cvae,
    "ss_vae_enumerated": _ss_vae,
}


@pytest.mark.parametrize("name", list(CLIENTS))
def test_fit_records_the_per_point_loss_of_each_client(name):
    pyro.set_rng_seed(0)
    model, guide, data, args, make_elbo = CLIENTS[name]()
    tree = fit(
        (model, guide),
        data,
        elbo=make_elbo(),
        model_args=args,
        epochs=1,
        batch_size=B,
        optimizer=pyro.optim.SGD({"lr": 1e-30}),
    )
    assert decode_attrs(tree.attrs)["size_passed"] is False
    recorded = float(tree["history"]["train_loss"].values[0])
    # independent: Pyro's ELBO on all N points at once, many particles, divided by N
    pyro.set_rng_seed(1)
    with torch.no_grad():
        full = make_elbo(num_particles=24).loss(model, guide, data, *args) / N
    assert recorded == pytest.approx(full, rel=0.03)


def test_ss_vae_with_a_reparameterized_objective_is_refused_naming_y():
    net = ss_vae_m2.SSVAE()
    data = digits(B)[0].reshape(B, -1)
    with pytest.raises(ValueError, match=r"guide's site 'y' .*TraceEnum_ELBO"):
        fit((net.model, net.guide), data, elbo=BetaELBO(), epochs=1, batch_size=B)
    # labelled data: y is observed in the model, so nothing is left to enumerate
    labels = F.one_hot(digits(B)[1], ss_vae_m2.K).float()
    h = fit((net.model, net.guide), data, model_args=(labels,), epochs=1, batch_size=16)
    assert torch.isfinite(torch.as_tensor(h["history"]["train_loss"].values)).all()
