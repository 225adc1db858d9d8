"""The command line ``sd-inspire``: called in-process through ``main`` and once as ``python -m sd_inspire``."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata
from tests.conftest import SHARED_DATA
from tests.io.test_merfish import make_region, write_merscope
from tests.io.test_slideseq import make_puck, write_slideseq
from tests.io.test_visium import write_visium

import sd_inspire as si
from sd_inspire._cli import CLIError, _slice_name, build_parser, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DLPFC_SLICE = SHARED_DATA / "visium" / "DLPFC_151673-151676" / "151673"
SMALL_REAL = {  # bundled real data in three vendor layouts: folder, technology, spots, genes
    "tiny_visium": (SHARED_DATA / "visium" / "spaceranger_1.0.0_tiny", "visium"),
    "merscope": (SHARED_DATA / "merfish" / "merscope_ffpe_small", "merfish"),
    "slideseq": (SHARED_DATA / "slideseq" / "Slideseq_cerebellum_spacexr_vignette_tiny", "slideseq"),
}


def run(*argv: str | Path) -> tuple[int, str, str]:
    """``main(argv)`` in-process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_clean_error(code: int, stderr: str, *needles: str) -> None:
    """Exit status 1 and a one-line ``sd-inspire: error:`` message naming ``needles``, without a traceback."""
    assert code == 1
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sd-inspire: error: ")
    for needle in needles:
        assert needle in lines[0]


def no_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def small_real() -> dict[str, tuple[Path, str]]:
    missing = [str(path) for path, _ in SMALL_REAL.values() if not path.is_dir()]
    if missing:
        pytest.skip(f"bundled real data not found: {missing} (../shared/data is absent)")
    return SMALL_REAL


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory) -> Path:
    """Two simulated slices (150 spots x 100 genes each), raw counts, written as a zarr store (do not modify)."""
    store = tmp_path_factory.mktemp("sim") / "sim.zarr"
    si.datasets.simulate(2, n_spots=150, n_genes=100).write(store)
    return store


@pytest.fixture(scope="module")
def integrated(sim_store, tmp_path_factory) -> dict:
    """One end-to-end ``sd-inspire integrate`` run with domains and figures (progress bar on)."""
    folder = tmp_path_factory.mktemp("integrated")
    out, figures = folder / "out.zarr", folder / "figures"
    argv = [sim_store, "-o", out, "--n-factors", "4", "--max-steps", "10", "--batch-size", "128"]
    extra = ["--n-domains", "3", "--n-components", "4", "--figures", figures, "--model-dir", folder / "model"]
    code, stdout, stderr = run("integrate", *argv, *extra)
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "figures": figures, "argv": argv}


# --- help, version, usage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["read"], ["integrate"]])
def test_help(command):
    code, stdout, _ = run(*command, "--help")
    assert code == 0
    assert stdout.startswith(f"usage: sd-inspire {' '.join(command)}".rstrip())
    assert "examples:" in stdout
    assert "sd-inspire " + (command[0] if command else "read") in stdout.split("examples:")[1]


def test_help_lists_commands_and_options():
    stdout = run("--help")[1]
    assert "read" in stdout
    assert "integrate" in stdout
    assert "exit status" in stdout
    stdout = run("integrate", "--help")[1]
    for option in ("--n-factors", "--n-latent", "--n-domains", "--max-steps", "--n-models", "--seed", "--device"):
        assert option in stdout
    for option in ("--encoder", "--n-hops", "--features", "pearson", "lognorm", "gat", "--n-components"):
        assert option in stdout
    for option in ("--overwrite", "--figures", 'obsm["X_inspire"]'):
        assert option in stdout
    stdout = run("read", "--help")[1]
    for option in ("--technology", "--name", "--overwrite", "visium", "stereoseq", "slideseq", "merfish"):
        assert option in stdout


