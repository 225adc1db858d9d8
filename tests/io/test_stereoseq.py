from __future__ import annotations

import gzip

import h5py
import numpy as np
import pandas as pd
import pytest
import shapely

import sd_inspire as si
from sd_inspire._constants import StereoseqFile
from sd_inspire.io._stereoseq import _binning, _gef, _gem

HEADER = "#FileFormat=GEMv0.1\n#SortedBy=None\n#BinSize=1\n#Stereo-seqChip=SS200000000TL_A1\n#OffsetX=0\n#OffsetY=0\n"
BORDER = 32  # vertices per cell in cellBin/cellBorder


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    """DNB-level counts: one row per GEM line, a few negative coordinates to check the floor binning."""
    rng = np.random.default_rng(0)
    n = 400
    genes = np.array([f"Gene{i}" for i in range(9)])
    return pd.DataFrame(
        {
            "geneID": genes[rng.integers(0, genes.size, n)],
            "x": rng.integers(-30, 230, n),
            "y": rng.integers(5, 190, n),
            "MIDCount": rng.integers(1, 6, n),
        }
    )


def expected_bins(df: pd.DataFrame, bin_size: int, gene: str = "geneID") -> pd.DataFrame:
    """Bins x genes sums, indexed like the reader's obs names."""
    binned = df.assign(bx=df["x"] // bin_size, by=df["y"] // bin_size)
    table = binned.groupby(["bx", "by", gene])["MIDCount"].sum().unstack(fill_value=0)
    table.index = [f"{bx}_{by}" for bx, by in table.index]
    return table


def as_frame(sdata) -> pd.DataFrame:
    t = sdata["table"]
    return pd.DataFrame(t.X.toarray(), index=t.obs_names, columns=t.var_names)


def write_gem(path, df: pd.DataFrame, header: str = HEADER, gz: bool = False):
    text = header + df.to_csv(sep="\t", index=False, lineterminator="\n")
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_square_gef(path, df: pd.DataFrame, *, gene_fields: str = "new"):
    """geneExp/bin1/{expression, gene, exon} as SAW writes it: expression rows grouped by gene."""
    df = df.sort_values("geneID", kind="stable")
    names, starts, counts = np.unique(df["geneID"].to_numpy(), return_index=True, return_counts=True)
    expression = np.zeros(len(df), dtype=[("x", "<i4"), ("y", "<i4"), ("count", "u1")])
    expression["x"], expression["y"], expression["count"] = df["x"], df["y"], df["MIDCount"]
    if gene_fields == "new":  # GEF version > 3: gene id and name
        gene = np.zeros(names.size, dtype=[("geneID", "S64"), ("geneName", "S64"), ("offset", "<u4"), ("count", "<u4")])
        gene["geneID"] = [f"ENSG{i:03d}".encode() for i in range(names.size)]
        gene["geneName"] = [n.encode() for n in names]
    else:  # GEF version <= 3: the gene name only, in a field called "gene"
        gene = np.zeros(names.size, dtype=[("gene", "S32"), ("offset", "<u4"), ("count", "<u4")])
        gene["gene"] = [n.encode() for n in names]
    gene["offset"], gene["count"] = starts, counts
    with h5py.File(path, "w") as f:
        f.attrs["version"] = np.array([4], dtype="<u4")
        f.attrs["resolution"] = np.array([500], dtype="<u4")
        f.attrs["offsetX"] = np.array([0], dtype="<i4")
        f.attrs["omics"] = np.bytes_("Transcriptomics")
        level = f.create_group("geneExp/bin1")
        level.create_dataset("expression", data=expression)
        level.create_dataset("gene", data=gene)
        level.create_dataset("exon", data=np.zeros(len(df), "u1"))
    return path


def write_cellbin_gef(path, counts: np.ndarray, centres: np.ndarray, borders: list[np.ndarray] | None, names, ids=None):
    """cellBin/{cell, gene, cellExp, cellBorder}: counts is cells x genes (dense, for the test); ids: GEF version > 3."""
    n_cells, n_genes = counts.shape
    rows, cols = np.nonzero(counts)
    cell = np.zeros(
        n_cells,
        dtype=[
            ("id", "<u4"),
            ("x", "<i4"),
            ("y", "<i4"),
            ("offset", "<u4"),
            ("geneCount", "<u2"),
            ("expCount", "<u2"),
            ("dnbCount", "<u2"),
            ("area", "<u2"),
            ("cellTypeID", "<u2"),
            ("clusterID", "<u2"),
        ],
    )
    cell["id"] = np.arange(n_cells) + 100
    cell["x"], cell["y"] = centres[:, 0], centres[:, 1]
    per_cell = np.bincount(rows, minlength=n_cells)
    cell["offset"] = np.concatenate(([0], np.cumsum(per_cell)[:-1]))
    cell["geneCount"] = per_cell
    cell["expCount"] = counts.sum(1)
    cell["area"] = 40
    cell_exp = np.zeros(rows.size, dtype=[("geneID", "<u4"), ("count", "<u2")])
    cell_exp["geneID"], cell_exp["count"] = cols, counts[rows, cols]
    id_field = [] if ids is None else [("geneID", "S64")]
    gene = np.zeros(n_genes, dtype=[*id_field, ("geneName", "S64"), ("offset", "<u4"), ("cellCount", "<u4")])
    gene["geneName"] = [n.encode() for n in names]
    if ids is not None:
        gene["geneID"] = [i.encode() for i in ids]
    with h5py.File(path, "w") as f:
        f.attrs["version"] = np.array([2], dtype="<u4")
        f.attrs["offsetX"] = np.array([7], dtype="<i4")
        group = f.create_group("cellBin")
        group.create_dataset("cell", data=cell)
        group.create_dataset("gene", data=gene)
        group.create_dataset("cellExp", data=cell_exp)
        if borders is not None:
            padded = np.full((n_cells, BORDER, 2), 32767, dtype="<i2")
            for i, b in enumerate(borders):
                padded[i, : len(b)] = b
            group.create_dataset("cellBorder", data=padded)
    return path


@pytest.mark.parametrize("bin_size", [1, 7, 50])
def test_gem_bins_match_numpy(tmp_path, lines, bin_size):
    sdata = si.io.stereoseq(write_gem(tmp_path / "A1.gem", lines), bin_size=bin_size)
    t = sdata["table"]
    want = expected_bins(lines, bin_size)
    assert t.shape == want.shape
    pd.testing.assert_frame_equal(as_frame(sdata).loc[want.index, want.columns], want.astype(np.float32))
    assert t.X.sum() == lines["MIDCount"].sum()
    assert t.X.format == "csr"
    # bin centres in DNB units: bin_index * bin_size + (bin_size - 1) / 2
    bx, by = np.array([name.split("_") for name in t.obs_names], dtype=int).T
    np.testing.assert_array_equal(t.obsm["spatial"], np.c_[bx, by] * bin_size + (bin_size - 1) / 2)
    assert t.obs["technology"].unique().tolist() == ["stereoseq"]
    assert t.uns["bin_size"] == bin_size
    assert t.uns["microns_per_pixel"] == 0.5
    assert t.uns["stereoseq"]["metadata"]["Stereo-seqChip"] == "SS200000000TL_A1"
    assert t.uns["stereoseq"]["gene_key"] == "geneID"
    # squares of side bin_size around the centres, in the dataset's coordinate system
    shapes = sdata["A1_shapes"]
    assert len(shapes) == t.n_obs
    np.testing.assert_allclose(shapes.geometry.area, bin_size**2)
    np.testing.assert_allclose(np.c_[shapes.centroid.x, shapes.centroid.y], t.obsm["spatial"])
    assert sdata.attrs["technology"] == "stereoseq"


def test_negative_coordinates_bin_by_floor(tmp_path, lines):
    sdata = si.io.stereoseq(write_gem(tmp_path / "a.gem", lines), bin_size=50)
    assert "-1_0" in sdata["table"].obs_names  # x in [-30, 0) -> bin -1


def test_gem_gz_and_square_gef_equal_gem(tmp_path, lines):
    ref = as_frame(si.io.stereoseq(write_gem(tmp_path / "a.gem", lines), bin_size=7))
    gz = si.io.stereoseq(write_gem(tmp_path / "b.gem.gz", lines, gz=True), bin_size=7)
    pd.testing.assert_frame_equal(as_frame(gz), ref)
    for variant in ("new", "old"):
        gef = si.io.stereoseq(
            write_square_gef(tmp_path / f"{variant}.tissue.gef", lines, gene_fields=variant),
            bin_size=7,
            gene_key="geneName",
        )
        got = as_frame(gef)
        pd.testing.assert_frame_equal(got.loc[ref.index, ref.columns], ref)
        t = gef["table"]
        assert t.uns["stereoseq"]["file_format"] == "square-bin GEF"
        assert t.uns["stereoseq"]["metadata"]["resolution"] == 500
        if variant == "new":
            assert t.var["geneID"].str.startswith("ENSG").all()


def test_square_gef_gene_ids(tmp_path, lines):
    sdata = si.io.stereoseq(write_square_gef(tmp_path / "a.gef", lines), bin_size=50)  # gene_key="geneID"
    t = sdata["table"]
    assert t.var_names.str.startswith("ENSG").all()
    assert set(t.var["geneName"]) == set(lines["geneID"])


def test_chunk_boundaries_do_not_change_the_result(tmp_path, lines, monkeypatch):
    gem = write_gem(tmp_path / "a.gem", lines)
    gef = write_square_gef(tmp_path / "a.gef", lines, gene_fields="old")
    one = {bin_size: as_frame(si.io.stereoseq(gem, bin_size=bin_size)) for bin_size in (1, 9)}
    monkeypatch.setattr(_gem, "_BLOCK_SIZE", 64)  # a few lines per batch
    monkeypatch.setattr(_binning, "_STAGE_ROWS", 5)  # reduce every few lines
    monkeypatch.setattr(_binning, "_MERGE_MIN", 3)  # merge pending sums all the time
    monkeypatch.setattr(_gef, "_GEF_CHUNK", 13)
    monkeypatch.setattr(_binning, "_BUCKET_SPAN_DNB", 4)  # many buckets
    for bin_size, ref in one.items():
        chunked = as_frame(si.io.stereoseq(gem, bin_size=bin_size))
        pd.testing.assert_frame_equal(chunked, ref)  # same rows, genes and order
        from_gef = as_frame(si.io.stereoseq(gef, bin_size=bin_size))
        pd.testing.assert_frame_equal(from_gef.loc[ref.index, ref.columns], ref)


def test_large_sums_widen_the_accumulator(tmp_path, monkeypatch):
    monkeypatch.setattr(_gem, "_BLOCK_SIZE", 64)
    monkeypatch.setattr(_binning, "_STAGE_ROWS", 1)
    monkeypatch.setattr(_binning, "_MERGE_MIN", 1)
    rows = [("G1", 0, 0, 65_536), ("G2", 0, 0, 1), ("G1", 1, 1, 65_536), ("G1", 2, 0, 3_221_225_472)]
    rows += [("G1", 3, 3, 3_221_225_472), ("G2", 60, 0, 5)]  # the sums pass 2**16, then 2**32
    df = pd.DataFrame(rows, columns=["geneID", "x", "y", "MIDCount"])
    t = si.io.stereoseq(write_gem(tmp_path / "a.gem", df), bin_size=50)["table"]
    assert t.to_df().loc["0_0"].tolist() == [6_442_582_016, 1]  # exact in float32
    assert t.to_df().loc["1_0"].tolist() == [0, 5]


def test_gem_v02_gene_key(tmp_path):
    df = pd.DataFrame(
        {
            "geneID": ["ENSG1", "ENSG2", "ENSG3", "ENSG1", "ENSG2"],
            "geneName": ["A", "B", "B", "A", "B"],  # two ids share the name "B"
            "x": [0, 1, 2, 60, 61],
            "y": [0, 1, 2, 0, 0],
            "MIDCount": [1, 2, 3, 4, 5],
        }
    )[["geneID", "x", "y", "MIDCount", "geneName"]]
    path = write_gem(tmp_path / "v02.gem", df, header="#FileFormat=GEMv0.2\n")
    by_id = si.io.stereoseq(path, bin_size=50)["table"]
    assert by_id.var_names.tolist() == ["ENSG1", "ENSG2", "ENSG3"]
    assert by_id.var["geneName"].tolist() == ["A", "B", "B"]
    by_name = si.io.stereoseq(path, bin_size=50, gene_key="geneName")["table"]
    assert by_name.var_names.tolist() == ["A", "B"]
    assert by_name.var["geneID"].tolist() == ["ENSG1", "ENSG2"]  # the first id seen for a name
    assert by_name.to_df().loc["0_0"].tolist() == [1, 5]
    assert by_name.to_df().loc["1_0"].tolist() == [4, 5]


@pytest.mark.parametrize("count", ["MIDCounts", "UMICount"])
def test_count_column_variants_and_exon(tmp_path, lines, count):
    df = lines.rename(columns={"MIDCount": count}).assign(ExonCount=1)
    t = si.io.stereoseq(write_gem(tmp_path / "a.gem", df, header=""), bin_size=50)["table"]
    want = expected_bins(lines, 50)
    assert t.shape == want.shape
    assert t.X.sum() == lines["MIDCount"].sum()
    assert t.uns["stereoseq"]["metadata"] == {}


@pytest.fixture
def cells():
    counts = np.array([[1, 0, 2], [0, 3, 0], [4, 5, 6], [0, 0, 7]], dtype=np.uint16)
    centres = np.array([[10, 10], [40, 12], [25, 60], [80, 80]])
    square = np.array([[-3, -3], [3, -3], [3, 3], [-3, 3]])
    triangle = np.array([[0, -4], [4, 4], [-4, 4]])
    borders = [square, triangle, square * 2, np.empty((0, 2))]  # the last cell has no outline
    return counts, centres, borders


def test_cellbin_gef(tmp_path, cells):
    counts, centres, borders = cells
    path = write_cellbin_gef(tmp_path / "C1.cellbin.gef", counts, centres, borders, ["A", "B", "C"])
    sdata = si.io.stereoseq(path, bin_size=1)  # bin_size is ignored for cells
    t = sdata["table"]
    np.testing.assert_array_equal(t.X.toarray(), counts)
    assert t.obs_names.tolist() == ["100", "101", "102", "103"]
    assert t.var_names.tolist() == ["A", "B", "C"]
    np.testing.assert_array_equal(t.obsm["spatial"], centres)
    assert t.obs["area"].tolist() == [40] * 4
    assert "bin_size" not in t.uns
    assert t.uns["stereoseq"]["metadata"]["offsetX"] == 7
    shapes = sdata["C1_shapes"]
    assert shapes.geometry.geom_type.tolist() == ["Polygon"] * 4
    assert shapes.geometry.iloc[0].equals(shapely.Polygon(centres[0] + borders[0]))
    assert shapes.geometry.iloc[1].equals(shapely.Polygon(centres[1] + borders[1]))
    assert shapes.geometry.iloc[3].area == 1  # no outline: a 1-DNB square
    circles = si.io.stereoseq(write_cellbin_gef(tmp_path / "n.cellbin.gef", counts, centres, None, "ABC"))
    assert "radius" in circles["n_shapes"].columns


def test_cellbin_gef_gene_key(tmp_path, cells):
    counts, centres, borders = cells
    path = write_cellbin_gef(tmp_path / "c.cellbin.gef", counts, centres, borders, "ABA", ids=["E1", "E2", "E3"])
    by_id = si.io.stereoseq(path)["table"]
    assert by_id.var_names.tolist() == ["E1", "E2", "E3"]
    assert by_id.var["geneName"].tolist() == ["A", "B", "A"]
    by_name = si.io.stereoseq(path, gene_key="geneName")["table"]
    assert by_name.var_names.tolist() == ["A", "B"]
    np.testing.assert_array_equal(by_name.X.toarray(), np.c_[counts[:, 0] + counts[:, 2], counts[:, 1]])
    assert by_name.X.has_canonical_format


def test_folder_with_one_file(tmp_path, lines):
    write_gem(tmp_path / "B2.tissue.gem.gz", lines, gz=True)
    (tmp_path / "notes.txt").write_text("")
    sdata = si.io.stereoseq(tmp_path, bin_size=50)
    assert "B2_shapes" in sdata.shapes


def test_missing_and_ambiguous_inputs(tmp_path, lines):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        si.io.stereoseq(tmp_path / "nope.gem")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"holds no Stereo-seq file: expected .*\*\.gem.*found \['notes.txt'\]"):
        si.io.stereoseq(tmp_path)
    write_gem(tmp_path / "a.gem", lines)
    write_square_gef(tmp_path / "a.gef", lines)
    with pytest.raises(ValueError, match=r"holds 2 Stereo-seq files, \['a.gef', 'a.gem'\]"):
        si.io.stereoseq(tmp_path)
    with pytest.raises(ValueError, match="unknown file type"):
        si.io.stereoseq(tmp_path / "notes.txt")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"bin_size": b}, "bin_size") for b in (0, -5, 2.5, True)] + [({"gene_key": "gene"}, "gene_key")],
)
def test_bad_arguments(tmp_path, lines, kwargs, match):
    path = write_gem(tmp_path / "a.gem", lines)
    with pytest.raises(ValueError, match=match):
        si.io.stereoseq(path, **kwargs)


