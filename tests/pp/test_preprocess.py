from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import sd_inspire as si


def test_preprocess_writes_documented_keys(sim_adata):
    raw = sim_adata.X.copy()
    si.pp.preprocess(sim_adata, n_top_genes=50)
    a = sim_adata
    assert (a.layers["counts"] != raw).nnz == 0  # raw counts kept untouched
    for key in ("total_counts", "n_genes_by_counts", "pct_counts_mt"):
        assert key in a.obs
    np.testing.assert_allclose(a.obs["total_counts"], raw.sum(axis=1).A1)
    assert a.var["highly_variable"].sum() == 50
    ranks = a.var.loc[a.var["highly_variable"], "highly_variable_rank"]
    assert sorted(ranks.astype(int)) == list(range(50))
    assert a.varm["highly_variable_rank"].shape == (a.n_vars, 2)
    # X = log1p(counts / total * 1e4)
    expected = np.log1p(raw[:5].toarray() / raw[:5].sum(axis=1).A * 1e4)
    np.testing.assert_allclose(a.X[:5].toarray(), expected, rtol=1e-5)
    assert a.uns["preprocess"]["counts_are_integer"] is True
    assert a.uns["preprocess"]["gene_space"] == "shared"


def test_marker_genes_are_highly_variable(sim_adata):
    si.pp.preprocess(sim_adata, n_top_genes=60)
    markers = [g for g in sim_adata.var_names if "_m" in g]
    hv = sim_adata.var.loc[markers, "highly_variable"]
    assert hv.mean() > 0.8


def test_shared_vs_union_gene_space(sim_sdata):
    t = sim_sdata["table"]
    panel = t.varm["measured"]["slice2"].to_numpy()
    shared = si.pp.preprocess(sim_sdata, n_top_genes=100, gene_space="shared", copy=True)
    union = si.pp.preprocess(sim_sdata, n_top_genes=100, gene_space="union", copy=True)
    hv_shared = shared.var["highly_variable"].to_numpy()
    assert hv_shared.sum() == min(100, panel.sum())
    assert panel[hv_shared].all()  # shared: only genes every slice measured
    assert union.var["highly_variable"].sum() == 100
    assert "layers" not in repr(t) or "counts" not in t.layers  # copy=True left the input alone


def test_union_without_panel_slices_includes_unmeasured_genes():
    sd = si.datasets.simulate(2, n_spots=200, n_genes=300, technology=["visium", "merfish"], panel_size=80)
    t = si.pp.preprocess(sd, n_top_genes=150, gene_space="union", copy=True)
    panel = t.varm["measured"]["slice1"].to_numpy()
    hv = t.var["highly_variable"].to_numpy()
    assert (hv & ~panel).any()
    assert (hv & panel).any()


def test_qc_filters_spots_and_mito():
    rng = np.random.default_rng(0)
    x = rng.poisson(5, (40, 10)).astype(np.float32)
    x[:, 0] = 0  # no mitochondrial counts ...
    x[0] = 0  # ... an empty spot
    x[1, :] = 0
    x[1, 0] = 50  # ... and one with only mitochondrial counts
    genes = ["MT-CO1"] + [f"g{i}" for i in range(9)]
    a = AnnData(sparse.csr_matrix(x), var=pd.DataFrame(index=genes))
    a.obs["slice"] = "s"
    si.pp.preprocess(a, n_top_genes=5, max_pct_mito=20, min_counts=5)
    assert a.n_obs == 38
    assert "0" not in a.obs_names
    assert "1" not in a.obs_names
    assert not a.var.loc["MT-CO1", "highly_variable"]
    assert a.var.loc["MT-CO1", "mt"]
    assert a.uns["preprocess"]["spots_removed"] == {"s": 2}


def test_single_slice_without_slice_key(sim_adata):
    del sim_adata.obs["slice"]
    with pytest.raises(KeyError, match="No column 'slice'"):
        si.pp.preprocess(sim_adata)
    si.pp.preprocess(sim_adata, slice_key=None, n_top_genes=20)
    assert sim_adata.var["highly_variable"].sum() == 20


def test_spatialdata_input_in_place(sim_sdata):
    assert si.pp.preprocess(sim_sdata, n_top_genes=40) is None
    assert "counts" in sim_sdata["table"].layers


def test_non_integer_input_warns_and_is_not_counted(sim_adata):
    sim_adata.X = sim_adata.X.multiply(1.5).tocsr().astype(np.float32)
    with pytest.warns(UserWarning, match="non-integer values"):
        si.pp.preprocess(sim_adata, n_top_genes=30)
    assert "counts" not in sim_adata.layers
    assert sim_adata.uns["preprocess"]["counts_are_integer"] is False
    assert sim_adata.var["highly_variable"].sum() == 30
    assert sim_adata.X.max() < 50  # log scale


