"""Execute the tutorial notebooks top to bottom.

    .venv/bin/python tutorials/run_notebooks.py [--small] [--write] [NOTEBOOK ...]

``--small`` overrides each notebook's ``parameters`` cell with small settings (few training steps, fewer spots) so
that all of them run in a few minutes: CI does this, so that none of them rots. ``--write`` stores the executed
notebooks, outputs included, back in place: that is how the committed outputs are made (full settings only).
Notebooks run with ``tutorials/`` as the working directory; a notebook whose data folder is missing is skipped with
a message. Exit code 1 if any notebook fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED_DATA = HERE.parent.parent / "shared" / "data"

#: Per notebook: the data folder it needs (relative to ../shared/data, or None) and the small settings used by CI.
NOTEBOOKS: dict[str, tuple[str | None, dict[str, object]]] = {
    "dlpfc.ipynb": ("visium/DLPFC_151673-151676", {"max_steps": 30}),
    "cross_technology.ipynb": (None, {"max_steps": 30, "n_spots": 600}),
    "alignment_3d.ipynb": ("visium/DLPFC_151673-151676", {"max_steps": 30}),
    "reference_mapping.ipynb": ("visium/DLPFC_151673-151676", {"max_steps": 30, "n_spots": 300}),
    "plotting.ipynb": ("visium/DLPFC_151673-151676", {"max_steps": 30}),
    "large_data.ipynb": (None, {"max_steps": 20, "n_spots": 2_000}),
}


def _inject(nb, overrides: dict[str, object]) -> None:
    """Insert a cell setting ``overrides`` after the cell tagged ``parameters`` (as papermill does)."""
    import nbformat

    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError("no cell tagged 'parameters'")
    source = "# injected by run_notebooks.py --small\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)


def run(path: Path, *, small: bool, write: bool, timeout: int) -> float:
    """Execute one notebook; return its wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if small:
        _inject(nb, NOTEBOOKS[path.name][1])
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    if write:
        nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all tutorials)")
    parser.add_argument("--small", action="store_true", help="small settings (CI)")
    parser.add_argument("--write", action="store_true", help="store the executed notebooks in place")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default: 1800)")
    args = parser.parse_args(argv)
    if args.small and args.write:
        parser.error("--write stores the outputs users read: run it with the full settings, without --small")
    paths = [p.resolve() for p in args.notebooks] or [HERE / name for name in NOTEBOOKS]
    for p in paths:
        if p.name not in NOTEBOOKS or not p.is_file():
            parser.error(f"{p}: not one of the tutorials ({', '.join(NOTEBOOKS)})")

    failed = []
    for path in paths:
        data = NOTEBOOKS[path.name][0]
        if data is not None and not (SHARED_DATA / data).is_dir():
            print(f"SKIP {path.name}: its data folder {SHARED_DATA / data} is missing", flush=True)
            continue
        try:
            seconds = run(path, small=args.small, write=args.write, timeout=args.timeout)
        except Exception as error:  # noqa: BLE001 - report every notebook, then fail
            print(f"FAIL {path.name}: {error}", flush=True)
            failed.append(path.name)
        else:
            print(f"ok   {path.name} ({seconds:.0f} s)", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