GOOD = "geneID\tx\ty\tMIDCount\nG1\t1\t2\t3\nG2\t4\t5\t6\n"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (
            "gene\tx\ty\tMIDCount\nG1\t1\t2\t3\n",
            r"missing column\(s\) \['geneID'\]; found columns \['gene', 'x', 'y', 'MIDCount'\]",
        ),
        ("geneID\tx\ty\nG1\t1\t2\n", r"missing column\(s\) \['MIDCount or MIDCounts or UMICount'\]"),
        (GOOD + "G3\t7\t8\n", r"line 10: expected 4 tab-separated fields, found 3: 'G3\\t7\\t8'"),
        (GOOD + "G3\t7\t8\t1.5\n", r"line 10: MIDCount is not a non-negative integer"),
        (GOOD + "G3\t7\t8\t-2\n", r"line 10: MIDCount is not a non-negative integer"),
        (GOOD + "G3\tseven\t8\t1\n", r"line 10: x is not an integer"),
        (GOOD + "\t7\t8\t1\n", "a line has an empty gene identifier"),  # used to create a gene named ''
        (GOOD + " \t7\t8\t1\n", "a line has an empty gene identifier"),
        ("geneID\tx\ty\tMIDCount\n", "no data lines"),
        ("", "no data lines"),
    ],
)
def test_malformed_gem(tmp_path, body, match):
    path = tmp_path / "bad.gem"
    path.write_text(HEADER + body)
    with pytest.raises(ValueError, match=match) as info:
        si.io.stereoseq(path)
    assert str(path) in str(info.value)


