from __future__ import annotations

import re
import types
from pathlib import Path

import sd_inspire as si
import sd_inspire.model

DOCS = Path(__file__).resolve().parents[1] / "docs"
NAMESPACES = [ns for ns in si.__all__ if isinstance(getattr(si, ns), types.ModuleType)]


def test_api_page_lists_every_public_function():
    text = (DOCS / "api.md").read_text()
    listed = set(re.findall(r"^\s+(\w+(?:\.\w+)+)\s*$", text, flags=re.M))
    listed |= {m.removeprefix("sd_inspire.") for m in re.findall(r"autoclass:: ([\w.]+)", text)}
    public = {
        f"{ns}.{name}"
        for ns in [*NAMESPACES, "model"]
        for name in getattr(si, ns).__all__
        if callable(getattr(getattr(si, ns), name))
    }
    # modules inside a namespace (tl.metrics): each of their public functions
    for ns in NAMESPACES:
        for name in getattr(si, ns).__all__:
            member = getattr(getattr(si, ns), name)
            if isinstance(member, types.ModuleType):
                public |= {f"{ns}.{name}.{fn}" for fn in member.__all__ if callable(getattr(member, fn))}
    public |= {"settings", "Verbosity"}
    listed |= set(re.findall(r"autodata:: sd_inspire\.(\w+)", text))
    assert public <= listed, f"missing from docs/api.md: {sorted(public - listed)}"


def test_every_public_function_has_examples():
    import inspect

    missing = []
    for ns in [*NAMESPACES, "model"]:
        module = getattr(si, ns)
        for name in module.__all__:
            member = getattr(module, name)
            members = {f"{ns}.{name}": member}
            if isinstance(member, types.ModuleType):
                members = {f"{ns}.{name}.{fn}": getattr(member, fn) for fn in member.__all__}
            missing += [
                full
                for full, obj in members.items()
                if inspect.isfunction(obj) and not re.search(r"^\s*Examples\n\s*--------\n", obj.__doc__ or "", re.M)
            ]
    assert not missing, f"public functions without an Examples section: {missing}"
