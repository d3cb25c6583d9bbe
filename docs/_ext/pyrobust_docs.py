"""Sphinx helpers of the pyrobust site (a local extension, loaded by ``docs/conf.py``).

* ``reset_pyro``: sphinx-gallery calls it before each tutorial, so every tutorial starts from
  an empty Pyro parameter store and the same seeds (same bits on every build).
* ``public_names`` / ``canonical_name``: every public name of pyrobust and the qualified name
  of its page in the API reference (also used by ``tests/test_docs.py``).
* ``.. optional-doc:: NAME`` in a page becomes a toctree entry for ``docs/NAME.md`` when that
  file exists, and nothing otherwise (SEQUENTIAL.md, at the end of the theory page);
  ``.. other-docs::`` becomes a toctree of every other ``docs/*.md`` (RELIABILITY.md,
  DISTRIBUTED.md, ...), so a document added to ``docs/`` is always part of the site.
* At ``config-inited``, a public name missing from ``docs/api.rst`` is a warning, so
  ``make docs`` (``-W``) fails when the API grows without its reference page.
* ``autodoc-process-docstring`` (after numpydoc): numbered references such as ``[1]_`` become
  plain text where they cannot resolve, namely in the summary line (autosummary copies it into
  the API tables, away from its References section) and where the References section sits in
  the module's docstring rather than the object's.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent

PUBLIC_MODULES = (
    "pyrobust",
    "pyrobust.models",
    "pyrobust.inference",
    "pyrobust.inference.schedules",
    "pyrobust.analysis",
    "pyrobust.data",
    "pyrobust.robustness",
)

# Names in an __all__ that are not given a page of their own, and where they are documented.
NO_PAGE = {"pyrobust.__version__": "index (Installation) and CHANGELOG.md"}


def reset_pyro(gallery_conf, fname):
    """Empty Pyro's parameter store and seed every generator before a tutorial runs.

    Also one torch thread, as in the test suite: the tutorials' tensors are small, and on a
    shared CPU a second thread only contends (a tutorial that takes 30 s on one thread took
    minutes on two under load).
    """
    import pyro
    import torch

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)


_SCRAPED: dict[str, set[int]] = {}


def figure_scraper(block, block_vars, gallery_conf, **kwargs):
    """sphinx-gallery image scraper for figures built without pyplot.

    pyrobust.analysis's plots return a ``matplotlib.figure.Figure`` that pyplot does not manage
    (so they work in any backend and leak no global state); sphinx-gallery's matplotlib scraper
    only sees pyplot's figures. This one saves every such Figure held by a variable of the
    tutorial, once, after the cell that made it.
    """
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    seen = _SCRAPED.setdefault(str(block_vars["src_file"]), set())
    paths = []
    for value in list(block_vars["example_globals"].values()):
        if not isinstance(value, Figure) or id(value) in seen:
            continue
        if getattr(value.canvas, "manager", None) is not None:
            continue  # a pyplot figure: the matplotlib scraper has it
        seen.add(id(value))
        path = next(block_vars["image_path_iterator"])
        value.savefig(path, dpi=110)
        paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])


def public_names() -> list[tuple[str, str]]:
    """``(module, name)`` for every name in the ``__all__`` of the public modules."""
    out = []
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        out.extend((modname, name) for name in module.__all__)
    return out


def canonical_name(modname: str, name: str) -> str:
    """The qualified name under which ``modname.name`` has its page in the API reference.

    The queries re-exported at the top level (``pyrobust.r_robustness`` is
    ``pyrobust.robustness.r_robustness``) have one page, under ``pyrobust``.
    """
    import pyrobust

    obj = getattr(importlib.import_module(modname), name)
    if modname != "pyrobust" and getattr(pyrobust, name, None) is obj:
        return f"pyrobust.{name}"
    return f"{modname}.{name}"


def listed_in_api(text: str) -> set[str]:
    """Qualified names listed in api.rst: autosummary entries and automodule targets.

    Autosummary entries are names relative to the ``.. currentmodule::`` above them.
    """
    listed, current, in_table = set(), "", False
    for line in text.splitlines():
        if m := re.match(r"^\.\. currentmodule:: ([\w.]+)\s*$", line):
            current = m.group(1)
        elif m := re.match(r"^\.\. automodule:: ([\w.]+)\s*$", line):
            listed.add(m.group(1))
        elif line.startswith(".. autosummary::"):
            in_table = True
        elif in_table and (m := re.match(r"^   ([A-Za-z_][\w.]*)\s*$", line)):
            listed.add(f"{current}.{m.group(1)}" if current else m.group(1))
        elif line and not line.startswith(" "):
            in_table = False
    return listed


def _check_api_listed(app, config):
    from sphinx.util import logging

    logger = logging.getLogger("pyrobust_docs")
    listed = listed_in_api((DOCS / "api.rst").read_text(encoding="utf-8"))
    for modname, name in public_names():
        if f"{modname}.{name}" in NO_PAGE:
            continue
        qual = canonical_name(modname, name)
        if qual not in listed:
            logger.warning(
                "public name %s.%s has no entry in docs/api.rst; add %s to an autosummary "
                "table there",
                modname,
                name,
                qual,
            )


_OPTIONAL = re.compile(r"^\.\. optional-doc:: (\w+)[ \t]*$", flags=re.M)
_OTHERS = re.compile(r"^\.\. other-docs::[ \t]*$", flags=re.M)
# Markdown documents that a page lists by name (explicitly or with optional-doc).
PLACED_DOCS = {"RESULTS", "BENCHMARKS", "SEQUENTIAL", "changelog"}


def other_docs() -> list[str]:
    """Markdown documents in docs/ that no page lists by name, sorted."""
    return sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in PLACED_DOCS)


def _toctree(names: list[str]) -> str:
    if not names:
        return ""
    return ".. toctree::\n   :maxdepth: 2\n\n" + "".join(f"   {n}\n" for n in names)


def _optional_docs(app, docname, source):
    def entry(match: re.Match) -> str:
        name = match.group(1)
        return _toctree([name] if (DOCS / f"{name}.md").is_file() else [])

    text = _OPTIONAL.sub(entry, source[0])
    source[0] = _OTHERS.sub(lambda m: _toctree(other_docs()), text)


_CITATION_DEF = re.compile(r"^\s*\.\. \[([^\]]+)\]", flags=re.M)
_CITATION_REF = re.compile(r"\[([^\]\s]+)\]_")


def _plain_citations(app, what, name, obj, options, lines):
    """Unlink citation references that would not resolve (see the module docstring)."""
    defined = set(_CITATION_DEF.findall("\n".join(lines)))

    def plain(match: re.Match) -> str:
        label = match.group(1)
        # numpydoc renames [1] to [R<hash>-1]; show the reader the number
        return "[" + label.rsplit("-", 1)[-1] + "]"

    summary_end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    for i, line in enumerate(lines):
        if i < summary_end:
            lines[i] = _CITATION_REF.sub(plain, line)
        else:
            lines[i] = _CITATION_REF.sub(
                lambda m: m.group(0) if m.group(1) in defined else plain(m), line
            )


def setup(app):
    app.setup_extension("numpydoc")
    app.connect("autodoc-process-docstring", _plain_citations, priority=900)
    app.connect("config-inited", _check_api_listed)
    app.connect("source-read", _optional_docs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
