from __future__ import annotations

import importlib.util
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
    out = capsys.readouterr().out
    assert "zarr store:" in out
    assert "figure:" in out
    store = tmp_path / "simulated.zarr"
    back = spatialdata.read_zarr(store)
    t = back["table"]
    assert t.n_obs == 800
    assert "spatial_connectivities" in t.obsp
    assert {"X_inspire", "inspire_factors"} <= set(t.obsm)
    assert t.obs["inspire_domain"].nunique() == 5
    assert set(back.tables) == {"table", "inspire_factors"}
    for fig in ("domain", "domains", "factors", "programs", "history"):
        assert (tmp_path / f"simulated_{fig}.png").stat().st_size > 1000
    # running again replaces the store without leaving a partial one behind
    assert _load().main(["--out", str(tmp_path), "--n-spots", "100", "--max-steps", "5"]) == 0
    assert spatialdata.read_zarr(store)["table"].n_obs == 400
    assert not (tmp_path / ".simulated.zarr.partial").exists()


def test_quickstart_dlpfc(tmp_path, dlpfc_dir, capsys):
    assert _load().main(["--dlpfc", str(dlpfc_dir), "--out", str(tmp_path), "--max-steps", "10"]) == 0
    t = spatialdata.read_zarr(tmp_path / "dlpfc.zarr")["table"]
    assert t.obs["layer"].notna().mean() > 0.98
    assert (tmp_path / "dlpfc_layer.png").exists()
