"""The alignment of slices: mutual-nearest-neighbour anchors, the within-slice geometry term, normalised input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sd_inspire as si
from sd_inspire.model._anchors import anchor_subsample, mutual_neighbours
from sd_inspire.model._module import _geometry


def _blobs(centres: np.ndarray, n: int, rng: np.random.Generator, shift: np.ndarray) -> np.ndarray:
    return np.vstack([c + shift + 0.05 * rng.standard_normal((n, centres.shape[1])) for c in centres])


def test_anchors_pair_matching_groups_and_skip_a_group_one_slice_lacks():
    """Slice 0 holds groups A, B, C; slice 1 only B and C (shifted): no anchor touches A, every anchor matches."""
    rng = np.random.default_rng(0)
    centres = np.eye(6)[:3] * 3 + 1.0
    z0 = _blobs(centres, 40, rng, np.zeros(6))
    z1 = _blobs(centres[1:], 40, rng, np.full(6, 0.3))
    z = np.vstack([z0, z1])
    slices = np.repeat([0, 1], [z0.shape[0], z1.shape[0]])
    group = np.concatenate([np.repeat([0, 1, 2], 40), np.repeat([1, 2], 40)])
    a, b = mutual_neighbours(z, slices, k=10)
    assert a.size > 100
    assert (slices[a] == 0).all()
    assert (slices[b] == 1).all()
    assert (group[a] == group[b]).all()
    assert not (group[a] == 0).any()


def test_anchors_between_every_pair_of_slices():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((90, 4))
    slices = np.repeat([0, 1, 2], 30)
    a, b = mutual_neighbours(z, slices, k=5)
    pairs = {(int(slices[i]), int(slices[j])) for i, j in zip(a, b, strict=True)}
    assert pairs == {(0, 1), (0, 2), (1, 2)}
    assert mutual_neighbours(z, np.zeros(90, dtype=int), k=5)[0].size == 0  # one slice: no anchors


def test_anchor_subsample_bounds_each_slice():
    slices = np.repeat([0, 1], [10, 50])
    rows = anchor_subsample(slices, np.random.default_rng(0), max_per_slice=20)
    assert np.array_equal(rows, np.sort(rows))
    assert (slices[rows] == 0).sum() == 10
    assert (slices[rows] == 1).sum() == 20


def test_geometry_ignores_pairs_across_slices():
    """Similarities between spots of different slices (where slice effects live) do not enter the geometry term."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 3, generator=gen)
    h = torch.randn(8, 5, generator=gen)
    s = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    moved = h.clone()
    moved[4:] += 10.0  # a large slice effect on slice 1: its similarities to slice 0 change, its own barely
    base = _geometry(z, h, s)
    assert torch.isclose(base, _geometry(z, h[torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])], s))
    within = _geometry(z[:4], h[:4], s[:4]) * 4 / 8 + _geometry(z[4:], h[4:], s[4:]) * 4 / 8
    assert torch.isclose(base, within * 2, rtol=1e-5)  # scaled as a sum over one row of the whole batch
    assert _geometry(z, h, torch.zeros(8, dtype=torch.long)) > 0


def _missing_domain_tissue():
    adata = si.datasets.simulate(
        2,
        n_spots=350,
        n_genes=150,
        n_cell_types=4,
        n_domains=4,
        batch_effect=0.6,
        missing_domains={1: ["D0"]},
        output="anndata",
        random_state=2,
    )
    si.pp.preprocess(adata, n_top_genes=120)
    si.gr.spatial_neighbors(adata)
    return adata


