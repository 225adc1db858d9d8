from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sd_inspire.tl.metrics import (
    ari,
    batch_mixing,
    factor_diversity,
    factor_recovery,
    nmi,
    per_group_scores,
)

# ---------------------------------------------------------------- ari / nmi


@pytest.mark.parametrize("score", [ari, nmi])
def test_identical_labelings_score_one(score):
    labels = np.array(["L1", "L2", "L3", "WM"] * 25)
    assert score(labels, labels) == 1.0
    # relabelled predictions (ints) are the same partition
    codes = pd.Series(labels).astype("category").cat.codes.to_numpy()
    assert score(labels, codes) == 1.0


@pytest.mark.parametrize("score", [ari, nmi])
def test_unrelated_labelings_score_near_zero(score):
    rng = np.random.default_rng(0)
    assert abs(score(rng.integers(5, size=2000), rng.integers(5, size=2000))) < 0.02


@pytest.mark.parametrize("missing", [np.nan, None, "nan", pd.NA])
@pytest.mark.parametrize("score", [ari, nmi])
def test_missing_reference_labels_are_ignored(score, missing):
    true = pd.Series(["a", "a", "b", "b", missing, missing], dtype=object)
    pred = [0, 0, 1, 1, 0, 1]  # the unannotated spots would break a perfect score if counted
    assert score(true, pred) == 1.0
    assert score(true.astype("category"), pred) == 1.0


def test_ari_partial_agreement_value():
    from sklearn.metrics import adjusted_rand_score

    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert ari(true, pred) == pytest.approx(adjusted_rand_score(true, pred))
    assert ari(true, pred) < 1


