from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import spatialdata

QUICKSTART = Path(__file__).resolve().parents[1] / "tutorials" / "quickstart.py"


def _load():
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_simulated(tmp_path, capsys):
    assert _load().main(["--out", str(tmp_path), "--n-spots", "200", "--max-steps", "20"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith(f"wrote {(tmp_path / 'simulated.zarr').resolve()}: obsm X_inspire, inspire_factors")
    assert out[-1].startswith(f"figures: {(tmp_path / 'simulated').resolve()}_{{annotation,domains,")
    store = tmp_path / "simulated.zarr"
    back = spatialdata.read_zarr(store)
    t = back["table"]
    assert t.n_obs == 800
    assert "spatial_connectivities" in t.obsp
    assert {"X_inspire", "inspire_factors"} <= set(t.obsm)
    assert t.obs["inspire_domain"].nunique() == 5
    assert set(back.tables) == {"table", "inspire_factors"}
    for fig in ("annotation", "domains", "factors", "programs", "history"):
        assert (tmp_path / f"simulated_{fig}.png").stat().st_size > 1000
    # running again replaces the store without leaving a partial one behind
    assert _load().main(["--out", str(tmp_path), "--n-spots", "100", "--max-steps", "5"]) == 0
    assert spatialdata.read_zarr(store)["table"].n_obs == 400
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".simulated.zarr")]


def test_quickstart_dlpfc(tmp_path, dlpfc_dir, capsys):
    assert _load().main(["--dlpfc", str(dlpfc_dir), "--out", str(tmp_path), "--max-steps", "10"]) == 0
    t = spatialdata.read_zarr(tmp_path / "dlpfc.zarr")["table"]
    assert t.obs["layer"].notna().mean() > 0.98
    assert (tmp_path / "dlpfc_annotation.png").exists()


def test_quickstart_as_a_script_is_quiet(tmp_path):
    # run as a user runs it: no warning of the stack underneath, progress bars and a short summary only
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(QUICKSTART), "--out", str(tmp_path), "--n-spots", "150", "--max-steps", "10"],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONWARNINGS"},  # Python's defaults
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in re.split(r"[\r\n]", done.stderr) if line.strip()]
    assert not [line for line in lines if "Warning" in line or "warn" in line.lower()], done.stderr
    # a progress bar redraws itself as often as the machine's speed makes it (on a new line when stderr is not a
    # terminal): count the bars, by their names, and the other lines
    bar = re.compile(r"^\s*([\w ]+):\s+\d+%\|")
    bars = {m.group(1) for m in map(bar.match, lines) if m}
    others = [line for line in lines if not bar.match(line)]
    assert bars <= {"training", "fitting factors", "Gaussian mixture"}, done.stderr
    assert len(others) < 6, done.stderr
