from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib as mpl
import pytest

import sd_inspire as si

if TYPE_CHECKING:
    from types import ModuleType

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DLPFC = SHARED_DATA / "visium" / "DLPFC_151673-151676"
DLPFC_SLICES = ("151673", "151674", "151675", "151676")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/{name}.py`` (not a package), registered in ``sys.modules`` under ``name``.

    Registered before it runs: dataclasses defined in it look their module up there.
    """
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_sessionstart(session: pytest.Session) -> None:
    mpl.use("Agg")
    logging.getLogger("sd_inspire").setLevel(logging.WARNING)
    si.settings.autoshow = False  # the plots return their figure, for the tests to read


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def sim_slices():
    """Three small slices from three technologies, as separate SpatialData objects (do not modify)."""
    return si.datasets.simulate(
        3, n_spots=[300, 250, 200], n_genes=200, technology=["visium", "slideseq", "merfish"], output="slices"
    )


@pytest.fixture
def sim_adata():
    """Two small Visium-like slices in one AnnData (fresh per test)."""
    return si.datasets.simulate(2, n_spots=300, n_genes=200, output="anndata", random_state=1)


@pytest.fixture
def sim_sdata():
    """Three technologies, union of genes, one SpatialData (fresh per test)."""
    return si.datasets.simulate(
        3, n_spots=[300, 250, 200], n_genes=200, technology=["visium", "slideseq", "merfish"], random_state=2
    )


@pytest.fixture(scope="session")
def dlpfc_dir() -> Path:
    if not DLPFC.is_dir():
        pytest.skip(f"real DLPFC data not found at {DLPFC} (../shared/data is absent)")
    return DLPFC


@pytest.fixture(scope="session")
def dlpfc_raw(dlpfc_dir):
    """The four DLPFC slices read with io.visium, concatenated (session-wide: copy before modifying)."""
    slices = {s: si.io.visium(dlpfc_dir / s / "outs", dataset_id=s, images=False) for s in DLPFC_SLICES}
    return si.pp.concat(slices)


@pytest.fixture(scope="session")
def dlpfc_processed(dlpfc_raw):
    """DLPFC table preprocessed with a graph (session-wide: do not modify)."""
    adata = si.pp.preprocess(dlpfc_raw, n_top_genes=1000, copy=True)
    si.gr.spatial_neighbors(adata)
    return adata