def test_a_domain_one_slice_lacks_is_not_pulled_onto_another():
    """Slice 1 lacks D0: slice 0's D0 spots keep their own place in the latent space instead of being mixed into
    slice 1's other domains, while the shared domains of the two slices are matched."""
    from sklearn.neighbors import NearestNeighbors

    adata = _missing_domain_tissue()
    si.tl.integrate(adata, n_factors=4, n_latent=8, max_steps=300, show_progress_bar=False)
    z = adata.obsm["X_inspire"]
    slices = adata.obs["slice"].astype(str).to_numpy()
    domain = adata.obs["domain"].astype(str).to_numpy()
    assert "D0" not in set(domain[slices == "slice1"])
    own = slices == "slice0"
    # for every slice-0 spot: the domain of its nearest slice-1 spot
    nn = NearestNeighbors(n_neighbors=1).fit(z[~own])
    nearest = domain[~own][nn.kneighbors(z[own], return_distance=False)[:, 0]]
    shared = own & (domain != "D0")
    assert (nearest[shared[own]] == domain[shared]).mean() > 0.7  # shared domains matched across slices
    # D0 spots of slice 0 lie closer to each other than to any spot of slice 1
    d0 = z[own & (domain == "D0")]
    within = NearestNeighbors(n_neighbors=2).fit(d0).kneighbors(d0)[0][:, 1]
    across = nn.kneighbors(d0)[0][:, 0]
    assert np.median(within) < 0.5 * np.median(across)


def test_normalised_values_are_factorised_with_a_warning():
    """Tables of normalised values (no counts) integrate: KL factorisation of X, log-normalised encoder input."""
    adata = si.datasets.simulate(2, n_spots=150, n_genes=100, n_cell_types=4, output="anndata", random_state=3)
    library = np.asarray(adata.X.sum(axis=1))
    adata.X = adata.X.multiply(1e3 / library).tocsr()  # volume- or depth-normalised values, as some sets ship
    with pytest.warns(UserWarning, match="non-integer"):
        si.pp.preprocess(adata, n_top_genes=80)
    si.gr.spatial_neighbors(adata)
    assert "counts" not in adata.layers
    with pytest.warns(UserWarning, match="KL-divergence"):
        si.tl.integrate(adata, n_factors=4, n_latent=8, max_steps=40, show_progress_bar=False)
    assert adata.obsm["X_inspire"].shape == (adata.n_obs, 8)
    assert np.isfinite(adata.obsm["X_inspire"]).all()
    np.testing.assert_allclose(adata.obsm["inspire_factors"].sum(axis=1), 1.0, rtol=1e-4)
    assert adata.uns["inspire"]["params"]["features"] == "lognorm"
    assert adata.uns["inspire"]["values"] == "normalised"


