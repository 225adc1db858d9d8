"""Versions of sd-inspire and the packages its results depend on, recorded with every result."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("sd-inspire", "anndata", "numpy", "scanpy", "scipy", "spatialdata", "squidpy", "torch", "torch-geometric")


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the results."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
