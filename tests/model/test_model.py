from __future__ import annotations

import numpy as np
import pytest

import sd_inspire as si
from sd_inspire.model import InspireModel
from sd_inspire.model._trainer import Trainer


def _tiny(seed=3, **kwargs):
    adata = si.datasets.simulate(
        2, n_spots=150, n_genes=100, n_cell_types=4, n_domains=3, output="anndata", random_state=seed, **kwargs
    )
    si.pp.preprocess(adata, n_top_genes=80)
    si.gr.spatial_neighbors(adata)
    return adata


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def trained(tiny):
    model = InspireModel(tiny, n_factors=4, n_latent=8, n_hidden=32)
    model.train(max_steps=30, batch_size=64, show_progress_bar=False)
    return model


def test_outputs_shapes_and_constraints(trained, tiny):
    z, beta, loadings = trained.get_latent(), trained.get_factors(), trained.get_loadings()
    assert z.shape == (300, 8)
    assert beta.shape == (300, 4)
    np.testing.assert_allclose(beta.sum(axis=1), 1.0, rtol=1e-5)
    assert loadings.shape == (80, 4)
    assert (loadings >= 0).all()
    np.testing.assert_allclose(loadings.sum(axis=0), 1.0, rtol=1e-4)
    assert trained.get_slice_effects().shape == (2, 80)
    assert set(trained.history) >= {"loss", "poisson", "reconstruction", "geometry", "prior", "adversarial"}
    assert set(trained.history) >= {"alignment"}  # default alignment="both": discriminator and anchors
    assert len(trained.history["loss"]) == 30
    assert np.isfinite(trained.history["loss"]).all()


def test_untrained_model_raises(tiny):
    model = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16)
    for query in (model.get_latent, model.get_factors, model.get_loadings):
        with pytest.raises(RuntimeError, match="not trained"):
            query()
    with pytest.raises(RuntimeError, match="not trained"):
        model.save("/nonexistent")


def test_identical_seeds_identical_results(tiny):
    runs = []
    for _ in range(2):
        m = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16, random_state=11)
        m.train(max_steps=15, batch_size=64, show_progress_bar=False)
        runs.append(m.get_latent())
    np.testing.assert_array_equal(runs[0], runs[1])
    other = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16, random_state=12)
    other.train(max_steps=15, batch_size=64, show_progress_bar=False)
    assert not np.allclose(runs[0], other.get_latent())


def test_no_global_torch_state_change(tiny):
    import torch

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    m = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16)
    m.train(max_steps=3, batch_size=64, show_progress_bar=False)
    assert torch.equal(torch.rand(3), expected)


def test_save_load_roundtrip(trained, tiny, tmp_path):
    trained.save(tmp_path / "m")
    loaded = InspireModel.load(tmp_path / "m", tiny)
    np.testing.assert_array_equal(loaded.get_latent(), trained.get_latent())
    np.testing.assert_array_equal(loaded.get_loadings(), trained.get_loadings())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "m")
    trained.save(tmp_path / "m", overwrite=True)
    other = _tiny(seed=4)
    other = other[:, other.var_names[::-1]].copy()  # same genes in another order is another gene space
    other.var["highly_variable"] = other.var["highly_variable"].to_numpy()
    with pytest.raises(ValueError, match="genes do not match"):
        InspireModel.load(tmp_path / "m", other)
    with pytest.raises(FileNotFoundError, match="holds no model"):
        InspireModel.load(tmp_path / "empty", tiny)


def test_model_files_missing_a_parameter_are_refused(tiny, tmp_path):
    """Metadata without a parameter is not read with some default: loading and resuming say the params differ."""
    import json

    model = InspireModel(tiny, n_factors=3, n_latent=4, n_hidden=16, features="lognorm")
    model.train(max_steps=5, batch_size=64, show_progress_bar=False)
    model.save(tmp_path / "m")
    meta_file = tmp_path / "m" / "model.json"
    meta = json.loads(meta_file.read_text())
    del meta["params"]["features"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="params do not match"):
        InspireModel.load(tmp_path / "m", tiny)

    kwargs = {"n_factors": 3, "n_latent": 4, "n_hidden": 16}
    train = {"max_steps": 10, "batch_size": 64, "show_progress_bar": False, "checkpoint_dir": tmp_path / "c"}
    InspireModel(tiny, **kwargs, features="lognorm").train(**train, checkpoint_every=5)
    meta_file = tmp_path / "c" / "model.json"
    meta = json.loads(meta_file.read_text())
    del meta["params"]["features"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="params do not match"):
        InspireModel(tiny, **kwargs, features="lognorm").train(**train)
    meta_file.write_text("[1, 2]")  # not a model's metadata at all
    with pytest.raises(ValueError, match="not the metadata of a saved model"):
        InspireModel(tiny, **kwargs, features="lognorm").train(**train)


