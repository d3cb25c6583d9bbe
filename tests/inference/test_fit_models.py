"""fit on models as users write them: conditional, discrete guide sites, **kwargs, sizeless
plates, float64 and NaN data (issue 12 item 3/6, issue 13 item 8 and the obscure errors)."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from pyrobust._results import decode_attrs
from pyrobust.inference import (
    BetaELBO,
    BetaTCELBO,
    CapacityELBO,
    DIPVAELoss,
    FactorVAELoss,
    JitBetaELBO,
    fit,
    importance_log_likelihood,
)
from tests.inference._models import MLPPair, binary_data
from tests.inference._real_models import SSVAE, CondPair, KwargsPair, SizelessPair

X = binary_data(48)


def params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


# ----------------------------------------------------------------------------------------
# guide sites that cannot be reparameterized
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_elbo",
    [
        BetaELBO,
        lambda: BetaTCELBO(beta=2.0),
        CapacityELBO,
        DIPVAELoss,
        lambda: FactorVAELoss(hidden_dim=4, num_layers=2),
    ],
)
def test_discrete_guide_site_is_refused_by_name_even_without_validation(make_elbo):
    ss = SSVAE()
    with pytest.raises(ValueError, match=r"site 'y' \(OneHotCategorical\) cannot be repara.*"):
        fit(ss, X, elbo=make_elbo(), epochs=1, batch_size=16, validate=False)
    assert not params() or all(torch.isfinite(v).all() for v in params().values())
    with pyro.validation_enabled(False), pytest.raises(ValueError, match="TraceEnum_ELBO"):
        make_elbo().loss(ss.model, ss.guide, X)


def test_discrete_guide_site_trains_with_enumeration():
    ss = SSVAE()
    guide = config_enumerate(ss.guide, "parallel")
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    # the loss fit records at the first step is TraceEnum_ELBO's at the initial parameters
    pyro.set_rng_seed(3)
    first_batch = X[torch.randperm(48, generator=torch.Generator().manual_seed(3 * 1_000_003))]
    expected = elbo.loss(ss.model, guide, first_batch[:16], size=48)
    tree = fit((ss.model, guide), X, elbo=elbo, epochs=6, batch_size=16, lr=5e-2, seed=3)
    h = tree["history"]
    assert h["loss"].values[0] == pytest.approx(expected, rel=1e-6)
    assert h["train_loss"].values[-1] < h["train_loss"].values[0] - 0.3
    assert decode_attrs(tree.attrs)["objective"] == "TraceEnum_ELBO"
    assert {"ss_classify$$$0.weight", "ss_enc$$$0.weight", "ss_dec$$$0.weight"} <= set(params())


# ----------------------------------------------------------------------------------------
# conditional models: model_args / model_kwargs
# ----------------------------------------------------------------------------------------
def _labels(x, k=3):
    """A one-hot y that is a function of x, so any row mix-up is visible."""
    return torch.nn.functional.one_hot((x[:, :2].sum(-1)).long() % k, k).float()


Y = _labels(X)


def test_conditional_model_gets_its_rows_and_pass_through_values():
    pair = CondPair()
    x_val, y_val = X[:10], Y[:10]
    offset = torch.full((6,), 0.25)  # leading dim 6 != 48: passed through unchanged
    tree = fit(
        (pair.model, pair.guide),
        X,
        model_args=(Y,),
        model_kwargs={"offset": offset},
        val_data=x_val,
        val_model_args=(y_val,),
        epochs=2,
        batch_size=16,
    )
    assert len(pair.seen) > 6
    for xb, yb in pair.seen:
        assert torch.equal(yb, _labels(xb))  # y batched with the same rows as x
    assert all(o is offset for o in pair.offsets)
    assert {len(xb) for xb, _ in pair.seen} == {16, 10}  # train minibatches and validation
    assert np.isfinite(tree["history"]["val_loss"].values).all()


def test_conditional_model_trains_as_its_joint_twin():
    """model(x, y) with model_args=(y,) is bit for bit the same VAE written on [x, y]."""
    a = CondPair()
    h_args = fit((a.model, a.guide), X, model_args=(Y,), epochs=2, batch_size=16)["history"]
    p_args = params()
    pyro.clear_param_store()
    b = CondPair()
    xy = torch.cat([X, Y], -1)
    h_joint = fit((b.joint_model, b.joint_guide), xy, epochs=2, batch_size=16)["history"]
    assert h_args["loss"].values.tolist() == h_joint["loss"].values.tolist()
    for k, v in params().items():
        assert torch.equal(v, p_args[k]), k


def test_conditional_model_argument_errors():
    pair = CondPair()
    with pytest.raises(ValueError, match="val_model_args=/val_model_kwargs= with leading dim"):
        fit((pair.model, pair.guide), X, model_args=(Y,), val_data=X[:8], epochs=1, batch_size=8)
    with pytest.raises(TypeError, match=r"model_args\[0\] is a numpy array"):
        fit((pair.model, pair.guide), X, model_args=(Y.numpy(),), epochs=1, batch_size=8)
    with pytest.raises(TypeError, match="model_args must be a tuple"):
        fit((pair.model, pair.guide), X, model_args=Y, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="val_data is not"):
        fit(
            (pair.model, pair.guide),
            X,
            model_args=(Y,),
            val_model_args=(Y,),
            epochs=1,
            batch_size=8,
        )
    assert pair.seen == []


def test_importance_log_likelihood_with_model_args_matches_the_joint_twin():
    pair = CondPair()
    x, y = X[:5], Y[:5]
    a = importance_log_likelihood(
        pair.model, pair.guide, x, 7, seed=1, max_batch=10, model_args=(y,)
    )
    b = importance_log_likelihood(
        pair.joint_model, pair.joint_guide, torch.cat([x, y], -1), 7, seed=1, max_batch=10
    )
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for xb, yb in pair.seen:
        assert torch.equal(yb, _labels(xb))


# ----------------------------------------------------------------------------------------
# size= and the per-point loss
# ----------------------------------------------------------------------------------------
def _tiny_lr_run(pair, **kwargs):
    """One epoch with a step so small that the parameters do not move: the recorded losses
    are those of the initial model, whatever the scaling of the gradient."""
    return fit(
        (pair.model, pair.guide),
        X,
        epochs=2,
        batch_size=16,
        optimizer=pyro.optim.SGD({"lr": 1e-30}),
        val_data=X,
        **kwargs,
    )


@pytest.mark.parametrize(
    "make_elbo", [BetaELBO, lambda: JitBetaELBO(ignore_jit_warnings=True)], ids=["eager", "jit"]
)
def test_kwargs_model_gets_no_size_and_records_the_per_point_loss(make_elbo):
    sized = _tiny_lr_run(MLPPair(name="k"), elbo=make_elbo())  # takes size: scaled by N/B
    pyro.clear_param_store()
    kw = KwargsPair()
    loose = _tiny_lr_run(kw, elbo=make_elbo())
    assert all("size" not in k for k in kw.kwargs_seen)
    assert decode_attrs(loose.attrs)["size_passed"] is False
    assert decode_attrs(sized.attrs)["size_passed"] is True
    pyro.clear_param_store()
    scaled = _tiny_lr_run(KwargsPair(scale=1.0 / 48), elbo=make_elbo())  # per-point units
    hs, hl, hc = (t["history"] for t in (sized, loose, scaled))
    # the raw step losses differ by the plate scaling: N/B = 3 and 1/N
    np.testing.assert_allclose(hs["loss"].values, 3 * hl["loss"].values, rtol=1e-5)
    np.testing.assert_allclose(hc["loss"].values, hl["loss"].values / 48, rtol=1e-5)
    # the per-point losses do not
    for name in ("train_loss", "val_loss"):
        np.testing.assert_allclose(hl[name].values, hs[name].values, rtol=1e-5)
        np.testing.assert_allclose(hc[name].values, hs[name].values, rtol=1e-5)
    # and they are the mean step loss per data point (every step has 16 of 48 points)
    assert hl["train_loss"].values[0] == pytest.approx(hl["loss"].values[:3].mean() / 16)


def test_a_parameter_named_size_is_required():
    from pyrobust.inference.fit import _accepts_size

    def named(x, size=None): ...
    def kw_only(x, *, size): ...
    def catch_all(x, **kwargs): ...
    def var_pos(x, *size): ...

    assert _accepts_size(named) and _accepts_size(kw_only)
    assert not _accepts_size(catch_all) and not _accepts_size(var_pos)


def test_sizeless_data_plate_is_the_minibatch():
    sizeless = SizelessPair()
    sized = SizelessPair(sized=True)
    pyro.set_rng_seed(4)
    a = BetaTCELBO(beta=3.0).loss(sizeless.model, sizeless.guide, X[:16])
    pyro.set_rng_seed(4)
    b = BetaTCELBO(beta=3.0).loss(sized.model, sized.guide, X[:16])
    assert a == b
    ll_a = importance_log_likelihood(sizeless.model, sizeless.guide, X[:4], 5, seed=0)
    ll_b = importance_log_likelihood(sized.model, sized.guide, X[:4], 5, seed=0)
    assert torch.equal(ll_a, ll_b)
    h = fit(sizeless, X, elbo=BetaTCELBO(beta=3.0), epochs=1, batch_size=16)["history"]
    assert np.isfinite(h["train_loss"].values).all()


# ----------------------------------------------------------------------------------------
# resume with another lr
# ----------------------------------------------------------------------------------------
def test_resume_with_another_lr_is_refused(tmp_path):
    fit(MLPPair(), X, epochs=1, batch_size=16, lr=1e-2, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.01 vs now 0\.02"):
        fit(MLPPair(), X, epochs=2, batch_size=16, lr=2e-2, checkpoint_dir=tmp_path, resume=True)
    tree = fit(MLPPair(), X, epochs=2, batch_size=16, lr=1e-2, checkpoint_dir=tmp_path, resume=True)
    assert decode_attrs(tree.attrs)["lr"] == 0.01


def test_lr_is_what_the_optimizer_runs_with():
    tree = fit(MLPPair(), X, epochs=1, batch_size=48, optimizer=pyro.optim.Adam({"lr": 0.05}))
    assert decode_attrs(tree.attrs)["lr"] == 0.05
    with pytest.raises(ValueError, match=r"lr=0\.1 applies only to a named optimizer"):
        fit(MLPPair(), X, epochs=1, batch_size=48, optimizer=pyro.optim.Adam({"lr": 0.05}), lr=0.1)
    assert decode_attrs(fit(MLPPair(), X, epochs=1, batch_size=48).attrs)["lr"] == 1e-3


# ----------------------------------------------------------------------------------------
# dtypes and non-finite data
# ----------------------------------------------------------------------------------------
def test_float64_data_trains_a_float32_model_as_float32_data():
    h32 = fit(MLPPair(), X, epochs=2, batch_size=16, val_data=X[:8])["history"]
    p32 = params()
    pyro.clear_param_store()
    x64 = X.double().numpy()  # numpy's default dtype
    h64 = fit(MLPPair(), x64, epochs=2, batch_size=16, val_data=x64[:8])["history"]
    assert h32["loss"].values.tolist() == h64["loss"].values.tolist()
    assert h32["val_loss"].values.tolist() == h64["val_loss"].values.tolist()
    for k, v in params().items():
        assert v.dtype == torch.float32 and torch.equal(v, p32[k])


def test_float64_inputs_to_importance_log_likelihood():
    pair = MLPPair()
    a = importance_log_likelihood(pair.model, pair.guide, X[:4], 6, seed=0)
    b = importance_log_likelihood(pair.model, pair.guide, X[:4].double(), 6, seed=0)
    assert a.dtype == b.dtype == torch.float32
    assert torch.equal(a, b)
    # a model of plain tensors: nothing says its dtype, so the clash is named
    w = torch.randn(6, 2)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(z @ w.T, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", pyro.distributions.Normal(x @ w, 1.0).to_event(1))

    with pytest.raises(TypeError, match=r"x has dtype torch.float64 .*torch.as_tensor"):
        importance_log_likelihood(model, guide, X[:4].double(), 3)


def test_non_finite_data_is_refused_by_name():
    bad = X.clone()
    bad[5, 2] = float("nan")
    pair = MLPPair()
    with pytest.raises(ValueError, match=r"^data holds NaN or infinite values .*index \[5\]"):
        fit(pair, bad, epochs=1, batch_size=16)
    inf = X[:8].clone()
    inf[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^val_data holds NaN"):
        fit(pair, X, val_data=inf, epochs=1, batch_size=16)
    assert pair.calls == 0
    with pytest.raises(ValueError, match=r"^x holds NaN"):
        importance_log_likelihood(pair.model, pair.guide, bad, 2)


class _LazyDataset(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return self.x[idx]


def test_non_finite_rows_of_a_lazily_read_dataset_are_named_when_read():
    bad = X.clone()
    bad[:, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^data holds NaN .*minibatch at dataset indices"):
        fit(MLPPair(), _LazyDataset(bad), epochs=1, batch_size=16)


def test_conditional_model_resumes_bit_for_bit(tmp_path):
    def run(epochs, where, resume=False):
        pyro.clear_param_store()
        pair = CondPair(seed=5 if resume else 0)  # resumed: every parameter from the checkpoint
        tree = fit(
            (pair.model, pair.guide),
            X,
            model_args=(Y,),
            val_data=X[:8],
            val_model_args=(Y[:8],),
            epochs=epochs,
            batch_size=16,
            checkpoint_dir=tmp_path / where,
            resume=resume,
        )
        return params(), tree["history"]

    full, h_full = run(3, "full")
    run(1, "cut")
    resumed, h_res = run(3, "cut", resume=True)
    assert h_res["loss"].values.tolist() == h_full["loss"].values.tolist()
    assert h_res["val_loss"].values.tolist() == h_full["val_loss"].values.tolist()
    for k, v in full.items():
        assert torch.equal(v, resumed[k]), k


def test_validation_passes_the_training_values_through_unchanged():
    """Without val_model_args, values with no per-point rows reach validation whole, even one
    whose leading dim happens to equal len(val_data)."""
    pair = CondPair()
    y_const = torch.zeros(6, 3)  # leading dim 6 != 48 (passed through), == len(val_data)
    y_const[:, 0] = 1.0

    def model(x, y):
        return pair.model(x, y.sum(0, keepdim=True).expand(len(x), 3) / 6)

    def guide(x, y):
        return pair.guide(x, y.sum(0, keepdim=True).expand(len(x), 3) / 6)

    seen = []
    wrapped = (lambda x, y: seen.append(y) or model(x, y), guide)
    fit(wrapped, X, model_args=(y_const,), val_data=X[:6], epochs=1, batch_size=16)
    assert seen and all(y is y_const for y in seen)
