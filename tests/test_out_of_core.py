"""The out-of-core path: tables whose matrices stay on disk, streamed by every stage."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from scipy import sparse

import sd_inspire as si
from sd_inspire._chunks import is_lazy, row_blocks
from sd_inspire.model import InspireModel
from sd_inspire.model._sampler import BufferedSampler
from sd_inspire.tl.metrics import ari


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A simulated store, 3 slices x 1,500 spots, and the same data in memory."""
    path = tmp_path_factory.mktemp("ooc") / "sim.zarr"
    kwargs = {"n_spots": 1500, "n_genes": 200, "random_state": 3}
    si.datasets.simulate(3, path=path, **kwargs)
    return path, si.datasets.simulate(3, **kwargs)


def _lazy(path, chunk_size=400):
    return si.io.read_zarr(path, out_of_core=True, chunk_size=chunk_size)


def test_read_zarr_keeps_matrices_on_disk(store):
    path, memory = store
    lazy = _lazy(path)
    table = lazy["table"]
    assert is_lazy(table.X)
    assert table.X.chunks[0][0] == 400
    assert lazy.path == path
    assert sorted(lazy.shapes) == sorted(memory.shapes)
    assert (table.X.compute() != memory["table"].X).nnz == 0
    assert table.obs.equals(memory["table"].obs)
    # small stores are read into memory unless asked otherwise
    assert not is_lazy(si.io.read_zarr(path)["table"].X)


def test_read_zarr_mixes_tables_on_disk_and_in_memory(store, tmp_path, monkeypatch):
    # a large table next to a small one (as tl.integrate leaves them: "table" and "inspire_factors", which
    # annotates several regions): only the large one stays on disk, both are valid SpatialData tables
    import sd_inspire.io._zarr as zarr_io

    source, memory = store
    path = tmp_path / "mixed.zarr"
    shutil.copytree(source, path)
    lazy = _lazy(path)
    si.tl.integrate(lazy, n_factors=4, max_steps=5, show_progress_bar=False)
    threshold = zarr_io._matrix_bytes(zarr.open_group(path / "tables" / "inspire_factors")) + 1
    monkeypatch.setattr(zarr_io, "OUT_OF_CORE_BYTES", threshold)
    back = si.io.read_zarr(path)
    assert is_lazy(back["table"].X)
    assert not is_lazy(back["inspire_factors"].X)
    regions = back["inspire_factors"].uns["spatialdata_attrs"]["region"]
    assert sorted(regions) == sorted(memory["table"].obs["region"].unique())
    np.testing.assert_allclose(back["inspire_factors"].X, lazy["table"].obsm["inspire_factors"], rtol=1e-6)


def test_read_zarr_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a zarr store"):
        si.io.read_zarr(tmp_path)
    with pytest.raises(ValueError, match="chunk_size"):
        si.io.read_zarr(tmp_path, chunk_size=0)


def test_simulate_to_path_matches_memory_and_refuses_overwrite(store, tmp_path):
    path, memory = store
    assert path.exists()
    assert not path.with_name(f".{path.name}.slices").exists()
    with pytest.raises(FileExistsError, match="already exists"):
        si.datasets.simulate(2, n_spots=50, path=path)
    with pytest.raises(ValueError, match="output='spatialdata'"):
        si.datasets.simulate(2, n_spots=50, output="anndata", path=tmp_path / "x.zarr")


@pytest.mark.parametrize("min_counts", [10, 400])
def test_preprocess_out_of_core_matches_memory(store, min_counts):
    path, memory = store
    lazy, mem = _lazy(path)["table"], memory["table"].copy()
    si.pp.preprocess(lazy, n_top_genes=100, min_counts=min_counts)
    si.pp.preprocess(mem, n_top_genes=100, min_counts=min_counts)
    assert is_lazy(lazy.X)
    assert is_lazy(lazy.layers["counts"])
    assert lazy.n_obs == mem.n_obs
    if min_counts == 400:
        assert lazy.n_obs < 4500  # QC removed spots, from the streamed totals
    np.testing.assert_array_equal(lazy.var["highly_variable"], mem.var["highly_variable"])
    np.testing.assert_array_equal(lazy.varm["highly_variable_rank"], mem.varm["highly_variable_rank"])
    np.testing.assert_allclose(lazy.obs["total_counts"], mem.obs["total_counts"])
    assert abs(lazy.X.compute() - mem.X).max() < 1e-5
    assert (lazy.layers["counts"].compute() != mem.layers["counts"]).nnz == 0


def test_row_blocks_cover_every_row_once(store):
    path, memory = store
    x = _lazy(path, chunk_size=333)["table"].X
    seen = [(a, b, blk.shape[0]) for a, b, blk in row_blocks(x, 1000)]
    assert seen[0][0] == 0
    assert seen[-1][1] == x.shape[0]
    assert all(b == a2 for (_, b, _), (a2, _, _) in zip(seen[:-1], seen[1:], strict=True))
    assert all(b - a == n and n >= 999 or b == x.shape[0] for a, b, n in seen)


