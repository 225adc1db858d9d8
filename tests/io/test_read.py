from __future__ import annotations

import gzip

import pytest
from tests.conftest import SHARED_DATA
from tests.io.test_merfish import make_region, write_merscope
from tests.io.test_slideseq import make_puck, write_slideseq
from tests.io.test_visium import write_visium

import sd_inspire as si
from sd_inspire._constants import StereoseqFile, Technology
from sd_inspire.io._read import detect_technology


@pytest.fixture
def folders(tmp_path):
    """One synthetic folder per technology read here (Stereo-seq: files only, its reader is tested elsewhere)."""
    write_visium(tmp_path / "visium_h5" / "outs", layout="h5")
    write_visium(tmp_path / "visium_mtx", layout="mtx", raw=True, gz=True)
    write_slideseq(tmp_path / "slideseq", *make_puck(), layout="dge")
    write_merscope(tmp_path / "merfish", *make_region(), prefix="small_")
    gem = tmp_path / "stereo" / f"sample{StereoseqFile.GEM_SUFFIX}.gz"
    gem.parent.mkdir()
    with gzip.open(gem, "wt") as f:
        f.write(f"{StereoseqFile.COMMENT}FileFormat=GEM\n{StereoseqFile.GENE}\t{StereoseqFile.X}\t{StereoseqFile.Y}\n")
    (tmp_path / "stereo_gef").mkdir()
    (tmp_path / "stereo_gef" / f"s{StereoseqFile.CELLBIN_GEF_SUFFIX}").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    ("name", "technology"),
    [
        ("visium_h5", Technology.VISIUM),
        ("visium_h5/outs", Technology.VISIUM),
        ("visium_mtx", Technology.VISIUM),
        ("slideseq", Technology.SLIDESEQ),
        ("merfish", Technology.MERFISH),
        ("stereo", Technology.STEREOSEQ),
        ("stereo/sample.gem.gz", Technology.STEREOSEQ),
        ("stereo_gef", Technology.STEREOSEQ),
    ],
)
def test_detect(folders, name, technology):
    assert detect_technology(folders / name) == [technology]


@pytest.mark.parametrize(
    ("name", "technology", "n_obs"),
    [
        ("visium_h5", "visium", 12),
        ("visium_mtx", "visium", 12),
        ("slideseq", "slideseq", 30),
        ("merfish", "merfish", 25),
    ],
)
def test_read_dispatches(folders, name, technology, n_obs):
    sdata = si.io.read(folders / name, dataset_id="d")
    assert sdata.attrs["technology"] == technology
    assert sdata["table"].n_obs == n_obs
    assert sdata["table"].uns["spatialdata_attrs"]["region"] in ("d", "d_shapes")  # kwargs reach the reader


def test_read_dispatches_to_stereoseq(folders, monkeypatch):
    import sd_inspire.io._stereoseq

    calls = []
    monkeypatch.setattr(sd_inspire.io._stereoseq, "stereoseq", lambda path, **kw: calls.append((path, kw)) or "sd")
    assert si.io.read(folders / "stereo" / "sample.gem.gz", bin_size=20) == "sd"
    assert calls == [(folders / "stereo" / "sample.gem.gz", {"bin_size": 20})]


def test_technology_can_be_forced(folders):
    assert si.io.read(folders / "merfish", technology="merscope").attrs["technology"] == "merfish"
    with pytest.raises(FileNotFoundError, match="is not a Slide-seq folder"):
        si.io.read(folders / "merfish", technology="slideseq")
    with pytest.raises(ValueError, match=r"Unknown technology 'xenium'; choose from \['visium', 'stereoseq'"):
        si.io.read(folders / "merfish", technology="xenium")


def test_unknown_folder(tmp_path):
    (tmp_path / "cells.csv.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no reader recognises its files") as info:
        si.io.read(tmp_path)
    message = str(info.value)
    for expected in (
        "visium: ",
        "stereoseq: ",
        "slideseq: ",
        "merfish: ",
        "scalefactors_json.json",
        ".gem",
        "BeadLocations",
    ):
        assert expected in message
    assert "Found: ['cells.csv.gz']" in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        si.io.read(tmp_path / "nope")


def test_ambiguous_folder(tmp_path):
    write_slideseq(tmp_path, *make_puck())
    write_merscope(tmp_path, *make_region())
    with pytest.raises(ValueError, match=r"matches several readers \(\['slideseq', 'merfish'\]\)"):
        si.io.read(tmp_path)


@pytest.mark.parametrize(
    ("folder", "technology"),
    [
        ("visium/spaceranger_1.0.0_tiny", "visium"),
        ("visium/mouse_brain_raw_mtx_tiny/section1", "visium"),
        ("slideseq/Slideseq_cerebellum_spacexr_vignette_tiny", "slideseq"),
        ("merfish/merscope_ffpe_small", "merfish"),
    ],
)
def test_read_real_folders(folder, technology):
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"{path} not found (../shared/data is absent)")
    kwargs = {"images": False} if technology == "visium" else {}
    assert si.io.read(path, **kwargs).attrs["technology"] == technology