def test_version():
    code, stdout, _ = run("--version")
    assert code == 0
    assert stdout.strip() == f"sd-inspire {si.__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no command
        ["frobnicate"],
        ["read"],  # no PATH
        ["read", "somewhere"],  # no -o
        ["read", "a", "b", "-o", "x.zarr", "--name", "only_one"],
        ["read", "a", "-o", "x.zarr", "--technology", "xenium"],
        ["integrate", "in.zarr", "-o", "x.zarr", "--n-factors", "many"],
        ["integrate", "in.zarr", "-o", "x.zarr", "--features", "raw"],
        ["integrate", "in.zarr", "-o", "x.zarr", "--encoder", "gcn"],
        ["integrate", "in.zarr", "-o", "x.zarr", "--n-components", "5"],  # without --n-domains
    ],
)
def test_usage_error(argv, tmp_path):
    code, stdout, stderr = run(*argv)
    assert code == 2
    assert stdout == ""
    assert "usage: sd-inspire" in stderr
    assert "error:" in stderr
    assert "Traceback" not in stderr


def test_python_m_help_and_error(tmp_path):
    """The installed module runs as a program: help without importing torch, errors as one line, exit status 1."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sd_inspire", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert "usage: sd-inspire" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported
    assert "spatialdata" not in imported

    missing = tmp_path / "no_such_folder"
    proc = subprocess.run(
        [sys.executable, "-m", "sd_inspire", "read", str(missing), "-o", str(tmp_path / "x.zarr")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert_clean_error(proc.returncode, proc.stderr, str(missing))
    assert not (tmp_path / "x.zarr").exists()


# --- read ----------------------------------------------------------------------------------------------------------


def test_read_bundled_real_data(small_real, tmp_path):
    paths = [path for path, _ in small_real.values()]
    out = tmp_path / "three.zarr"
    code, stdout, stderr = run("read", *paths, "-o", out)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == len(paths) + 1
    for line, (path, technology) in zip(lines[:-1], small_real.values(), strict=True):
        assert line.startswith(f"{path.name}: ")
        assert f"({technology}) from {path}" in line
    assert lines[-1].startswith(f"wrote {out}")
    sdata = spatialdata.read_zarr(out)
    table = sdata["table"]
    assert table.obs["slice"].cat.categories.tolist() == [p.name for p in paths]
    assert sorted(table.obs["technology"].unique()) == ["merfish", "slideseq", "visium"]
    for line, name in zip(lines, table.obs["slice"].cat.categories, strict=False):
        n_spots = int((table.obs["slice"] == name).sum())
        n_genes = int(table.varm["measured"][name].sum())
        assert f"{name}: {n_spots} spots x {n_genes} genes" in line
    assert no_leftovers(tmp_path) == []


def test_read_dlpfc_slice(tmp_path):
    if not DLPFC_SLICE.is_dir():
        pytest.skip(f"real DLPFC data not found at {DLPFC_SLICE} (../shared/data is absent)")
    out = tmp_path / "dlpfc.zarr"
    code, stdout, stderr = run("read", DLPFC_SLICE / "outs", "--no-images", "-o", out, "--technology", "visium")
    assert code == 0, stderr
    assert stdout.splitlines()[0].startswith("151673: 3639 spots x 5000 genes (visium)")  # "outs" named by its parent
    sdata = spatialdata.read_zarr(out)
    assert list(sdata.images) == []
    assert sdata["table"].shape == (3639, 5000)


def test_read_synthetic_vendor_folders(tmp_path):
    write_visium(tmp_path / "sample_a" / "outs", n_spots=12, n_genes=8)
    write_slideseq(tmp_path / "puck", *make_puck(n_beads=30, n_genes=12))
    write_merscope(tmp_path / "region", *make_region(n_cells=25, n_genes=6))
    out = tmp_path / "stores" / "mixed.zarr"  # the parent folder is created
    folders = [tmp_path / "sample_a", tmp_path / "puck", tmp_path / "region"]
    code, stdout, _ = run("read", *folders, "--name", "A", "B", "C", "-o", out)
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("A: 12 spots x 8 genes (visium)")
    assert lines[1].startswith("B: 30 spots x 12 genes (slideseq)")
    assert lines[2].startswith("C: 25 spots x 6 genes (merfish)")
    sdata = spatialdata.read_zarr(out)
    assert lines[3] == f"wrote {out} (3 slices, 67 spots, {sdata['table'].n_vars} genes)"
    assert sdata["table"].obs["slice"].value_counts().to_dict() == {"A": 12, "B": 30, "C": 25}
    assert {"A", "B_shapes", "C_shapes"} <= set(sdata.shapes)


@pytest.mark.parametrize(
    ("relative", "name"),
    [("151673/outs", "151673"), ("151673", "151673"), ("run/sample_1.gem.gz", "sample_1"), ("c.cellbin.gef", "c")],
)
def test_default_slice_names(tmp_path, relative, name):
    path = tmp_path / relative
    if "." in relative:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    else:
        path.mkdir(parents=True)
    assert _slice_name(path) == name


def test_read_refuses_to_overwrite(tmp_path):
    write_visium(tmp_path / "s1", n_spots=12, n_genes=8)
    write_visium(tmp_path / "s2", n_spots=16, n_genes=8, seed=1)
    out = tmp_path / "out.zarr"
    assert run("read", tmp_path / "s1", "-o", out)[0] == 0
    code, stdout, stderr = run("read", tmp_path / "s2", "-o", out)
    assert_clean_error(code, stderr, str(out), "--overwrite")
    assert stdout == ""
    assert spatialdata.read_zarr(out)["table"].n_obs == 12  # untouched
    code, stdout, _ = run("read", tmp_path / "s2", "-o", out, "--overwrite")
    assert code == 0
    assert spatialdata.read_zarr(out)["table"].n_obs == 16
    assert no_leftovers(tmp_path) == []


def _dead_pid() -> int:
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return probe.pid


def test_leftovers_of_a_killed_run_are_removed_or_restored(tmp_path):
    write_visium(tmp_path / "s1", n_spots=12, n_genes=8)
    out = tmp_path / "out.zarr"
    assert run("read", tmp_path / "s1", "-o", out)[0] == 0
    pid = _dead_pid()
    partial, old = tmp_path / f".out.zarr.partial-{pid}", tmp_path / f".out.zarr.old-{pid}"
    (partial / "tables").mkdir(parents=True)  # a half-written store
    out.rename(old)  # killed between moving the old store aside and moving the new one in
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as a shell shows them
        code, _, stderr = run("read", tmp_path / "s1", "-o", out)
    assert f"restored {out} from {old.name}, left by an interrupted run (process {pid})" in stderr
    assert f"removed {partial}" in stderr
    assert_clean_error(code, stderr.splitlines()[-1], "--overwrite")  # the restored store is not replaced unasked
    assert spatialdata.read_zarr(out)["table"].n_obs == 12
    assert no_leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_folder_that_is_not_a_store(tmp_path):
    write_visium(tmp_path / "s1", n_spots=12, n_genes=8)
    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    code, _, stderr = run("read", tmp_path / "s1", "-o", keep, "--overwrite")
    assert_clean_error(code, stderr, str(keep), "not a zarr store")
    assert (keep / "notes.txt").read_text() == "mine"


def test_overwrite_never_replaces_a_regular_file(tmp_path):
    write_visium(tmp_path / "s1", n_spots=12, n_genes=8)
    keep = tmp_path / "results.zarr"
    keep.write_text("mine")  # a file named like a store: --overwrite used to delete it
    code, _, stderr = run("read", tmp_path / "s1", "-o", keep, "--overwrite")
    assert_clean_error(code, stderr, str(keep), "is a file, not a zarr store")
    assert keep.read_text() == "mine"


def test_failed_write_keeps_the_old_store(tmp_path, monkeypatch):
    write_visium(tmp_path / "s1", n_spots=12, n_genes=8)
    out = tmp_path / "out.zarr"
    assert run("read", tmp_path / "s1", "-o", out)[0] == 0

    def broken_write(self, path, **kwargs):
        Path(path).mkdir()
        (Path(path) / "half").write_text("")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spatialdata.SpatialData, "write", broken_write)
    code, _, stderr = run("read", tmp_path / "s1", "-o", out, "--overwrite")
    assert_clean_error(code, stderr, "No space left on device")
    monkeypatch.undo()
    assert spatialdata.read_zarr(out)["table"].n_obs == 12
    assert no_leftovers(tmp_path) == []


def test_read_wrong_path(tmp_path):
    missing = tmp_path / "nowhere" / "sample"
    code, stdout, stderr = run("read", missing, "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, str(missing), "no such file or folder")
    assert stdout == ""
    assert not (tmp_path / "x.zarr").exists()


def test_read_unrecognised_folder(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\x00\x01garbage")
    code, _, stderr = run("read", folder, "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, str(folder), "data.bin")


def test_read_truncated_h5(tmp_path):
    write_visium(tmp_path / "s1" / "outs", n_spots=12, n_genes=8)
    h5 = tmp_path / "s1" / "outs" / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[:300])
    code, _, stderr = run("read", tmp_path / "s1", "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, "filtered_feature_bc_matrix.h5")
    assert not (tmp_path / "x.zarr").exists()
    assert no_leftovers(tmp_path) == []


def test_repeated_slice_names(tmp_path):
    write_visium(tmp_path / "a" / "s", n_spots=12, n_genes=8)
    write_visium(tmp_path / "b" / "s", n_spots=12, n_genes=8)
    code, _, stderr = run("read", tmp_path / "a" / "s", tmp_path / "b" / "s", "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, "--name")


def test_debug_shows_the_exception(tmp_path):
    with pytest.raises(CLIError, match="no such file"):
        main(["read", str(tmp_path / "missing"), "-o", str(tmp_path / "x.zarr"), "--debug"])


def test_keyboard_interrupt(tmp_path, monkeypatch):
    write_visium(tmp_path / "s1", n_spots=12, n_genes=8)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(si.io, "read", interrupted)
    code, _, stderr = run("read", tmp_path / "s1", "-o", tmp_path / "x.zarr")
    assert code == 130
    assert stderr.strip() == "sd-inspire: interrupted"
    assert not (tmp_path / "x.zarr").exists()


def test_logger_level_is_restored(tmp_path):
    logger = logging.getLogger("sd_inspire")
    before = (logger.level, list(logger.handlers), logger.propagate, si.settings.verbosity)
    run("read", tmp_path / "missing", "-o", tmp_path / "x.zarr", "-v")
    assert (logger.level, list(logger.handlers), logger.propagate, si.settings.verbosity) == before


# --- integrate -----------------------------------------------------------------------------------------------------


def test_integrate_end_to_end(integrated, sim_store):
    assert integrated["code"] == 0, integrated["stderr"]
    sdata = spatialdata.read_zarr(integrated["out"])
    table = sdata["table"]
    assert table.obsm["X_inspire"].shape == (300, 32)
    factors = np.asarray(table.obsm["inspire_factors"])
    assert factors.shape == (300, 4)
    np.testing.assert_allclose(factors.sum(axis=1), 1, rtol=1e-4)
    assert table.varm["inspire_loadings"].shape == (100, 4)
    assert table.obs["inspire_domain"].nunique() == 3
    assert table.uns["inspire_domain"]["n_components"] == 4
    assert len(table.uns["inspire"]["history"]["loss"]) == 10
    assert "counts" in table.layers
    assert "spatial_connectivities" in table.obsp
    assert sdata["inspire_factors"].shape == (300, 4)
    # the input store is left as it was
    assert set(spatialdata.read_zarr(sim_store).tables) == {"table"}
    assert "X_inspire" not in spatialdata.read_zarr(sim_store)["table"].obsm
    assert no_leftovers(integrated["out"].parent) == []


def test_integrate_summary(integrated):
    stdout = integrated["stdout"]
    assert "integrated 300 spots in 2 slices (slice0: 150, slice1: 150); 100 genes in the model" in stdout
    assert "training: 10 steps in " in stdout
    # judged on the count model's final fit, three times the training's 10 steps
    assert re.search(
        r"convergence of the final fit of the factors: loss changed [+-]\d+\.\d% over the last tenth", stdout
    )
    terms = next(line for line in stdout.splitlines() if line.startswith("final loss terms: "))
    assert terms.startswith("final loss terms: loss ")
    assert "poisson" in terms
    assert "adversarial" in terms
    assert "alignment" in terms
    assert "domains: 3 in obs['inspire_domain']" in stdout
    assert "  tables: inspire_factors" in stdout
    assert "  table.obsm: X_inspire, inspire_factors" in stdout
    assert "inspire_loadings" in stdout
    assert "inspire_domain" in stdout
    assert stdout.strip().splitlines()[-1] == f"wrote {integrated['out']}"
    # progress bar and nothing else on stderr
    assert "training" in integrated["stderr"]
    assert "10/10" in integrated["stderr"]
    assert "Traceback" not in integrated["stderr"]
    assert "warning" not in integrated["stderr"].lower()


def test_integrate_figures(integrated):
    for name in ("factors", "programs", "history", "domains"):
        path = integrated["figures"] / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"figure: {path}" in integrated["stdout"]


def test_integrate_keeps_the_model(integrated):
    from sd_inspire.model import InspireModel

    folder = integrated["out"].parent / "model"
    model = InspireModel.load(folder)  # without the data
    table = spatialdata.read_zarr(integrated["out"])["table"]
    assert model.reference_id == table.uns["inspire"]["reference_id"]
    assert table.uns["inspire"]["model_dir"] == str(folder.resolve())
    code, _, stderr = run("integrate", integrated["argv"][0], "-o", folder.parent / "x.zarr", "--model-dir", folder)
    assert_clean_error(code, stderr, str(folder), "already holds a model")


def test_integrate_refuses_to_overwrite(integrated):
    code, stdout, stderr = run("integrate", *integrated["argv"])
    assert_clean_error(code, stderr, str(integrated["out"]), "--overwrite")
    assert stdout == ""
    folder = integrated["out"].parent / "other"
    code, _, stderr = run(
        "integrate", integrated["argv"][0], "-o", folder / "x.zarr", "--figures", integrated["figures"]
    )
    assert_clean_error(code, stderr, "factors.png", "--overwrite")  # figures are not replaced either
    assert not folder.exists()


def test_integrate_refuses_a_store_given_twice(tmp_path, sim_store):
    # it used to integrate every spot twice, as if the store held two copies of each slice
    code, _, stderr = run("integrate", sim_store, str(sim_store) + "/", "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, "the same store is given more than once", "duplicated")
    assert not (tmp_path / "x.zarr").exists()


def test_integrate_several_stores(tmp_path, sim_store):
    """Stores are combined slice by slice: two slices, one slice named like one of them, one without obs["slice"]."""
    si.datasets.simulate(1, n_spots=120, n_genes=80, random_state=5).write(tmp_path / "single.zarr")
    bare = si.datasets.simulate(1, n_spots=100, n_genes=60, random_state=6, output="slices")
    next(iter(bare.values())).write(tmp_path / "bare.zarr")
    out = tmp_path / "all.zarr"
    stores = [sim_store, tmp_path / "single.zarr", tmp_path / "bare.zarr"]
    argv = ["-o", out, "--n-factors", "3", "--max-steps", "1", "--batch-size", "64", "--no-progress"]
    code, stdout, stderr = run("integrate", *stores, *argv)
    assert code == 0, stderr
    table = spatialdata.read_zarr(out)["table"]
    # a slice name already taken gets its store's name in front; a store without slices is one slice named after it
    assert table.obs["slice"].cat.categories.tolist() == ["slice0", "slice1", "single_slice0", "bare"]
    assert table.obs["slice"].value_counts().to_dict() == {
        "slice0": 150,
        "slice1": 150,
        "single_slice0": 120,
        "bare": 100,
    }
    assert table.obsm["inspire_factors"].shape == (520, 3)
    assert "integrated 520 spots in 4 slices" in stdout
    assert stderr == ""


def test_integrate_defaults_are_those_of_tl_integrate():
    """Options left out give ``tl.integrate``'s own defaults, so the command and the function train the same model."""
    args = build_parser().parse_args(["integrate", "in.zarr", "-o", "out.zarr"])
    defaults = {k: p.default for k, p in inspect.signature(si.tl.integrate).parameters.items()}
    options = (
        "n_factors", "n_latent", "encoder", "n_hops", "features", "structure", "alignment", "max_steps", "batch_size"
    )  # fmt: skip
    for option in (*options, "n_models"):
        assert getattr(args, option) == defaults[option], option
    assert args.device == defaults["device"]
    assert args.seed == defaults["random_state"]


