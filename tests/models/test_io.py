"""Saving and loading VAEs: exact round trips, atomic writes, safe and clear failures."""

import json
import os

import numpy as np
import pytest
import torch

import pyrobust.models.io as io
from pyrobust.models import (
    VAE,
    BurgessDecoder,
    BurgessEncoder,
    ConvDecoder28,
    ConvEncoder28,
    GaussianLikelihood,
    LaplaceLikelihood,
    LipschitzDecoder,
    LipschitzEncoder,
    MLPDecoder,
    MLPEncoder,
    load_model,
    model_config,
    model_from_config,
    register_module,
    save_model,
)

MODELS = [
    pytest.param(
        lambda: VAE(MLPEncoder(6, 3, hidden=(8,)), MLPDecoder(3, 6, hidden=(8,)), "bernoulli"),
        (6,),
        id="mlp-bernoulli",
    ),
    pytest.param(
        lambda: VAE(
            ConvEncoder28(2),
            ConvDecoder28(2),
            GaussianLikelihood(0.3, learn_scale=True, scale_shape=(1, 28, 28)),
            latent_site="code",
            obs_site="image",
        ),
        (1, 28, 28),
        id="conv28-learned-gaussian",
    ),
    pytest.param(
        lambda: VAE(BurgessEncoder(), BurgessDecoder(), LaplaceLikelihood(0.2)),
        (1, 64, 64),
        id="burgess-laplace",
    ),
    pytest.param(
        lambda: VAE(
            LipschitzEncoder(6, 2, hidden=(8, 8), max_scale_norm=1.0),
            LipschitzDecoder(2, 6, hidden=(8, 8)),
            "gaussian",
        ),
        (6,),
        id="lipschitz",
    ),
    pytest.param(
        lambda: VAE(
            MLPEncoder(5, 2, hidden=()), MLPDecoder(2, 5, hidden=()), "continuous_bernoulli"
        ).double(),
        (5,),
        id="float64",
    ),
]


def _move_off_init(vae):
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize(("make", "event"), MODELS)
def test_round_trip_reproduces_outputs_exactly(tmp_path, make, event):
    vae = make()
    dtype = next(vae.parameters()).dtype
    x = torch.rand(3, *event, dtype=dtype)
    _move_off_init(vae)  # e.g. a learned scale no longer at its initial value
    path = save_model(vae, tmp_path / "model.pt")
    loaded = load_model(path)
    assert type(loaded) is VAE and model_config(loaded) == model_config(vae)
    assert (loaded.latent_site, loaded.obs_site) == (vae.latent_site, vae.obs_site)
    sd, sd2 = vae.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) and sd[k].dtype == sd2[k].dtype for k in sd)
    loc, scale = vae.encode(x)
    loc2, scale2 = loaded.encode(x)
    assert torch.equal(loc, loc2) and torch.equal(scale, scale2)
    assert torch.equal(vae.decode(loc), loaded.decode(loc))
    assert torch.equal(vae.sample(2, seed=0), loaded.sample(2, seed=0))
    assert [p.requires_grad for p in loaded.parameters()] == [True] * len(list(vae.parameters()))
    assert os.listdir(tmp_path) == ["model.pt"]  # no temporary file left behind


def test_config_round_trip_and_map_location(tmp_path):
    vae = VAE(MLPEncoder(4, 2, hidden=(3,)), MLPDecoder(2, 4, hidden=(3,)), "gaussian")
    config = json.loads(json.dumps(model_config(vae)))
    assert config["encoder"] == {"class": "MLPEncoder", "config": vae.encoder.config()}
    assert model_config(model_from_config(config)) == config
    path = save_model(vae, str(tmp_path / "m.pt"))
    loaded = load_model(str(path), map_location="cpu")
    assert next(loaded.parameters()).device.type == "cpu"


