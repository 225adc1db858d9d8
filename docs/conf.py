"""Sphinx configuration of the sd-inspire documentation."""

from __future__ import annotations

from datetime import date
from importlib.metadata import version as _package_version

project = "sd-inspire"
author = "sd-inspire developers"
copyright = f"{date.today().year}, {author}"
release = _package_version("sd-inspire")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "dollarmath"]
nb_execution_mode = "off"

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True

# Our own cross-references must resolve; references to other packages are not checked (no network for intersphinx).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!sd_inspire\b).*")]

html_theme = "sphinx_book_theme"
html_title = "sd-inspire"
html_theme_options = {"repository_url": "https://github.com/sd-inspire/sd-inspire", "use_repository_button": False}
