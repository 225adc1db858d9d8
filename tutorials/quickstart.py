"""The main job on a bundled default: slices -> preprocess -> graph -> integrate -> domains -> zarr store + figures.

By default the slices are simulated (``sd_inspire.datasets.simulate``: four serial sections measured by Visium,
Stereo-seq, Slide-seq and MERFISH). ``--dlpfc FOLDER`` reads the four real DLPFC Visium slices instead, from the
folder holding ``151673/`` ... ``151676/`` (Space Ranger layout) and ``barcode_level_layer_map.tsv``.

    .venv/bin/python tutorials/quickstart.py [--dlpfc ../shared/data/visium/DLPFC_151673-151676] [--out results]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

import sd_inspire as si

DLPFC_SLICES = ("151673", "151674", "151675", "151676")


def load_dlpfc(folder: Path):
    """Read the four DLPFC slices and attach the manual layer annotation as ``obs["layer"]``."""
    slices = {s: si.io.visium(folder / s / "outs", dataset_id=s, images=False) for s in DLPFC_SLICES}
    sdata = si.pp.concat(slices)
    table = sdata["table"]
    layers = pd.read_csv(
        folder / "barcode_level_layer_map.tsv", sep="\t", header=None, names=["barcode", "slice", "layer"]
    )
    layers.index = layers["barcode"] + "-" + layers["slice"].astype(str)
    table.obs["layer"] = pd.Categorical(layers["layer"].reindex(table.obs_names).to_numpy())
    return sdata, "layer"


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dlpfc", type=Path, help="folder with the four DLPFC Visium slices (real data)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results)")
    parser.add_argument("--n-spots", type=int, default=1500, help="spots per simulated slice (default: 1500)")
    parser.add_argument("--seed", type=int, default=0, help="random_state of simulation and model (default: 0)")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps (default: from the data size)")
    parser.add_argument("--n-factors", type=int, default=10, help="spatial factors / gene programs (default: 10)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.dlpfc is not None:
        if not args.dlpfc.is_dir():
            parser.error(f"--dlpfc {args.dlpfc}: no such folder")
        sdata, color = load_dlpfc(args.dlpfc)
        name = "dlpfc"
    else:
        sdata = si.datasets.simulate(
            4,
            n_spots=args.n_spots,
            technology=["visium", "stereoseq", "slideseq", "merfish"],
            random_state=args.seed,
        )
        color, name = "domain", "simulated"
    table = sdata["table"]
    print(f"{name}: {table.n_obs} spots x {table.n_vars} genes in {table.obs['slice'].nunique()} slices")

    si.pp.preprocess(sdata, n_top_genes=2000, gene_space="union" if args.dlpfc is None else "shared")
    si.gr.spatial_neighbors(sdata)
    degree = table.obsp["spatial_connectivities"].sum(axis=1)
    print(
        f"gene space: {int(table.var['highly_variable'].sum())} genes; graph: {degree.mean():.2f} neighbours per spot"
    )
    si.tl.integrate(sdata, n_factors=args.n_factors, max_steps=args.max_steps, random_state=args.seed)
    n_domains = table.obs[color].nunique()
    si.tl.domains(sdata, n_domains=n_domains, refine=3, random_state=args.seed)
    from sd_inspire.tl.metrics import ari

    score = ari(table.obs[color].to_numpy(), table.obs["inspire_domain"])

    args.out.mkdir(parents=True, exist_ok=True)
    kinds = ("annotation", "domains", "factors", "programs", "history")
    figures = {kind: args.out / f"{name}_{kind}.png" for kind in kinds}
    si.pl.spatial(sdata, color=color, save=figures["annotation"], show=False)  # the known domains or layers
    si.pl.domains(
        sdata, reference=color, save=figures["domains"], show=False
    )  # domains above the annotation, matched colours
    strongest = [int(k) for k in table.obsm["inspire_factors"].var(axis=0).argsort()[::-1][:3]]
    si.pl.factors(
        sdata, factors=strongest, n_genes=3, save=figures["factors"], show=False
    )  # all slices, one scale per factor
    si.pl.loadings(sdata, factors=strongest, save=figures["programs"], show=False)  # their top genes
    si.pl.history(sdata, save=figures["history"], show=False)  # training curves
    store = args.out / f"{name}.zarr"
    si.io.write_zarr(sdata, store, overwrite=True)  # all at once: a failed run leaves an earlier store intact
    print(
        f"wrote {store.resolve()}: obsm X_inspire, inspire_factors; obs inspire_domain ({n_domains} domains, ARI "
        f"{score:.3f} against obs[{color!r}]); table inspire_factors"
    )
    print(
        f"figures: {(args.out / name).resolve()}_{{{','.join(kinds)}}}.png; done in {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
