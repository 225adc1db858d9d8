"""Hand-written ``Trainer`` vs the Lightning prototype (lightning_trainer.py): time, determinism, resume, DDP, size.

Run from this folder with its own environment (see README.md)::

    OMP_NUM_THREADS=1 .venv/bin/python compare.py

Prints a table and writes it to results.md. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning_trainer import LitInspire, trainer_kwargs  # beside this script, on its path

import sd_inspire as si
from sd_inspire.model import InspireModel, _trainer
from sd_inspire.model._distributed import World
from sd_inspire.model._trainer import Trainer

HERE = Path(__file__).resolve().parent
N_STEPS = int(os.environ.get("N_STEPS", "300"))  # smaller for a smoke test
STOP_AT = N_STEPS // 2
PY = sys.executable
CPU = torch.device("cpu")


class Stop(Exception):
    """Simulated crash."""


def settings(m: InspireModel, n_steps: int, checkpoint_every: int = 0):
    return m._train_settings(
        max_steps=n_steps, batch_size=1024, lr=1e-3, loss_weights=None, alignment="both", warmup_fraction=0.2,
        margin=5.0, early_stopping=False, patience=200, checkpoint_every=checkpoint_every,
    )  # fmt: skip


def weights_of(m: InspireModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.module.state_dict().items()}


def same(a: dict, b: dict) -> tuple[bool, float]:
    """Bit-identical?, largest absolute difference."""
    return all(torch.equal(a[k], b[k]) for k in a), max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------------------------------------ hand-written
def hand_run(adata, n_steps=N_STEPS, *, ckpt: Path | None = None, stop_at: int | None = None, resume=False,
             every: int = STOP_AT):  # fmt: skip
    m = InspireModel(adata, random_state=0, device="cpu")
    config, weights = settings(m, n_steps, every if ckpt else 0)

    class Crashing(Trainer):
        def train_step(self):
            if stop_at is not None and self.step == stop_at:
                raise Stop
            return super().train_step()

    tr = Crashing(m.module, m.data, config, weights, rng=np.random.default_rng(m.seed), device=CPU, world=World())
    with torch.random.fork_rng(devices=[]):  # as InspireModel.train
        torch.manual_seed(m.seed + 1)
        if resume:
            tr.load_state(torch.load(ckpt, weights_only=True))
        try:
            history = tr.fit(show_progress_bar=False, checkpoint_path=ckpt)
        except Stop:
            return m, None
    return m, history


# ------------------------------------------------------------------------------------------------ Lightning
class CrashAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.n_done == self.step:
            raise Stop


def lit_run(adata, n_steps=N_STEPS, *, ckpt_dir: Path | None = None, stop_at: int | None = None, resume=None,
            every: int = STOP_AT):  # fmt: skip
    m = InspireModel(adata, random_state=0, device="cpu")
    config, weights = settings(m, n_steps)
    lit = LitInspire(m.module, m.data, config, weights, m.seed)
    callbacks: list[pl.Callback] = []
    if ckpt_dir is not None:  # global_step counts optimiser steps: 2 per training step (model, discriminator)
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2 * every, save_top_k=-1))
    if stop_at is not None:
        callbacks.append(CrashAt(stop_at))
    trainer = pl.Trainer(**trainer_kwargs(n_steps, callbacks=callbacks, enable_checkpointing=ckpt_dir is not None))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(m.seed + 1)
        try:
            trainer.fit(lit, ckpt_path=resume, weights_only=True if resume else None)
        except Stop:
            return m, None
    return m, lit.history


# ------------------------------------------------------------------------------------------------ helpers
def sloc(path: Path, skip: set[str] = frozenset()) -> int:
    """Lines of code: not blank, not only a comment, not a docstring; top-level definitions in ``skip`` left out."""
    source = path.read_text()
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                drop.update(range(first.lineno, first.end_lineno + 1))
    for node in tree.body:
        name = getattr(node, "name", None)
        is_main = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        if name in skip or (is_main and "__main__" in skip):
            drop.update(range(node.lineno - len(getattr(node, "decorator_list", [])), node.end_lineno + 1))
    lines = source.splitlines()
    return sum(
        1 for i, line in enumerate(lines, 1) if i not in drop and line.strip() and not line.strip().startswith("#")
    )


def run(cmd: list[str], **kw) -> tuple[int, float, str]:
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env, timeout=600, check=False, **kw)
    return p.returncode, time.perf_counter() - start, p.stdout + p.stderr


def import_seconds(module: str, before: str = "torch") -> float:
    code = f"import time, {before}; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = [float(run([PY, "-c", code])[2].strip().splitlines()[-1]) for _ in range(3)]
    return float(np.median(times))


def installed_mb(*names: str) -> float:
    import importlib.util

    total = 0
    for name in names:
        root = Path(importlib.util.find_spec(name).origin).parent
        total += sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return total / 2**20


def ddp_check(out: Path, cmd: list[str], prefix: str) -> dict:
    rc, wall, log = run(cmd)
    res: dict = {"rc": rc, "wall": wall, "log": log[-3000:]}
    files = sorted(out.glob(f"{prefix}-rank*.pt"))
    if rc == 0 and len(files) == 2:
        a, b = (torch.load(f, weights_only=True) for f in files)
        res["equal"], res["diff"] = same(a, b)
        res["info"] = [json.loads(f.with_suffix(".json").read_text()) for f in files]
    return res


def pitfalls(adata, n: int = 40) -> list[tuple[str, str, str]]:
    """What the prototype's two details avoid: each left out, is the run still the hand-written one, and resumable?"""
    import lightning_trainer as lt

    out = []
    hand_w = weights_of(hand_run(adata, n)[0])
    original_loader = lt.LitInspire.train_dataloader

    def loader_without_generator(self):
        return lt.StatefulLoader(original_loader(self).dataset, batch_size=None, num_workers=0)

    lt.LitInspire.train_dataloader = loader_without_generator
    try:
        r = same(hand_w, weights_of(lit_run(adata, n)[0]))
    finally:
        lt.LitInspire.train_dataloader = original_loader
    out.append((
        f"pitfall, {n} steps: DataLoader without `generator=` (its base seed is drawn from torch's global generator, "
        "which also drives dropout): Lightning == hand-written", "-", f"{r[0]} (max diff {r[1]:g})",
    ))  # fmt: skip

    length, kwargs = lt.SamplerDataset.__len__, trainer_kwargs
    del lt.SamplerDataset.__len__  # an endless dataset: Lightning prefetches one batch; stop by max_steps
    globals()["trainer_kwargs"] = lambda steps, **kw: kwargs(steps, **{**kw, "max_steps": 2 * steps, "max_epochs": -1})
    try:
        ref = weights_of(lit_run(adata, n)[0])
        r = same(hand_w, ref)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            lit_run(adata, n, ckpt_dir=tmp / "a", stop_at=n // 2, every=n // 2)
            saved = sorted((tmp / "a").glob("*.ckpt"))[0]
            q = same(ref, weights_of(lit_run(adata, n, ckpt_dir=tmp / "b", resume=str(saved), every=n // 2)[0]))
    finally:
        lt.SamplerDataset.__len__ = length
        globals()["trainer_kwargs"] = kwargs
    out.append((
        f"pitfall, {n} steps: dataset without `__len__` (Lightning prefetches the next batch before each step): "
        "Lightning == hand-written; stopped at half and resumed == uninterrupted",
        "-", f"{r[0]} (max diff {r[1]:g}); {q[0]} (max diff {q[1]:g})",
    ))  # fmt: skip
    return out


def main() -> None:
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []

    adata = si.datasets.simulate(3, n_spots=800, n_genes=300, output="anndata", random_state=0)
    si.pp.preprocess(adata)
    si.gr.spatial_neighbors(adata)

    # (a) time and (b) determinism: two runs each with the same seed
    hand = [hand_run(adata) for _ in range(2)]
    lit = [lit_run(adata) for _ in range(2)]
    ht = [h["_seconds"][0] for _, h in hand]
    lt = [h["_seconds"][0] for _, h in lit]
    rows.append(
        (
            f"(a) {N_STEPS} steps, 1 thread: training loop (s), 2 runs",
            f"{ht[0]:.1f}, {ht[1]:.1f}",
            f"{lt[0]:.1f}, {lt[1]:.1f}",
        )
    )
    hw, lw = weights_of(hand[0][0]), weights_of(lit[0][0])
    det_h, det_l = same(hw, weights_of(hand[1][0])), same(lw, weights_of(lit[1][0]))
    rows.append(
        (
            "(b) same seed twice: bit-identical weights",
            f"{det_h[0]} (max diff {det_h[1]:g})",
            f"{det_l[0]} (max diff {det_l[1]:g})",
        )
    )
    cross = same(hw, lw)
    loss_same = np.array_equal(hand[0][1]["loss"], lit[0][1]["loss"])
    rows.append(
        (
            "Lightning run == hand-written run (weights, loss curve)",
            "-",
            f"{cross[0]}, {loss_same} (max diff {cross[1]:g})",
        )
    )

    # (c) resume: stopped at step 150 (and at the first anchor search, the end of the warm-up), resumed from the
    # checkpoint written at that step
    warmup = int(0.2 * N_STEPS)
    for stop in (STOP_AT, warmup):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            ckpt = tmp / "hand.pt"
            hand_run(adata, ckpt=ckpt, stop_at=stop, every=stop)
            hm, hh = hand_run(adata, ckpt=ckpt, resume=True, every=stop)
            res_h = same(hw, weights_of(hm))
            lit_run(adata, ckpt_dir=tmp / "lit", stop_at=stop, every=stop)
            saved = sorted((tmp / "lit").glob("*.ckpt"))
            lm, lh = lit_run(adata, ckpt_dir=tmp / "lit2", resume=str(saved[0]), every=stop)
            res_l = same(lw, weights_of(lm))
            if stop == STOP_AT:
                state = torch.load(saved[0], weights_only=True)
                loader = state["loops"]["fit_loop"].get("state_dict", {}).get("combined_loader", [])
                notes.append(
                    f"Lightning checkpoint `{saved[0].name}` (global_step = 2 x steps) loads with weights_only=True; "
                    f"top-level keys: {sorted(state)}; DataLoader state saved by Lightning: "
                    f"{[sorted(x) for x in loader]}; ours in 'inspire': {sorted(state['inspire'])}"
                )
        rows.append((
            f"(c) stopped at step {stop}{' (first anchor search)' if stop == warmup else ''}, resumed: == uninterrupted",
            f"{res_h[0]} (max diff {res_h[1]:g}; {len(hh['loss'])} losses)",
            f"{res_l[0]} (max diff {res_l[1]:g}; {len(lh['loss'])} losses)",
        ))  # fmt: skip

    # (d) data-parallel on CPU, 2 processes (gloo); each launch twice (the times on 2 shared cores are noisy)
    hds, lds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plain = ddp_check(out, [PY, "lightning_trainer.py", "ddp", str(out), "3", "ddp"], "lightning")
        for _ in range(2):
            for f in out.glob("*-rank*"):
                f.unlink()
            hds.append(ddp_check(out, [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                       "ddp_handwritten.py", str(out), str(N_STEPS)], "hand"))  # fmt: skip
            lds.append(ddp_check(out, [PY, "lightning_trainer.py", "ddp", str(out), str(N_STEPS),
                                       "ddp_find_unused_parameters_true"], "lightning"))  # fmt: skip
    hd, ld = hds[0], lds[0]
    err = [line for line in plain["log"].splitlines() if "Error" in line]
    notes.append(
        f"Lightning strategy='ddp' (find_unused_parameters=False), exit code {plain['rc']}: {err[-1][:300] if err else ''}"
    )
    for name, res in (("hand-written", hds[1]), ("lightning", lds[1]), ("hand-written", hd), ("lightning", ld)):
        if res["rc"] != 0:
            notes.append(f"{name} DDP failed:\n```\n{res['log']}\n```")

    def ddp_cell(results: list[dict]) -> str:
        if any(r["rc"] != 0 for r in results):
            return f"failed (exit {[r['rc'] for r in results]})"
        equal = all(r["equal"] for r in results)
        loops = ", ".join(f"{max(i['fit_seconds'] for i in r['info']):.1f}" for r in results)
        walls = ", ".join(f"{r['wall']:.1f}" for r in results)
        return f"ranks bit-identical: {equal}; training loop {loops} s; whole launch {walls} s"

    rows.append((f"(d) DDP, 2 CPU processes (gloo), {N_STEPS} steps, 2 launches", ddp_cell(hds), ddp_cell(lds)))
    if hd["rc"] == 0:
        notes.append(
            "Hand-written DDP runs `InspireModel.train` under torchrun: its whole launch also holds the count model's "
            f"refit ({hd['info'][0]['refit_seconds']:.1f} s on rank 0) and the latent codes of all spots; Lightning's "
            "launch (its own launcher re-runs the script per rank) runs the training loop only. 'training loop' is "
            "the slower rank's time inside fit."
        )

    rows.extend(pitfalls(adata))

    # out-of-core: counts on disk (BufferedSampler), 60 steps, both trainers
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.zarr"
        si.datasets.simulate(3, path=path, n_spots=800, n_genes=300, random_state=0)
        table = si.io.read_zarr(path, out_of_core=True, chunk_size=200)["table"]
        si.pp.preprocess(table)
        si.gr.spatial_neighbors(table)
        ho, _ = hand_run(table, 60)
        lo, lhist = lit_run(table, 60)
        kind = type(lo.data.counts).__module__.split(".")[0]
        ooc = same(weights_of(ho), weights_of(lo))
    rows.append(
        (
            "out-of-core counts (dask, BufferedSampler), 60 steps: Lightning == hand-written",
            f"counts: {kind}",
            f"{ooc[0]} (max diff {ooc[1]:g})",
        )
    )

    # (e) lines of code
    src = Path(_trainer.__file__).parent
    trainer_py, dist_py = src / "_trainer.py", src / "_distributed.py"
    lt_py = HERE / "lightning_trainer.py"
    hand_loc = sloc(trainer_py) + sloc(dist_py)
    hand_core = sloc(trainer_py, {"refit_count_model"}) + sloc(dist_py)
    lit_core = sloc(lt_py, {"_ddp_main", "__main__"})
    reused = sloc(trainer_py, {"Trainer", "refit_count_model", "_fresh_early_stop"})
    rows.append((
        "(e) lines of code (no blanks, comments, docstrings)",
        f"{hand_loc} (_trainer.py {sloc(trainer_py)} + _distributed.py {sloc(dist_py)}); {hand_core} without the count-model refit",
        f"{lit_core} (module {sloc(lt_py, {'_ddp_main', '__main__', 'SamplerDataset', 'StatefulLoader', 'trainer_kwargs'})} "
        f"+ data glue {lit_core - sloc(lt_py, {'_ddp_main', '__main__', 'SamplerDataset', 'StatefulLoader', 'trainer_kwargs'})}), "
        f"reusing {reused} lines of _trainer.py (TrainConfig, encoder_input, constants); no early stopping, no refit",
    ))  # fmt: skip

    # cost of the dependency
    mb = installed_mb("lightning", "pytorch_lightning", "torchmetrics", "lightning_utilities")
    rows.append(
        (
            "extra dependency installed (lightning, pytorch_lightning, torchmetrics, lightning_utilities)",
            "0 MB",
            f"{mb:.0f} MB",
        )
    )
    rows.append((
        "import time (s, median of 3): `lightning.pytorch` after `torch, sd_inspire` / after `torch` alone",
        "0 (the trainer is part of sd_inspire)",
        f"{import_seconds('lightning.pytorch', 'torch, sd_inspire.model'):.2f} / {import_seconds('lightning.pytorch'):.2f}",
    ))  # fmt: skip

    total = time.perf_counter() - t_all
    header = "| check | hand-written `Trainer` + `_distributed.py` | Lightning prototype |\n| --- | --- | --- |\n"
    table = header + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    uname = platform.uname()
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    text = (
        "# Hand-written trainer vs Lightning: measurements\n\n"
        "Command (from `benchmarks/lightning/`): `OMP_NUM_THREADS=1 .venv/bin/python compare.py`\n\n"
        f"Hardware: {os.cpu_count()}-core {uname.machine} CPU ({cpu}), no GPU; one core was busy with another job, "
        "so times are indicative (the DDP runs share the 2 cores).\n\n"
        f"Versions: Python {platform.python_version()}, torch {torch.__version__}, lightning {version('lightning')}, "
        f"numpy {np.__version__}, sd-inspire at git {git} (working tree with other people's uncommitted edits).\n\n"
        f"Data: `si.datasets.simulate(3, n_spots=800, n_genes=300, random_state=0)`, preprocessed, default model "
        f"(lgcn encoder, 32 latent, 20 factors), batch 1024 (341 per slice), {N_STEPS} steps, alignment 'both'.\n\n"
        f"{table}\n\nNotes:\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + f"\n\nTotal time of compare.py: {total:.0f} s.\n"
    )
    print(text)
    (HERE / "results.md").write_text(text)


if __name__ == "__main__":
    main()
