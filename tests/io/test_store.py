"""The one write path into zarr stores (``sd_inspire.io._store``): element-level atomic writes and recovery."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import spatialdata
from scipy import sparse

import sd_inspire as si
from sd_inspire.io import _store
from sd_inspire.io._store import STAGING, recover_store, write_elements

FAST = {"n_factors": 4, "n_latent": 8, "max_steps": 15, "batch_size": 64, "show_progress_bar": False}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.zarr"
    si.datasets.simulate(2, n_spots=120, n_genes=60, random_state=0, path=path)
    return path


def _consolidated(path) -> bool:
    return "consolidated_metadata" in json.loads((path / "zarr.json").read_text())


def test_write_elements_replaces_and_adds_tables(store):
    sdata = spatialdata.read_zarr(store)
    sdata["table"].obsm["mine"] = np.arange(sdata["table"].n_obs, dtype=float)[:, None]
    sdata.tables["extra"] = sdata["table"].copy()
    write_elements(sdata, ["table", "extra"])
    back = spatialdata.read_zarr(store)
    np.testing.assert_array_equal(back["table"].obsm["mine"][:, 0], np.arange(240))
    assert "mine" in back["extra"].obsm
    assert set(back.shapes) == set(sdata.shapes)
    assert _consolidated(store)
    assert not (store / STAGING).exists()


def test_write_elements_into_a_store_without_tables(tmp_path, store):
    sdata = spatialdata.read_zarr(store)
    bare = tmp_path / "bare.zarr"
    spatialdata.SpatialData(shapes=dict(sdata.shapes)).write(bare)
    backed = spatialdata.read_zarr(bare)
    backed.tables["table"] = sdata["table"]
    write_elements(backed, ["table"])  # the store gains its tables group
    assert spatialdata.read_zarr(bare)["table"].n_obs == 240


def test_out_of_core_table_keeps_its_matrix_files(store):
    lazy = si.io.read_zarr(store, out_of_core=True, chunk_size=50)
    chunks = sorted(p for p in (store / "tables" / "table" / "X").rglob("*") if p.is_file() and p.name != "zarr.json")
    inodes = [os.stat(p).st_ino for p in chunks]
    table = lazy["table"]
    table.obsm["mine"] = np.ones((table.n_obs, 2))
    table.layers["new"] = sparse.csr_matrix(np.eye(table.n_obs, table.n_vars, dtype=np.float32))
    write_elements(lazy, ["table"])
    # the very files of the matrix on disk, not a rewrite; the new layer written
    assert [os.stat(p).st_ino for p in chunks] == inodes
    back = spatialdata.read_zarr(store)
    assert back["table"].obsm["mine"].shape == (240, 2)
    assert back["table"].layers["new"].sum() == 60
    np.testing.assert_array_equal(back["table"].X.toarray(), table.X.compute().toarray())
    del table.layers["new"]
    write_elements(lazy, ["table"])
    assert "new" not in spatialdata.read_zarr(store)["table"].layers


def test_a_failure_between_swaps_leaves_each_element_old_or_new(store, monkeypatch):
    sdata = spatialdata.read_zarr(store)
    sdata.tables["extra"] = sdata["table"].copy()
    write_elements(sdata, ["table", "extra"])
    sdata["table"].obsm["mine"] = np.zeros((240, 1))
    sdata["extra"].obsm["mine"] = np.zeros((240, 1))
    swap = _store._swap_in
    calls = []

    def second_fails(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError("disk full")
        swap(*args)

    monkeypatch.setattr(_store, "_swap_in", second_fails)
    with pytest.raises(OSError, match="disk full"):
        write_elements(sdata, ["table", "extra"])
    back = spatialdata.read_zarr(store)
    assert "mine" in back["table"].obsm  # swapped
    assert "mine" not in back["extra"].obsm  # as it was
    assert _consolidated(store)
    assert not (store / STAGING).exists()


def test_a_failure_while_staging_leaves_the_store_untouched(store, monkeypatch):
    sdata = spatialdata.read_zarr(store)
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*"))
    sdata["table"].obsm["mine"] = np.zeros((240, 1))

    def fails(*args):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(_store, "_stage_element", fails)
    with pytest.raises(RuntimeError):
        write_elements(sdata, ["table"])
    assert sorted(str(p.relative_to(store)) for p in store.rglob("*")) == before


def test_fallback_without_exchange_gives_the_same_store(store, monkeypatch):
    monkeypatch.setattr(_store, "exchange_paths", lambda a, b: False)
    sdata = spatialdata.read_zarr(store)
    sdata["table"].obsm["mine"] = np.zeros((240, 1))
    write_elements(sdata, ["table"])
    assert "mine" in spatialdata.read_zarr(store)["table"].obsm
    assert not (store / STAGING).exists()


def test_recover_leaves_a_running_process_alone(store):
    alive = store / STAGING / f"{os.getppid()}-abcd1234"
    alive.mkdir(parents=True)
    recover_store(store)
    assert alive.is_dir()
    dead = store / STAGING / "999999999-abcd1234"  # no such process
    (dead / "new0").mkdir(parents=True)
    with pytest.warns(UserWarning, match="interrupted write"):
        recover_store(store)
    assert not dead.exists()
    assert alive.is_dir()


def test_integrate_refuses_to_drop_spots_of_a_store(store):
    sdata = spatialdata.read_zarr(store)
    x = sdata["table"].X.tolil()
    x[:5] = 0  # five empty spots: the default QC removes them
    sdata["table"].X = x.tocsr()
    write_elements(sdata, ["table"])
    backed = spatialdata.read_zarr(store)
    with pytest.raises(ValueError, match=r"would remove 5 of 240 spots.*copy=True"):
        si.tl.integrate(backed, **FAST)
    assert backed["table"].n_obs == 240  # nothing changed, in memory or on disk
    assert spatialdata.read_zarr(store)["table"].n_obs == 240
    result = si.tl.integrate(backed, copy=True, **FAST)
    assert result.n_obs == 235
    assert "X_inspire" not in spatialdata.read_zarr(store)["table"].obsm


def test_integrate_refuses_a_table_that_lost_rows(store):
    backed = spatialdata.read_zarr(store)
    si.pp.preprocess(backed)
    backed.tables["table"] = backed["table"][:200].copy()
    with pytest.raises(ValueError, match="200 rows in memory but 240"):
        si.tl.integrate(backed, **FAST)


def test_impute_writes_its_layer_into_the_store(tmp_path):
    path = tmp_path / "p.zarr"
    si.datasets.simulate(2, n_spots=120, n_genes=80, technology=["visium", "merfish"], panel_size=40, path=path)
    sdata = spatialdata.read_zarr(path)
    si.pp.preprocess(sdata, gene_space="union", n_top_genes=60)
    sdata.write(tmp_path / "q.zarr")
    backed = si.io.read_zarr(tmp_path / "q.zarr")
    si.tl.integrate(backed, **FAST)
    si.tl.impute(backed)
    back = spatialdata.read_zarr(tmp_path / "q.zarr")["table"]
    assert back.layers["inspire_imputed"].shape == back.shape
    assert back.var["inspire_imputed"].sum() > 0


def test_domains_label_transfer_and_differential_factors_write_into_the_store(tmp_path):
    """Like tl.integrate and tl.impute, tools that add columns to a store-backed table write them through."""
    path = tmp_path / "d.zarr"
    si.io.write_zarr(si.datasets.simulate(2, n_spots=150, n_genes=80, random_state=0), path)
    backed = si.io.read_zarr(path)
    si.tl.integrate(backed, **FAST)
    si.tl.domains(backed, n_domains=3, show_progress_bar=False)
    si.tl.transfer_labels(backed, backed, key="domain", key_added="domain_again")
    table = backed["table"]
    table.obs["sample"] = table.obs["slice"].astype(str) + np.where(np.arange(table.n_obs) % 2, "a", "b")
    si.tl.differential_factors(backed, condition_key="slice", sample_key="sample")
    back = spatialdata.read_zarr(path)["table"]
    pd.testing.assert_frame_equal(
        back.uns["inspire_differential"]["results"].reset_index(drop=True),
        backed["table"].uns["inspire_differential"]["results"],
        check_dtype=False,
    )
    assert back.obs["inspire_domain"].tolist() == backed["table"].obs["inspire_domain"].tolist()
    assert "inspire_domain_colors" in back.uns
    assert back.obs["domain_again"].tolist() == backed["table"].obs["domain_again"].tolist()
    assert back.n_obs == 300  # the rest of the table kept
    assert "counts" in back.layers
    # spots removed after reading: refused before any work, the store left whole
    backed_again = si.io.read_zarr(path)
    backed_again.tables["table"] = backed_again["table"][:200].copy()
    with pytest.raises(ValueError, match="rows"):
        si.tl.domains(backed_again, n_domains=3, show_progress_bar=False)
    assert spatialdata.read_zarr(path)["table"].n_obs == 300


# --- io.write_zarr: a new store, all at once --------------------------------------------------------------------------


def test_write_zarr_writes_replaces_and_refuses(tmp_path, recwarn):
    import spatialdata

    sdata = si.datasets.simulate(2, n_spots=40, n_genes=100, random_state=0)
    store = tmp_path / "a.zarr"
    si.io.write_zarr(sdata, store)
    assert sdata.path == store
    assert spatialdata.read_zarr(store)["table"].n_obs == 80
    assert not [w for w in recwarn if "zarr" in str(w.message)]  # zarr's notices about its defaults are not shown
    other = si.datasets.simulate(3, n_spots=20, n_genes=100, random_state=1)
    with pytest.raises(FileExistsError, match="a.zarr' exists; pass `overwrite=True`"):
        si.io.write_zarr(other, store)
    si.io.write_zarr(other, store, overwrite=True)
    assert spatialdata.read_zarr(store)["table"].n_obs == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]  # nothing left beside it
    plain = tmp_path / "notes"
    plain.mkdir()
    with pytest.raises(ValueError, match="not a zarr store"):
        si.io.write_zarr(other, plain, overwrite=True)
    backed = si.io.read_zarr(store)
    with pytest.raises(ValueError, match="is the store this SpatialData is read from"):
        si.io.write_zarr(backed, store, overwrite=True)


def test_write_zarr_cleans_what_a_killed_write_left(tmp_path):
    sdata = si.datasets.simulate(1, n_spots=30, n_genes=100, random_state=0)
    store = tmp_path / "b.zarr"
    dead = 2**22 + 12345  # no such process
    (tmp_path / f".b.zarr.partial-{dead}").mkdir()
    with pytest.warns(UserWarning, match="removed .*partial.*left by an interrupted run"):
        si.io.write_zarr(sdata, store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.zarr"]