def test_save_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    first = VAE(MLPEncoder(4, 2), MLPDecoder(2, 4))
    save_model(first, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pt"]
    monkeypatch.undo()
    second = VAE(MLPEncoder(4, 2), MLPDecoder(2, 4))
    save_model(second, path)
    torch.testing.assert_close(load_model(path).encoder.head.weight, second.encoder.head.weight)


def test_missing_and_corrupted_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model file"):
        load_model(tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), tmp_path / "no" / "dir.pt")
    garbage = tmp_path / "garbage.pt"
    rng = np.random.default_rng(0)
    for size in (0, 7, 512, 4096):
        garbage.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(ValueError, match="not a readable pyrobust model file"):
            load_model(garbage)
    good = save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable pyrobust model file"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a pyrobust model file"):
        load_model(foreign)


_CALLS = []


def _side_effect():
    _CALLS.append("ran")
    return 0


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_loading_runs_no_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyrobust.VAE", "version": 1, "config": "{}", "x": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_model(path)
    assert _CALLS == []


def test_weights_that_do_not_fit_the_config(tmp_path):
    path = save_model(VAE(MLPEncoder(4, 2, hidden=(3,)), MLPDecoder(2, 4)), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    config = json.loads(payload["config"])
    config["encoder"]["config"]["hidden"] = [5]
    payload["config"] = json.dumps(config)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_model(path)


def test_custom_modules_need_registration(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_REGISTRY", dict(io._REGISTRY))

    class TinyEncoder(torch.nn.Module):
        def __init__(self, d_x, d_z):
            super().__init__()
            self.d_x, self.latent_dim = d_x, d_z
            self.lin = torch.nn.Linear(d_x, 2 * d_z)

        def config(self):
            return {"d_x": self.d_x, "d_z": self.latent_dim}

        def forward(self, x):
            loc, raw = self.lin(x).chunk(2, -1)
            return loc, raw.exp()

    vae = VAE(TinyEncoder(4, 2), MLPDecoder(2, 4))
    with pytest.raises(TypeError, match=r"register_module\(TinyEncoder\)"):
        save_model(vae, tmp_path / "m.pt")
    assert register_module(TinyEncoder) is TinyEncoder
    path = save_model(vae, tmp_path / "m.pt")
    x = torch.rand(3, 4)
    assert torch.equal(load_model(path).encode(x)[0], vae.encode(x)[0])
    del io._REGISTRY["TinyEncoder"]
    with pytest.raises(ValueError, match=r"'TinyEncoder' is not registered.*MLPEncoder"):
        load_model(path)
    with pytest.raises(TypeError, match="no config"):
        register_module(torch.nn.Linear)


# ---- crafted and damaged files: named errors, bounded work ------------------------------------


def _crafted(tmp_path, edit_config=None, edit_state=None, name="m.pt"):
    """A valid model file whose config and/or state dict were then edited."""
    path = save_model(VAE(MLPEncoder(6, 2, hidden=(4,)), MLPDecoder(2, 6)), tmp_path / name)
    payload = torch.load(path, weights_only=True)
    if edit_config is not None:
        config = json.loads(payload["config"])
        edit_config(config)
        payload["config"] = json.dumps(config)
    if edit_state is not None:
        edit_state(payload["state_dict"])
    torch.save(payload, path)
    return path


def test_deeply_nested_json_config_is_refused(tmp_path):
    path = _crafted(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["config"] = "[" * 100_000 + "]" * 100_000
    torch.save(payload, path)
    with pytest.raises(ValueError, match="nested too deeply"):
        load_model(path)
    payload["config"] = json.dumps({"encoder": json.loads("[" * 20 + "]" * 20)})
    torch.save(payload, path)
    with pytest.raises(ValueError, match="nested more than 16 levels"):
        load_model(path)


def test_huge_sizes_in_the_config_allocate_nothing(tmp_path):
    def widen(width):
        return lambda c: c["encoder"]["config"].update(hidden=[width])

    with pytest.raises(
        ValueError, match=r"config\.encoder\.config\.hidden\.0=1000000000000 .*out of range"
    ):
        load_model(_crafted(tmp_path, widen(10**12)))
    # in range, but a real build would need 6 * 2**31 floats (51 GB): built on the meta device,
    # the shapes are compared with the file's and refused before anything is allocated
    with pytest.raises(
        ValueError,
        match=r"'encoder\.body\.0\.weight' has shape \(4, 6\) in the file but \(2147483647, 6\)",
    ):
        load_model(_crafted(tmp_path, widen(2**31 - 1)))
    with pytest.raises(ValueError, match="does not build a MLPEncoder"):
        load_model(_crafted(tmp_path, widen(-3)))
    with pytest.raises(ValueError, match="does not build a MLPEncoder"):
        load_model(_crafted(tmp_path, lambda c: c["encoder"]["config"].update(colour="red")))
    with pytest.raises(ValueError, match="expected a dict"):
        load_model(_crafted(tmp_path, lambda c: c["decoder"].update(config=[1, 2])))
    with pytest.raises(ValueError, match="is not registered"):
        load_model(_crafted(tmp_path, lambda c: c["decoder"].update({"class": ["MLPDecoder"]})))
    with pytest.raises(ValueError, match=r"has 5000 entries \(at most 4096\)"):
        load_model(_crafted(tmp_path, lambda c: c.update(junk=[0] * 5000)))


def test_non_finite_weights_are_refused_by_name(tmp_path):
    def poison(state):
        state["decoder.head.weight"][0, 0] = float("nan")

    with pytest.raises(ValueError, match=r"\['decoder\.head\.weight'\] hold NaN or infinite"):
        load_model(_crafted(tmp_path, edit_state=poison))
    vae = VAE(MLPEncoder(4, 2), MLPDecoder(2, 4))
    with torch.no_grad():
        vae.encoder.head.bias.fill_(float("inf"))
    with pytest.raises(ValueError, match=r"encoder\.head\.bias.*NaN or infinite"):
        save_model(vae, tmp_path / "inf.pt")
    assert not (tmp_path / "inf.pt").exists()


def test_weights_of_the_wrong_dtype_or_type_are_refused(tmp_path):
    def to_int(state):
        state["encoder.head.bias"] = state["encoder.head.bias"].to(torch.int64)

    with pytest.raises(ValueError, match=r"'encoder\.head\.bias' has dtype torch\.int64"):
        load_model(_crafted(tmp_path, edit_state=to_int))

    def add_key(state):
        state["extra"] = torch.zeros(1)

    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        load_model(_crafted(tmp_path, edit_state=add_key))
    path = _crafted(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = [1, 2]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="malformed state_dict"):
        load_model(path)


def test_bad_arguments_are_named(tmp_path):
    path = save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"map_location='foo' is not a torch device"):
        load_model(path, map_location="foo")
    with pytest.raises(TypeError, match="map_location must be a device"):
        load_model(path, map_location=3.5)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        load_model(7)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), None)
    with pytest.raises(ValueError, match="is a directory"):
        save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), tmp_path)
    with pytest.raises(TypeError, match=r"Expected a pyrobust\.models\.VAE"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "lin.pt")
    with pytest.raises(ValueError, match="out of range"):
        model_from_config(
            {
                "encoder": {"class": "MLPEncoder", "config": {"d_x": 4, "d_z": 10**13}},
                "decoder": {"class": "MLPDecoder", "config": {}},
                "likelihood": {"class": "BernoulliLikelihood", "config": {}},
            }
        )


def test_stale_temp_files_of_dead_saves_are_removed(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    stale = tmp_path / f".model.pt.{proc.pid}.x1y2z3.tmp"
    stale.write_bytes(b"half a model")
    live = tmp_path / f".model.pt.{os.getppid()}.a1b2c3.tmp"  # a save running elsewhere
    live.write_bytes(b"in progress")
    save_model(VAE(MLPEncoder(4, 2), MLPDecoder(2, 4)), tmp_path / "model.pt")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "model.pt"])