def _block_scaled(features: np.ndarray, n_base: int) -> np.ndarray:
    """Each hop's block scaled to the same total variance (the reference for ``multiscale_axes``)."""
    blocks = np.split(features.astype(np.float64), features.shape[1] // n_base, axis=1)
    return np.hstack([b / np.sqrt(b.var(axis=0).sum()) for b in blocks])


@pytest.mark.parametrize("structure", ["multiscale", "smoothed"])
def test_anchored_encoder_starts_at_principal_components_of_its_structure(structure):
    """Untrained, the codes are the principal components of the block-weighted input (multiscale) or of Â^k Y."""
    from sklearn.decomposition import PCA

    from sd_inspire.model import InspireModel
    from sd_inspire.model._module import AnchoredMLP

    adata = si.datasets.simulate(2, n_spots=150, n_genes=60, random_state=0, output="anndata")
    si.pp.preprocess(adata, n_top_genes=50)
    si.gr.spatial_neighbors(adata)
    model = InspireModel(adata, n_factors=4, n_latent=8, structure=structure, random_state=0)
    encoder = model.module.encoder
    assert isinstance(encoder, AnchoredMLP)
    assert model.params["anchored"] is True
    assert model.params["structure"] == structure
    model.is_trained = True  # query the untrained codes
    z = model.get_latent()
    features, n_base = model.data.features, model.data.n_base
    block = _block_scaled(features, n_base) if structure == "multiscale" else features[:, -n_base:]
    assert encoder.start == (0 if structure == "multiscale" else features.shape[1] - n_base)
    expected = PCA(8, svd_solver="full").fit_transform(block)
    # the same subspace, column by column up to sign
    corr = np.abs([np.corrcoef(z[:, j], expected[:, j])[0, 1] for j in range(8)])
    np.testing.assert_allclose(corr, 1.0, atol=1e-4)
    names = {n for n, _ in model.module.named_parameters()}
    assert "encoder.axes" not in names
    assert "encoder.correction.0.weight" in names
    assert "encoder.axes" in model.module.state_dict()  # saved with the weights


def test_multiscale_axes_weigh_every_hop_equally_at_the_smoothed_blocks_scale():
    from sd_inspire.model._features import multiscale_axes

    rng = np.random.default_rng(0)
    features = np.hstack([rng.standard_normal((300, 4)) * s for s in (10.0, 2.0, 1.0)]).astype(np.float32)
    features[:, 4] = 3.0  # a constant column within a block
    centre, axes = multiscale_axes(features, 4, 6, chunk_size=64)
    np.testing.assert_allclose(centre, features.mean(axis=0), rtol=1e-5, atol=1e-5)
    codes = (features - centre) @ axes
    reference = _pca(_block_scaled(features, 4), 6)  # blocks of total variance 1
    corr = np.abs([np.corrcoef(codes[:, j], reference[:, j])[0, 1] for j in range(6)])
    np.testing.assert_allclose(corr, 1.0, atol=1e-4)
    # each block is scaled to the most smoothed block's variance over the number of blocks
    target = features[:, 8:].var(axis=0).sum() / 3
    np.testing.assert_allclose(codes.var(axis=0), reference.var(axis=0) * target, rtol=1e-3)
    # an all-constant block gets no weight instead of a division by zero
    flat = features.copy()
    flat[:, :4] = 1.0
    centre, axes = multiscale_axes(flat, 4, 6)
    assert np.isfinite(axes).all()
    assert not axes[:4].any()


def _pca(x: np.ndarray, n: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n, svd_solver="full").fit_transform(x)


def test_multiscale_structure_keeps_cell_types_that_neighbours_do_not_share():
    """Intermixed cell types with sharp markers and no domains: the multiscale codes separate them, the smoothed do not."""
    import anndata as ad

    from sd_inspire.model import InspireModel

    rng = np.random.default_rng(0)
    n_side, n_genes = 20, 30
    xy = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), axis=-1).reshape(-1, 2).astype(float)
    xy = np.vstack([xy, xy])
    cell_type = rng.integers(0, 2, xy.shape[0])  # salt and pepper: a cell's neighbours are of either type
    rates = np.full((2, n_genes), 2.0)
    rates[0, :10] = rates[1, 10:20] = 30.0
    counts = rng.poisson(rates[cell_type]).astype(np.float32)
    adata = ad.AnnData(counts, obsm={"spatial": xy})
    adata.obs["slice"] = np.repeat(["a", "b"], n_side * n_side)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    si.pp.preprocess(adata, n_top_genes=n_genes)
    si.gr.spatial_neighbors(adata)
    scores = {}
    for structure in ("multiscale", "smoothed"):
        model = InspireModel(adata, n_factors=3, n_latent=4, structure=structure, random_state=0)
        model.is_trained = True  # the anchor's codes
        z = model.get_latent()
        # how much of the cell type a linear read-out of the codes recovers (R²)
        design = np.column_stack([z, np.ones(len(z))])
        fitted = design @ np.linalg.lstsq(design, cell_type, rcond=None)[0]
        scores[structure] = 1 - ((cell_type - fitted) ** 2).sum() / ((cell_type - cell_type.mean()) ** 2).sum()
    assert scores["multiscale"] > 0.8, scores
    assert scores["smoothed"] < 0.4, scores


