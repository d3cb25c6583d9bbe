"""The release checks: wheel and sdist from ``python -m build``, installed in a fresh venv.

Slow (a build, a virtual environment, an install, the demo): ``make test-slow`` or
``pytest -m slow tests/test_package.py``. The fresh venv installs the CPU build of torch
(``torch==2.13.0``, as the Makefile does) before the wheel, so nothing large is downloaded.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pyrobust

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(cmd, *, cwd=ROOT, timeout=900):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{out}"
    return out


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """``python -m build`` into a temporary directory: (its output, the dist directory)."""
    pytest.importorskip("build", reason="needs the `build` package (the `docs` extra)")
    out_dir = tmp_path_factory.mktemp("dist")
    log = _run([sys.executable, "-m", "build", "--outdir", out_dir, ROOT])
    return log, out_dir


def test_build_makes_wheel_and_sdist_without_license_warning(dist):
    log, out_dir = dist
    version = pyrobust.__version__
    wheels = list(out_dir.glob(f"pyrobust-{version}-py3-none-any.whl"))
    sdists = list(out_dir.glob(f"pyrobust-{version}.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out_dir.iterdir())
    # setuptools' deprecation of `license = {text = ...}` and of license classifiers
    assert "SetuptoolsDeprecationWarning" not in log, log
    assert not re.search(r"license.*deprecated", log, flags=re.I), log


def test_wheel_metadata_pep639_and_single_version(dist):
    _, out_dir = dist
    version = pyrobust.__version__
    (wheel,) = out_dir.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(f"pyrobust-{version}.dist-info/METADATA").decode()
        names = zf.namelist()
    assert f"\nVersion: {version}\n" in meta
    assert "\nLicense-Expression: Apache-2.0\n" in meta
    assert "\nLicense-File: LICENSE\n" in meta
    assert "\nLicense: " not in meta  # the old free-text field is gone
    assert f"pyrobust-{version}.dist-info/licenses/LICENSE" in names
    # pyproject.toml holds no version of its own: it reads pyrobust.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, flags=re.M)
    assert not re.search(r"^version = \"", pyproject, flags=re.M)  # only the attr = ...
    (sdist,) = out_dir.glob("*.tar.gz")
    with tarfile.open(sdist) as tf:
        members = set(tf.getnames())
    assert f"pyrobust-{version}/LICENSE" in members
    assert f"pyrobust-{version}/pyrobust/__init__.py" in members


def test_wheel_installs_in_fresh_venv_and_runs_demo(dist, tmp_path):
    _, out_dir = dist
    (wheel,) = out_dir.glob("*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py, cli = venv / "bin" / "python", venv / "bin" / "pyrobust"
    _run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], timeout=1200)
    _run([py, "-m", "pip", "install", "-q", wheel], timeout=1200)

    # the installed package is the wheel, not this checkout
    where = _run([py, "-c", "import pyrobust; print(pyrobust.__file__)"], cwd=tmp_path)
    assert str(venv) in where, where

    # one version everywhere: __version__, the metadata, `pyrobust --version`
    code = "import importlib.metadata as m, pyrobust; print(pyrobust.__version__, m.version('pyrobust'))"
    assert _run([py, "-c", code], cwd=tmp_path).split() == [pyrobust.__version__] * 2
    assert _run([cli, "--version"], cwd=tmp_path).split() == ["pyrobust", pyrobust.__version__]

    demo = tmp_path / "demo"
    out = _run([cli, "demo", "--epochs", "3", "--out", demo], cwd=tmp_path)
    assert "robust" in out.lower(), out
    for name in ("history.nc", "robustness.nc", "margin.nc", "report/index.html"):
        assert (demo / name).is_file(), (name, sorted(p.name for p in demo.rglob("*")))
