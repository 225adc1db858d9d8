"""Kill real processes in the middle of store writes, then check that no store is unreadable or lost data.

Each case copies a prepared zarr store, starts a child process that runs one operation on it (``tl.integrate`` on
a table in memory or out of core, ``tl.align``, ``tl.impute``, or the command line ``sd-inspire integrate``
replacing an output store), and kills that child with SIGKILL just before its K-th file-system change (a rename,
exchange, replace, hard link, unlink, folder removal, file copy, file opened for writing, or consolidation of the
metadata). The store is then checked:

- **readable**: :func:`spatialdata.read_zarr` opens it as it is, and :func:`sd_inspire.io.read_zarr` opens it
  after removing what the killed run left;
- **nothing lost**: every spot, its raw counts, coordinates and shapes are there, and every element the
  operation writes is either as it was before or complete as written (never partly written);
- **next run**: for one case in five, the same operation then runs to completion on the store that was left.

``python benchmarks/faults.py --runs 50`` draws the kill points at random (uniform over each operation's file
changes, counted by one uninterrupted run) and prints a table, also written to ``benchmarks/results/faults.md``.
The tests (``tests/test_faults.py``) run chosen kill points of the same harness.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "faults.md"
#: The operations whose store writes are killed.
SCENARIOS = ("integrate", "integrate_out_of_core", "align", "impute", "cli_integrate")
_STEPS = 15  # training steps of every run: the writes, not the model, are under test
_COUNT_PREFIX = "FILE-SYSTEM CHANGES "


# --- in the child: count file-system changes and kill the process at the chosen one


def install_kill_switch(kill_at: int | None, only: str | None = None, *, exchange: bool = True) -> dict[str, int]:
    """Wrap the functions that change files; SIGKILL this process just before the ``kill_at``-th call.

    ``only`` counts the calls of one wrapped function (its name, e.g. ``"exchange_paths"``) instead of all of
    them. ``exchange=False`` acts as a system without an atomic exchange of two paths (two journalled renames).
    Returns the counts so far, per function and in all (``"any"``).
    """
    import zarr

    try:
        from sd_inspire.io import _store
    except ImportError:  # a version before the atomic write path (the benchmark also runs there)
        _store = None
    counts = {"any": 0}

    def guard(name, fn):
        def wrapped(*args, **kwargs):
            counts["any"] += 1
            counts[name] = counts.get(name, 0) + 1
            if kill_at is not None and counts.get(only or "any") == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapped

    for name in ("rename", "replace", "link", "unlink", "remove", "rmdir"):
        setattr(os, name, guard(name, getattr(os, name)))
    shutil.copy2 = guard("copy2", shutil.copy2)
    if _store is not None:
        _store.exchange_paths = guard("exchange_paths", _store.exchange_paths if exchange else lambda a, b: False)
    zarr.consolidate_metadata = guard("consolidate_metadata", zarr.consolidate_metadata)
    opener = builtins.open

    def open_for_writing(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            return guard("open", opener)(file, mode, *args, **kwargs)
        return opener(file, mode, *args, **kwargs)

    builtins.open = io.open = open_for_writing
    return counts


def _child(scenario: str, work: Path, kill_at: int | None, only: str | None, exchange: bool) -> None:
    warnings.simplefilter("ignore")
    counts = install_kill_switch(kill_at, only, exchange=exchange)
    run_operation(scenario, work)
    print(f"{_COUNT_PREFIX}{json.dumps(counts)}", flush=True)


def run_operation(scenario: str, work: Path) -> None:
    """The operation of ``scenario`` on the store(s) in ``work`` (what the child runs)."""
    import spatialdata

    import sd_inspire as si

    store = work / "store.zarr"
    fast = {"max_steps": _STEPS, "show_progress_bar": False, "n_factors": 4, "n_latent": 8, "random_state": 1}
    if scenario == "integrate":
        si.tl.integrate(spatialdata.read_zarr(store), **fast)
    elif scenario == "integrate_out_of_core":
        si.tl.integrate(si.io.read_zarr(store, out_of_core=True, chunk_size=100), **fast)
    elif scenario == "align":
        si.tl.align(si.io.read_zarr(store), random_state=1)
    elif scenario == "impute":
        si.tl.impute(si.io.read_zarr(store))
    elif scenario == "cli_integrate":
        from sd_inspire._cli import main

        out = work / "out.zarr"
        args = ["integrate", str(store), "-o", str(out), "--overwrite", "--no-progress", "--seed", "1"]
        code = main([*args, "--max-steps", str(_STEPS), "--n-factors", "4", "--n-latent", "8"])
        if code != 0:
            raise SystemExit(code)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")


# --- in the parent: prepare stores, run killed children, check what they left


def prepare(scenario: str, folder: Path) -> Path:
    """A folder with the store(s) ``scenario`` works on, each already holding the results of an earlier run."""
    import spatialdata

    import sd_inspire as si

    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "store.zarr"
    fast = {"max_steps": _STEPS, "show_progress_bar": False, "n_factors": 4, "n_latent": 8, "random_state": 0}
    if scenario == "impute":
        si.datasets.simulate(
            2, n_spots=150, n_genes=80, technology=["visium", "merfish"], panel_size=40, random_state=0, path=store
        )
        sdata = spatialdata.read_zarr(store)
        si.pp.preprocess(sdata, gene_space="union", n_top_genes=60)
        shutil.rmtree(store)
        sdata.write(store)
    else:
        si.datasets.simulate(2, n_spots=150, n_genes=80, random_state=0, path=store)
    if scenario == "cli_integrate":
        from sd_inspire._cli import main

        args = ["integrate", str(store), "-o", str(folder / "out.zarr"), "--no-progress", "--seed", "0"]
        assert main([*args, "--max-steps", str(_STEPS), "--n-factors", "4", "--n-latent", "8"]) == 0
    else:
        si.tl.integrate(spatialdata.read_zarr(store), **fast)
    return folder


@dataclass
class Outcome:
    scenario: str
    kill_at: int | None
    only: str | None
    killed: bool
    readable: bool
    lost: list[str]
    state: str  # "old", "new", or "mixed" (elements each old or new)
    next_run: bool | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.readable and not self.lost


def run_child(
    scenario: str, work: Path, kill_at: int | None = None, only: str | None = None, *, exchange: bool = True
) -> tuple[int, str]:
    """Run the operation in a child process; returns its exit status and output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [sys.executable, str(Path(__file__).resolve()), "--child", scenario, str(work)]
    args += ["--kill-at", str(kill_at)] if kill_at is not None else []
    args += ["--only", only] if only else []
    args += [] if exchange else ["--no-exchange"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    return done.returncode, done.stdout + done.stderr


def count_changes(scenario: str, prepared: Path) -> dict[str, int]:
    """How many file-system changes one uninterrupted run of ``scenario`` makes, per kind and in all (``"any"``)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(prepared, work)
        code, output = run_child(scenario, work)
        if code != 0:
            raise RuntimeError(f"{scenario} failed without a kill:\n{output[-3000:]}")
        line = next(line for line in output.splitlines() if line.startswith(_COUNT_PREFIX))
        return json.loads(line[len(_COUNT_PREFIX) :])


def kill_case(
    scenario: str,
    prepared: Path,
    kill_at: int,
    *,
    only: str | None = None,
    next_run: bool = False,
    exchange: bool = True,
    keep: Path | None = None,
) -> Outcome:
    """Copy the prepared store(s), kill the operation at its ``kill_at``-th change, and check what is left.

    ``keep``: a folder to copy what the killed run left into (before the checks clean it), for inspection.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(prepared, work)
        code, output = run_child(scenario, work, kill_at, only, exchange=exchange)
        if keep is not None:
            shutil.copytree(work, keep, symlinks=True)
        killed = code == -signal.SIGKILL
        if not killed and code != 0:
            raise RuntimeError(f"{scenario} killed at {kill_at} failed instead:\n{output[-3000:]}")
        readable, lost, state = check(scenario, prepared, work)
        again = None
        if next_run and readable:
            again = run_child(scenario, work)[0] == 0
    return Outcome(scenario, kill_at, only, killed, readable, lost, state, again, time.perf_counter() - start)


def check(scenario: str, prepared: Path, work: Path) -> tuple[bool, list[str], str]:
    """Whether the store left in ``work`` is readable, what data it lost, and whether its elements are old or new."""
    import spatialdata

    import sd_inspire as si

    name = "out.zarr" if scenario == "cli_integrate" else "store.zarr"
    before_path, after_path = prepared / name, work / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            spatialdata.read_zarr(after_path)  # as the killed run left it, by another tool
            after = si.io.read_zarr(after_path)  # removes what the killed run left
        except Exception as err:  # noqa: BLE001 - any failure to read is the finding
            return False, [f"unreadable: {type(err).__name__}: {err}"], "-"
        before = spatialdata.read_zarr(before_path)
    lost = []
    if (after_path / ".sd-inspire").exists():
        lost.append("staging folder left after reading")
    if set(before.shapes) - set(after.shapes):
        lost.append(f"shapes {sorted(set(before.shapes) - set(after.shapes))}")
    if "table" not in after.tables:
        return True, [*lost, "table 'table' missing"], "-"
    old, new = before["table"], after["table"]
    if new.n_obs != old.n_obs or not new.obs_names.equals(old.obs_names):
        lost.append(f"rows: {old.n_obs} -> {new.n_obs}")
    elif "counts" in old.layers:
        a, b = old.layers["counts"], new.layers.get("counts")
        if b is None or _differ(a, b):
            lost.append("raw counts changed")
    if "spatial" in old.obsm and ("spatial" not in new.obsm or _differ(old.obsm["spatial"], new.obsm["spatial"])):
        lost.append("coordinates changed")
    return True, lost, _element_state(scenario, before, after, lost)


def _element_state(scenario: str, before, after, lost: list[str]) -> str:
    """'old' or 'new' for the elements the operation writes; adds to ``lost`` what is neither."""
    old, new = before["table"], after["table"]
    states = []
    if scenario == "impute":
        if "inspire_imputed" not in new.layers:
            return "old"
        layer = new.layers["inspire_imputed"]
        if layer.shape != new.shape or "inspire_imputed" not in new.var:
            lost.append("imputed layer incomplete")
        return "new"
    if scenario == "align":
        moved = "spatial_aligned" in new.obsm
        if moved and new.obsm["spatial_aligned"].shape[0] != new.n_obs:
            lost.append("aligned coordinates incomplete")
        return "new" if moved else "old"
    x_old, x_new = old.obsm["X_inspire"], new.obsm.get("X_inspire")
    if x_new is None or x_new.shape != x_old.shape or not np.isfinite(x_new).all():
        lost.append("latent space missing or incomplete")
        return "-"
    states.append("old" if np.array_equal(x_old, x_new) else "new")
    factors = after.tables.get("inspire_factors")
    if factors is None or factors.n_obs != new.n_obs:
        lost.append("factor table missing or incomplete")
    else:
        same = np.array_equal(_dense(before["inspire_factors"].X), _dense(factors.X))
        states.append("old" if same else "new")
    return states[0] if len(set(states)) == 1 else "mixed"


def _dense(x) -> np.ndarray:
    x = x.compute() if hasattr(x, "compute") else x
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def _differ(a, b) -> bool:
    a, b = _dense(a), _dense(b)
    return a.shape != b.shape or not np.array_equal(a, b)


# --- the benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="kill points in all (spread over the operations)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "WORK"), help=argparse.SUPPRESS)
    parser.add_argument("--kill-at", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--no-exchange", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], Path(args.child[1]), args.kill_at, args.only, not args.no_exchange)
        return 0

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {s: prepare(s, Path(tmp) / s) for s in args.scenarios}
        counts = {s: count_changes(s, prepared[s]) for s in args.scenarios}
        print("file-system changes per uninterrupted run:", counts, flush=True)
        writing = [s for s in args.scenarios if counts[s]["any"]]  # (an operation may write nothing into the store)
        for i in range(args.runs):
            scenario = writing[i % len(writing)]
            only = _draw_kind(rng, counts[scenario])
            kill_at = int(rng.integers(1, counts[scenario][only or "any"] + 1))
            outcome = kill_case(scenario, prepared[scenario], kill_at, only=only, next_run=i % 5 == 0)
            outcomes.append(outcome)
            print(_row(i, outcome), flush=True)
    table = _table(outcomes, counts, time.perf_counter() - started, args)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0 if all(o.ok and o.next_run is not False for o in outcomes) else 1


#: The changes that move whole elements or the store's metadata; a kill just before one of them is drawn for
#: two cases in five (the others are uniform over all changes, most of which write the staged copy).
_CRITICAL = ("exchange_paths", "rename", "replace", "consolidate_metadata")


def _draw_kind(rng: np.random.Generator, counts: dict[str, int]) -> str | None:
    kinds = [k for k in _CRITICAL if counts.get(k)]
    return str(rng.choice(kinds)) if kinds and rng.random() < 0.4 else None


def _row(i: int, o: Outcome) -> str:
    killed = "killed" if o.killed else "finished"
    nxt = {None: "", True: "next run ok", False: "NEXT RUN FAILED"}[o.next_run]
    at = f"{o.only or 'change'} #{o.kill_at}"
    return f"{i:3d} {o.scenario:22s} {at:24s} {killed:8s} readable={o.readable} {o.state:5s} {nxt} {o.lost}"


def _table(outcomes: list[Outcome], counts: dict, seconds: float, args) -> str:
    lines = [
        "# Fault injection: processes killed during store writes",
        "",
        f"`python benchmarks/faults.py --runs {args.runs} --seed {args.seed}` on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}; {seconds / 60:.1f} min.",
        "",
        "Kill points: three in five uniform over all file changes, two in five just before a rename, exchange, "
        "replace or consolidation of the metadata (drawn uniformly among those calls).",
        "",
        "| operation | file changes per run | kills | killed before the end | unreadable | data lost | "
        "old / new / mixed | next run failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in counts:
        mine = [o for o in outcomes if o.scenario == s]
        states = [sum(o.state == k for o in mine) for k in ("old", "new", "mixed")]
        lines.append(
            f"| {s} | {counts[s]['any']} | {len(mine)} | {sum(o.killed for o in mine)} | "
            f"{sum(not o.readable for o in mine)} | {sum(bool(o.lost) for o in mine)} | "
            f"{' / '.join(map(str, states))} | {sum(o.next_run is False for o in mine)} |"
        )
    bad = [o for o in outcomes if not o.ok]
    lines += ["", f"Stores left unreadable or with data lost: **{len(bad)}** of {len(outcomes)}."]
    lines += [f"- {o.scenario} killed before {o.only or 'change'} #{o.kill_at}: {o.lost}" for o in bad]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
