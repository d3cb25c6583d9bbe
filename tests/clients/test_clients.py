"""Every public query on every client of the zoo, each answer checked against an independent
computation (the client's nets called in plain torch; see ``_client.py``).

Monte-Carlo answers are compared within a few standard errors of their difference; exact
quantities (Jacobian norms, encoder scales, divergences) at ``rtol=1e-5``. What the protocol
cannot support is checked to be refused with a ``ValueError`` naming the site or plate.
"""

from __future__ import annotations

import contextlib
import math
import re

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrobust as pr
from pyrobust.robustness._sequential import ABOUT_HALF
from pyrobust.robustness._stats import NOT_ROBUST, ROBUST
from tests.clients._client import (
    assert_binomial_close,
    distances,
    eval_mode,
    gauss_kl,
    jacobian,
    log_likelihoods,
    mean_damage,
    neg_elbo,
    probability,
)

N = 2000  # pyrobust's draws per probability
M = 4000  # the independent computation's draws
ATTACK = {"steps": 8, "restarts": 1, "eot_samples": 8}


def _tensor(da) -> torch.Tensor:
    return torch.as_tensor(da.values)


def _delta(client, eps: float | None = None, seed: int = 3) -> torch.Tensor:
    """A fixed perturbation of l2 size ``eps`` per input, kept inside the client's box."""
    x = client.x
    eps = client.eps if eps is None else eps
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape, generator=g, dtype=x.dtype)
    u = u / u.reshape(len(x), -1).norm(dim=-1).reshape(-1, *[1] * (x.dim() - 1))
    d = eps * u
    if client.box is not None:
        d = (x + d).clamp(*client.box) - x
    return d


@contextlib.contextmanager
def untouched(client):
    """The query leaves the caller's modules as they were: training flags and every buffer
    (BatchNorm running statistics, ``num_batches_tracked``) and every parameter."""
    flags = [m.training for mod in client.modules for m in mod.modules()]
    state = [{k: v.clone() for k, v in mod.state_dict().items()} for mod in client.modules]
    yield
    assert flags == [m.training for mod in client.modules for m in mod.modules()]
    for mod, before in zip(client.modules, state, strict=True):
        after = mod.state_dict()
        for k, v in before.items():
            assert torch.equal(v, after[k]), f"{client.name}: {k} changed by the query"


def _guide_sites(client) -> dict:
    """certified_margin takes the same site names as every query."""
    return dict(client.sites)


def _site_pattern(site: str) -> str:
    return rf"['\"]{re.escape(site)}['\"]"


def _assert_decisions_hold(code, ci, mine, tolerance: float = 0.05) -> None:
    """Sequential decisions checked against plain-torch probabilities ``mine`` (from ``M``
    draws): "robust" has p > 1/2, "not robust" p < 1/2, "about 1/2" p within the zone, and
    every interval ``ci`` (..., ci_bound) holds p, up to the plain estimate's own error."""
    slack = 4.5 * math.sqrt(0.25 / M)
    assert bool((mine[code == ROBUST] > 0.5 - slack).all()), (mine, code)
    assert bool((mine[code == NOT_ROBUST] < 0.5 + slack).all()), (mine, code)
    assert bool(((mine[code == ABOUT_HALF] - 0.5).abs() < tolerance + slack).all()), (mine, code)
    ci = ci.double()
    assert bool(((mine >= ci[..., 0] - slack) & (mine <= ci[..., 1] + slack)).all()), (mine, ci)


