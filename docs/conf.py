"""Sphinx configuration of the pyrobust documentation site.

Build it with ``make docs`` (``sphinx-build -W --keep-going``: every warning is an error). The
build needs no network:

* MathJax 3 is shipped with the site (``sphinx-mathjax-offline`` copies it into
  ``_static/mathjax``), so formulas render without a CDN, at build time and at view time;
* intersphinx links to Python, NumPy, PyTorch, Pyro, xarray and arviz-base are made only from
  inventories that are on disk (``docs/_intersphinx/<name>.inv``, fetched by
  ``make docs-inventories`` on a machine with network) or, with ``PYROBUST_DOCS_ONLINE=1``, from
  the projects' sites. Otherwise the links are skipped and the names print as plain text;
* the tutorials (``docs/tutorials/*.py``) are executed by sphinx-gallery on scikit-learn's
  digits, which ship with scikit-learn.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

import pyrobust  # noqa: E402

project = "pyrobust"
author = "pyrobust developers"
copyright = "pyrobust developers, Apache-2.0"
release = pyrobust.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinx-mathjax-offline",  # the module's name has dashes; it ships MathJax 3
    "pyrobust_docs",  # _ext/pyrobust_docs.py: API-listing check, optional documents
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_intersphinx",
    "tutorials/README.rst",  # the gallery's header, rendered into auto_tutorials/index
    "**.ipynb",
    "auto_tutorials/*.py",
    "auto_tutorials/*.ipynb",
    "auto_tutorials/*.zip",
]

# -- API reference ----------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False  # the class template lists the members with autodoc
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- Markdown documents written by others (BENCHMARKS, RESULTS, RELIABILITY, SEQUENTIAL) ------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# Those documents link to files of the repository (../README.md, ../benchmarks/*.py) that are
# not pages of the site; myst reports each such link as a missing cross-reference.
suppress_warnings = ["myst.xref_missing"]
# A citation that a docstring lists but whose only reference is in the summary line, which
# _ext/pyrobust_docs.py unlinks (autosummary tables would break on it), is "not referenced".
suppress_warnings += ["ref.citation"]

# Documents others may add (SEQUENTIAL.md, RELIABILITY.md) are listed where a page says
# ``.. optional-doc:: NAME``, and only when docs/NAME.md exists (see _ext/pyrobust_docs.py).

# -- Math ------------------------------------------------------------------------------------
math_number_all = False
mathjax3_config = {"tex": {"macros": {"R": r"\mathbb{R}", "E": r"\mathbb{E}"}}}

# -- Intersphinx, offline first ----------------------------------------------------------------
INTERSPHINX_SITES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
    "pyro": "https://docs.pyro.ai/en/stable",
    "xarray": "https://docs.xarray.dev/en/stable",
    "arviz_base": "https://arviz-base.readthedocs.io/en/latest",
}


def _intersphinx_mapping() -> dict[str, tuple[str, str | None]]:
    """Mappings whose inventory can be read without network (or all of them when online)."""
    online = os.environ.get("PYROBUST_DOCS_ONLINE", "") == "1"
    mapping = {}
    for name, url in INTERSPHINX_SITES.items():
        local = DOCS / "_intersphinx" / f"{name}.inv"
        if local.is_file():
            mapping[name] = (url, str(local))
        elif online:
            mapping[name] = (url, None)
    return mapping


intersphinx_mapping = _intersphinx_mapping()
intersphinx_timeout = 10

# -- Tutorials (sphinx-gallery) ----------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["tutorials"],
    "gallery_dirs": ["auto_tutorials"],
    "filename_pattern": r"/tutorial_",  # execute every tutorial
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,  # run them all, then fail the build listing every error
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    # pyrobust's plots return figures that pyplot does not manage: a scraper of our own
    "image_scrapers": ("matplotlib", "pyrobust_docs.figure_scraper"),
    "reset_modules": ("matplotlib", "pyrobust_docs.reset_pyro"),
    "reset_modules_order": "before",
    "show_memory": False,
    "min_reported_time": 0,
    "capture_repr": ("_repr_html_", "__repr__"),
}


# Matplotlib's Agg backend (no display), set before any tutorial imports pyplot.
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"pyrobust {release}"
html_static_path = ["_static"]
html_css_files = ["pyrobust.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_show_sourcelink = False
