from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import sd_inspire as si


def test_import_is_light():
    code = "import sys, sd_inspire; heavy = [m for m in ('torch', 'torch_geometric', 'scanpy', 'squidpy') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


NAMESPACES = ["datasets", "gr", "io", "pl", "pp", "tl"]


def test_namespaces_and_version():
    assert si.__all__ == ["Verbosity", "datasets", "gr", "io", "pl", "pp", "settings", "tl"]
    for name in NAMESPACES:
        module = getattr(si, name)
        assert module.__doc__
        for public in module.__all__:
            assert hasattr(module, public), f"{name}.{public} listed in __all__ but missing"
    assert si.__version__ != "unknown"


def test_import_adds_no_logging_handler():
    code = (
        "import logging, sd_inspire; package = logging.getLogger('sd_inspire'); "
        "print(package.handlers, logging.getLogger().handlers, package.propagate, package.level)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] [] True 20"  # messages propagate; INFO milestones for an application's logging config


def test_verbosity_sets_the_level_and_a_handler_only_on_request(monkeypatch):
    import logging

    logger = logging.getLogger("sd_inspire")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # logging not configured (pytest configures it)
    with si.settings.override(verbosity="warning"):
        assert si.settings.verbosity == si.Verbosity.warning == 1
        assert logger.level == logging.WARNING
        assert logger.handlers == []
        si.settings.verbosity = "hint"
        assert logger.level == 15
        assert len(logger.handlers) == 1
        assert not logger.propagate
        si.settings.verbosity = 3  # again: still one handler
        assert len(logger.handlers) == 1
        si.settings.verbosity = "error"
        assert logger.handlers == []
        assert logger.propagate
        si.settings.verbosity = "debug"
    assert logger.handlers == []  # the block's handler is gone with it
    assert logger.propagate
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])  # configured: no handler of ours
    with si.settings.override(verbosity="info"):
        assert logger.handlers == []
        assert logger.level == logging.INFO
    with pytest.raises(ValueError, match="`verbosity` must be one of 'error' \\(0\\)"):
        si.settings.verbosity = "loud"
    with pytest.raises(ValueError, match="got 7"):
        si.settings.verbosity = 7


def test_keys_written_are_hints_and_steps_are_info(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="sd_inspire"):
        si.datasets.simulate(2, n_spots=30, n_genes=100, output="anndata")
    assert "Simulating 2 slices" in caplog.text
    assert "Adding" not in caplog.text
    with caplog.at_level(15, logger="sd_inspire"):
        si.datasets.simulate(2, n_spots=30, n_genes=100, output="anndata")
    assert "Adding `adata.obs['slice']`" in caplog.text


def _public_functions(namespaces):
    for ns in namespaces:
        module = getattr(si, ns)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                yield f"{ns}.{name}", obj


# functions that return something other than `AnnData | None`, or take no `copy`, by design
RETURNS_OTHER = {
    "pp.concat": "SpatialData",
    "pp.split": "dict[str, SpatialData]",
    **{f"pl.{n}": "Figure | None" for n in si.pl.__all__},
}
NO_KEY_ADDED = {"pp.concat", "pp.preprocess", "pp.reset_counts"}  # documented fixed keys, or none (scanpy pp style)
# functions whose first parameter is not `data: AnnData | SpatialData`: slices to combine, a SpatialData to split
FIRST_OTHER = {"pp.concat": "slices", "pp.split": "sdata"}


@pytest.mark.parametrize(("name", "func"), list(_public_functions(["pp", "gr", "tl", "pl"])))
def test_signature_conventions(name, func):
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert len(positional) <= 3, f"{name}: at most 3 positional parameters"
    first = params[0]
    if name in FIRST_OTHER:
        assert first.name == FIRST_OTHER[name]
    else:
        assert first.name == "data", f"{name}: first parameter must be `data`"
        assert first.annotation == "AnnData | SpatialData"
    if name in RETURNS_OTHER:
        assert sig.return_annotation == RETURNS_OTHER[name]
    else:
        assert sig.return_annotation == "AnnData | None", f"{name}: must return AnnData | None"
        copy = sig.parameters.get("copy")
        assert copy is not None, f"{name}: needs a `copy` parameter"
        assert copy.kind == copy.KEYWORD_ONLY
        assert copy.default is False
        if name not in NO_KEY_ADDED:
            assert "key_added" in sig.parameters, f"{name}: needs `key_added`"
            assert sig.parameters["key_added"].kind == inspect.Parameter.KEYWORD_ONLY
    if "random_state" in sig.parameters:
        assert sig.parameters["random_state"].default == 0
    if "table_key" in sig.parameters:
        assert sig.parameters["table_key"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(("name", "func"), list(_public_functions(NAMESPACES)))
def test_numpydoc_docstrings(name, func):
    doc = inspect.getdoc(func)
    assert doc, f"{name} has no docstring"
    assert "Parameters\n----------" in doc or not inspect.signature(func).parameters
    assert "Returns\n-------" in doc
    for param in inspect.signature(func).parameters:
        assert f"\n{param}\n" in f"\n{doc}\n", f"{name}: parameter `{param}` is not documented"
    assert "%(" not in doc, f"{name}: unsubstituted docrep placeholder"
