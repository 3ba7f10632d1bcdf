"""Sphinx configuration of the pyrocollapse documentation site.

Build (warnings are errors; everything offline, nothing is downloaded)::

    sphinx-build -W --keep-going -b html docs/site docs/_build/html

Sources, all read in place (the folders below are symbolic links into the repository,
so the site shows exactly the files people read on the repository's web page):

* ``index.md``: the landing page, the repository's ``README.md`` included whole;
* ``docs/*.md``: links to ``docs/pyro_programs.md`` and ``docs/lightning.md``;
* ``benchmarks/README.md``: link to ``benchmarks/README.md`` (the README links to it);
* ``tutorials/``: link to the ``tutorials/`` folder: its ``README.md`` and every
  ``NN_*.ipynb`` notebook, executed at build time by myst-nb in smoke mode
  (``PYROCOLLAPSE_SMOKE=1``, unless the environment sets it otherwise), so the pages
  show outputs; a cell error fails the build;
* ``api/*.rst``: the API reference, autodoc with numpy-style docstrings (napoleon).

The package must be importable (``pip install -e .``): autodoc imports it, and the
notebooks' kernel is the ``python3`` kernel of the running environment.
"""

from __future__ import annotations

import os
import re
from typing import Any

from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.ext.autosummary import Autosummary
from sphinx.transforms.post_transforms import SphinxPostTransform

import pyrocollapse

# The notebooks' kernels inherit this process's environment: shrink every budget, and
# draw figures without a display. An explicit PYROCOLLAPSE_SMOKE=0 builds full outputs.
os.environ.setdefault("PYROCOLLAPSE_SMOKE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Pyro imports tqdm.auto, which warns in a kernel without ipywidgets (tutorials/README.md:
# "harmless"); the pages would show that warning, with this machine's paths, in every
# notebook's first output. Other warnings (PosteriorCollapseWarning, ...) stay.
os.environ["PYTHONWARNINGS"] = ",".join(
    filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"])
)

project = "pyrocollapse"
author = "the pyrocollapse authors"
copyright = "the pyrocollapse authors"
release = version = pyrocollapse.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # registers myst_parser for the .md pages, and reads the .ipynb notebooks
]

root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]
templates_path: list[str] = []

# -- offline ----------------------------------------------------------------------------
# No intersphinx (its inventories are downloaded); references to torch, Pyro, NumPy, ...
# stay plain text. The theme ships its assets; MathJax is loaded by the reader's browser.

# -- HTML -------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pyrocollapse {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

# -- MyST (markdown pages and notebook markdown cells) ----------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3  # README's "#section" links

# -- myst-nb: execute the tutorials at build time ----------------------------------------
# "off" builds the pages from the stored notebooks without running them (what the CI check
# does: tests/test_notebooks.py executes them already); "force" by default (make docs)
nb_execution_mode = os.environ.get("PYROCOLLAPSE_DOCS_EXECUTE", "force")
nb_execution_timeout = 600  # seconds per cell, as tests/test_notebooks.py allows
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True  # ... and the log shows its traceback
nb_execution_in_temp = True  # the notebooks' working folder is a fresh temporary one
nb_execution_excludepatterns: list[str] = []
nb_kernel_rgx_aliases = {".*": "python3"}  # this environment's kernel, whatever the name

# -- autodoc ----------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "undoc-members": True,  # every name in a module's __all__, constants included
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "class"
# Overrides without a docstring of their own (a distribution's ``expand``, an ELBO's
# ``loss``) are not repeated with torch's or Pyro's text, which is not numpy style.
autodoc_inherit_docstrings = False
autosummary_generate = False  # the API pages are written by hand; nothing is generated

# -- napoleon (numpy-style docstrings) --------------------------------------------------
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True


# -- links between pages that live behind the symbolic links ----------------------------
# Sphinx resolves a link's target path with Path.resolve(), which follows the links: the
# README's "docs/lightning.md" becomes /<repo>/docs/lightning, which is no page name. This
# maps such resolved paths back to the pages, before MyST resolves the references.


class _ResolveLinkedPages(SphinxPostTransform):
    default_priority = 5  # before MyST's reference resolver (9)

    def run(self, **kwargs: Any) -> None:
        env = self.env
        pages = {
            os.path.splitext(os.path.realpath(env.doc2path(name)))[0]: name
            for name in env.found_docs
        }
        for node in self.document.findall(addnodes.pending_xref):
            if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
                continue
            target = node.get("reftarget", "")
            if target not in env.found_docs and target in pages:
                node["reftarget"] = pages[target]


# -- numpydoc's "a, b : type" in an Attributes section ------------------------------------
# napoleon splits "model, guide : callable" into one field per name in Parameters, but
# writes ":ivar epoch, step:" for Attributes, which Sphinx reads as the type "epoch," of
# the attribute "step" (a wrong cross-reference). This gives each name its own field.

_MULTI_FIELD = re.compile(r"^(\s*):(ivar|vartype) (\w+(?:, \w+)+):(.*)$")


def _split_attribute_names(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MULTI_FIELD.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        j = i + 1  # the field's body: indented lines (and blank lines inside it)
        while j < len(lines) and (
            lines[j][:1].isspace()
            or (not lines[j] and j + 1 < len(lines) and lines[j + 1][:1].isspace())
        ):
            j += 1
        indent, field, names, first = match.groups()
        for part in names.split(", "):
            out.append(f"{indent}:{field} {part}:{first}")
            out.extend(lines[i + 1 : j])
        i = j
    lines[:] = out


# -- the table of the top-level names ----------------------------------------------------


class _TopLevelNames(Autosummary):
    """``.. pyrocollapse-top-level::``, an autosummary table of ``pyrocollapse.__all__``
    (read when the page is built, so a new name shows up by itself), each name under the
    module that defines it, whose page documents it. Use it after
    ``.. currentmodule:: pyrocollapse``; takes autosummary's options."""

    has_content = False

    def run(self) -> list[Any]:
        lines = []
        for name in pyrocollapse.__all__:
            if name.startswith("__"):  # __version__: documented on the page itself
                continue
            module = getattr(getattr(pyrocollapse, name), "__module__", None)
            module = module or pyrocollapse._LAZY[name]
            lines.append(f"~{module.removeprefix('pyrocollapse.')}.{name}")
        self.content = StringList(lines, source="pyrocollapse.__all__")
        return super().run()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_post_transform(_ResolveLinkedPages)
    app.connect("autodoc-process-docstring", _split_attribute_names, priority=600)  # after napoleon
    app.add_directive("pyrocollapse-top-level", _TopLevelNames)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
