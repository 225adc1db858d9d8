from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import sparse
from tests.conftest import SHARED_DATA

import sd_inspire as si


def test_read_dlpfc_slice(dlpfc_dir):
    sdata = si.io.visium(dlpfc_dir / "151673" / "outs")
    t = sdata["table"]
    assert t.shape == (3639, 5000)  # in-tissue spots x the slice's top 5000 genes (SOURCE.txt)
    assert sparse.issparse(t.X)
    assert np.all(t.X.data == np.round(t.X.data))
    assert t.obs["technology"].unique().tolist() == ["visium"]
    assert "151673" in sdata.shapes
    assert sdata.attrs["technology"] == "visium"
    # 55 µm spots: ~96.4 full-resolution pixels across
    assert t.uns["microns_per_pixel"] == pytest.approx(55 / 96.40082438014726)
    assert t.obsm["spatial"].shape == (3639, 2)


def test_read_tiny_spaceranger_1(tmp_path):
    src = SHARED_DATA / "visium" / "spaceranger_1.0.0_tiny"
    if not src.is_dir():
        pytest.skip(f"{src} not found (../shared/data is absent)")
    sdata = si.io.visium(src, dataset_id="tiny", images=False)
    assert sdata["table"].n_vars == 100
    assert not sdata.images


def test_missing_files_are_listed(tmp_path):
    (tmp_path / "spatial").mkdir()
    (tmp_path / "spatial" / "tissue_positions_list.csv").write_text("")
    with pytest.raises(FileNotFoundError, match=r"missing \['filtered_feature_bc_matrix.h5'.*scalefactors_json.json"):
        si.io.visium(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        si.io.visium(tmp_path / "nope")


def test_outs_folder_is_found(dlpfc_dir, tmp_path):
    sample = tmp_path / "151676"
    shutil.copytree(dlpfc_dir / "151676" / "outs", sample / "outs")
    sdata = si.io.visium(sample, images=False)  # the folder holding outs/; id from its name
    assert "151676" in sdata.shapes
    assert sdata["table"].n_obs == 3460
