from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from scipy import sparse
from tests.conftest import SHARED_DATA
from tests.io.test_visium import assert_round_trip, check_table

import sd_inspire as si
from sd_inspire._constants import SlideseqFile

SLIDESEQ = SHARED_DATA / "slideseq"


@pytest.fixture(scope="session")
def slideseq_dir() -> Path:
    if not SLIDESEQ.is_dir():
        pytest.skip(f"real Slide-seq data not found at {SLIDESEQ} (../shared/data is absent)")
    return SLIDESEQ


def make_puck(n_beads: int = 30, n_genes: int = 12, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bead locations (barcodes, xcoord, ycoord) and counts (genes x beads)."""
    rng = np.random.default_rng(seed)
    barcodes = [f"BEAD{i:05d}" for i in range(n_beads)]
    beads = pd.DataFrame(
        {
            SlideseqFile.BARCODE.value: barcodes,
            SlideseqFile.X.value: rng.uniform(0, 3000, n_beads).round(2),
            SlideseqFile.Y.value: rng.uniform(0, 3000, n_beads).round(2),
        }
    )
    counts = pd.DataFrame(
        rng.poisson(0.8, (n_genes, n_beads)), index=[f"Gene{j}" for j in range(n_genes)], columns=barcodes
    )
    return beads, counts


def write_slideseq(
    folder: Path, beads: pd.DataFrame, counts: pd.DataFrame, *, layout: str = "for_r", beads_name: str | None = None
) -> None:
    """Write a puck folder in one of the Slide-seq layouts."""
    folder.mkdir(parents=True, exist_ok=True)
    beads.to_csv(folder / (beads_name or SlideseqFile.BEADS_FOR_R), index=False)
    if layout == "for_r":  # R's write.csv: quoted, empty first header cell
        counts.to_csv(folder / SlideseqFile.DGE_FOR_R, quoting=csv.QUOTE_NONNUMERIC)
    elif layout == "r_table":  # R's write.table: the header has no cell for the gene column
        lines = [",".join(counts.columns), *(f"{g},{','.join(map(str, row))}" for g, row in counts.iterrows())]
        (folder / SlideseqFile.DGE_FOR_R).write_text("\n".join(lines) + "\n")
    elif layout == "dge":
        with gzip.open(folder / f"Puck_1{SlideseqFile.DGE_SUFFIX}{SlideseqFile.GZIP_SUFFIX}", "wt") as f:
            counts.rename_axis(SlideseqFile.DGE_GENE.value).to_csv(f, sep="\t")
    elif layout == "mtx":
        with gzip.open(folder / f"Puck_1.matched_matrix{SlideseqFile.MTX_SUFFIX}.gz", "wb") as f:
            scipy.io.mmwrite(f, sparse.coo_matrix(counts.to_numpy()))  # genes x beads
        (folder / f"Puck_1.matched_{SlideseqFile.MTX_BARCODES_SUFFIX}").write_text("\n".join(counts.columns) + "\n")
        (folder / f"Puck_1.matched_{SlideseqFile.MTX_GENES_SUFFIX}").write_text(
            "".join(f"{g}\t{g}\n" for g in counts.index)
        )
    elif layout == "h5ad":
        import anndata as ad

        adata = ad.AnnData(sparse.csr_matrix(counts.T.to_numpy(), dtype=np.int32))
        adata.obs_names, adata.var_names = counts.columns, counts.index
        adata.write_h5ad(folder / f"puck{SlideseqFile.H5AD_SUFFIX}")


@pytest.mark.parametrize("layout", ["for_r", "r_table", "dge", "mtx", "h5ad"])
def test_layouts(tmp_path, layout):
    beads, counts = make_puck()
    write_slideseq(tmp_path / "puck1", beads.iloc[::-1], counts, layout=layout)  # rows in another order
    sdata = si.io.slideseq(tmp_path / "puck1")
    check_table(sdata, "slideseq", 30, 12)
    t = sdata["table"]
    assert list(t.obs_names) == list(counts.columns)
    assert list(t.var_names) == list(counts.index)
    np.testing.assert_array_equal(t.X.toarray(), counts.T.to_numpy())
    np.testing.assert_allclose(t.obsm["spatial"], beads[["xcoord", "ycoord"]].to_numpy())
    assert t.uns["microns_per_pixel"] == 0.65
    np.testing.assert_allclose(sdata.shapes["puck1_shapes"]["radius"], 5 / 0.65)  # 10 µm beads
    assert_round_trip(sdata, tmp_path)


def test_dense_matrix_is_read_in_chunks(tmp_path):
    beads, counts = make_puck(n_genes=25)
    write_slideseq(tmp_path, beads, counts, layout="dge")
    whole = si.io.slideseq(tmp_path, dataset_id="p")["table"]
    chunked = si.io.slideseq(tmp_path, dataset_id="p", chunk_size=4)["table"]
    assert (whole.X != chunked.X).nnz == 0
    assert list(chunked.var_names) == list(counts.index)


def test_explicit_files_and_options(tmp_path):
    beads, counts = make_puck()
    write_slideseq(tmp_path / "a", beads, counts, beads_name=SlideseqFile.BEADS)
    sdata = si.io.slideseq(
        tmp_path,
        dataset_id="p",
        beads_file=tmp_path / "a" / SlideseqFile.BEADS,
        counts_file=Path("a") / SlideseqFile.DGE_FOR_R,
        microns_per_pixel=0.5,
        bead_diameter=8,
    )
    assert sdata["table"].uns["microns_per_pixel"] == 0.5
    np.testing.assert_allclose(sdata.shapes["p_shapes"]["radius"], 8)


# --- bad input ------------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    beads, counts = make_puck()
    write_slideseq(tmp_path, beads, counts)
    (tmp_path / SlideseqFile.DGE_FOR_R).unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['MappedDGEForR.csv or .*found \['BeadLocationsForR.csv'\]"):
        si.io.slideseq(tmp_path)
    (tmp_path / SlideseqFile.BEADS_FOR_R).unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['BeadLocationsForR.csv or bead_locations.csv or Bead"):
        si.io.slideseq(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        si.io.slideseq(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="other.csv' does not exist"):
        si.io.slideseq(tmp_path, beads_file="other.csv")


def test_several_matrices(tmp_path):
    beads, counts = make_puck()
    write_slideseq(tmp_path, beads, counts, layout="dge")
    write_slideseq(tmp_path, beads, counts, layout="h5ad")
    with pytest.raises(ValueError, match="several count matrices"):
        si.io.slideseq(tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda lines: [lines[0].replace("barcodes", "bc"), *lines[1:]], r"expected columns \['barcodes', 'xcoord'"),
        (
            lambda lines: [line.rsplit(",", 1)[0] for line in lines],
            r"expected columns .*found \['barcodes', 'xcoord'\]",
        ),
        (lambda lines: [*lines[:5], lines[5] + ",1", *lines[6:]], "malformed csv"),
        (
            lambda lines: [*lines[:5], lines[5].rsplit(",", 1)[0] + ",", *lines[6:]],
            "1 beads with missing or non-numeric",
        ),
        (lambda lines: [*lines, lines[3]], r"1 duplicated ids \(e.g. \['BEAD00002'\]\)"),
        (lambda lines: lines[:1], "no beads"),
        (lambda lines: [], "the file is empty"),
    ],
)
def test_malformed_beads(tmp_path, edit, match):
    beads, counts = make_puck()
    write_slideseq(tmp_path, beads, counts)
    file = tmp_path / SlideseqFile.BEADS_FOR_R
    file.write_text("\n".join(edit(file.read_text().splitlines())))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match=f"BeadLocationsForR.csv: {match}"):
        si.io.slideseq(tmp_path)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda lines: [*lines[:4], lines[4] + ",1", *lines[5:]], "malformed matrix"),  # ragged: a field too many
        (lambda lines: [*lines[:4], lines[4].rsplit(",", 2)[0], *lines[5:]], "missing values in line 5"),
        (
            lambda lines: [lines[0], lines[1].rsplit(",", 3)[0], *lines[2:]],
            "line 2 has 28 fields but the header has 31",
        ),
        (
            lambda lines: [*lines[:3], lines[3].replace(",0", ",x", 1), *lines[4:]],
            "malformed matrix, expected a gene name and 30",
        ),
        (lambda lines: [lines[0].replace("BEAD00001", "BEAD00000"), *lines[1:]], "1 duplicated column names"),
        (lambda lines: lines[:1], "the matrix is empty"),
        (lambda lines: [], "the matrix is empty"),
    ],
)
def test_malformed_dense_matrix(tmp_path, edit, match):
    beads, counts = make_puck()
    write_slideseq(tmp_path, beads, counts)
    file = tmp_path / SlideseqFile.DGE_FOR_R
    file.write_text("\n".join(edit(file.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=f"MappedDGEForR.csv: {match}"):
        si.io.slideseq(tmp_path)


def test_truncated_gzip(tmp_path):
    beads, counts = make_puck(n_genes=200, n_beads=200)
    write_slideseq(tmp_path, beads, counts, layout="dge")
    file = next(tmp_path.glob(f"*{SlideseqFile.DGE_SUFFIX}.gz"))
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"digital_expression.txt.gz: malformed matrix"):
        si.io.slideseq(tmp_path)


def test_truncated_h5ad(tmp_path):
    beads, counts = make_puck()
    write_slideseq(tmp_path, beads, counts, layout="h5ad")
    file = tmp_path / "puck.h5ad"
    file.write_bytes(file.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"puck.h5ad: not a readable h5ad file"):
        si.io.slideseq(tmp_path)


def test_barcode_mismatch(tmp_path):
    beads, counts = make_puck()
    write_slideseq(tmp_path, beads.iloc[3:], counts.iloc[:, :-2])  # 3 beads without location, 2 without counts
    with pytest.warns(UserWarning, match=r"3 barcodes of MappedDGEForR.csv are missing from .*BEAD00000.* and 2 "):
        sdata = si.io.slideseq(tmp_path)
    assert list(sdata["table"].obs_names) == list(counts.columns[3:-2])
    beads[SlideseqFile.BARCODE.value] = "X" + beads[SlideseqFile.BARCODE.value]
    write_slideseq(tmp_path, beads, counts)
    with pytest.raises(ValueError, match="No barcodes in common"):
        si.io.slideseq(tmp_path)


def test_repeated_gene_names_are_made_unique(tmp_path):
    beads, counts = make_puck()
    counts.index = ["Gene0", *counts.index[:-1]]
    write_slideseq(tmp_path, beads, counts)
    with pytest.warns(UserWarning, match="1 gene names repeat"):
        t = si.io.slideseq(tmp_path)["table"]
    assert t.var_names.is_unique


# --- real data ------------------------------------------------------------------------------------------------


def test_spacexr_vignette(slideseq_dir, tmp_path):
    folder = slideseq_dir / "Slideseq_cerebellum_spacexr_vignette_tiny"
    sdata = si.io.slideseq(folder)
    check_table(sdata, "slideseq", 100, 378)  # SOURCE.txt
    t = sdata["table"]
    dge = pd.read_csv(folder / SlideseqFile.DGE_FOR_R, index_col=0)
    np.testing.assert_array_equal(t.X.toarray(), dge[t.obs_names].T.to_numpy())
    np.testing.assert_allclose(t.obsm["spatial"][0], [3411.272727, 2254.628099])  # TTGGACGTTTCAAT
    assert_round_trip(sdata, tmp_path)


def test_slideseq_v2_bead_locations_with_h5ad(slideseq_dir):
    sdata = si.io.slideseq(slideseq_dir / "SlideseqV2_mouse_hippocampus_Puck_200115_08_subset_Vesalius")
    check_table(sdata, "slideseq", 1052, 23264)  # SOURCE.txt
    median = np.median(np.asarray(sdata["table"].X.sum(axis=1)).ravel())
    assert 460 <= median <= 461  # "median 460 UMI/bead" (SOURCE.txt)