def test_row_blocks_read_ahead_returns_the_blocks_and_leaves_no_thread(store):
    import threading

    path, memory = store
    x = _lazy(path, chunk_size=333)["table"].X
    for start, stop, block in row_blocks(x, 500):
        assert (block != memory["table"].X[start:stop]).nnz == 0
    blocks = row_blocks(x, 500)
    next(blocks)  # the next block is being read in the background
    blocks.close()  # a pass left early waits for that read and ends the thread
    assert not [t for t in threading.enumerate() if t.name.startswith("sd-inspire-read")]


def test_buffered_sampler_passes_and_resumes():
    rng = np.random.default_rng(0)
    counts = sparse.random(1000, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    import dask.array as da

    lazy = da.from_array(counts, chunks=(64, 30), asarray=False)
    slices = np.repeat([0, 1], [600, 400])
    sampler = BufferedSampler(slices, 25, rng, lazy, buffer_rows=256)
    drawn = []
    for _ in range(10):  # within one pass over slice 1's 400 rows
        idx, rows = sampler.next_batch()
        assert (rows != counts[idx]).nnz == 0  # the rows returned are those of the indices
        assert (slices[idx] == 0).sum() == 25
        assert (slices[idx] == 1).sum() == 25
        drawn.append(idx[slices[idx] == 1])
    drawn = np.concatenate(drawn)
    assert np.unique(drawn).size == drawn.size == 250  # no row twice within a pass
    assert len({int(i) // 64 for i in drawn}) >= 5  # from several blocks (chunks of 64 rows)
    state, rng_state = sampler.state(), dict(sampler.rng.bit_generator.state)
    expected = np.concatenate([sampler.next_batch()[0] for _ in range(12)])  # crosses buffer refills
    resumed = BufferedSampler(slices, 25, np.random.default_rng(99), lazy, buffer_rows=256)
    resumed.load_state(state)
    resumed.rng.bit_generator.state = rng_state  # the trainer restores the generator with the checkpoint
    np.testing.assert_array_equal(np.concatenate([resumed.next_batch()[0] for _ in range(12)]), expected)


def test_integrate_out_of_core(store, tmp_path):
    source, memory = store
    path, twin = tmp_path / "a.zarr", tmp_path / "b.zarr"  # integrate writes into the store: work on copies
    shutil.copytree(source, path)
    shutil.copytree(source, twin)
    lazy = _lazy(path)
    si.tl.integrate(lazy, n_factors=6, max_steps=150, show_progress_bar=False, random_state=1)
    table = lazy["table"]
    assert table.obsm["X_inspire"].shape == (table.n_obs, 32)
    np.testing.assert_allclose(table.obsm["inspire_factors"].sum(axis=1), 1, atol=1e-5)
    si.tl.domains(table, n_domains=5, random_state=0)
    assert ari(table.obs["domain"].to_numpy(), table.obs["inspire_domain"].to_numpy()) > 0.6
    # written into the store element by element; the counts on disk are untouched
    back = si.io.read_zarr(path)
    np.testing.assert_array_equal(back["table"].obsm["X_inspire"], table.obsm["X_inspire"])
    assert "inspire_factors" in back.tables
    assert "highly_variable" in back["table"].var
    assert (back["table"].X != memory["table"].X).nnz == 0
    # deterministic on the CPU, out of core too
    again = _lazy(twin)["table"]
    si.tl.integrate(again, n_factors=6, max_steps=150, show_progress_bar=False, random_state=1)
    np.testing.assert_array_equal(again.obsm["X_inspire"], table.obsm["X_inspire"])


def test_checkpoint_resume_out_of_core(store, tmp_path, monkeypatch):
    path, _ = store
    table = _lazy(path, chunk_size=200)["table"]
    si.pp.preprocess(table, n_top_genes=100)
    si.gr.spatial_neighbors(table)
    kwargs = {"n_factors": 5, "random_state": 0}
    full = InspireModel(table, **kwargs)
    full.train(max_steps=30, show_progress_bar=False)

    from sd_inspire.model import _trainer

    fit = _trainer.Trainer.train_step

    def dies_at_20(self):
        if self.step == 20:
            raise KeyboardInterrupt
        return fit(self)

    monkeypatch.setattr(_trainer.Trainer, "train_step", dies_at_20)
    with pytest.raises(KeyboardInterrupt):
        InspireModel(table, **kwargs).train(
            max_steps=30, show_progress_bar=False, checkpoint_dir=tmp_path, checkpoint_every=10
        )
    monkeypatch.setattr(_trainer.Trainer, "train_step", fit)
    resumed = InspireModel(table, **kwargs)
    resumed.train(max_steps=30, show_progress_bar=False, checkpoint_dir=tmp_path, checkpoint_every=10)
    np.testing.assert_allclose(resumed.get_latent(), full.get_latent(), rtol=1e-5, atol=1e-6)


def test_write_back_refuses_when_rows_were_removed(store, tmp_path):
    path, _ = store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    lazy = _lazy(copy)
    si.pp.preprocess(lazy, n_top_genes=100, min_counts=400)  # removes spots from the table in memory
    with pytest.raises(ValueError, match="rows in memory but"):
        si.tl.integrate(lazy, n_factors=5, max_steps=5, show_progress_bar=False)
    assert zarr.open_group(copy / "tables" / "table", mode="r")["obs"] is not None  # store still readable


def test_graph_and_propagation_are_not_quadratic():
    """200k spots: graph and 2-hop propagation under an address-space limit far below one dense N x N row block."""
    code = textwrap.dedent(
        """
        import resource, numpy as np
        import anndata as ad, pandas as pd
        import sd_inspire as si
        n = 200_000
        rng = np.random.default_rng(0)
        side = int(np.ceil(np.sqrt(n / 2)))
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[: n // 2] * 100.0
        adata = ad.AnnData(
            obs=pd.DataFrame({"slice": pd.Categorical(np.repeat(["a", "b"], n // 2))}, index=[f"s{i}" for i in range(n)]),
            obsm={"spatial": np.vstack([grid, grid]), "X_pca": rng.normal(size=(n, 50)).astype(np.float32)},
        )
        small = adata[:2000].copy()  # a dry run imports every module before the limit
        si.gr.spatial_neighbors(small)
        si.gr.propagate(small, use_rep="X_pca")
        with open("/proc/self/status") as fh:
            size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
        limit = size + 1_500_000_000  # 1.5 GB more; a dense 200k x 200k float32 matrix is 160 GB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        si.gr.spatial_neighbors(adata)
        si.gr.propagate(adata, use_rep="X_pca", n_hops=2)
        assert adata.obsm["X_propagated"].shape == (n, 50)
        print("edges", adata.obsp["spatial_connectivities"].nnz)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) >= 200_000 * 4


def test_propagate_reads_out_of_core_expression(store):
    path, memory = store
    lazy, mem = _lazy(path)["table"], memory["table"].copy()
    for table in (lazy, mem):
        si.pp.preprocess(table, n_top_genes=50)
        si.gr.spatial_neighbors(table)
        si.gr.propagate(table)
    np.testing.assert_allclose(lazy.obsm["X_propagated"], mem.obsm["X_propagated"], atol=1e-5)


def test_preprocess_and_setup_on_a_dask_cluster(store):
    """With a dask.distributed client active, the streamed passes run on its workers and give the same results."""
    distributed = pytest.importorskip("distributed")
    from sd_inspire.model._setup import prepare

    path, _ = store
    alone, on_cluster = _lazy(path)["table"], _lazy(path)["table"]
    si.pp.preprocess(alone, n_top_genes=80, min_counts=400)
    si.gr.spatial_neighbors(alone)
    setup = {"slice_key": "slice", "n_pcs": 10, "n_hops": 1, "connectivity_key": "spatial_connectivities", "seed": 0}
    expected = prepare(alone, **setup)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        from sd_inspire._chunks import dask_client

        assert dask_client() is client
        si.pp.preprocess(on_cluster, n_top_genes=80, min_counts=400)
        si.gr.spatial_neighbors(on_cluster)
        got = prepare(on_cluster, **setup)
    np.testing.assert_array_equal(on_cluster.var["highly_variable"], alone.var["highly_variable"])
    np.testing.assert_allclose(on_cluster.obs["total_counts"], alone.obs["total_counts"])
    np.testing.assert_allclose(got.library, expected.library)
    np.testing.assert_allclose(got.saturated, expected.saturated, rtol=1e-5)
    np.testing.assert_allclose(got.features, expected.features, rtol=1e-4, atol=1e-4)


def test_non_integer_out_of_core_is_transformed_as_a_whole():
    """Normalised input: one log decision for the whole matrix, even when only one chunk holds the large values."""
    import dask.array as da

    adata = si.datasets.simulate(2, n_spots=200, n_genes=80, output="anndata", random_state=0)
    x = adata.X.astype(np.float32) * 0.5  # non-integer
    x[:50] = x[:50] * 40  # the maximum lies in the first chunk only
    adata.X = x
    lazy = adata.copy()
    lazy.X = da.from_array(sparse.csr_matrix(x), chunks=(50, x.shape[1]), asarray=False)
    for table in (adata, lazy):
        with pytest.warns(UserWarning, match="non-integer"):
            si.pp.preprocess(table, n_top_genes=40)
    assert abs(lazy.X.compute() - adata.X).max() < 1e-6
    assert adata.X.max() < np.log1p(x.max()) + 1e-4  # log-transformed