def test_non_integer_input_keeps_the_thread_count_of_torch():
    # scanpy's "seurat" dispersion starts numba's OpenMP pool, which set the OpenMP threads of the process (torch's
    # too) to NUMBA_NUM_THREADS: a model trained after preprocess summed floats over another number of threads than
    # the user set, so its result depended on what ran earlier in the process. A fresh process: the pool starts once.
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np, torch
        import sd_inspire as si
        torch.set_num_threads(1)
        torch.get_num_threads()  # torch applies its count to a thread on first use only: later changes stick
        a = si.datasets.simulate(2, n_spots=100, n_genes=60, output="anndata", random_state=1)
        a.X = a.X.multiply(1.5).tocsr().astype(np.float32)
        warnings.simplefilter("ignore")
        si.pp.preprocess(a, n_top_genes=20)
        print(torch.get_num_threads())
        """
    )
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "1"


def test_negative_counts(sim_adata):
    sim_adata.X = sim_adata.X.copy()
    sim_adata.X.data[3] = -1
    with pytest.raises(ValueError, match=r"`adata.X` has 1 negative values"):
        si.pp.preprocess(sim_adata)
    sim_adata.layers["counts"] = sim_adata.X.copy()
    with pytest.raises(ValueError, match=r"layers\['counts'\]` has 1 negative"):
        si.pp.preprocess(sim_adata)


def test_slice_empty_after_qc(sim_adata):
    rows = (sim_adata.obs["slice"] == "slice1").to_numpy()
    x = sim_adata.X.toarray()
    x[rows] = 0
    x[rows, 0] = 1
    sim_adata.X = sparse.csr_matrix(x)
    with pytest.raises(ValueError, match="Slice 'slice1' has no spots left after QC"):
        si.pp.preprocess(sim_adata)


def test_no_shared_genes():
    rng = np.random.default_rng(0)

    def part(genes):
        a = AnnData(sparse.csr_matrix(rng.poisson(3, (30, 3)).astype(np.float32)), var=pd.DataFrame(index=genes))
        a.obsm["spatial"] = rng.uniform(0, 10, (30, 2))
        return a

    sd = si.pp.concat({"a": part(["A", "B", "C"]), "b": part(["D", "E", "F"])})
    with pytest.raises(ValueError, match=r"No gene is measured in every slice.*'a': 3, 'b': 3"):
        si.pp.preprocess(sd)
    # allowed with the union, but not silently: the slices share no features to align on
    with pytest.warns(UserWarning, match=r"0 gene\(s\) are measured in every slice.*'a': 3, 'b': 3"):
        si.pp.preprocess(sd, gene_space="union", n_top_genes=4, min_spots=1)
    assert sd["table"].var["highly_variable"].sum() == 4


@pytest.mark.filterwarnings("ignore:.*names are not unique")
def test_duplicated_obs_names(sim_adata):
    sim_adata.obs_names = ["same"] * 10 + list(sim_adata.obs_names[10:])
    with pytest.raises(ValueError, match="'same'"):
        si.pp.preprocess(sim_adata)


def test_subset(sim_adata):
    si.pp.preprocess(sim_adata, n_top_genes=25, subset=True)
    assert sim_adata.n_vars == 25
    assert sim_adata.layers["counts"].shape[1] == 25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_top_genes": 2.5}, "`n_top_genes` must be an integer, got 2.5"),
        ({"n_top_genes": True}, "`n_top_genes` must be an integer, got True"),
        ({"n_top_genes": 0}, "`n_top_genes` must be at least 1"),
        ({"min_counts": -1}, "`min_counts` must be at least 0"),
        ({"min_counts": "x"}, "`min_counts` must be a finite number"),
        ({"min_genes": 2.5}, "`min_genes` must be an integer"),
        ({"min_spots": float("nan")}, "`min_spots` must be an integer"),
        ({"max_pct_mito": float("inf")}, "`max_pct_mito` must be a finite number"),
        ({"target_sum": 0}, "`target_sum` must be positive"),
        ({"target_sum": float("nan")}, "`target_sum` must be a finite number"),
    ],
)
def test_bad_arguments_are_refused_naming_them(sim_adata, kwargs, match):
    # each was accepted (NaN target_sum gave NaN expression) or failed deep inside numpy naming nothing
    with pytest.raises(ValueError, match=match):
        si.pp.preprocess(sim_adata, **kwargs)
    assert "counts" not in sim_adata.layers  # refused before any work
