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


def test_each_rank_of_a_node_takes_its_own_gpu(monkeypatch):
    """Under torchrun, "auto"/"cuda" means cuda:LOCAL_RANK (nccl refuses two ranks on one GPU); an index is kept."""
    import torch

    from sd_inspire.model._model import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert _device("auto") == torch.device("cuda", 3)
    assert _device("cuda") == torch.device("cuda", 3)
    assert _device("cuda:1") == torch.device("cuda", 1)  # the user's choice stands
    assert _device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "5")  # more ranks than GPUs on the node: shared round-robin
    assert _device("auto") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert _device("auto") == torch.device("cuda")  # a single process: the current GPU, as before


def test_mean_over_ranks_reduces_on_the_training_device():
    """A tensor on the training device: nccl (GPU) cannot reduce a CPU tensor. One process: the value itself."""
    import inspect

    import torch

    from sd_inspire.model._distributed import mean_over_ranks

    assert "device" in inspect.signature(mean_over_ranks).parameters
    assert mean_over_ranks(2.5, 1, torch.device("cpu")) == 2.5