def _assert_cam_bound(client, rob) -> None:
    """jacobian_norm equals plain torch's and ``bound`` is [CAM]'s formula at ``p_a_lower``."""
    jac, scale = jacobian(client, client.x)
    jac_norm = jac.reshape(len(jac), jac.shape[1], -1).norm(dim=(1, 2)).double()
    torch.testing.assert_close(_tensor(rob["jacobian_norm"]), jac_norm, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        _tensor(rob["min_scale"]), scale.min(-1).values.double(), rtol=1e-5, atol=0
    )
    p_low = _tensor(rob["p_a_lower"])
    expected = torch.where(
        p_low > 0.5,
        scale.min(-1).values.double() * torch.special.ndtri(p_low) / jac_norm,
        torch.zeros_like(p_low),
    )
    torch.testing.assert_close(_tensor(rob["bound"]), expected, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------------------------
# r_robustness
# --------------------------------------------------------------------------------------------


def test_r_robustness_with_delta(client):
    delta = _delta(client)
    with untouched(client):
        tree = pr.r_robustness(
            client.model,
            client.guide,
            client.x,
            r=client.r,
            delta=delta,
            num_samples=N,
            seed=0,
            **client.sites,
        )
    p = _tensor(tree["robustness"]["probability"])
    assert_binomial_close(p, N, probability(client, client.x, client.r, delta, num=M), M)
    torch.testing.assert_close(_tensor(tree["constant_data"]["delta"]).to(delta.dtype), delta)


def test_r_robustness_with_eps_family(client):
    eps = [0.0, client.eps]
    with untouched(client):
        tree = pr.r_robustness(
            client.model,
            client.guide,
            client.x,
            r=client.r,
            eps=eps,
            family="gaussian",
            num_samples=N,
            seed=1,
            **client.sites,
        )
    p = tree["robustness"]["probability"]
    deltas = tree["constant_data"]["delta"]
    for j in range(len(eps)):
        d = _tensor(deltas.isel(eps=j)).to(client.x.dtype)
        assert float(d.reshape(len(d), -1).norm(dim=-1).max()) <= 5 * eps[j] + 1e-6
        mine = probability(client, client.x, client.r, d, num=M)
        assert_binomial_close(_tensor(p.isel(eps=j)), N, mine, M)


def test_r_robustness_is_reproducible(client):
    def run():
        return pr.r_robustness(
            client.model,
            client.guide,
            client.x,
            r=client.r,
            num_samples=200,
            seed=7,
            **client.sites,
        )

    with untouched(client):
        a, b = run(), run()
    torch.testing.assert_close(
        _tensor(a["posterior_predictive"]["distance"]),
        _tensor(b["posterior_predictive"]["distance"]),
        rtol=0,
        atol=0,
    )


def test_r_robustness_auto(client):
    # Sequential decisions on radii below, at and above the crossing, each checked by the
    # client's nets in plain torch.
    delta = _delta(client)
    d = distances(client, client.x, delta, num=M)  # (M, obs_id): plain torch
    # every input has p <= 0.2 at the first radius and p >= 0.8 at the last
    low, high = d.quantile(0.2, dim=0).min(), d.quantile(0.8, dim=0).max()
    radii = [float(low), client.r, float(high)]
    with untouched(client):
        tree = pr.r_robustness(
            client.model,
            client.guide,
            client.x,
            r=radii,
            delta=delta,
            num_samples="auto",
            tolerance=0.05,
            max_samples=20_000,
            seed=0,
            **client.sites,
        )
    rob = tree["robustness"]
    assert rob["decision"].dims == ("obs_id", "radius")
    mine = torch.stack([(d <= r).double().mean(0) for r in radii], dim=-1)  # (obs_id, radius)
    code, draws = _tensor(rob["decision"]), _tensor(rob["num_draws"])
    _assert_decisions_hold(code, _tensor(rob["ci"]), mine)
    torch.testing.assert_close(
        _tensor(rob["probability"]), _tensor(rob["num_inside"]).double() / draws.double()
    )
    # not vacuous: both sides of 1/2 are decided, with as few draws as each needs
    assert bool((code == ROBUST).any()) and bool((code == NOT_ROBUST).any()), code
    assert int(draws.min()) < int(draws.max()) <= 20_000
    assert int(draws.sum()) == tree.attrs["total_draws"]


def test_audit_auto_equals_its_shards(client, tmp_path):
    # An audit cuts the client's inputs and their per-input model arguments (labels, library
    # sizes) into shards; each shard's sequential answers are one call's with its seed.
    from pyrobust.robustness.audit import audit, shard_seed

    n, size = len(client.x), 3
    kwargs = {"r": client.r, "num_samples": "auto", "max_samples": 4096, "tolerance": 0.05}
    with untouched(client):
        tree = audit(
            (client.model, client.guide),
            client.x,
            queries={"r_robustness": {**kwargs, **client.sites}},
            out=tmp_path / "a.zarr",
            shard_size=size,
            seed=2,
            progress=False,
        )
    rob = tree["r_robustness/robustness"].to_dataset().load()
    assert bool(tree["shards_done"].all()) and rob.sizes["obs_id"] == n
    for s, start in enumerate(range(0, n, size)):
        stop = min(start + size, n)
        sites = {k: v for k, v in client.sites.items() if k not in ("model_args", "model_kwargs")}
        if client.model_args:
            sites["model_args"] = tuple(
                a[start:stop] if isinstance(a, torch.Tensor) and len(a) == n else a
                for a in client.model_args
            )
        if client.model_kwargs:
            sites["model_kwargs"] = {
                k: v[start:stop] if isinstance(v, torch.Tensor) and len(v) == n else v
                for k, v in client.model_kwargs.items()
            }
        ref = pr.r_robustness(
            client.model,
            client.guide,
            client.x[start:stop],
            seed=shard_seed(2, s, 0),
            **kwargs,
            **sites,
        )["robustness"]
        for name in ("decision", "num_inside", "num_draws", "ci"):
            part = rob[name].isel(obs_id=slice(start, stop)).values
            assert part.tobytes() == ref[name].values.tobytes(), (client.name, name)


def test_lognormal_scale_is_the_issue_number():
    """The issue's minimal case: with ``s`` replayed from the guide, p = 0.954 (not ~0.2)."""
    from tests.clients.conftest import get_client

    client = get_client("lognormal_scale")
    tree = pr.r_robustness(
        client.model, client.guide, torch.ones(4, 1), r=0.2, num_samples=4000, seed=0
    )
    p = _tensor(tree["robustness"]["probability"])
    exact = math.erf(0.2 / (0.1 * math.sqrt(2)))  # P(|N(0, 0.1)| <= 0.2) = 0.9545
    assert float((p - exact).abs().max()) < 4.5 * math.sqrt(exact * (1 - exact) / 4000)


# --------------------------------------------------------------------------------------------
# margin_bound and certified_margin: single-Gaussian theory
# --------------------------------------------------------------------------------------------


def test_margin_bound(single):
    client = single
    with untouched(client):
        tree = pr.margin_bound(
            client.model,
            client.guide,
            client.x,
            r=2 * client.r,
            num_samples=N,
            confidence=0.99,
            seed=0,
            **client.sites,
        )
    rob = tree["robustness"]
    _assert_cam_bound(client, rob)
    p_a = probability(client, client.x, 2 * client.r, num=M)
    assert_binomial_close(_tensor(rob["p_a"]), N, p_a, M)


def test_margin_bound_auto(single):
    # p_A drawn until its lower limit is within `precision` of it: the estimate agrees with
    # plain torch, the lower limit lies below it, and the bound is [CAM]'s formula at it.
    client, precision = single, 0.02
    with untouched(client):
        tree = pr.margin_bound(
            client.model,
            client.guide,
            client.x,
            r=2 * client.r,
            num_samples="auto",
            precision=precision,
            max_samples=20_000,
            seed=0,
            **client.sites,
        )
    rob = tree["robustness"]
    draws = _tensor(rob["num_draws"])
    p_a, p_low = _tensor(rob["p_a"]), _tensor(rob["p_a_lower"])
    mine = probability(client, client.x, 2 * client.r, num=M)
    for i in range(len(draws)):
        assert_binomial_close(p_a[i : i + 1], int(draws[i]), mine[i : i + 1], M)
    assert bool((p_low <= mine + 4.5 * math.sqrt(0.25 / M)).all()), (p_low, mine)
    assert bool(((p_a - p_low <= precision) | (draws == 20_000)).all()), (p_a, p_low, draws)
    _assert_cam_bound(client, rob)
    assert tree.attrs["num_samples"] == "auto" and tree.attrs["precision"] == precision


def test_certified_margin(single):
    client = single
    a, b, c = 2.0, 3.0, 0.5
    with untouched(client):
        tree = pr.certified_margin(
            client.model,
            client.guide,
            client.x,
            r=client.r,
            a=a,
            b=b,
            c=c,
            **_guide_sites(client),
        )
    rob = tree["robustness"]
    with torch.no_grad(), eval_mode(client.modules):
        s = client.encode(client.x)[1].norm(dim=-1).double()
    torch.testing.assert_close(_tensor(rob["s"]).double(), s, rtol=1e-5, atol=0)
    k = b * b + c * c  # THEORY section 4, Bound 1 in closed form
    rad = k * client.r**2 / (2 * a * a) - 4 * b * b * s * s
    bound1 = torch.where(rad > 0, (rad.clamp_min(0).sqrt() - 2 * c * s) / k, 0.0).clamp_min(0)
    torch.testing.assert_close(_tensor(rob["bound1"]).double(), bound1, rtol=1e-5, atol=1e-12)
    assert bool((_tensor(rob["certified_margin"]).double() >= bound1 - 1e-12).all())


@pytest.mark.parametrize("query", ["margin_bound", "certified_margin", "latent_attack"])
def test_single_gaussian_queries_refuse_extra_latent_sites(multi, query):
    """margin_bound / certified_margin / latent_attack have single-Gaussian theory: the other
    guide sites ("y", "s", "l") are refused by name."""
    client = multi
    (other,) = client.other_sites
    with pytest.raises(ValueError, match=_site_pattern(other)), untouched(client):
        if query == "margin_bound":
            pr.margin_bound(
                client.model,
                client.guide,
                client.x,
                r=client.r,
                num_samples=50,
                seed=0,
                **client.sites,
            )
        elif query == "certified_margin":
            pr.certified_margin(
                client.model,
                client.guide,
                client.x,
                r=client.r,
                a=1.0,
                b=1.0,
                c=1.0,
                **_guide_sites(client),
            )
        else:
            pr.latent_attack(
                client.model,
                client.guide,
                client.x,
                client.x.flip(0),
                eps=client.eps,
                box=client.box,
                steps=2,
                seed=0,
                **client.sites,
            )


# --------------------------------------------------------------------------------------------
# attacks and empirical margins
# --------------------------------------------------------------------------------------------


def test_max_damage_attack(client):
    eval_samples = 512
    with untouched(client):
        tree = pr.max_damage_attack(
            client.model,
            client.guide,
            client.x,
            eps=client.eps,
            box=client.box,
            eval_samples=eval_samples,
            r=client.r,
            num_samples=N,
            seed=0,
            **ATTACK,
            **client.sites,
        )
    delta = _tensor(tree["constant_data"]["delta"].isel(eps=0)).to(client.x.dtype)
    assert float(delta.reshape(len(delta), -1).norm(dim=-1).max()) <= client.eps * (1 + 1e-5)
    if client.box is not None:
        moved = client.x + delta
        assert float(moved.min()) >= client.box[0] - 1e-6
        assert float(moved.max()) <= client.box[1] + 1e-6
    damage = _tensor(tree["robustness"]["damage"].isel(eps=0)).double()
    mine, sd = mean_damage(client, client.x, delta, num=M)
    tol = 5 * sd.double() * math.sqrt(1 / eval_samples + 1 / M) + 1e-6
    assert bool(((damage - mine.double()).abs() <= tol).all()), (damage, mine, tol)
    p = _tensor(tree["robustness"]["probability"].isel(eps=0))
    assert_binomial_close(p, N, probability(client, client.x, client.r, delta, num=M), M)


def _empirical_margin(client, **kwargs):
    with untouched(client):
        return pr.empirical_margin(
            client.model,
            client.guide,
            client.x,
            r=client.r,
            bisection_steps=3,
            eval_samples=64,
            box=client.box,
            seed=0,
            **ATTACK,
            **kwargs,
            **client.sites,
        )


def test_empirical_margin(client):
    tree = _empirical_margin(client, num_samples=N)
    rob = tree["robustness"]
    clean = probability(client, client.x, client.r, num=M)
    assert_binomial_close(_tensor(rob["probability_clean"]), N, clean, M)
    assert bool((_tensor(rob["margin"]) <= _tensor(rob["margin_upper"])).all())
    above = _tensor(tree["constant_data"]["delta_above"]).to(client.x.dtype)
    p_above = _tensor(rob["probability_above"])
    keep = torch.isfinite(p_above) & torch.isfinite(above.reshape(len(above), -1)).all(-1)
    if bool(keep.any()):
        mine = probability(client, client.x, client.r, torch.nan_to_num(above), num=M)
        assert_binomial_close(p_above[keep], N, mine[keep], M)


def test_empirical_margin_auto(client):
    # The sequential margin's statements, checked by an independent computation: every end
    # decided "not robust" or "about 1/2" at delta_above has that probability in plain torch.
    tree = _empirical_margin(client, num_samples="auto", max_samples=4000)
    rob = tree["robustness"]
    assert tree.attrs["num_samples"] == "auto" and tree.attrs["tolerance"] == 0.04
    above = _tensor(tree["constant_data"]["delta_above"]).to(client.x.dtype)
    mine = probability(client, client.x, client.r, above, num=M)
    code, ci = _tensor(rob["decision_above"]), _tensor(rob["ci_above"])
    _assert_decisions_hold(code, ci, mine, tolerance=0.04)
    assert bool((_tensor(rob["margin"]) <= _tensor(rob["margin_upper"])).all())


def test_latent_attack(single):
    client = single
    target = client.x.flip(0)
    with untouched(client):
        tree = pr.latent_attack(
            client.model,
            client.guide,
            client.x,
            target,
            eps=client.eps,
            box=client.box,
            steps=8,
            seed=0,
            **client.sites,
        )
    rob = tree["robustness"]
    delta = _tensor(tree["constant_data"]["delta"].isel(eps=0)).to(client.x.dtype)
    with torch.no_grad(), eval_mode(client.modules):
        loc, scale = client.encode(client.x + delta)
        loc_t, scale_t = client.encode(target)
        kl = gauss_kl(loc, scale, loc_t, scale_t)
        recon_gap = (client.reference(client.x + delta) - client.reference(target)).reshape(
            len(target), -1
        )
    torch.testing.assert_close(
        _tensor(rob["divergence"].isel(eps=0)).to(kl.dtype), kl, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        _tensor(rob["recon_distance"].isel(eps=0)).to(kl.dtype),
        recon_gap.norm(dim=-1),
        rtol=1e-4,
        atol=1e-5,
    )
    with torch.no_grad(), eval_mode(client.modules):
        kl0 = gauss_kl(*client.encode(client.x), loc_t, scale_t)
    assert bool((kl <= kl0 + 1e-4).all()), "the attack made the encodings farther apart"


def test_output_attack(client):
    elbo_samples = 256
    target = client.target
    with untouched(client):
        tree = pr.output_attack(
            client.model,
            client.guide,
            client.x,
            target,
            eps=client.eps,
            box=client.box,
            steps=4,
            elbo_samples=elbo_samples,
            seed=0,
            **client.sites,
        )
    # the target lives in the observed site's shape, and its dims are named from that site
    (feature,) = client.obs_event
    assert tree["constant_data"]["target"].dims == ("obs_id", "feature")
    assert tree["constant_data"].sizes["feature"] == feature
    delta = _tensor(tree["constant_data"]["delta"].isel(eps=0)).to(client.x.dtype)
    # x lives in constant_data, or in observed_data when it is the observed site's value itself
    holder = "constant_data" if "x" in tree["constant_data"].data_vars else "observed_data"
    x_dims = tree[holder][client.sites.get("obs_site", "x") if holder == "observed_data" else "x"]
    assert tree["constant_data"]["delta"].dims[2:] == x_dims.dims[1:]
    objective = _tensor(tree["robustness"]["objective"].isel(eps=0)).double()
    t = target.expand(len(client.x), *target.shape)
    mine, sd = neg_elbo(client, client.x + delta, t, num=M)
    tol = 5 * sd.double() * math.sqrt(1 / elbo_samples + 1 / M) + 1e-4
    assert bool(((objective - mine.double()).abs() <= tol).all()), (objective, mine, tol)


def test_likelihood_degradation(client):
    delta = _delta(client)
    with untouched(client):
        tree = pr.robustness.likelihood_degradation(
            client.model, client.guide, client.x, delta, **client.sites
        )
    rob = tree["robustness"]
    clean, attacked = log_likelihoods(client, client.x, delta)
    clean, attacked = clean.double(), attacked.double()
    torch.testing.assert_close(_tensor(rob["log_lik_clean"]).double(), clean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        _tensor(rob["log_lik_attacked"]).double(), attacked, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        _tensor(rob["likelihood_degradation"]).double(),
        (attacked - clean) / clean.abs(),
        rtol=1e-3,
        atol=1e-5,
    )


# --------------------------------------------------------------------------------------------
# refusals: a guide that subsamples its data plate
# --------------------------------------------------------------------------------------------

_SUBSAMPLE = r"(?is)(?=.*['\"]data['\"])(?=.*subsampl)"


@pytest.mark.parametrize(
    "query",
    [
        "r_robustness",
        "margin_bound",
        "max_damage_attack",
        "empirical_margin",
        "latent_attack",
        "output_attack",
        "certified_margin",
        "likelihood_degradation",
    ],
)
def test_subsampling_guide_is_refused(air, query):
    client = air
    x, kw = client.x, client.sites
    calls = {
        "r_robustness": lambda: pr.r_robustness(client.model, client.guide, x, r=1.0, **kw),
        "margin_bound": lambda: pr.margin_bound(client.model, client.guide, x, r=1.0, **kw),
        "max_damage_attack": lambda: pr.max_damage_attack(
            client.model, client.guide, x, eps=0.5, steps=2, **kw
        ),
        "empirical_margin": lambda: pr.empirical_margin(
            client.model, client.guide, x, r=1.0, steps=2, **kw
        ),
        "latent_attack": lambda: pr.latent_attack(
            client.model, client.guide, x, x.flip(0), eps=0.5, steps=2, **kw
        ),
        "output_attack": lambda: pr.output_attack(
            client.model, client.guide, x, client.target, eps=0.5, steps=2, **kw
        ),
        "certified_margin": lambda: pr.certified_margin(
            client.model, client.guide, x, r=1.0, a=1.0, b=1.0, c=1.0, **_guide_sites(client)
        ),
    }
    calls["likelihood_degradation"] = lambda: pr.robustness.likelihood_degradation(
        client.model, client.guide, x, torch.zeros_like(x), **kw
    )
    with pytest.raises(ValueError, match=_SUBSAMPLE), untouched(client):
        calls[query]()


# --------------------------------------------------------------------------------------------
# modules left in training mode (ProdLDA: BatchNorm + Dropout)
# --------------------------------------------------------------------------------------------


def test_batchnorm_client_is_left_in_training_mode(prodlda):
    assert all(mod.training for mod in prodlda.modules)


def test_batchnorm_queries_answer_as_in_eval_mode(prodlda):
    """Two identical seeded calls agree bit for bit, and both equal the eval-mode answer."""
    client = prodlda

    def run():
        return pr.r_robustness(
            client.model,
            client.guide,
            client.x,
            r=client.r,
            num_samples=N,
            seed=11,
            **client.sites,
        )

    with untouched(client):
        a, b = run(), run()
    pa, pb = _tensor(a["robustness"]["probability"]), _tensor(b["robustness"]["probability"])
    torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert_binomial_close(pa, N, probability(client, client.x, client.r, num=M), M)
    # a training-mode answer would differ: Dropout noise and batch statistics of the draws
    d_train = distances_in_training_mode(client)
    assert not torch.allclose(
        d_train.median(0).values, distances(client, client.x).median(0).values
    )


def distances_in_training_mode(client):
    g = torch.Generator().manual_seed(0)
    state = [{k: v.clone() for k, v in mod.state_dict().items()} for mod in client.modules]
    try:
        with torch.no_grad():
            return (
                (client.draw(client.x, 64, g) - client.reference(client.x))
                .reshape(64, len(client.x), -1)
                .norm(dim=-1)
            )
    finally:
        for mod, s in zip(client.modules, state, strict=True):
            mod.load_state_dict(s)


# --------------------------------------------------------------------------------------------
# the CVAE at test time: model(x) without y ends in pyro.deterministic("y", loc.detach())
# --------------------------------------------------------------------------------------------


def test_cvae_at_test_time_answers_without_gradients():
    """Called as ``model(x)`` the CVAE example's guide is its prior net and its observed site a
    detached ``pyro.deterministic``: r_robustness needs no gradient and must answer."""
    from tests.clients.conftest import get_client

    client = get_client("cvae")
    net, x, r = client.extras["net"], client.x, client.r
    delta = _delta(client)
    tree = pr.r_robustness(
        client.model, client.guide, x, r=r, delta=delta, num_samples=N, seed=0, obs_site="y"
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        loc, scale = net.prior_net(x + delta)
        z = loc + scale * torch.randn((M, *loc.shape), generator=g)
        d = (net.generation_net(z) - net.generation_net(net.prior_net(x)[0])).norm(dim=-1)
    mine = (d <= r).double().mean(0)
    assert_binomial_close(_tensor(tree["robustness"]["probability"]), N, mine, M)


_NO_GRADIENT = r"(?is)(?=.*['\"]y['\"])(?=.*gradient)"
_DETERMINISTIC = r"(?is)(?=.*['\"]y['\"])(?=.*determin)"


@pytest.mark.parametrize("query", ["max_damage_attack", "empirical_margin", "output_attack"])
def test_cvae_at_test_time_refuses_gradient_attacks(query):
    from tests.clients.conftest import get_client

    client = get_client("cvae")
    x = client.x
    with untouched(client):
        if query == "max_damage_attack":
            with pytest.raises(ValueError, match=_NO_GRADIENT):
                pr.max_damage_attack(
                    client.model, client.guide, x, eps=0.5, box=client.box, steps=2, obs_site="y"
                )
        elif query == "empirical_margin":
            with pytest.raises(ValueError, match=_NO_GRADIENT):
                pr.empirical_margin(  # at r = 1 the clean input is robust: the attack must run
                    client.model,
                    client.guide,
                    x,
                    r=1.0,
                    box=client.box,
                    steps=2,
                    obs_site="y",
                )
        else:
            with pytest.raises(ValueError, match=_DETERMINISTIC):
                pr.output_attack(
                    client.model,
                    client.guide,
                    x,
                    client.target,
                    eps=0.5,
                    box=client.box,
                    steps=2,
                    obs_site="y",
                )


def test_model_site_missing_from_the_guide_is_refused():
    """The issue's minimal model with a guide that forgets ``s``: its value would come from the
    prior behind the user's back, so every query refuses and names it."""
    from tests.clients import lognormal_scale

    def guide_without_s(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x, 0.1).to_event(1))

    x = torch.ones(4, 1)
    with pytest.raises(ValueError, match=_site_pattern("s")):
        pr.r_robustness(lognormal_scale.model, guide_without_s, x, r=0.2, num_samples=10)
    with pytest.raises(ValueError, match=_site_pattern("s")):
        pr.max_damage_attack(lognormal_scale.model, guide_without_s, x, eps=0.1, box=None, steps=2)
