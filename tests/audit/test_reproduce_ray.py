"""`reproduce(engine="ray")`: each model trained, then audited, as its own Ray task.

Marked ``ray``; skipped when Ray (the ``ray`` extra) is not installed.
"""

import numpy as np
import pytest

from pyrobust.analysis.reproduce import reproduce

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray


def test_reproduce_on_ray_gives_the_local_answers(tmp_path):
    kw = {"quick": True, "datasets": ("digits",), "objectives": ("vae", "beta-vae"), "seed": 0}
    local = reproduce(tmp_path / "local", **kw)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2)
    try:
        remote = reproduce(tmp_path / "ray", engine="ray", **kw)
    finally:
        ray.shutdown()
    a, b = local["digits"].to_dataset(), remote["digits"].to_dataset()
    assert list(a["model"].values) == list(b["model"].values)
    for name in ("bound", "empirical_margin", "broken", "min_scale", "jacobian_norm", "p_a"):
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-5, err_msg=name)
    assert remote.attrs["engine"] == "ray"


def test_reproduce_refuses_an_unknown_engine(tmp_path):
    with pytest.raises(ValueError, match=r"engine must be 'local' or 'ray'; got 'spark'"):
        reproduce(tmp_path, quick=True, datasets=("digits",), engine="spark")
