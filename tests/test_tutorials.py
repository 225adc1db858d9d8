"""The tutorial notebooks are committed with the outputs of a full run, and their CI runner knows each of them.

Executing them is CI's separate step (``tutorials/run_notebooks.py --small`` in ``.ci/run``); these checks are cheap.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", TUTORIALS / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))


def test_runner_knows_every_notebook():
    assert NOTEBOOKS, "no notebooks in tutorials/"
    assert set(_runner().NOTEBOOKS) == set(NOTEBOOKS)


def test_docs_list_every_notebook():
    toctree = (ROOT / "docs" / "tutorials.md").read_text()
    assert set(re.findall(r"^tutorials/(\w+)$", toctree, flags=re.M)) == {n.removesuffix(".ipynb") for n in NOTEBOOKS}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_with_outputs(name):
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # run top to bottom in one go, nothing injected by --small, no errors, real figures
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "data" in o and {"image/png", "image/jpeg"} & set(o.data)]
    assert len(images) >= 2
    assert not [o for o in outputs if o.output_type == "stream" and "Traceback" in o.text]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_small_settings_override_parameters(name):
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "one cell tagged 'parameters'"
    assigned = {t.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.Assign) for t in node.targets}
    small = _runner().NOTEBOOKS[name][1]
    assert small, "CI needs small settings for every notebook"
    assert set(small) <= assigned, f"small settings name no parameter: {set(small) - assigned}"


def test_runner_injects_after_parameters():
    runner = _runner()
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("a = 1"), nbformat.v4.new_code_cell("n = 10"), nbformat.v4.new_code_cell("")]
    )
    nb.cells[1].metadata["tags"] = ["parameters"]
    runner._inject(nb, {"n": 2})
    assert nb.cells[2].source.endswith("n = 2")
    with pytest.raises(ValueError, match="parameters"):
        runner._inject(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")]), {"n": 2})