def test_integrate_model_options(sim_store, tmp_path):
    """--encoder, --n-hops, --features and --structure reach the model (recorded in ``uns["inspire"]["params"]``)."""
    out = tmp_path / "out.zarr"
    argv = ["-o", out, "--n-factors", "3", "--max-steps", "1", "--batch-size", "64", "--no-progress"]
    code, _, stderr = run(
        "integrate", sim_store, *argv, "--features", "lognorm", "--n-hops", "1", "--alignment", "adversarial",
        "--structure", "smoothed",
    )  # fmt: skip
    assert code == 0, stderr
    uns = spatialdata.read_zarr(out)["table"].uns["inspire"]
    params = uns["params"]
    assert (params["encoder"], params["n_hops"], params["features"]) == ("lgcn", 1, "lognorm")
    assert params["structure"] == "smoothed"
    assert uns["train_params"]["alignment"] == "adversarial"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--n-factors", "0"], "--n-factors"),
        (["--max-steps", "-5"], "--max-steps"),
        (["--n-hops", "-1"], "--n-hops"),
        (["--n-domains", "3", "--n-components", "2"], "--n-components must be at least --n-domains (3)"),
        (["--device", "gpu"], "'gpu'"),
        # refused before training (it used to fail in tl.domains, after the training)
        (["--n-domains", "100000"], "--n-domains 100000 exceeds the number of spots in the input"),
    ],
)
def test_integrate_bad_values(sim_store, tmp_path, options, needle):
    code, _, stderr = run("integrate", sim_store, "-o", tmp_path / "x.zarr", *options)
    assert_clean_error(code, stderr, needle)


