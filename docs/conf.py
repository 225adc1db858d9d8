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

# --- generated inputs: the notebooks of tutorials/, the command line's help, the model diagram
import contextlib  # noqa: E402
import io  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

_DOCS = Path(__file__).resolve().parent
_GENERATED = _DOCS / "_generated"
_GENERATED.mkdir(exist_ok=True)
(_DOCS / "tutorials").mkdir(exist_ok=True)
for _notebook in sorted((_DOCS.parent / "tutorials").glob("*.ipynb")):
    shutil.copy2(_notebook, _DOCS / "tutorials" / _notebook.name)


def _write_cli_help() -> None:
    from sd_inspire._cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    pages = {"cli_help.txt": parser, **{f"cli_help_{n}.txt": p for n, p in commands.choices.items()}}
    for name, page in pages.items():
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            page.print_help()
        (_GENERATED / name).write_text(buffer.getvalue())


_write_cli_help()
runpy.run_path(str(_DOCS / "model_figure.py"), run_name="sd_inspire_docs").get("draw")(_GENERATED / "model.png")
