"""The package's architecture, read from its source: which stage may import what.

- ``io``, ``pp``, ``gr`` (and ``datasets``) never import torch: reading, preprocessing and graphs run without it;
- ``model`` imports neither ``tl`` nor ``pl``, and only ``model/_setup.py`` reads an AnnData (scvi-tools'
  ``AnnDataManager`` role): the rest of ``model`` works on ``ModelData``;
- no module imports a private name (``_x``) from another subpackage; private helpers shared by several stages live
  in top-level modules (``sd_inspire._utils``, ``_chunks``, ``_graph``, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sd_inspire"
SUBPACKAGES = sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists())
HEAVY = ("torch", "torch_geometric", "lightning", "pytorch_lightning")
# AnnData's attributes: reading any of them is reading the table
ANNDATA_ATTRIBUTES = {"obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns", "X", "obs_names", "var_names"}


def _modules(subpackage: str | None = None) -> list[Path]:
    root = SRC if subpackage is None else SRC / subpackage
    return sorted(root.rglob("*.py"))


def _subpackage(path: Path) -> str | None:
    """The subpackage a module belongs to (``None`` for a top-level module such as ``_utils.py``)."""
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import in ``path`` (relative imports resolved), at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["sd_inspire", *path.relative_to(SRC).parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append((module, [alias.name for alias in node.names], node.lineno))
    return out


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(SRC.parent)}:{line}"


@pytest.mark.parametrize("subpackage", ["io", "pp", "gr", "datasets"])
def test_readers_preprocessing_and_graphs_never_import_torch(subpackage):
    bad = [
        f"{_where(path, line)} imports {module}"
        for path in _modules(subpackage)
        for module, _, line in _imports(path)
        if module.split(".")[0] in HEAVY
    ]
    assert not bad, bad


def test_model_imports_neither_tools_nor_plotting():
    bad = [
        f"{_where(path, line)} imports {module}"
        for path in _modules("model")
        for module, _, line in _imports(path)
        if module.startswith(("sd_inspire.tl", "sd_inspire.pl"))
    ]
    assert not bad, bad


def test_only_the_setup_module_of_model_reads_anndata():
    bad = []
    for path in _modules("model"):
        if path.name == "_setup.py":
            continue
        tree = ast.parse(path.read_text())
        calls = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            # adata.obs[...], adata.X, ...: attribute reads that are not method calls (``tensor.var()`` is one)
            if isinstance(node, ast.Attribute) and node.attr in ANNDATA_ATTRIBUTES and id(node) not in calls:
                bad.append(f"{_where(path, node.lineno)} reads .{node.attr}")
        for module, _, line in _imports(path):
            if module.split(".")[0] == "anndata" and not _type_checking_only(tree, line):
                bad.append(f"{_where(path, line)} imports anndata")
    assert not bad, bad


def _type_checking_only(tree: ast.Module, line: int) -> bool:
    """Whether the import on ``line`` sits in an ``if TYPE_CHECKING:`` block (annotations only)."""
    return any(
        isinstance(node, ast.If)
        and getattr(node.test, "id", None) == "TYPE_CHECKING"
        and node.lineno <= line <= (node.end_lineno or node.lineno)
        for node in ast.walk(tree)
    )


def test_no_private_name_is_imported_from_another_subpackage():
    bad = []
    for path in _modules():
        mine = _subpackage(path)
        for module, names, line in _imports(path):
            parts = module.split(".")
            if parts[0] != "sd_inspire" or len(parts) < 2 or parts[1] not in SUBPACKAGES or parts[1] == mine:
                continue
            private = [n for n in names if n.startswith("_")]
            if private:
                bad.append(f"{_where(path, line)} imports {private} from {module}")
    assert not bad, bad


def test_the_rules_see_the_package():
    """Guard against a test that passes because it reads nothing."""
    assert {"io", "pp", "gr", "model", "tl", "pl", "datasets"} <= set(SUBPACKAGES)
    assert len(_modules("model")) >= 8
    assert any(m.startswith("sd_inspire.model._setup") for m, _, _ in _imports(SRC / "model" / "_model.py"))