def test_checkpoint_resume_matches_uninterrupted(tiny, tmp_path, monkeypatch):
    kwargs = {"n_factors": 3, "n_latent": 4, "n_hidden": 16, "random_state": 2}
    train = {"max_steps": 30, "batch_size": 64, "show_progress_bar": False}
    full = InspireModel(tiny, **kwargs)
    full.train(**train)

    original = Trainer.train_step

    def crash_after_20(self):
        if self.step == 23:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", crash_after_20)
    killed = InspireModel(tiny, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        killed.train(**train, checkpoint_dir=tmp_path, checkpoint_every=10)
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = InspireModel(tiny, **kwargs)
    resumed.train(**train, checkpoint_dir=tmp_path, checkpoint_every=10)
    np.testing.assert_allclose(resumed.get_latent(), full.get_latent(), rtol=1e-5, atol=1e-6)
    assert len(resumed.history["loss"]) == 30


def test_gat_encoder(tiny):
    m = InspireModel(tiny, encoder="gat", n_factors=3, n_latent=6, n_hidden=16)
    m.train(max_steps=10, batch_size=64, show_progress_bar=False)
    z = m.get_latent()
    assert z.shape == (300, 6)
    assert np.isfinite(z).all()


@pytest.mark.parametrize("n_factors", [1, 81])
def test_bad_n_factors(tiny, n_factors):
    with pytest.raises(ValueError, match=r"`n_factors` must be (between 2 and|at least 2, got 1)"):
        InspireModel(tiny, n_factors=n_factors)


def test_requires_preprocessing_and_graph():
    adata = si.datasets.simulate(2, n_spots=50, n_genes=60, output="anndata")
    with pytest.raises(KeyError, match="run `sd_inspire.pp.preprocess`"):
        InspireModel(adata)
    si.pp.preprocess(adata, n_top_genes=30)
    with pytest.raises(KeyError, match="spatial_neighbors"):
        InspireModel(adata)


def test_zero_spots_in_gene_space(tiny):
    adata = tiny.copy()
    hv = adata.var["highly_variable"].to_numpy()
    counts = adata.layers["counts"].tolil()
    counts[0, np.flatnonzero(hv)] = 0
    adata.layers["counts"] = counts.tocsr()
    with pytest.raises(ValueError, match="1 spots have no counts in the gene space"):
        InspireModel(adata, n_factors=3)


def test_large_data_pca_matches_scikit_learn():
    """The one-pass Gram-matrix PCA of the large-data path gives scikit-learn's axes, signs and variances."""
    from scipy import sparse
    from sklearn.decomposition import PCA

    from sd_inspire.model._features import library_and_saturated, sparse_pca

    rng = np.random.default_rng(0)
    x = sparse.random(3000, 40, density=0.2, format="csr", random_state=1, dtype=np.float32)
    x.data = np.log1p(rng.poisson(3.0, x.nnz) + 1.0).astype(np.float32)
    y, first_variance, _ = sparse_pca(x, 5, chunk_size=700)  # several chunks
    pca = PCA(5, svd_solver="arpack", random_state=0)
    expected = pca.fit_transform(x.toarray().astype(np.float64))
    np.testing.assert_allclose(first_variance, pca.explained_variance_[0], rtol=1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-3 * np.abs(expected).max())

    counts = sparse.csr_matrix(rng.poisson(2.0, (50, 30)).astype(np.float32))
    library = np.asarray(counts.sum(axis=1)).ravel()
    dense = counts.toarray()
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_sat = np.nansum(dense * np.log(dense / library[:, None]), axis=1)
    lib, sat, totals = library_and_saturated(counts, chunk_size=7)
    np.testing.assert_allclose(lib, library)
    np.testing.assert_allclose(sat, expected_sat, rtol=1e-5)
    np.testing.assert_allclose(totals, dense.sum(axis=0)[None])
    codes = np.arange(50) % 3
    _, _, per_slice = library_and_saturated(counts, chunk_size=7, codes=codes, n_slices=3)
    np.testing.assert_allclose(per_slice, np.vstack([dense[codes == k].sum(axis=0) for k in range(3)]))


def test_pearson_pca_matches_scanpy_residuals_and_scikit_learn():
    """Features from Pearson residuals: scanpy's residuals, standardised per slice, then scikit-learn's PCA."""
    import anndata as ad
    import scanpy as sc
    from scipy import sparse
    from sklearn.decomposition import PCA

    from sd_inspire.model._features import PEARSON_THETA, library_and_saturated, pearson_pca

    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1, 2], [120, 90, 150])
    depth = rng.lognormal(0.0, 0.6, codes.size)[:, None] * np.array([1.0, 3.0, 0.5])[codes][:, None]
    counts = rng.poisson(depth * rng.gamma(1.0, 2.0, 25)).astype(np.float32)
    counts[codes == 1, 3] = 0  # a gene without counts in one slice: residual 0 there
    counts = sparse.csr_matrix(counts)
    columns = np.array([0, 1, 2, 3, 5, 8, 13, 21, 22, 24])
    _, _, totals = library_and_saturated(counts, 50, codes, 3)
    y, first_variance, axes = pearson_pca(counts, totals, codes, columns, 4, chunk_size=37)  # several chunks

    residuals = np.zeros((codes.size, columns.size))
    for k in range(3):
        part = ad.AnnData(counts[codes == k][:, columns].toarray())
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 on the gene without counts
            sc.experimental.pp.normalize_pearson_residuals(part, theta=PEARSON_THETA)
        r = np.nan_to_num(part.X)
        sd = r.std(axis=0)
        residuals[codes == k] = np.divide(r - r.mean(axis=0), sd, out=np.zeros_like(r), where=sd > 1e-8)
    pca = PCA(4, svd_solver="full").fit(residuals)
    expected = residuals @ pca.components_.T
    signs = np.sign(
        expected[np.argmax(np.abs(y), axis=0), np.arange(4)] * y[np.argmax(np.abs(y), axis=0), np.arange(4)]
    )
    np.testing.assert_allclose(y, expected * signs, atol=1e-3 * np.abs(expected).max())
    # the axes map the standardised residuals to the components: the map that applies to new slices
    np.testing.assert_allclose(residuals @ axes, y, atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(
        first_variance, pca.explained_variance_[0] * (codes.size - 1) / (codes.size - 3), rtol=1e-5
    )
    for k in range(3):
        np.testing.assert_allclose(y[codes == k].mean(axis=0), 0.0, atol=1e-4)


def test_pearson_pca_one_pass_equals_two_passes_whatever_the_row_order(monkeypatch):
    """The per-slice Gram matrices (one pass) give the two-pass result, with slices contiguous or interleaved."""
    from scipy import sparse

    from sd_inspire.model import _features
    from sd_inspire.model._features import library_and_saturated, pearson_pca, residual_standardisation

    rng = np.random.default_rng(1)
    codes = np.repeat([0, 1, 2], [80, 60, 100])
    depth = rng.lognormal(0.0, 0.5, codes.size)[:, None] * np.array([1.0, 2.0, 0.7])[codes][:, None]
    dense = rng.poisson(depth * rng.gamma(1.0, 2.0, 15)).astype(np.float32)
    columns = np.array([0, 2, 3, 4, 7, 9, 10, 14])
    results = {}
    for order in ("contiguous", "interleaved"):
        rows = np.arange(codes.size) if order == "contiguous" else rng.permutation(codes.size)
        counts, c = sparse.csr_matrix(dense[rows]), codes[rows]
        _, _, totals = library_and_saturated(counts, 50, c, 3)
        one = pearson_pca(counts, totals, c, columns, 3, chunk_size=23)
        with monkeypatch.context() as m:
            m.setattr(_features, "SLICE_GRAM_BYTES", 0)  # too little memory for the slices' Gram matrices
            two = pearson_pca(counts, totals, c, columns, 3, chunk_size=23)
        for a, b in zip(one, two, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        back = np.empty_like(rows)
        back[rows] = np.arange(rows.size)
        results[order] = one[0][back]  # in the original row order
        # the query's standardisation (moments only) is the one the projections used
        args, _ = residual_standardisation(counts, totals, c, columns, 23, _features.PEARSON_THETA)
        np.testing.assert_allclose(
            _features.residual_projection(counts, c, args, one[2].astype(np.float64), 23), one[0], atol=1e-5
        )
    np.testing.assert_allclose(results["contiguous"], results["interleaved"], atol=1e-5)


def test_features_pearson_leave_out_depth_lognorm_keep_it():
    """Reductions of Pearson residuals carry less of the spot depth than those of log-normalised values."""
    from sklearn.linear_model import LinearRegression

    adata = _tiny(seed=5)
    log_depth = np.log(np.asarray(adata.layers["counts"].sum(axis=1)).ravel())
    r2 = {}
    for features in ("pearson", "lognorm"):
        model = InspireModel(adata, n_factors=3, n_latent=4, n_hidden=16, n_hops=0, features=features)
        assert model.params["features"] == features
        y = model.data.features
        r2[features] = LinearRegression().fit(y, log_depth).score(y, log_depth)
    assert r2["pearson"] < r2["lognorm"] - 0.2, r2
    with pytest.raises(ValueError, match=r"`features` must be one of \['pearson', 'lognorm'\], got 'pca'"):
        InspireModel(adata, n_factors=3, features="pca")


def test_multinomial_nll_equals_the_renormalised_rates():
    """The expanded count likelihood equals -sum x log q with q from `rates`, masks and slice effects included."""
    import torch

    from sd_inspire.model._module import InspireModule

    torch.manual_seed(0)
    module = InspireModule(30, 200, 3, n_factors=7)
    with torch.no_grad():
        module.slice_gene_effect.normal_(0, 0.3)
        module.loading_logits.normal_(0, 1)
    beta = torch.softmax(torch.randn(50, 7), -1)
    s = torch.randint(0, 3, (50,))
    mask = torch.ones(3, 200)
    mask[2, 150:] = 0  # slice 2 did not measure the last 50 genes
    counts = torch.poisson(torch.rand(50, 200) * 3) * mask[s]
    direct = -torch.xlogy(counts, module.rates(beta, s, mask[s])).sum(-1)
    fast = module.multinomial_nll(beta, counts, counts.sum(-1), s, mask)
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-3)