def test_label_errors():
    with pytest.raises(ValueError, match=r"`labels_true` \(3,\), `labels_pred` \(2,\)"):
        ari([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="No observation has a reference label"):
        nmi([np.nan, None], [0, 1])
    with pytest.raises(ValueError, match="one-dimensional"):
        ari(np.zeros((2, 2)), np.zeros((2, 2)))


def test_per_group_scores():
    true = ["a", "a", "b", "b", "a", "b", "a", "b", None, None]
    pred = [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    groups = pd.Categorical(["s2", "s2", "s2", "s2", "s1", "s1", "s1", "s1", "s3", "s3"], categories=["s2", "s1", "s3"])
    scores = per_group_scores(true, pred, groups)
    assert list(scores) == ["s2", "s1", "s3"]  # category order
    assert scores["s2"] == 1.0
    assert scores["s1"] == pytest.approx(ari(true[4:8], pred[4:8]))
    assert scores["s1"] < 1
    assert np.isnan(scores["s3"])  # no reference labels in that group
    nmis = per_group_scores(true, pred, pd.Series(groups), score="nmi")
    assert nmis["s2"] == 1.0
    assert list(per_group_scores(true, pred, np.asarray(groups).astype(str))) == ["s1", "s2", "s3"]


def test_per_group_scores_errors():
    with pytest.raises(ValueError, match="`score` must be one of"):
        per_group_scores([0], [0], [0], score="f1")
    with pytest.raises(ValueError, match=r"`groups` \(1,\)"):
        per_group_scores([0, 1], [0, 1], ["s"])
    with pytest.raises(ValueError, match="`groups` has 1 missing"):
        per_group_scores([0, 1], [0, 1], ["s", None])


# ---------------------------------------------------------------- batch_mixing


def _two_batches(shift, n=300, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(2 * n, dim))
    batches = np.repeat(["b0", "b1"], n)
    latent[n:, 0] += shift
    return latent, batches


def test_batch_mixing_same_distribution_is_near_one():
    latent, batches = _two_batches(shift=0.0)
    score = batch_mixing(latent, batches)
    assert 0.9 < score <= 1.0


def test_batch_mixing_separated_batches_is_zero():
    latent, batches = _two_batches(shift=100.0)
    assert batch_mixing(latent, batches) == 0.0


def test_batch_mixing_is_monotone_in_separation():
    scores = [batch_mixing(*_two_batches(shift=s)) for s in (0.0, 1.0, 2.0, 4.0)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] - scores[-1] > 0.5


def test_batch_mixing_unequal_proportions_normalised():
    # a 3:1 mixture drawn from one distribution is as mixed as the proportions allow
    rng = np.random.default_rng(1)
    latent = rng.normal(size=(800, 4))
    batches = np.array(["a"] * 600 + ["b"] * 200)
    mixed = batch_mixing(latent, batches)
    assert mixed > 0.8
    # the same proportions, but batch "b" alone in a corner of the space
    latent[600:, 0] += 20
    assert batch_mixing(latent, batches) < 0.05


def test_batch_mixing_within_labels():
    # two biological groups far apart, each drawn from one distribution in both batches
    rng = np.random.default_rng(2)
    n = 200
    labels = np.repeat(["L1", "L2"], 2 * n)
    batches = np.tile(np.repeat(["b0", "b1"], n), 2)
    latent = rng.normal(size=(4 * n, 3))
    latent[labels == "L2", 0] += 50
    assert batch_mixing(latent, batches, labels) > 0.9
    # L2 badly integrated: its batches are far apart; the score is the size-weighted mean of the two groups
    separated = latent.copy()
    separated[(labels == "L2") & (batches == "b1"), 1] += 50
    mixed_l1 = batch_mixing(latent[labels == "L1"], batches[labels == "L1"])
    assert batch_mixing(separated, batches, labels) == pytest.approx(mixed_l1 / 2)
    # missing labels, single-batch and tiny groups are skipped
    labels_plus = np.concatenate([labels, [None] * 5, ["only_b0"] * 40, ["tiny"] * 10]).astype(object)
    latent_plus = np.vstack([latent, rng.normal(size=(55, 3)) + 200])
    batches_plus = np.concatenate([batches, ["b1"] * 5, ["b0"] * 40, ["b0", "b1"] * 5])
    assert batch_mixing(latent_plus, batches_plus, labels_plus) == pytest.approx(batch_mixing(latent, batches, labels))


def test_batch_mixing_errors():
    latent, batches = _two_batches(shift=0.0, n=20)
    with pytest.raises(ValueError, match=r"`latent` \(40, 5\), `batches` \(39,\)"):
        batch_mixing(latent, batches[:-1])
    with pytest.raises(ValueError, match="at least two batches"):
        batch_mixing(latent, ["b0"] * 40)
    with pytest.raises(ValueError, match="more cells"):
        batch_mixing(latent, batches, n_neighbors=40)
    with pytest.raises(ValueError, match="No label group"):
        batch_mixing(latent, batches, labels=np.repeat(["x", "y"], 20), n_neighbors=30)
    with pytest.raises(ValueError, match="`batches` has 1 missing"):
        batch_mixing(latent, [*batches[:-1], None])
    bad = latent.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="`latent` has 1 NaN or infinite"):
        batch_mixing(bad, batches)
    with pytest.raises(ValueError, match="`n_neighbors` must be at least 1, got 0"):
        batch_mixing(latent, batches, n_neighbors=0)


# ---------------------------------------------------------------- factors


def test_factor_diversity_disjoint_top_genes_is_one():
    loadings = np.zeros((60, 3))
    for k in range(3):
        loadings[20 * k : 20 * (k + 1), k] = np.linspace(2, 1, 20)
    assert factor_diversity(loadings, n_top=20) == 1.0


def test_factor_diversity_overlap_lowers_score():
    rng = np.random.default_rng(0)
    loadings = rng.random((100, 4))
    loadings[:10] += 10  # the same ten genes top every factor
    assert factor_diversity(loadings, n_top=10) == pytest.approx(10 / 40)
    assert factor_diversity(loadings, n_top=20) == pytest.approx(
        (10 + np.unique(np.argsort(-loadings[10:], axis=0)[:10]).size) / 80
    )
    assert factor_diversity(loadings, n_top=20) < 1


def test_factor_diversity_errors():
    with pytest.raises(ValueError, match=r"`n_top` must be between 1 and the number of genes \(5\), got 6"):
        factor_diversity(np.ones((5, 2)), n_top=6)
    with pytest.raises(ValueError, match="2D"):
        factor_diversity(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        factor_diversity(np.full((5, 2), np.nan), n_top=2)


def test_factor_recovery_perfect_and_partial():
    rng = np.random.default_rng(0)
    truth = rng.dirichlet(np.ones(4), size=200)
    assert factor_recovery(truth, truth) == pytest.approx(1.0)
    # order, scale, sign and extra factors do not matter
    factors = np.column_stack([rng.normal(size=200), -3 * truth[:, ::-1] + 1])
    assert factor_recovery(factors, truth) == pytest.approx(1.0)
    # a constant true column (a cell type absent everywhere) is ignored
    with_constant = np.column_stack([truth, np.zeros(200)])
    assert factor_recovery(truth, with_constant) == pytest.approx(1.0)
    # random factors recover little
    assert factor_recovery(rng.normal(size=(200, 4)), truth) < 0.4
    # only half the columns recovered
    noise = rng.normal(size=(200, 2))
    half = factor_recovery(np.column_stack([truth[:, :2], noise]), truth)
    assert 0.5 < half < 0.8


def test_factor_recovery_errors_and_constant_factors():
    truth = np.random.default_rng(0).random((10, 2))
    with pytest.raises(ValueError, match=r"shapes \(9, 2\) and \(10, 2\)"):
        factor_recovery(np.ones((9, 2)), truth)
    with pytest.raises(ValueError, match="Every column of `truth`"):
        factor_recovery(truth, np.ones((10, 3)))
    assert factor_recovery(np.ones((10, 3)), truth) == 0.0


def test_silhouette_separated_vs_mixed():
    from sd_inspire.tl.metrics import silhouette

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    labels = np.repeat(["a", "b"], 100)
    assert abs(silhouette(x, labels)) < 0.1
    x[100:] += 20
    assert silhouette(x, labels) > 0.9
    # missing labels are left out; subsampling is seeded
    labels_missing = labels.astype(object)
    labels_missing[:10] = None
    assert silhouette(x, labels_missing) > 0.9
    assert silhouette(x, labels, sample_size=50, random_state=1) == silhouette(
        x, labels, sample_size=50, random_state=1
    )
    with pytest.raises(ValueError, match="two labels"):
        silhouette(x, ["a"] * 200)


def test_factor_coherence_npmi_values():
    from scipy import sparse

    from sd_inspire.tl.metrics import factor_coherence

    rng = np.random.default_rng(0)
    program = rng.random(400) < 0.4  # genes 0-2 detected together, genes 3-5 independently
    counts = np.zeros((400, 6))
    counts[program, :3] = 1
    counts[:, 3:] = rng.random((400, 3)) < 0.4
    loadings = np.zeros((6, 2))
    loadings[:3, 0] = 1
    loadings[3:, 1] = 1
    one = factor_coherence(loadings[:, :1], counts, n_top=3)
    assert one == pytest.approx(1.0)
    two = factor_coherence(loadings[:, 1:], sparse.csr_matrix(counts), n_top=3)
    assert abs(two) < 0.1
    assert factor_coherence(loadings, counts, n_top=3) == pytest.approx((one + two) / 2)
    # never together: -1
    assert factor_coherence(np.array([[1.0], [1.0]]), np.array([[1, 0], [0, 1], [1, 0], [0, 1]]), n_top=2) == -1.0
    with pytest.raises(ValueError, match="must match"):
        factor_coherence(loadings, counts[:, :5], n_top=3)
    with pytest.raises(ValueError, match="n_top"):
        factor_coherence(loadings, counts, n_top=1)
