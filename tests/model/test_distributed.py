"""Data-parallel training with torch.distributed: two local processes (gloo) against one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sd_inspire.tl.metrics import ari

SCRIPT = Path(__file__).with_name("_ddp_script.py")


def _run(command: list[str], out: Path) -> None:
    result = subprocess.run([*command, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_agree_with_one(tmp_path):
    pytest.importorskip("torch.distributed")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    _run([sys.executable], single)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], ddp)
    # gradients are averaged over ranks: both ranks end with the same weights, hence the same latent space
    np.testing.assert_array_equal(np.load(ddp / "latent0.npy"), np.load(ddp / "latent1.npy"))
    truth = np.load(single / "truth.npy")
    one, two = np.load(single / "domains0.npy"), np.load(ddp / "domains0.npy")
    assert ari(truth, one) > 0.8
    assert ari(truth, two) > ari(truth, one) - 0.1  # same quality, from each rank reading half the rows
    assert ari(one, two) > 0.75  # and the same domains


def test_slice_smaller_than_the_number_of_processes():
    from scipy import sparse

    from sd_inspire.model._sampler import make_sampler

    slices = np.array([0] * 10 + [1] * 2)
    counts = sparse.csr_matrix(np.ones((12, 3), dtype=np.float32))
    rng = np.random.default_rng(0)
    assert make_sampler(counts, slices, 4, rng, (1, 2)).next_batch()[0].size == 5  # 4 of slice 0, 1 of slice 1
    with pytest.raises(ValueError, match="Slice 'b' has 2 spots, fewer than the 4 training processes"):
        make_sampler(counts, slices, 4, rng, (0, 4), ["a", "b"])