def test_multiscale_geometry_term_keeps_the_anchors_components():
    """The trainer's geometry target is the projection the anchor starts at; 'smoothed' keeps Â^k Y itself."""
    from sd_inspire.model import InspireModel
    from sd_inspire.model._module import LossWeights
    from sd_inspire.model._trainer import TrainConfig, Trainer

    adata = si.datasets.simulate(2, n_spots=120, n_genes=40, random_state=0, output="anndata")
    si.pp.preprocess(adata, n_top_genes=30)
    si.gr.spatial_neighbors(adata)
    idx = np.arange(0, 240, 7)
    for structure in ("multiscale", "smoothed"):
        model = InspireModel(adata, n_factors=3, n_latent=6, structure=structure, random_state=0)
        centre, axes, start = model._structure_axes()
        geometry = (centre, axes, start) if structure == "multiscale" else None
        trainer = Trainer(
            model.module, model.data, TrainConfig(n_steps=1, per_slice=16), LossWeights(),
            rng=np.random.default_rng(0), device=torch.device("cpu"), geometry=geometry,
        )  # fmt: skip
        batch = trainer.batch(idx, model.data.counts)
        features = model.data.features[idx]
        expected = (features - centre) @ axes if structure == "multiscale" else features[:, -model.data.n_base :]
        np.testing.assert_allclose(batch["h_geometry"].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_structure_is_checked_and_old_model_folders_load_as_smoothed(tmp_path):
    import json

    from sd_inspire.model import InspireModel

    adata = si.datasets.simulate(2, n_spots=80, n_genes=30, random_state=0, output="anndata")
    si.pp.preprocess(adata, n_top_genes=20)
    si.gr.spatial_neighbors(adata)
    with pytest.raises(ValueError, match="`structure` must be one of"):
        InspireModel(adata, n_factors=3, structure="cells")
    model = InspireModel(adata, n_factors=3, n_latent=4, structure="smoothed", random_state=0)
    with pytest.raises(ValueError, match=r"`alignment` must be one of \['both', 'adversarial', 'mnn'\], got 'harmony'"):
        model.train(max_steps=2, alignment="harmony", show_progress_bar=False)  # was: trained with no alignment
    assert not model.is_trained
    model.train(max_steps=2, show_progress_bar=False)
    model.save(tmp_path / "old")
    meta_file = tmp_path / "old" / "model.json"
    meta = json.loads(meta_file.read_text())
    del meta["params"]["structure"]  # as written before `structure` existed
    meta_file.write_text(json.dumps(meta))
    for loaded in (InspireModel.load(tmp_path / "old", adata), InspireModel.load(tmp_path / "old")):
        assert loaded.params["structure"] == "smoothed"
        np.testing.assert_array_equal(loaded.module.encoder.axes.numpy(), model.module.encoder.axes.numpy())
    np.testing.assert_allclose(InspireModel.load(tmp_path / "old", adata).get_latent(), model.get_latent(), atol=1e-5)


def test_anchored_axes_pad_with_zeros_beyond_the_block_width():
    from sd_inspire.model._features import principal_axes

    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    centre, axes = principal_axes(x, 5)
    np.testing.assert_allclose(centre, x.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert axes.shape == (3, 5)
    np.testing.assert_allclose(axes[:, :3].T @ axes[:, :3], np.eye(3), atol=1e-5)
    assert not axes[:, 3:].any()


def test_unanchored_and_graph_encoders_have_no_anchor():
    from sd_inspire.model import InspireModel
    from sd_inspire.model._module import AnchoredMLP

    adata = si.datasets.simulate(2, n_spots=100, n_genes=40, random_state=0, output="anndata")
    si.pp.preprocess(adata, n_top_genes=30)
    si.gr.spatial_neighbors(adata)
    plain = InspireModel(adata, n_factors=3, anchored=False)
    assert not isinstance(plain.module.encoder, AnchoredMLP)
    assert plain.params["anchored"] is False
    gat = InspireModel(adata, n_factors=3, encoder="gat")
    assert gat.params["anchored"] is False
