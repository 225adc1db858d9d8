from __future__ import annotations

import gzip
import json
import shutil
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import scipy.io
from scipy import sparse
from tests.conftest import DLPFC_SLICES, SHARED_DATA

import sd_inspire as si
from sd_inspire._constants import VisiumFile

if TYPE_CHECKING:
    from pathlib import Path

VISIUM = SHARED_DATA / "visium"
SCALEFACTORS = {
    VisiumFile.SPOT_DIAMETER_KEY.value: 90.0,
    VisiumFile.HIRES_SCALE_KEY.value: 0.2,
    VisiumFile.LOWRES_SCALE_KEY.value: 0.05,
    "fiducial_diameter_fullres": 140.0,
}


@pytest.fixture(scope="session")
def visium_dir() -> Path:
    if not VISIUM.is_dir():
        pytest.skip(f"real Visium data not found at {VISIUM} (../shared/data is absent)")
    return VISIUM


# --- synthetic Space Ranger folders, written with the enum's file names -----------------------------------------


def write_visium(
    root: Path,
    *,
    n_spots: int = 12,
    n_genes: int = 8,
    layout: str = "h5",
    raw: bool = False,
    gz: bool = False,
    header: bool = False,
    out_of_tissue: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Write a tiny Space Ranger ``outs/`` folder; return its counts (spots x genes) as a DataFrame.

    Positions list every spot of the matrix plus 4 spots absent from it; the last ``out_of_tissue`` spots of the
    matrix are outside the tissue.
    """
    rng = np.random.default_rng(seed)
    barcodes = [f"AAAC{i:06d}-1" for i in range(n_spots + 4)]
    genes = [f"Gene{j}" for j in range(n_genes)]
    counts = pd.DataFrame(rng.poisson(2.0, (n_spots, n_genes)), index=barcodes[:n_spots], columns=genes)
    spatial = root / VisiumFile.SPATIAL_DIR
    spatial.mkdir(parents=True, exist_ok=True)
    (spatial / VisiumFile.SCALEFACTORS).write_text(json.dumps(SCALEFACTORS))
    rows = np.arange(len(barcodes)) // 4
    cols = 2 * (np.arange(len(barcodes)) % 4) + rows % 2
    in_tissue = np.ones(len(barcodes), dtype=int)
    in_tissue[n_spots - out_of_tissue :] = 0
    positions = pd.DataFrame(
        {
            VisiumFile.BARCODE.value: barcodes,
            VisiumFile.IN_TISSUE.value: in_tissue,
            VisiumFile.ARRAY_ROW.value: rows,
            VisiumFile.ARRAY_COL.value: cols,
            VisiumFile.PXL_ROW.value: 1000 + 150 * rows,
            VisiumFile.PXL_COL.value: 1000 + 87 * cols,
        }
    )
    name = VisiumFile.POSITIONS_V2 if header else VisiumFile.POSITIONS_V1
    positions.to_csv(spatial / name, index=False, header=header)
    if layout == "h5":
        _write_h5(root / (VisiumFile.RAW_COUNTS if raw else VisiumFile.FILTERED_COUNTS), counts)
    else:
        folder = root / (VisiumFile.RAW_MTX_DIR if raw else VisiumFile.FILTERED_MTX_DIR)
        _write_mtx(folder, counts, gz=gz)
    return counts


def _write_h5(file: Path, counts: pd.DataFrame) -> None:
    import h5py

    csc = sparse.csc_matrix(counts.to_numpy().T)  # genes x barcodes, stored column by column (10x v3 schema)
    with h5py.File(file, "w") as f:
        m = f.create_group(VisiumFile.H5_MATRIX_GROUP)
        m["barcodes"] = np.array(counts.index, dtype="S")
        m["data"], m["indices"], m["indptr"] = csc.data.astype(np.int32), csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        feats = m.create_group("features")
        feats["id"] = np.array([f"ENSG{j:05d}" for j in range(counts.shape[1])], dtype="S")
        feats["name"] = np.array(counts.columns, dtype="S")
        feats["feature_type"] = np.array([VisiumFile.GENE_EXPRESSION.value] * counts.shape[1], dtype="S")
        feats["genome"] = np.array(["GRCh38"] * counts.shape[1], dtype="S")


def _write_mtx(folder: Path, counts: pd.DataFrame, *, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = VisiumFile.GZIP_SUFFIX if gz else ""
    opener = gzip.open if gz else open
    with opener(folder / f"{VisiumFile.MTX}{suffix}", "wb") as f:
        scipy.io.mmwrite(f, sparse.coo_matrix(counts.to_numpy().T))
    with opener(folder / f"{VisiumFile.BARCODES}{suffix}", "wt") as f:
        f.write("\n".join(counts.index) + "\n")
    with opener(folder / f"{VisiumFile.FEATURES}{suffix}", "wt") as f:
        f.writelines(f"ENSG{j:05d}\t{g}\t{VisiumFile.GENE_EXPRESSION}\n" for j, g in enumerate(counts.columns))


def assert_round_trip(sdata, tmp_path: Path) -> None:
    import spatialdata

    sdata.write(tmp_path / "x.zarr")
    back = spatialdata.read_zarr(tmp_path / "x.zarr")
    t, u = sdata["table"], back["table"]
    assert sparse.isspmatrix_csr(u.X) or sparse.issparse(u.X)
    assert (t.X != u.X).nnz == 0
    pd.testing.assert_frame_equal(t.obs, u.obs)
    pd.testing.assert_frame_equal(t.var, u.var)
    np.testing.assert_array_equal(t.obsm["spatial"], u.obsm["spatial"])
    assert set(back.shapes) == set(sdata.shapes)
    for name in sdata.shapes:
        assert back.shapes[name].geom_equals(sdata.shapes[name]).all()
    assert u.uns["spatialdata_attrs"] == t.uns["spatialdata_attrs"]


def check_table(sdata, technology: str, n_obs: int, n_vars: int) -> None:
    t = sdata["table"]
    assert t.shape == (n_obs, n_vars)
    assert sparse.isspmatrix_csr(t.X)
    assert np.all(t.X.data == np.round(t.X.data))
    assert t.obs["technology"].unique().tolist() == [technology]
    assert t.obsm["spatial"].shape == (n_obs, 2)
    attrs = t.uns["spatialdata_attrs"]
    assert t.obs[attrs["region_key"]].isin(sdata.shapes).all()
    shapes = sdata.shapes[attrs["region"]]
    assert t.obs[attrs["instance_key"]].isin(shapes.index).all()
    assert sdata.attrs["technology"] == technology


# --- synthetic layouts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "raw", "gz", "header"),
    [
        ("h5", False, False, False),
        ("h5", True, False, True),
        ("mtx", False, False, False),
        ("mtx", True, True, True),
    ],
)
def test_layouts(tmp_path, layout, raw, gz, header):
    outs = tmp_path / "sampleA" / "outs"
    counts = write_visium(outs, layout=layout, raw=raw, gz=gz, header=header, out_of_tissue=3)
    sdata = si.io.visium(tmp_path / "sampleA")  # the folder holding outs/; counts file auto-detected
    check_table(sdata, "visium", 9, 8)  # 12 barcodes, 3 of them outside the tissue
    t = sdata["table"]
    assert list(t.obs_names) == list(counts.index[:9])
    np.testing.assert_array_equal(t.X.toarray(), counts.iloc[:9].to_numpy())
    assert list(t.var_names) == list(counts.columns)
    assert (t.obs["in_tissue"] == 1).all()
    assert "sampleA" in sdata.shapes
    np.testing.assert_allclose(sdata.shapes["sampleA"]["radius"], 45.0)  # spot_diameter_fullres / 2
    assert t.uns["microns_per_pixel"] == pytest.approx(55 / 90)
    first = t.obs_names[0]
    np.testing.assert_array_equal(t.obsm["spatial"][0], [1000 + 87 * t.obs.loc[first, "array_col"], 1000])
    assert_round_trip(sdata, tmp_path)


def test_in_tissue_only_false_keeps_all_spots(tmp_path):
    write_visium(tmp_path, layout="mtx", raw=True, out_of_tissue=5)
    sdata = si.io.visium(tmp_path, dataset_id="s", in_tissue_only=False)
    assert sdata["table"].n_obs == 12
    assert sorted(sdata["table"].obs["in_tissue"].unique()) == [0, 1]
    assert len(sdata.shapes["s"]) == 12


def test_counts_file_can_be_given(tmp_path):
    write_visium(tmp_path, layout="mtx", raw=True)
    write_visium(tmp_path, layout="h5", n_genes=5)
    assert si.io.visium(tmp_path, dataset_id="s")["table"].n_vars == 5  # the filtered h5 comes first
    for name in (VisiumFile.RAW_MTX_DIR, f"{VisiumFile.RAW_MTX_DIR}/{VisiumFile.MTX}"):
        assert si.io.visium(tmp_path, dataset_id="s", counts_file=name)["table"].n_vars == 8


# --- bad input ------------------------------------------------------------------------------------------------


def test_missing_files_are_listed(tmp_path):
    (tmp_path / "spatial").mkdir()
    (tmp_path / "spatial" / "tissue_positions_list.csv").write_text("")
    with pytest.raises(
        FileNotFoundError, match=r"missing \['filtered_feature_bc_matrix.h5 or .*scalefactors_json.json"
    ):
        si.io.visium(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"found \[.*spatial/tissue_positions_list.csv"):
        si.io.visium(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        si.io.visium(tmp_path / "nope")
    write_visium(tmp_path, layout="h5")
    with pytest.raises(FileNotFoundError, match=r"missing \['raw_feature_bc_matrix/'\]"):
        si.io.visium(tmp_path, counts_file=VisiumFile.RAW_MTX_DIR)


def test_unknown_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(FileNotFoundError, match=r"not a Visium output folder.*found \['notes.txt'\]"):
        si.io.visium(tmp_path)


def test_mtx_folder_missing_a_file(tmp_path):
    write_visium(tmp_path, layout="mtx", raw=True)
    (tmp_path / VisiumFile.RAW_MTX_DIR / VisiumFile.FEATURES).unlink()
    with pytest.raises(FileNotFoundError, match=r"features.tsv\(.gz\)'\]; found \['barcodes.tsv', 'matrix.mtx'\]"):
        si.io.visium(tmp_path, dataset_id="s")


def test_truncated_h5(tmp_path):
    write_visium(tmp_path, layout="h5")
    h5 = tmp_path / VisiumFile.FILTERED_COUNTS
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"filtered_feature_bc_matrix.h5: not a readable 10x HDF5"):
        si.io.visium(tmp_path, dataset_id="s")


def test_truncated_mtx(tmp_path):
    write_visium(tmp_path, layout="mtx")
    mtx = tmp_path / VisiumFile.FILTERED_MTX_DIR / VisiumFile.MTX
    text = mtx.read_text()
    mtx.write_text(text[: len(text) // 2 + 1])
    with pytest.raises(ValueError, match=r"matrix.mtx: not a readable MatrixMarket"):
        si.io.visium(tmp_path, dataset_id="s")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda lines: [*lines[:3], lines[3] + ",7", *lines[4:]], "malformed tissue positions"),  # ragged row
        (lambda lines: [line.rsplit(",", 1)[0] for line in lines], "expected 6 columns"),  # a missing column
        (lambda lines: [lines[0].replace(",1,", ",yes,", 1), *lines[1:]], "non-numeric values"),
        (lambda lines: [*lines, lines[2]], "duplicated barcodes"),
        (lambda lines: [], "the file is empty"),
    ],
)
def test_malformed_positions(tmp_path, edit, match):
    write_visium(tmp_path, layout="h5")
    file = tmp_path / VisiumFile.SPATIAL_DIR / VisiumFile.POSITIONS_V1
    file.write_text("\n".join(edit(file.read_text().splitlines())))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=f"tissue_positions_list.csv: .*{match}"):
        si.io.visium(tmp_path, dataset_id="s")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_bad_scalefactors(tmp_path):
    write_visium(tmp_path, layout="h5")
    file = tmp_path / VisiumFile.SPATIAL_DIR / VisiumFile.SCALEFACTORS
    file.write_text('{"spot_diameter_fullres": ')
    with pytest.raises(ValueError, match="scalefactors_json.json: not valid JSON"):
        si.io.visium(tmp_path, dataset_id="s")
    file.write_text('{"tissue_hires_scalef": 0.2}')
    with pytest.raises(ValueError, match="scalefactors_json.json: no valid spot_diameter_fullres"):
        si.io.visium(tmp_path, dataset_id="s")
    # non-numeric image scale factors used to pass silently (and misplace the images)
    for key, value in (
        ("tissue_hires_scalef", '"abc"'),
        ("tissue_lowres_scalef", "-1"),
        ("tissue_hires_scalef", "null"),
    ):
        file.write_text(f'{{"spot_diameter_fullres": 90.0, "{key}": {value}}}')
        with pytest.raises(ValueError, match=rf"scalefactors_json.json: {key} must be a positive number"):
            si.io.visium(tmp_path, dataset_id="s")


@pytest.mark.parametrize("layout", ["h5", "mtx"])
def test_duplicated_barcodes_in_matrix(tmp_path, layout):
    counts = write_visium(tmp_path, layout=layout)
    counts.index = [*counts.index[:-1], counts.index[0]]
    if layout == "h5":
        _write_h5(tmp_path / VisiumFile.FILTERED_COUNTS, counts)
    else:
        _write_mtx(tmp_path / VisiumFile.FILTERED_MTX_DIR, counts)
    with pytest.raises(ValueError, match=r"1 duplicated barcodes \(e.g. \['AAAC000000-1'\]\)"):
        si.io.visium(tmp_path, dataset_id="s")


@pytest.mark.parametrize("layout", ["h5", "mtx"])
def test_barcodes_without_positions(tmp_path, layout):
    counts = write_visium(tmp_path, layout=layout)
    file = tmp_path / VisiumFile.SPATIAL_DIR / VisiumFile.POSITIONS_V1
    lines = file.read_text().splitlines()
    file.write_text("\n".join(lines[2:]))  # the first two barcodes of the matrix lose their position
    with pytest.warns(
        UserWarning, match=r"2 barcodes of .* are missing from tissue_positions_list.csv .*keeping the 10"
    ):
        sdata = si.io.visium(tmp_path, dataset_id="s")
    assert list(sdata["table"].obs_names) == list(counts.index[2:])
    assert len(sdata.shapes["s"]) == 10
    assert np.isfinite(sdata["table"].obsm["spatial"]).all()
    file.write_text("\n".join(lines[12:]))  # positions only for spots absent from the matrix
    with pytest.raises(ValueError, match="No barcodes in common"):
        si.io.visium(tmp_path, dataset_id="s")


def test_positions_without_barcodes_are_normal(tmp_path):
    write_visium(tmp_path, layout="h5")  # 4 positions have no barcode in the matrix: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert si.io.visium(tmp_path, dataset_id="s")["table"].n_obs == 12


def test_no_spot_under_tissue(tmp_path):
    write_visium(tmp_path, layout="mtx", out_of_tissue=12)
    with pytest.raises(ValueError, match="none of the 12 barcodes .* is under tissue"):
        si.io.visium(tmp_path, dataset_id="s")


@pytest.mark.parametrize("layout", ["h5", "mtx"])
def test_empty_matrix(tmp_path, layout):
    counts = write_visium(tmp_path, layout=layout)
    empty = counts.iloc[:0]
    if layout == "h5":
        _write_h5(tmp_path / VisiumFile.FILTERED_COUNTS, empty)
    else:
        _write_mtx(tmp_path / VisiumFile.FILTERED_MTX_DIR, empty)
    with pytest.raises(ValueError, match="holds no barcodes"):
        si.io.visium(tmp_path, dataset_id="s")


# --- real data ------------------------------------------------------------------------------------------------


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


def test_read_tiny_spaceranger_1(visium_dir, tmp_path):
    sdata = si.io.visium(visium_dir / "spaceranger_1.0.0_tiny", dataset_id="tiny", images=False)
    check_table(sdata, "visium", 100, 100)
    assert not sdata.images
    assert_round_trip(sdata, tmp_path)
    with_images = si.io.visium(visium_dir / "spaceranger_1.0.0_tiny", dataset_id="tiny")
    assert set(with_images.images) == {"tiny_hires_image", "tiny_lowres_image"}


@pytest.mark.parametrize(
    ("sample", "image"),
    [
        ("spaceranger_1.0.0_tiny", "tissue_hires_image.png"),  # 10x HDF5, read through spatialdata-io
        ("mouse_brain_raw_mtx_tiny/section1", "tissue_lowres_image.png"),  # MatrixMarket
    ],
)
def test_damaged_image(visium_dir, tmp_path, sample, image):
    copy = tmp_path / "sample"
    shutil.copytree(visium_dir / sample, copy)
    png = next(copy.rglob(image))
    png.write_bytes(png.read_bytes()[:200])  # truncated
    sdata = si.io.visium(copy, dataset_id="s", images=False)  # the images are not needed: read without them
    assert not sdata.images
    assert sdata["table"].n_obs > 0
    with pytest.raises(ValueError, match=rf"{image}: not a readable image .*images=False"):
        si.io.visium(copy, dataset_id="s")


def test_read_mouse_brain_raw_mtx(visium_dir, tmp_path):
    section1 = si.io.visium(visium_dir / "mouse_brain_raw_mtx_tiny" / "section1")
    check_table(section1, "visium", 22, 50)  # 50 raw barcodes, 22 under tissue
    t = section1["table"]
    assert t.var_names[0] == "Xkr4"
    assert t.var["gene_ids"].iloc[0] == "ENSMUSG00000051951"
    image = section1.images["section1_lowres_image"]
    assert type(image.data).__module__.startswith("dask")  # lazy
    assert_round_trip(section1, tmp_path)
    # section2: the same matrix, one out-of-tissue barcode lacks a position
    with pytest.warns(UserWarning, match=r"1 barcodes of matrix.mtx are missing .*AAACAACGAATAGTTC-1"):
        section2 = si.io.visium(visium_dir / "mouse_brain_raw_mtx_tiny" / "section2" / "outs", images=False)
    assert "section2" in section2.shapes
    assert list(section2["table"].obs_names) == list(t.obs_names)
    assert (section2["table"].X != t.X).nnz == 0


def test_outs_folder_is_found(dlpfc_dir, tmp_path):
    sample = tmp_path / "151676"
    shutil.copytree(dlpfc_dir / "151676" / "outs", sample / "outs")
    sdata = si.io.visium(sample, images=False)  # the folder holding outs/; id from its name
    assert "151676" in sdata.shapes
    assert sdata["table"].n_obs == 3460


def test_dlpfc_layers_join_on_barcodes(dlpfc_dir):
    layers = pd.read_csv(
        dlpfc_dir / "barcode_level_layer_map.tsv", sep="\t", header=None, names=["barcode", "sample", "layer"]
    )
    not_annotated = {}
    for name in DLPFC_SLICES:
        barcodes = si.io.visium(dlpfc_dir / name, images=False)["table"].obs_names
        annotated = pd.Index(layers.loc[layers["sample"] == int(name), "barcode"])
        assert annotated.isin(barcodes).all()  # every annotated spot is an in-tissue spot of the slice
        not_annotated[name] = int((~barcodes.isin(annotated)).sum())
    # SOURCE.txt: 26-38 unannotated spots per slice (151673: NA 28)
    assert not_annotated == {"151673": 28, "151674": 38, "151675": 26, "151676": 29}


def test_dlpfc_flow_from_raw_folders(dlpfc_dir, tmp_path):
    import spatialdata

    slices = {name: si.io.visium(dlpfc_dir / name, images=False) for name in DLPFC_SLICES}
    sdata = si.pp.concat(slices)
    si.pp.preprocess(sdata, n_top_genes=200)
    si.gr.spatial_neighbors(sdata)
    si.tl.integrate(sdata, n_factors=5, n_latent=8, max_steps=20, batch_size=256, show_progress_bar=False)
    sdata.write(tmp_path / "dlpfc.zarr")
    back = spatialdata.read_zarr(tmp_path / "dlpfc.zarr")
    t, u = sdata["table"], back["table"]
    assert u.n_obs == 3639 + 3673 + 3592 + 3460
    for key in ("X_inspire", "inspire_factors"):
        np.testing.assert_allclose(u.obsm[key], t.obsm[key])
    assert u.obsm["X_inspire"].shape == (u.n_obs, 8)
    np.testing.assert_allclose(u.obsm["inspire_factors"].sum(axis=1), 1, rtol=1e-4)
    assert "inspire_loadings" in u.varm
    assert "inspire" in u.uns
    assert "inspire_factors" in back.tables
    assert set(DLPFC_SLICES) <= set(back.shapes)


def _tamper_h5(file: Path, **datasets) -> None:
    import h5py

    with h5py.File(file, "r+") as f:
        for name, value in datasets.items():
            del f[f"matrix/{name}"]
            f[f"matrix/{name}"] = value


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        # an out-of-range gene index made scipy crash the interpreter (segmentation fault) before this check
        (lambda m: {"indices": np.where(m["indices"] == 0, 10**6, m["indices"])}, r"indices holds gene index 1000000"),
        (lambda m: {"indices": np.where(m["indices"] == 0, -3, m["indices"])}, r"indices holds gene index -3"),
        (lambda m: {"indptr": m["indptr"][::-1]}, r"indptr must rise from 0"),
        (lambda m: {"indptr": m["indptr"][:-2]}, r"indptr must hold 13 integers"),
        (lambda m: {"shape": np.array([8, 99], dtype=np.int32)}, r"shape says 99 barcodes"),
        (lambda m: {"shape": np.array([3, 12], dtype=np.int32)}, r"shape says 3 genes but .*features/id holds 8"),
        (lambda m: {"shape": np.array([8.5, 12.0])}, r"shape must hold two non-negative integers"),
    ],
)
def test_malformed_h5_structure_is_refused_naming_the_dataset(tmp_path, edit, match):
    import h5py

    write_visium(tmp_path)
    file = tmp_path / VisiumFile.FILTERED_COUNTS
    with h5py.File(file, "r") as f:
        parts = {k: f[f"matrix/{k}"][:] for k in ("indices", "indptr", "shape")}
    _tamper_h5(file, **edit(parts))
    with pytest.raises(ValueError, match=match) as info:
        si.io.visium(tmp_path)
    assert str(file) in str(info.value)


def test_malformed_h5_is_refused_by_the_cli_with_a_message(tmp_path):
    import subprocess
    import sys

    import h5py

    write_visium(tmp_path / "in")
    file = tmp_path / "in" / VisiumFile.FILTERED_COUNTS
    with h5py.File(file, "r") as f:
        indices = f["matrix/indices"][:]
    _tamper_h5(file, indices=np.where(indices == 0, 10**6, indices))
    run = subprocess.run(
        [sys.executable, "-m", "sd_inspire", "read", str(tmp_path / "in"), "-o", str(tmp_path / "out.zarr")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr  # an error, not a crash (-11)
    assert "gene index 1000000" in run.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_squidpy_spatial_scatter_works_on_integrated_slices(visium_dir, tmp_path):
    # uns["spatial"] as squidpy reads it: per slice (named as in obs["slice"]) the scale factors and the images
    import matplotlib.pyplot as plt
    import squidpy as sq

    slices = {
        name: si.io.visium(visium_dir / "spaceranger_1.0.0_tiny", dataset_id=f"tiny{name}") for name in ("A", "B")
    }
    library = slices["A"]["table"].uns["spatial"]["tinyA"]
    assert library["images"]["hires"].ndim == 3  # y, x, channels (RGB or RGBA as in the PNG)
    assert library["images"]["hires"].shape[2] in (3, 4)
    assert library["scalefactors"]["spot_diameter_fullres"] > 0
    assert "tissue_hires_scalef" in library["scalefactors"]
    sdata = si.pp.concat(slices)
    si.tl.integrate(sdata, n_factors=3, n_latent=4, max_steps=5, show_progress_bar=False)
    si.tl.domains(sdata, n_domains=2, show_progress_bar=False)
    table = sdata["table"]
    assert set(table.uns["spatial"]) == {"A", "B"}
    with warnings.catch_warnings():  # squidpy's own use of matplotlib's older API
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        axes = sq.pl.spatial_scatter(table, color="inspire_domain", library_key="slice", return_ax=True)
    assert len(axes) == 2
    assert axes[0].images  # the tissue image is drawn
    plt.close("all")
    si.io.write_zarr(sdata, tmp_path / "s.zarr")
    back = si.io.read_zarr(tmp_path / "s.zarr")["table"]
    np.testing.assert_array_equal(
        back.uns["spatial"]["B"]["images"]["lowres"], table.uns["spatial"]["B"]["images"]["lowres"]
    )