def test_malformed_line_deep_in_a_chunked_gzip(tmp_path, monkeypatch):
    monkeypatch.setattr(_gem, "_BLOCK_SIZE", 64)
    rows = "".join(f"G{i % 5}\t{i}\t{i}\t1\n" for i in range(300))
    path = tmp_path / "bad.gem.gz"
    with gzip.open(path, "wt") as f:
        f.write(HEADER + "geneID\tx\ty\tMIDCount\n" + rows + "G1\t1\t1\t-1\n" + rows)
    with pytest.raises(ValueError, match="bad.gem.gz: line 308: MIDCount is not a non-negative integer"):
        si.io.stereoseq(path)


def test_malformed_gef(tmp_path, lines):
    path = write_square_gef(tmp_path / "a.gef", lines)
    with h5py.File(path, "a") as f:
        f.move("geneExp/bin1", "geneExp/bin50")
    with pytest.raises(ValueError, match=r"a.gef: GEF group '/geneExp' lacks \['bin1'\]; found \['bin50'\]"):
        si.io.stereoseq(path)
    with h5py.File(tmp_path / "b.gef", "w") as f:
        f.create_group("other")
    with pytest.raises(ValueError, match=r"not a Stereo-seq GEF.*found \['other'\]"):
        si.io.stereoseq(tmp_path / "b.gef")
    (tmp_path / "c.gef").write_text("text")
    with pytest.raises(ValueError, match="c.gef: not a readable HDF5"):
        si.io.stereoseq(tmp_path / "c.gef")


