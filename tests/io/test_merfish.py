from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from tests.conftest import SHARED_DATA
from tests.io.test_visium import assert_round_trip, check_table

import sd_inspire as si
from sd_inspire._constants import MerscopeFile

if TYPE_CHECKING:
    from pathlib import Path

MERFISH = SHARED_DATA / "merfish"


@pytest.fixture(scope="session")
def merfish_dir() -> Path:
    if not MERFISH.is_dir():
        pytest.skip(f"real MERFISH data not found at {MERFISH} (../shared/data is absent)")
    return MERFISH


def make_region(n_cells: int = 25, n_genes: int = 6, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts (cells x genes + 2 blanks, ids as index) and metadata (ids as index)."""
    rng = np.random.default_rng(seed)
    ids = [str(110883424764611924400221639916314253469 + 7 * i) for i in range(n_cells)]  # vendor ids exceed int64
    columns = [f"GENE{j}" for j in range(n_genes)] + [f"{MerscopeFile.BLANK_PREFIX}-{k}" for k in (3, 17)]
    counts = pd.DataFrame(rng.poisson(3.0, (n_cells, len(columns))), index=ids, columns=columns)
    metadata = pd.DataFrame(
        {
            MerscopeFile.FOV.value: rng.integers(0, 4, n_cells),
            MerscopeFile.VOLUME.value: rng.uniform(500, 1500, n_cells),
            MerscopeFile.X.value: rng.uniform(0, 500, n_cells),
            MerscopeFile.Y.value: rng.uniform(0, 500, n_cells),
        },
        index=ids,
    )
    return counts, metadata


def write_merscope(
    folder: Path, counts: pd.DataFrame, metadata: pd.DataFrame, *, prefix: str = "", id_name: str = ""
) -> None:
    """cell_by_gene.csv (first column "cell") and cell_metadata.csv (first column unnamed, or ``id_name``)."""
    folder.mkdir(parents=True, exist_ok=True)
    counts.to_csv(folder / f"{prefix}{MerscopeFile.CELL_BY_GENE}", index_label=MerscopeFile.CELL_ID.value)
    metadata.to_csv(folder / f"{prefix}{MerscopeFile.CELL_METADATA}", index_label=id_name)


def write_boundaries(folder: Path, metadata: pd.DataFrame, *, skip: int = 0, prefix: str = "") -> None:
    """cell_boundaries.parquet: a square per cell on 3 z-planes (larger on the upper planes), GeoParquet."""
    import geopandas as gpd
    import shapely

    rows = []
    for z in (2, 0, 1):
        half = 3.0 + z
        x, y = metadata[MerscopeFile.X.value].to_numpy(), metadata[MerscopeFile.Y.value].to_numpy()
        boxes = shapely.box(x - half, y - half, x + half, y + half)
        frame = pd.DataFrame(
            {MerscopeFile.METADATA_CELL_ID.value: metadata.index.astype(str), MerscopeFile.Z_INDEX.value: z}
        )
        frame["geometry"] = [shapely.MultiPolygon([b]) for b in boxes]
        rows.append(frame.iloc[skip:])
    gdf = gpd.GeoDataFrame(pd.concat(rows, ignore_index=True), geometry="geometry")
    gdf.rename_geometry(MerscopeFile.GEOMETRY.value).to_parquet(folder / f"{prefix}{MerscopeFile.BOUNDARIES}")


def test_read_region(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path / "region_0", counts, metadata.iloc[::-1])  # rows in another order
    sdata = si.io.merfish(tmp_path / "region_0")
    check_table(sdata, "merfish", 25, 6)
    t = sdata["table"]
    assert list(t.obs_names) == list(counts.index)  # ids kept exact, as strings
    assert list(t.var_names) == [f"GENE{j}" for j in range(6)]
    np.testing.assert_array_equal(t.X.toarray(), counts.iloc[:, :6].to_numpy())
    blanks = t.obsm["blank_counts"]
    assert list(blanks.columns) == ["Blank-3", "Blank-17"]
    np.testing.assert_array_equal(blanks.to_numpy(), counts.iloc[:, 6:].to_numpy())
    for column in ("fov", "volume", "center_x", "center_y"):
        np.testing.assert_allclose(t.obs[column].to_numpy(), metadata[column].to_numpy())
    np.testing.assert_allclose(t.obsm["spatial"], metadata[["center_x", "center_y"]].to_numpy())
    radius = sdata.shapes["region_0_shapes"]["radius"].to_numpy()
    np.testing.assert_allclose(radius, np.cbrt(6 * metadata["volume"].to_numpy() / np.pi) / 2)  # sphere of the volume
    assert_round_trip(sdata, tmp_path)


def test_prefix_id_column_and_fixed_diameter(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata, prefix="run1_", id_name=MerscopeFile.METADATA_CELL_ID)
    sdata = si.io.merfish(tmp_path, dataset_id="r", cell_diameter=12)
    assert sdata["table"].n_obs == 25
    np.testing.assert_allclose(sdata.shapes["r_shapes"]["radius"], 6)
    assert si.io.merfish(tmp_path, counts_file=f"run1_{MerscopeFile.CELL_BY_GENE}")["table"].n_obs == 25


def test_boundaries(tmp_path):
    import shapely

    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata)
    write_boundaries(tmp_path, metadata)
    sdata = si.io.merfish(tmp_path, dataset_id="r")
    shapes = sdata.shapes["r_shapes"]
    assert len(shapes) == 25
    assert shapes.geom_type.isin(["Polygon", "MultiPolygon"]).all()
    np.testing.assert_allclose(shapes.area, 36)  # the lowest z-plane: squares of side 6
    centroids = shapely.get_coordinates(shapes.centroid)
    np.testing.assert_allclose(centroids, sdata["table"].obsm["spatial"])  # polygons follow the table's rows
    assert_round_trip(sdata, tmp_path)
    no_polygons = si.io.merfish(tmp_path, dataset_id="r", boundaries=False)
    assert "radius" in no_polygons.shapes["r_shapes"]


def test_cells_without_boundary_are_circles(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata)
    write_boundaries(tmp_path, metadata, skip=2)
    with pytest.warns(UserWarning, match="2 of 25 cells have no boundary"):
        sdata = si.io.merfish(tmp_path, dataset_id="r")
    assert len(sdata.shapes["r_shapes"]) == 25


# --- bad input ------------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata, prefix="small_")
    (tmp_path / f"small_{MerscopeFile.CELL_METADATA}").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['\*cell_metadata.csv'\]; found \['small_cell_by_gene.csv'"):
        si.io.merfish(tmp_path)
    (tmp_path / f"small_{MerscopeFile.CELL_BY_GENE}").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a MERSCOPE folder: missing \['\*cell_by_gene.csv'"):
        si.io.merfish(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        si.io.merfish(tmp_path / "nope")


def test_several_regions_need_a_choice(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata, prefix="a_")
    write_merscope(tmp_path, counts.iloc[:5], metadata, prefix="b_")
    with pytest.raises(ValueError, match="several count files"):
        si.io.merfish(tmp_path)
    with pytest.warns(UserWarning, match="20 cell ids of b_cell_metadata.csv are missing from b_cell_by_gene.csv"):
        assert si.io.merfish(tmp_path, counts_file=f"b_{MerscopeFile.CELL_BY_GENE}")["table"].n_obs == 5


def test_cell_mismatch(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts.iloc[4:], metadata.iloc[:-3])
    with pytest.warns(UserWarning, match=r"3 cell ids of cell_by_gene.csv are missing .* and 4 cell ids of cell_meta"):
        sdata = si.io.merfish(tmp_path)
    assert list(sdata["table"].obs_names) == list(counts.index[4:-3])
    metadata.index = "9" + metadata.index
    write_merscope(tmp_path, counts, metadata)
    with pytest.raises(ValueError, match="No cell ids in common"):
        si.io.merfish(tmp_path)


@pytest.mark.parametrize(
    ("file", "edit", "match"),
    [
        (MerscopeFile.CELL_BY_GENE, lambda lines: [*lines, lines[4]], "1 duplicated ids"),
        (MerscopeFile.CELL_METADATA, lambda lines: [*lines, lines[4]], "1 duplicated ids"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: [*lines[:6], lines[6] + ",1", *lines[7:]], "malformed csv"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: [*lines[:6], lines[6].rsplit(",", 1)[0], *lines[7:]], "1 rows with"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: [lines[0], lines[1] + ",2", *lines[2:]], "line 2 has 10 fields"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: [lines[0], lines[1].replace(",", ",x", 1)], "malformed csv"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: lines[:1], "no cells or no genes"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: [line.split(",")[0] for line in lines], "no cells or no genes"),
        (MerscopeFile.CELL_BY_GENE, lambda lines: [], "the file is empty"),
        (
            MerscopeFile.CELL_METADATA,
            lambda lines: [",".join(line.split(",")[:-1]) for line in lines],
            r"missing columns \['center_y'\]",
        ),
        (MerscopeFile.CELL_METADATA, lambda lines: [lines[0], lines[1] + "x", *lines[2:]], "1 cells with missing or"),
    ],
)
def test_malformed_csv(tmp_path, file, edit, match):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata)
    path = tmp_path / file
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match=f"{file}: {match}"):
        si.io.merfish(tmp_path)
    assert sorted(tmp_path.iterdir()) == before  # nothing written


def test_only_blanks(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts.iloc[:, 6:], metadata)
    with pytest.raises(ValueError, match="only blank codewords"):
        si.io.merfish(tmp_path)


def test_malformed_boundaries(tmp_path):
    counts, metadata = make_region()
    write_merscope(tmp_path, counts, metadata)
    write_boundaries(tmp_path, metadata)
    file = tmp_path / MerscopeFile.BOUNDARIES
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ValueError, match="cell_boundaries.parquet: not a readable parquet file"):
        si.io.merfish(tmp_path)
    pd.DataFrame({"cell": metadata.index}).to_parquet(file)
    with pytest.raises(ValueError, match=r"cell_boundaries.parquet: expected columns \['EntityID', 'Geometry'\]"):
        si.io.merfish(tmp_path)


# --- real data ------------------------------------------------------------------------------------------------


def test_merscope_ffpe_small(merfish_dir, tmp_path):
    folder = merfish_dir / "merscope_ffpe_small"
    sdata = si.io.merfish(folder)
    check_table(sdata, "merfish", 450, 18)  # SOURCE.txt: 18 genes + Blank.19, Blank.27
    t = sdata["table"]
    assert list(t.obsm["blank_counts"].columns) == ["Blank.19", "Blank.27"]
    counts = pd.read_csv(folder / f"small_{MerscopeFile.CELL_BY_GENE}", index_col=0)
    metadata = pd.read_csv(folder / f"small_{MerscopeFile.CELL_METADATA}", index_col=0)
    counts.index, metadata.index = counts.index.astype(str), metadata.index.astype(str)
    assert not counts.index.equals(metadata.index)  # rows in another order in the two files
    np.testing.assert_array_equal(t.X.toarray(), counts.loc[t.obs_names, t.var_names].to_numpy())
    np.testing.assert_allclose(t.obsm["spatial"], metadata.loc[t.obs_names, ["center_x", "center_y"]].to_numpy())
    np.testing.assert_array_equal(t.obs["fov"].to_numpy(), metadata.loc[t.obs_names, "fov"].to_numpy())
    assert_round_trip(sdata, tmp_path)
