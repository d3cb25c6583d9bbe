"""make_tree's ArviZ conventions (standard attrs, ci_bound, decision codes) and model_identity."""

import datetime

import numpy as np
import pytest
import torch
import xarray as xr

from pyrobust._results import (
    CI_BOUNDS,
    EMPTY_MODEL_HASH,
    STANDARD_ATTRS,
    ci_bound,
    decision_attrs,
    decode_attrs,
    make_tree,
    model_identity,
    strip_standard_attrs,
)
from pyrobust.analysis import load, save
from pyrobust.inference import BetaELBO


def _tree():
    return make_tree(
        {
            "posterior_predictive": {"inside": np.ones((1, 5, 3))},
            "observed_data": {"x": np.zeros((3, 2))},
        },
        dims={"inside": ["obs_id"], "x": ["obs_id", "feature"]},
        coords={"obs_id": np.arange(3)},
        summary={
            "robustness": {
                "ci": (("obs_id", "ci_bound"), ci_bound([0.1, 0.2, 0.3], [0.6, 0.7, 0.8])),
                "decision": (("obs_id",), np.array([1, 0, -1], dtype=np.int8)),
            }
        },
        attrs={"query": "r_robustness", "confidence": 0.9, "reference": None},
    )


def test_standard_attrs_on_root_and_every_group():
    tree = _tree()
    nodes = [tree, *(tree[g] for g in tree.children)]
    for node in nodes:
        assert set(STANDARD_ATTRS) <= set(node.attrs), node.name
        assert node.attrs["inference_library"] == "pyro"
        assert node.attrs["creation_library"] == "pyrobust"
        assert node.attrs["creation_library_language"] == "Python"
    assert len({node.attrs["created_at"] for node in nodes}) == 1
    stamp = datetime.datetime.fromisoformat(tree.attrs["created_at"])
    assert stamp.tzinfo is not None
    # settings go to the root and the summary groups, not to the schema groups
    assert decode_attrs(tree.attrs)["reference"] is None
    assert tree["robustness"].attrs["query"] == "r_robustness"
    assert "query" not in tree["posterior_predictive"].attrs
    assert strip_standard_attrs(tree["posterior_predictive"].attrs) == {}
    other = make_tree(summary={"metrics": {"m": ((), 1.0)}}, inference_library=None)
    assert "inference_library" not in other.attrs


def test_ci_bound_and_decision_codes_survive_netcdf(tmp_path):
    tree = _tree()
    rob = tree["robustness"]
    assert rob["ci_bound"].values.tolist() == list(CI_BOUNDS)
    np.testing.assert_array_equal(rob["ci"].sel(ci_bound="upper").values, [0.6, 0.7, 0.8])
    dec = rob["decision"]
    assert dec.dtype == np.int8 and dec.attrs["flag_meanings"] == "not_robust undecided robust"
    assert list(dec.attrs["flag_values"]) == [-1, 0, 1]
    assert "0.9" in dec.attrs["long_name"]
    back = load(save(tree, tmp_path / "t.nc"))
    xr.testing.assert_identical(back["robustness"].to_dataset(), rob.to_dataset())
    with pytest.raises(ValueError, match="same shape"):
        ci_bound([0.1], [0.2, 0.3])
    assert decision_attrs()["long_name"].startswith("r-robustness decision: ")


def test_model_identity_hashes_the_weights():
    net = torch.nn.Linear(3, 2)
    a = model_identity(net.forward, net.forward, net.parameters())
    b = model_identity(net.forward, net.forward, list(net.parameters()))
    assert a == b and a["model_name"] == "Linear" and len(a["model_hash"]) == 64
    # a mapping hashes by sorted name: insertion order does not matter
    named = dict(net.named_parameters())
    rev = dict(reversed(list(named.items())))
    assert model_identity(None, None, named) == model_identity(None, None, rev)
    with torch.no_grad():
        net.bias[0] += 1e-6
    assert (
        model_identity(net.forward, net.forward, net.parameters())["model_hash"] != a["model_hash"]
    )
    # the same tensor twice is hashed once; nothing to hash is the empty hash
    w = torch.ones(2)
    assert model_identity(None, None, [w, w]) == model_identity(None, None, [w])
    assert model_identity(None, None, [])["model_hash"] == EMPTY_MODEL_HASH
    with pytest.raises(TypeError, match="single tensor"):
        model_identity(None, None, w)


def test_model_identity_records_objective_and_run_dir(tmp_path):
    def model(x):
        return x

    ident = model_identity(model, model, [], objective=BetaELBO(beta=4.0), run_dir=tmp_path)
    assert ident["objective"] == "BetaELBO" and ident["coefficients"] == {"beta": 4.0}
    assert ident["run_dir"] == str(tmp_path) and ident["model_name"].endswith("model")
    assert model_identity(model, model, [], objective="my loss")["objective"] == "my loss"
    tree = make_tree(summary={"robustness": {"p": ((), 0.5)}}, attrs=ident)
    assert decode_attrs(tree.attrs)["coefficients"] == {"beta": 4.0}
