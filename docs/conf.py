"""Sphinx configuration of the numpyro_ebm documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` from the repository
root. Pages are MyST Markdown; notebooks come from ``../notebooks`` and are copied into
``docs/notebooks/`` when the build starts (they are committed with their outputs and are not
executed here).
"""

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
NOTEBOOK_SOURCE = ROOT / "notebooks"
NOTEBOOK_COPY = DOCS / "notebooks"

# Document the working tree even where the package is not installed (editable or not).
sys.path.insert(0, str(ROOT))

import numpyro_ebm  # noqa: E402

# -- Project -----------------------------------------------------------------------------------

project = "numpyro_ebm"
author = "numpyro_ebm developers"
copyright = "numpyro_ebm developers"
release = numpyro_ebm.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
# No sphinx.ext.intersphinx: the docs must build offline.

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# No warning is suppressed. A glob toctree that matches nothing warns (and Sphinx 9.1 gives that
# warning no type, so `suppress_warnings` cannot silence it): the notebooks page therefore gets its
# glob toctree only once a notebook exists, through the `notebook_toctree` substitution below.
suppress_warnings = []
HAS_NOTEBOOKS = any(NOTEBOOK_SOURCE.glob("*.ipynb"))
NOTEBOOK_TOCTREE = "```{toctree}\n:glob:\n:maxdepth: 1\n\nnotebooks/*\n```"
NO_NOTEBOOKS = "*No notebook is published yet.*"

# -- MyST / myst-nb ----------------------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "substitution"]
myst_substitutions = {"notebook_toctree": NOTEBOOK_TOCTREE if HAS_NOTEBOOKS else NO_NOTEBOOKS}
myst_heading_anchors = 3
# Notebooks are committed with their outputs and executed separately in CI.
nb_execution_mode = "off"

# -- autodoc / napoleon ------------------------------------------------------------------------

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_type_aliases = {"ArrayLike": "jax.typing.ArrayLike"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ``Attributes:`` sections of NamedTuples become attribute entries (typed from the annotations);
# the NamedTuple's own "Alias for field number N" members are skipped (see `setup`).
napoleon_use_ivar = False
napoleon_attr_annotations = True

# -- HTML --------------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"numpyro_ebm {release}"


# -- Notebooks ---------------------------------------------------------------------------------


def copy_notebooks(app) -> None:
    """Mirror ``../notebooks/*.ipynb`` into ``docs/notebooks/`` before sources are read.

    ``copy2`` keeps modification times, so unchanged notebooks are not re-read by an incremental
    build; copies whose source was removed are deleted.
    """
    NOTEBOOK_COPY.mkdir(exist_ok=True)
    sources = {path.name: path for path in NOTEBOOK_SOURCE.glob("*.ipynb")}
    for stale in NOTEBOOK_COPY.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        target = NOTEBOOK_COPY / name
        if not target.exists() or target.stat().st_mtime != source.stat().st_mtime:
            shutil.copy2(source, target)


def skip_namedtuple_fields(app, what, name, obj, skip, options):
    """Skip a NamedTuple's field accessors: its ``Attributes:`` section documents them."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app) -> None:
    """Copy notebooks on ``builder-inited`` (before sources are read); skip NamedTuple fields."""
    app.connect("builder-inited", copy_notebooks)
    app.connect("autodoc-skip-member", skip_namedtuple_fields)
