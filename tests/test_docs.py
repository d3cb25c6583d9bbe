"""The documentation site builds offline with no warning, runs its tutorials, documents the API.

Slow (the build executes every tutorial): ``make test-slow`` or
``pytest -m slow tests/test_docs.py``. The site is built from a fresh copy of ``docs/`` (no
generated pages, no cached tutorial outputs), exactly as ``make docs`` does:
``sphinx-build -W --keep-going``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("tutorial_*.py"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs_ext():
    """docs/_ext/pyrobust_docs.py, which lists the public names and their pages."""
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        yield importlib.import_module("pyrobust_docs")
    finally:
        sys.path.remove(str(DOCS / "_ext"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build a fresh copy of docs/: (source copy, html output, build log)."""
    pytest.importorskip("sphinx", reason="needs the `docs` extra")
    pytest.importorskip("sphinx_gallery", reason="needs the `docs` extra")
    tmp = tmp_path_factory.mktemp("docs")
    src, out = tmp / "docs", tmp / "html"
    shutil.copytree(
        DOCS,
        src,
        ignore=shutil.ignore_patterns("_build", "generated", "auto_tutorials", "__pycache__"),
    )
    # CHANGELOG.md is included from the repository root (docs/changelog.md)
    shutil.copy(ROOT / "CHANGELOG.md", tmp / "CHANGELOG.md")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(src), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000, cwd=tmp)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"sphinx-build failed ({proc.returncode}):\n{log[-20000:]}"
    return src, out, log


def test_build_has_no_warning(site):
    _, out, log = site
    assert "build succeeded" in log, log[-5000:]
    assert not re.search(r"\bWARNING\b|\bERROR\b", log), log[-5000:]
    assert (out / "index.html").is_file()


def test_every_tutorial_executed(site):
    src, out, _ = site
    assert len(TUTORIALS) >= 4
    times = (src / "auto_tutorials" / "sg_execution_times.rst").read_text()
    for script in TUTORIALS:
        name = script.stem
        page = out / "auto_tutorials" / f"{name}.html"
        assert page.is_file(), name
        html = page.read_text()
        # sphinx-gallery writes the captured output of each executed cell ...
        assert "sphx-glr-script-out" in html, name
        # ... the figures the tutorial drew ...
        assert list((out / "_images").glob(f"sphx_glr_{name}_*.png")), name
        # ... and its running time (0:00.000 would mean it was not run)
        m = re.search(rf"{name}\.py`.*?\n\s+- (\d+):(\d+)\.(\d+)", times, flags=re.S)
        assert m, (name, times)
        assert tuple(map(int, m.groups())) != (0, 0, 0), (name, m.group(0))
        assert "Traceback" not in html, name


def test_every_public_name_has_a_page(site, docs_ext):
    _, out, _ = site
    api = (out / "api.html").read_text()
    missing = []
    for modname, name in docs_ext.public_names():
        if f"{modname}.{name}" in docs_ext.NO_PAGE:
            continue
        qual = docs_ext.canonical_name(modname, name)
        if inspect.ismodule(getattr(importlib.import_module(modname), name)):
            ok = f'id="module-{qual}"' in api  # a subpackage: its section of the API page
        else:
            ok = (out / "generated" / f"{qual}.html").is_file()
        if not ok:
            missing.append(qual)
    assert not missing, f"public names without a page: {missing}"


def test_r_robustness_page_documents_the_query(site):
    _, out, _ = site
    html = (out / "generated" / "pyrobust.r_robustness.html").read_text()
    for text in ("Parameters", "Returns", "model_args", "latent_site", "obs_site"):
        assert text in html, text
    assert '<span class="math' in html or "\\(" in html  # formulas for MathJax


def test_math_is_rendered_offline(site):
    _, out, _ = site
    assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
    theory = (out / "theory.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in theory
    assert "cdn.jsdelivr.net" not in theory
