"""The training loop: history, checkpoints, bit-exact resume, NaN guard, validation."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from pyrobust._results import decode_attrs
from pyrobust.inference import (
    BetaELBO,
    BetaTCELBO,
    FactorVAELoss,
    fit,
    load_checkpoint,
    schedules,
)
from tests.inference._models import MLPPair, binary_data

X = binary_data(64)


def params(pair):
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_history_tree_layout_and_settings():
    pair = MLPPair()
    tree = fit(
        pair, X, elbo=BetaTCELBO(beta=4.0), epochs=2, batch_size=16, lr=1e-2, val_data=X[:20]
    )
    h = tree["history"].dataset
    assert h.sizes == {"step": 8, "epoch": 2}
    for name in ("loss", "reconstruction", "kl", "mi", "tc", "dwkl", "coef_beta"):
        assert h[name].dims == ("step",)
    for name in ("train_loss", "val_loss", "time"):
        assert h[name].dims == ("epoch",)
    assert list(h["epoch_of_step"].values) == [1] * 4 + [2] * 4
    assert (h["coef_beta"] == 4.0).all()
    attrs = decode_attrs(tree.attrs)
    assert attrs["objective"] == "BetaTCELBO" and attrs["estimator"] == "mss"
    assert attrs["batch_size"] == 16 and attrs["num_train"] == 64 and attrs["seed"] == 0
    # per-data-point training loss: the mean of the step losses over the dataset size
    per_point = h["loss"].values.reshape(2, 4).mean(-1) / 64
    assert h["train_loss"].values == pytest.approx(per_point, rel=1e-12)
    assert h["train_loss"].values[-1] < math.log(2) * 6 + 1.0  # learnt something


def test_training_decreases_the_loss():
    pair = MLPPair()
    h = fit(pair, X, epochs=15, batch_size=16, lr=2e-2)["history"]
    assert h["train_loss"].values[-1] < h["train_loss"].values[0] - 0.5


def test_schedule_is_advanced_per_step():
    pair = MLPPair()
    elbo = BetaELBO(beta=schedules.Linear(0.0, 1.0, num_steps=8))
    h = fit(pair, X, elbo=elbo, epochs=3, batch_size=16)["history"]
    expected = [min(t / 8, 1.0) for t in range(12)]
    assert h["coef_beta"].values.tolist() == pytest.approx(expected)


def _run(tmp, epochs, elbo, resume=False, init_seed=0):
    pyro.clear_param_store()
    pair = MLPPair(seed=init_seed)
    tree = fit(
        pair,
        X,
        elbo=elbo,
        epochs=epochs,
        batch_size=16,
        lr=1e-2,
        seed=7,
        checkpoint_dir=tmp,
        resume=resume,
        val_data=X[:16],
    )
    return params(pair), tree["history"].dataset


@pytest.mark.parametrize(
    "make_elbo",
    [
        lambda: BetaELBO(beta=schedules.Cyclical(0.0, 2.0, period=6)),
        lambda: FactorVAELoss(gamma=3.0, hidden_dim=8, num_layers=2),
    ],
    ids=["beta_cyclical", "factor_vae"],
)
def test_resume_continues_the_same_trajectory_bit_for_bit(tmp_path, make_elbo):
    full, h_full = _run(tmp_path / "full", 4, make_elbo())
    _run(tmp_path / "cut", 2, make_elbo())
    # a different initialisation proves every parameter comes from the checkpoint
    resumed, h_res = _run(tmp_path / "cut", 4, make_elbo(), resume=True, init_seed=123)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert h_res["loss"].values.tolist() == h_full["loss"].values.tolist()
    assert h_res["val_loss"].values.tolist() == h_full["val_loss"].values.tolist()


def test_checkpoint_files_and_loading(tmp_path):
    pair = MLPPair()
    fit(
        pair,
        X,
        epochs=3,
        batch_size=32,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        val_data=X[:16],
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "best.pt.json", "last.pt", "last.pt.json"]  # no temp files
    meta = json.loads((tmp_path / "last.pt.json").read_text())
    assert meta["epoch"] == 3 and meta["step"] == 6
    trained = params(pair)
    # restore into a fresh pair (params created from an example batch)
    pyro.clear_param_store()
    fresh = MLPPair(seed=99)
    state = load_checkpoint(tmp_path / "last.pt", fresh, example=X[:2])
    assert state["extra"]["epoch"] == 3
    for k, v in params(fresh).items():
        assert torch.equal(v, trained[k])
    with pytest.raises(ValueError, match="example="):
        pyro.clear_param_store()
        load_checkpoint(tmp_path / "last.pt", MLPPair())


def test_nan_loss_stops_with_step_and_term_and_keeps_the_checkpoint(tmp_path):
    pair = MLPPair()
    pair.nan_after = 6  # the model's 7th call: epoch 2, its 3rd step (global step 6)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 6 .*reconstruction=nan"):
        fit(pair, X, epochs=3, batch_size=16, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["extra"]["epoch"] == 1 and state["extra"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    assert all(torch.isfinite(v).all() for v in params(pair).values())  # update not applied
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "best.pt.json",
        "last.pt",
        "last.pt.json",
    ]


def test_accepts_datasets_and_plain_pairs():
    pair = MLPPair()
    ds = torch.utils.data.TensorDataset(X, torch.zeros(64))
    h = fit((pair.model, pair.guide), ds, epochs=1, batch_size=64)["history"]
    assert h.sizes["step"] == 1


# ----------------------------------------------------------------------------------------
# bad input, before any step
# ----------------------------------------------------------------------------------------
def test_bad_input_is_rejected_before_training():
    pair = MLPPair()
    with pytest.raises(ValueError, match="data is empty"):
        fit(pair, X[:0], epochs=1, batch_size=8)
    with pytest.raises(
        ValueError, match=r"dataset_size \(8\) is smaller than the minibatch \(16\)"
    ):
        fit(pair, X, elbo=BetaTCELBO(dataset_size=8), epochs=1, batch_size=16)
    with pytest.raises(ValueError, match="epochs must be a positive int"):
        fit(pair, X, epochs=0, batch_size=8)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        fit(pair, X, epochs=1, batch_size=8, optimizer="adagrad2")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        fit(pair, X, epochs=1, batch_size=8, lr=-1.0)
    with pytest.raises(TypeError, match=r"\.model and \.guide"):
        fit(object(), X, epochs=1, batch_size=8)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        fit(pair, X, epochs=1, batch_size=8, resume=True)
    assert pair.calls == 0


def test_checkpoint_holds_only_the_trained_params(tmp_path):
    pyro.param("unrelated", torch.ones(2))
    fit(MLPPair(), X, epochs=1, batch_size=32, checkpoint_dir=tmp_path)
    saved = load_checkpoint(tmp_path / "last.pt")["params"]
    assert saved and "unrelated" not in saved
    assert all(k.startswith(("t_enc", "t_dec")) for k in saved)


@pytest.mark.gpu
def test_fit_and_resume_on_cuda(tmp_path):
    def run(epochs, resume=False):
        pyro.clear_param_store()
        pair = MLPPair()
        pair.enc.cuda()
        pair.dec.cuda()
        elbo = FactorVAELoss(gamma=2.0, hidden_dim=8, num_layers=2)
        tree = fit(
            pair,
            X,
            elbo=elbo,
            epochs=epochs,
            batch_size=16,
            device="cuda",
            checkpoint_dir=tmp_path / ("cut" if resume or epochs == 2 else "full"),
            resume=resume,
            val_data=X[:16],
        )
        return params(pair), tree["history"].dataset, elbo

    full, h_full, elbo = run(4)
    assert all(v.is_cuda for v in full.values())
    assert next(elbo.discriminator.parameters()).is_cuda
    run(2)
    resumed, h_res, _ = run(4, resume=True)
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=1e-6, atol=1e-7)
    assert h_res["loss"].values.tolist() == pytest.approx(h_full["loss"].values.tolist(), rel=1e-5)


def test_resume_with_other_settings_is_refused(tmp_path):
    fit(MLPPair(), X, epochs=1, batch_size=16, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size: checkpoint 16 vs now 32"):
        fit(MLPPair(), X, epochs=2, batch_size=32, checkpoint_dir=tmp_path, resume=True)


def test_progress_bar_when_asked(capsys):
    fit(MLPPair(), X, epochs=1, batch_size=32, progress=True)
    assert "fit" in capsys.readouterr().err
    fit(MLPPair(), X, epochs=1, batch_size=32)  # stderr is not a terminal under pytest
    assert "%|" not in capsys.readouterr().err  # no bar (progress may go through logging)


class _BatchDataset(torch.utils.data.Dataset):
    """Takes a LongTensor of indices and returns the batch (like DSpritesDataset)."""

    def __init__(self, x):
        self.x, self.int_calls = x, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        if not torch.is_tensor(idx):
            self.int_calls += 1
        return self.x[idx], torch.zeros(())


class _ItemDataset(_BatchDataset):
    def __getitem__(self, idx):
        return self.x[int(idx)].numpy(), 0  # only item access works


def test_batch_indexable_datasets_are_read_per_minibatch_with_the_same_result():
    ds = _BatchDataset(X)
    pyro.clear_param_store()
    a = fit(MLPPair(), X, epochs=2, batch_size=16, val_data=X[:8])["history"]
    pyro.clear_param_store()
    b = fit(MLPPair(), ds, epochs=2, batch_size=16, val_data=_BatchDataset(X[:8]))["history"]
    assert ds.int_calls == 0
    assert a["loss"].values.tolist() == b["loss"].values.tolist()
    assert a["val_loss"].values.tolist() == b["val_loss"].values.tolist()
    pyro.clear_param_store()
    # validation draws from a forked RNG: it does not change the training trajectory
    c = fit(MLPPair(), _ItemDataset(X), epochs=2, batch_size=16)["history"]
    assert a["loss"].values.tolist() == c["loss"].values.tolist()