def test_enum_names_the_gem_columns():
    assert {StereoseqFile.GENE, StereoseqFile.X, StereoseqFile.Y, StereoseqFile.COUNT} == {
        "geneID",
        "x",
        "y",
        "MIDCount",
    }


@pytest.mark.parametrize("kind", ["bins", "cells"])
def test_zarr_round_trip(tmp_path, lines, cells, kind):
    from spatialdata import read_zarr

    if kind == "bins":
        sdata = si.io.stereoseq(write_gem(tmp_path / "a.gem", lines), bin_size=25)
    else:
        counts, centres, borders = cells
        sdata = si.io.stereoseq(write_cellbin_gef(tmp_path / "a.cellbin.gef", counts, centres, borders, "ABC"))
    sdata.write(tmp_path / "x.zarr")
    back = read_zarr(tmp_path / "x.zarr")
    t, u = sdata["table"], back["table"]
    assert (t.X != u.X).nnz == 0
    assert u.X.dtype == t.X.dtype
    pd.testing.assert_frame_equal(u.obs, t.obs)
    pd.testing.assert_frame_equal(u.var, t.var)
    np.testing.assert_array_equal(u.obsm["spatial"], t.obsm["spatial"])
    assert u.uns["stereoseq"] == t.uns["stereoseq"]
    assert u.uns["microns_per_pixel"] == t.uns["microns_per_pixel"]
    assert back.attrs["technology"] == "stereoseq"
    assert back["a_shapes"].geometry.equals(sdata["a_shapes"].geometry)


def test_large_gem_shows_progress(tmp_path, monkeypatch, capsys):
    gem = tmp_path / "s.gem"
    gem.write_text("geneID\tx\ty\tMIDCount\nA\t1\t2\t3\nB\t60\t2\t1\n")
    monkeypatch.setattr(_gem, "_PROGRESS_BYTES", 0)  # as if the file were large
    si.io.stereoseq(gem, bin_size=50)
    assert "Reading s.gem" in capsys.readouterr().err
    si.io.stereoseq(gem, bin_size=50, show_progress_bar=False)
    assert "Reading" not in capsys.readouterr().err
    monkeypatch.setattr(_gem, "_PROGRESS_BYTES", 10**9)  # a small file: no bar
    si.io.stereoseq(gem, bin_size=50)
    assert "Reading" not in capsys.readouterr().err
