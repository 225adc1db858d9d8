"""The count model's formula in numpy (model._counts) equals the torch module's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_expected_shares_equal_the_modules_rates():
    from sd_inspire.model import expected_shares, slice_programs
    from sd_inspire.model._module import InspireModule

    rng = np.random.default_rng(0)
    n_slices, n_genes, n_factors = 3, 40, 5
    module = InspireModule(12, n_genes, n_slices, n_latent=4, n_factors=n_factors, n_hidden=8)
    with torch.no_grad():
        module.loading_logits.copy_(torch.as_tensor(rng.normal(size=(n_factors, n_genes)), dtype=torch.float32))
        module.slice_gene_effect.copy_(torch.as_tensor(rng.normal(size=(n_slices, n_genes)), dtype=torch.float32))
    mask = rng.random((n_slices, n_genes)) > 0.3
    beta = rng.dirichlet(np.ones(n_factors), size=30).astype(np.float32)
    s = rng.integers(0, n_slices, 30)
    with torch.no_grad():
        expected = module.rates(
            torch.as_tensor(beta), torch.as_tensor(s), torch.as_tensor(mask[s], dtype=torch.float32)
        )
        programs = module.loadings().numpy().astype(np.float64)
        effects = torch.exp(module.slice_gene_effect).numpy().astype(np.float64)
    weighted = slice_programs(programs, effects, mask)
    got = np.vstack([expected_shares(beta[i : i + 1].astype(np.float64), weighted[s[i]]) for i in range(30)])
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    assert (got[~mask[s]] == 0).all()  # nothing on genes the slice did not measure
    # a subset of genes keeps the normalisation over all of them
    genes = np.array([3, 7, 11])
    sub = expected_shares(beta[:5].astype(np.float64), weighted[0], genes)
    np.testing.assert_allclose(sub, expected_shares(beta[:5].astype(np.float64), weighted[0])[:, genes])


def test_count_functions_need_no_torch():
    import subprocess
    import sys

    code = "import sys; from sd_inspire.model import expected_shares; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
