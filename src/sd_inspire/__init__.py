"""sd-inspire: integrate spatial transcriptomics slices into one latent space and one non-negative factorisation.

The namespaces follow the data flow ``io -> pp -> gr -> tl -> pl``; :mod:`sd_inspire.datasets` simulates slices
with ground truth. Importing the package does not import torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from sd_inspire import datasets, gr, io, pl, pp, tl
from sd_inspire._settings import Verbosity, settings

try:
    __version__ = version("sd-inspire")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "unknown"

__all__ = ["Verbosity", "datasets", "gr", "io", "pl", "pp", "settings", "tl"]