def test_integrate_wrong_or_corrupt_store(tmp_path):
    missing = tmp_path / "missing.zarr"
    code, _, stderr = run("integrate", missing, "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, str(missing))

    not_a_store = tmp_path / "folder"
    not_a_store.mkdir()
    (not_a_store / "readme.txt").write_text("hello")
    code, _, stderr = run("integrate", not_a_store, "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, str(not_a_store), "not a zarr store")

    corrupt = tmp_path / "corrupt.zarr"
    corrupt.mkdir()
    (corrupt / "zarr.json").write_text("{ this is not json")
    code, _, stderr = run("integrate", corrupt, "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, str(corrupt))
    assert not (tmp_path / "x.zarr").exists()


def test_map_end_to_end(integrated, tmp_path):
    from sd_inspire.model import InspireModel

    model = integrated["out"].parent / "model"
    new = tmp_path / "new.zarr"
    si.datasets.simulate(1, n_spots=120, n_genes=80, random_state=9, path=new)
    out = tmp_path / "mapped.zarr"
    code, stdout, stderr = run("map", new, "--model", model, "-o", out, "--max-steps", "5", "--no-progress")
    assert code == 0, stderr
    table = spatialdata.read_zarr(out)["table"]
    assert table.obsm["X_inspire"].shape[0] == 120
    assert table.uns["inspire"]["reference_id"] == InspireModel.load(model).reference_id
    assert stdout.startswith("mapped 120 spots in 1 slice")
    assert "reference: " in stdout
    code, _, stderr = run("map", new, "--model", tmp_path / "nowhere", "-o", tmp_path / "x.zarr")
    assert_clean_error(code, stderr, "nowhere")


def test_integrate_threads(sim_store, tmp_path):
    """--threads sets torch's CPU threads for the run; the summary and uns say how many it trained with."""
    import torch

    before = torch.get_num_threads()
    try:
        argv = ["--n-factors", "3", "--max-steps", "5", "--batch-size", "128", "--no-progress", "--threads", "1"]
        code, stdout, stderr = run("integrate", sim_store, "-o", tmp_path / "t.zarr", *argv)
        assert code == 0, stderr
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "training: 5 steps in " in stdout
    assert " on 1 torch thread; " in stdout
    assert spatialdata.read_zarr(tmp_path / "t.zarr")["table"].uns["inspire"]["train_params"]["torch_threads"] == 1
    code, _, stderr = run("integrate", sim_store, "-o", tmp_path / "u.zarr", "--threads", "0")
    assert_clean_error(code, stderr, "--threads must be a positive integer, got 0")


def test_integrate_preprocessing_and_domain_options(sim_store, tmp_path):
    out = tmp_path / "o.zarr"
    argv = [sim_store, "-o", out, "--n-factors", "3", "--max-steps", "5", "--batch-size", "128", "--no-progress"]
    extra = ["--n-top-genes", "40", "--gene-space", "union", "--n-domains", "3", "--refine", "2", "--smooth", "2"]
    code, _, stderr = run("integrate", *argv, *extra)
    assert code == 0, stderr
    table = spatialdata.read_zarr(out)["table"]
    assert table.uns["preprocess"]["n_top_genes"] == 40
    assert table.uns["preprocess"]["gene_space"] == "union"
    assert table.uns["inspire_domain"]["refine"] == 2
    assert table.uns["inspire_domain"]["smooth"] == 2
    for flag in ("--refine", "--smooth"):
        code, _, stderr = run("integrate", sim_store, "-o", tmp_path / "p.zarr", flag, "2")
        assert code == 2
        assert f"{flag} needs --n-domains" in stderr
    code, _, stderr = run("integrate", sim_store, "-o", tmp_path / "p.zarr", "--n-domains", "3", "--smooth", "-1")
    assert code == 1
    assert "--smooth must be an integer >= 0, got -1" in stderr
    code, _, stderr = run("integrate", sim_store, "-o", tmp_path / "p.zarr", "--n-top-genes", "0")
    assert code == 1
    assert "--n-top-genes must be a positive integer" in stderr


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ({"loss": [3.0] * 5, "factor_refit": [2.0] * 15}, "15 steps are too few to tell whether the final fit of the"),
        ({"loss": [3.0] * 8}, "8 steps are too few to tell whether training converged"),  # a query: no final fit
    ],
)
def test_summary_of_a_run_too_short_to_judge_names_the_judged_curve(history, expected, tmp_path, capsys):
    import argparse

    import anndata as ad

    from sd_inspire._cli import _summary

    table = ad.AnnData(np.zeros((4, 2), dtype=np.float32))
    table.obs["slice"] = pd.Categorical(["a", "a", "b", "b"])
    table.uns["inspire"] = {"genes": ["g0", "g1"], "history": history, "loss_change": float("nan")}
    args = argparse.Namespace(output=tmp_path / "out.zarr", n_models=1, n_domains=None)
    _summary({"table": table}, args, 1.0, {"obsm": ["X_inspire"]}, [])
    assert f"convergence: {expected}" in capsys.readouterr().out
