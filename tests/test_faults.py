"""Fault tests: real processes killed in the middle of store writes (the harness of ``benchmarks/faults.py``).

Each case kills a child process (SIGKILL) just before a chosen file-system change of ``tl.integrate``,
``tl.align``, ``tl.impute`` or ``sd-inspire integrate``, then checks that the store it left is readable, lost no
spot, count or coordinate, and holds each element either as before or as written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import spatialdata
from tests.conftest import load_benchmark

import sd_inspire as si

faults = load_benchmark("faults")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared stores per operation, made once."""
    made = {}

    def get(scenario):
        if scenario not in made:
            made[scenario] = faults.prepare(scenario, tmp_path_factory.mktemp(scenario))
        return made[scenario]

    return get


def _assert_safe(outcome, state):
    assert outcome.killed, "the child finished before the kill point"
    assert outcome.readable, outcome.lost
    assert outcome.lost == []
    assert outcome.state == state


def test_integrate_killed_between_the_two_table_swaps(prepared):
    # the factor table is already new, the integrated table still old: both complete, the store readable
    _assert_safe(faults.kill_case("integrate", prepared("integrate"), 2, only="exchange_paths"), "mixed")


def test_integrate_killed_between_two_renames_without_atomic_exchange(prepared, tmp_path):
    # without an exchange, the old element is moved into the staging folder first: killed before the new one
    # moves in, the store lacks the element until the next read puts the old one back
    left = tmp_path / "left"
    outcome = faults.kill_case("integrate", prepared("integrate"), 2, only="rename", exchange=False, keep=left)
    _assert_safe(outcome, "old")
    assert not (left / "store.zarr" / "tables" / "inspire_factors").exists()  # what the kill left ...
    assert list((left / "store.zarr" / ".sd-inspire").iterdir())
    with pytest.warns(UserWarning, match="interrupted write"):
        back = si.io.read_zarr(left / "store.zarr")  # ... and what the next reader makes of it
    assert "inspire_factors" in back.tables
    assert not (left / "store.zarr" / ".sd-inspire").exists()


def test_out_of_core_integrate_killed_before_consolidating(prepared, tmp_path):
    left = tmp_path / "left"
    outcome = faults.kill_case(
        "integrate_out_of_core", prepared("integrate_out_of_core"), 1, only="consolidate_metadata", keep=left
    )
    _assert_safe(outcome, "new")
    # left without consolidated metadata: spatialdata lists the folders and reads the new elements
    assert "X_inspire" in spatialdata.read_zarr(left / "store.zarr")["table"].obsm


@pytest.mark.parametrize("scenario", ["align", "impute"])
def test_align_and_impute_killed_before_the_swap(prepared, scenario):
    _assert_safe(faults.kill_case(scenario, prepared(scenario), 1, only="exchange_paths"), "old")


def test_cli_killed_before_the_swap_then_next_run_cleans_up(prepared, tmp_path):
    left = tmp_path / "left"
    outcome = faults.kill_case("cli_integrate", prepared("cli_integrate"), 1, only="exchange_paths", keep=left)
    _assert_safe(outcome, "old")
    leftovers = [p.name for p in left.iterdir() if ".out.zarr.partial-" in p.name]
    assert len(leftovers) == 1
    code, output = faults.run_child("cli_integrate", left)
    assert code == 0, output
    assert not [p.name for p in left.iterdir() if p.name.startswith(".out.zarr")]


def test_cli_sigint_exits_130_and_leaves_no_partial_output(tmp_path):
    store, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    si.datasets.simulate(2, n_spots=150, n_genes=80, path=store)
    args = [sys.executable, "-m", "sd_inspire", "integrate", str(store), "-o", str(out), "--max-steps", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the child gets Ctrl-C's default disposition: a test runner started in the background (``cmd &`` in a script,
    # nohup) ignores SIGINT, and a child would inherit that and train on after the signal
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    popen = {"stderr": subprocess.PIPE, "text": True, "env": env, "preexec_fn": default_sigint}
    with subprocess.Popen([*args, "-v"], **popen) as child:
        for line in child.stderr:  # wait until training runs
            if "Integrating" in line:
                break
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        rest = child.stderr.read()
        code = child.wait(timeout=60)
    assert code == 130, rest
    assert "sd-inspire: interrupted" in rest
    assert "Traceback" not in rest
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
