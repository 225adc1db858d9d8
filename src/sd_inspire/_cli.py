"""The command line ``sd-inspire``: vendor outputs into a zarr store, and the integration of stores.

``sd-inspire read`` reads Visium, Stereo-seq, Slide-seq or MERFISH outputs with :func:`sd_inspire.io.read` and
writes one SpatialData zarr store; ``sd-inspire integrate`` runs :func:`sd_inspire.tl.integrate` (and optionally
:func:`sd_inspire.tl.domains`) on stores and writes the annotated store. ``python -m sd_inspire`` is the same
program. Heavy packages (spatialdata, torch, matplotlib) are imported inside the commands, so ``--help`` answers
without loading them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sd_inspire._constants import Key
from sd_inspire._constants._constants import ALIGNMENTS, ENCODERS, FEATURES, REFINE_PASSES, STRUCTURES

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np
    from spatialdata import SpatialData

PROG = "sd-inspire"
TECHNOLOGIES = ("visium", "stereoseq", "slideseq", "merfish")
#: Exit status of an error the user can fix (wrong path, unreadable file, bad value); argparse uses 2 for usage.
EXIT_ERROR = 1
#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_REFINE_FACTORS_HELP = (
    "EM passes moving each spot's factor proportions towards its own counts after training; 0 keeps the factor "
    f"head's spatially smooth output (default: {REFINE_PASSES})"
)
_THREADS_HELP = (
    "CPU threads of torch; a run repeats exactly only on the same number, which the summary prints (default: "
    "torch's own, OMP_NUM_THREADS or every core)"
)
#: Factors drawn in the figures: those with the largest variance over spots.
_FIGURE_FACTORS = 6
#: Suffixes dropped from a file name to name its slice (``sample.gem.gz`` -> ``sample``).
_FILE_SUFFIXES = (".gz", ".gem", ".gef", ".cellbin", ".csv", ".tsv", ".h5ad", ".h5")
#: Rounds of spatial majority vote of the domains: the setting of the README, the quick start and the tutorials.
_DEFAULT_REFINE = 3
#: Known, harmless notices of the stack underneath (the package's own warnings are shown).
_QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    ("zarr v3 autosharding", UserWarning, ""),
    (".*[Cc]onsolidated metadata", UserWarning, ""),
    (".*Converting `region_key", UserWarning, ""),
    (".*The table is annotating", UserWarning, ""),
    ("", SyntaxWarning, "docrep"),
    ("", FutureWarning, "squidpy"),
    ("", DeprecationWarning, "torch_geometric"),
)

_DESCRIPTION = """\
Integrate spatial transcriptomics slices (10x Visium, Stereo-seq, Slide-seq,
MERFISH) into one latent space and one non-negative factorisation (INSPIRE),
on SpatialData zarr stores. Run `sd-inspire COMMAND --help` for the options of
a command."""

_MAP_DESCRIPTION = """\
Map new slices onto a model trained by `sd-inspire integrate --model-dir DIR`
(or `tl.integrate(model_dir=...)`): the model's encoder and gene programs stay
frozen, only the new slices' own parameters are learnt, so the new slices get
the reference's latent space and factor axes in seconds to a minute. Writes a
new annotated store with the keys of `integrate`; inputs are never modified."""

_EPILOG = """\
examples:
  sd-inspire read DLPFC/151673 DLPFC/151674 -o dlpfc.zarr
  sd-inspire integrate dlpfc.zarr -o dlpfc_inspire.zarr --n-domains 7 \\
      --figures figures
  python -m sd_inspire integrate --help

exit status: 0 on success, 1 for a wrong path, an unreadable file or a bad
value, 2 for a usage error, 130 when interrupted. Errors are one line on
stderr; --debug shows the Python traceback instead."""

_READ_DESCRIPTION = """\
Read vendor outputs into one SpatialData zarr store. Each PATH is one slice;
its technology is detected from the files present (--technology forces one):

  visium     a Space Ranger outs/ folder (or the folder holding it): spatial/
             (scale factors, tissue positions) and a count matrix
             (filtered_feature_bc_matrix.h5 or a MatrixMarket folder)
  stereoseq  a GEM (.gem, .gem.gz) or GEF (.gef, .cellbin.gef) file, or a
             folder holding one
  slideseq   a bead locations csv with counts (DGE csv/tsv, mtx or h5ad)
  merfish    a MERSCOPE *cell_by_gene.csv with *cell_metadata.csv

The slices go into table "table": raw counts over the union of genes,
obs["slice"], obs["technology"], obsm["spatial"] in each slice's own frame,
and one shapes element per slice."""

_READ_EPILOG = """\
Slices are named by --name, else by their folder ("outs" counts as its
parent) or their file name.

examples:
  sd-inspire read DLPFC/151673 -o 151673.zarr
  sd-inspire read DLPFC/151673 DLPFC/151674 --name A B -o dlpfc.zarr
  sd-inspire read run1/sample.gem.gz --technology stereoseq -o stereo.zarr"""

_INTEGRATE_DESCRIPTION = """\
Integrate the slices of one or more zarr stores (as `sd-inspire read` writes
them) with INSPIRE and write the annotated store to OUT. Steps not run yet run
with their defaults: preprocessing (QC, highly variable genes per slice,
normalisation; raw counts kept in layers["counts"]) and the spatial graph of
each slice. Several stores are combined slice by slice from their raw counts
(preprocessing and graph are then redone). Input stores are never modified."""

_INTEGRATE_EPILOG = """\
written into OUT, table "table":
  obsm["X_inspire"]         latent representation (spots x --n-latent)
  obsm["inspire_factors"]   spatial factor proportions (rows sum to 1)
  varm["inspire_loadings"]  gene programs (genes x --n-factors)
  var["inspire_gene"]       genes in the model
  uns["inspire"]            parameters, genes, slice gene effects, history
  obs["inspire_domain"]     spatial domains (with --n-domains)
and table "inspire_factors": factor proportions annotating the same shapes.
--figures DIR writes factors.png, programs.png, history.png and, with
--n-domains, domains.png.

examples:
  sd-inspire integrate dlpfc.zarr -o dlpfc_inspire.zarr --n-domains 7
  sd-inspire integrate a.zarr b.zarr -o ab.zarr --max-steps 500 \\
      --figures figures --overwrite
  sd-inspire integrate big.zarr -o big_inspire.zarr --device cuda"""


class CLIError(Exception):
    """An error reported to the user as one line, exit status 1."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``sd-inspire``.

    Parameters
    ----------
    argv
        Arguments after the program name; ``None`` takes them from :data:`sys.argv`.

    Returns
    -------
    The exit status: 0 on success, 1 for an error the user can fix (a path that does not exist, a file that cannot
    be read or is not recognised, a bad value, an output that exists without ``--overwrite``), 2 for a usage error,
    130 when interrupted. An error is reported as one line ``sd-inspire: error: ...`` on stderr; with ``--debug``
    it is raised instead, with its traceback.

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    sd-inspire ...
    0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return _exit_code(exit_.code)
    from sd_inspire._settings import settings

    with settings.override(verbosity="info" if args.verbose else "warning"):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Run a parsed command: warnings shown once and briefly, errors as one line, Ctrl-C as exit status 130."""
    try:
        with warnings.catch_warnings():
            for message, category, module in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
            warnings.showwarning = _show_warning
            return int(args.run(args))
    except SystemExit as exit_:  # a usage error found after parsing (args.parser.error)
        return _exit_code(exit_.code)
    except KeyboardInterrupt:
        if args.debug:
            raise
        if argv is None:  # the process ends next: run from the shell, not called from Python
            # zarr's writer tasks cut short are reported at exit ("Task was destroyed but it is pending!", "Exception
            # ignored in: <coroutine ...>" with a traceback from inside zarr): noise after the user's own Ctrl-C
            logging.getLogger("asyncio").disabled = True
            sys.unraisablehook = _ignore_unraisable
        _stderr(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except (CLIError, ValueError, KeyError, FileNotFoundError, OSError) as err:
        if args.debug:
            raise
        _stderr(f"{PROG}: error: {_one_line(err)}")
        return EXIT_ERROR


def _ignore_unraisable(unraisable: Any) -> None:
    del unraisable


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sd-inspire`` and its subcommands."""
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log each step (the package's INFO messages)")
    common.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    commands = parser.add_subparsers(title="commands", dest="COMMAND", required=True)
    _add_read(commands, common)
    _add_integrate(commands, common)
    _add_map(commands, common)
    return parser


def _subcommand(
    commands: Any, name: str, common: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], **texts: str
) -> argparse.ArgumentParser:
    """A subcommand ``name`` with the common options, run by ``run``; ``texts``: help, description, epilog."""
    sub = commands.add_parser(name, parents=[common], formatter_class=_Formatter, **texts)
    sub.set_defaults(run=run, parser=sub)
    return sub


def _add_read(commands: Any, common: argparse.ArgumentParser) -> None:
    read = _subcommand(
        commands,
        "read",
        common,
        _read,
        help="read vendor outputs into a SpatialData zarr store",
        description=_READ_DESCRIPTION,
        epilog=_READ_EPILOG,
    )
    read.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="vendor folder or file, one per slice")
    read.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="zarr store to write")
    read.add_argument("--technology", choices=TECHNOLOGIES, help="force a reader for every PATH (default: detect)")
    read.add_argument(
        "--name",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="slice names, one per PATH, in order (default: the folder or file names)",
    )
    read.add_argument("--no-images", action="store_true", help="leave out tissue images (Visium)")
    read.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_integrate(commands: Any, common: argparse.ArgumentParser) -> None:
    # one flat list of the options, in the order --help shows them: it stays whole
    integrate = _subcommand(
        commands,
        "integrate",
        common,
        _integrate,
        help="integrate the slices of zarr stores with INSPIRE",
        description=_INTEGRATE_DESCRIPTION,
        epilog=_INTEGRATE_EPILOG,
    )
    integrate.add_argument("stores", nargs="+", type=Path, metavar="IN.zarr", help="zarr store(s) to integrate")
    integrate.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="zarr store to write")
    integrate.add_argument(
        "--n-factors", type=int, default=20, metavar="F", help="spatial factors / gene programs (default: 20)"
    )
    integrate.add_argument("--n-latent", type=int, default=32, metavar="D", help="latent dimensions (default: 32)")
    integrate.add_argument(
        "--encoder",
        choices=ENCODERS,
        default=ENCODERS[0],
        help="graph encoder: neighbour propagation or attention (default: lgcn)",
    )
    integrate.add_argument(
        "--n-hops", type=int, default=3, metavar="H", help="neighbour hops the encoder sees, 0 for none (default: 3)"
    )
    integrate.add_argument(
        "--features",
        choices=FEATURES,
        default=FEATURES[0],
        help="encoder input: PCA of Pearson residuals or of log-normalised values (default: pearson)",
    )
    integrate.add_argument(
        "--structure",
        choices=STRUCTURES,
        default=STRUCTURES[0],
        help="what the latent keeps: the most smoothed hop (domains), or every hop weighted equally (default: smoothed)",
    )
    integrate.add_argument(
        "--alignment",
        choices=ALIGNMENTS,
        default=ALIGNMENTS[0],
        help="slice alignment: discriminator and cross-slice anchors, or one of them (default: both)",
    )
    integrate.add_argument(
        "--n-top-genes",
        type=int,
        metavar="N",
        help="highly variable genes per slice for the gene space (default: 3000); preprocessing is redone when given",
    )
    integrate.add_argument(
        "--gene-space",
        choices=("shared", "union"),
        help="genes measured by every slice, or by any (panels of other sizes); preprocessing is redone when given "
        "(default: shared)",
    )
    integrate.add_argument("--n-domains", type=int, metavar="K", help="also cluster K spatial domains (GMM)")
    integrate.add_argument(
        "--n-components",
        type=int,
        metavar="C",
        help="fit C GMM components and merge them into the K domains, e.g. K+2 for layered tissue (default: K)",
    )
    integrate.add_argument(
        "--smooth",
        type=int,
        metavar="S",
        help="rounds of averaging the latent space over the spatial graph before clustering the domains; 0 for "
        "small, sharply bounded domains or cell classes (default: 1)",
    )
    integrate.add_argument(
        "--refine",
        type=int,
        metavar="R",
        help="rounds of majority vote of the domains over the spatial graph (default: 3, as in the README and "
        "tutorials)",
    )
    integrate.add_argument(
        "--max-steps", type=int, metavar="N", help="training steps (default: from the data size, 600 to 3000)"
    )
    integrate.add_argument(
        "--batch-size", type=int, default=1024, metavar="N", help="spots per minibatch (default: 1024)"
    )
    integrate.add_argument(
        "--n-models", type=int, default=1, metavar="N", help="ensemble of N models, with uncertainty (default: 1)"
    )
    integrate.add_argument(
        "--refine-factors",
        type=int,
        default=REFINE_PASSES,
        metavar="N",
        help=_REFINE_FACTORS_HELP,
    )
    integrate.add_argument("--seed", type=int, default=0, help="random seed of model and domains (default: 0)")
    integrate.add_argument(
        "--device", default="auto", help="auto (a GPU when present), cpu, cuda, cuda:N or mps (default: auto)"
    )
    integrate.add_argument("--threads", type=int, metavar="N", help=_THREADS_HELP)
    integrate.add_argument(
        "--model-dir", type=Path, metavar="DIR", help="keep the trained model in DIR (InspireModel.load reads it)"
    )
    integrate.add_argument("--figures", type=Path, metavar="DIR", help="write PNG figures into DIR")
    integrate.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    integrate.add_argument("--overwrite", action="store_true", help="replace OUT (and figures) if they exist")


def _add_map(commands: Any, common: argparse.ArgumentParser) -> None:
    mapper = _subcommand(
        commands,
        "map",
        common,
        _map,
        help="map new slices onto a trained model (kept with integrate --model-dir)",
        description=_MAP_DESCRIPTION,
    )
    mapper.add_argument("stores", nargs="+", type=Path, metavar="IN.zarr", help="zarr store(s) of the new slices")
    mapper.add_argument(
        "--model", type=Path, required=True, metavar="DIR", help="the reference: a folder of integrate --model-dir"
    )
    mapper.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="zarr store to write")
    mapper.add_argument(
        "--max-steps", type=int, metavar="N", help="training steps of the new slices' parameters (default: 100-1000)"
    )
    mapper.add_argument("--batch-size", type=int, default=1024, metavar="N", help="spots per minibatch (default: 1024)")
    mapper.add_argument("--refine-factors", type=int, default=REFINE_PASSES, metavar="N", help=_REFINE_FACTORS_HELP)
    mapper.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    mapper.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    mapper.add_argument("--threads", type=int, metavar="N", help=_THREADS_HELP)
    mapper.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    mapper.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


# --- read --------------------------------------------------------------------------------------------------------


def _read(args: argparse.Namespace) -> int:
    paths: list[Path] = args.paths
    names: list[str] = args.name if args.name else [_slice_name(p) for p in paths]
    if len(names) != len(paths):
        _usage(args, f"--name gives {len(names)} names for {len(paths)} paths; give one per PATH")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CLIError(f"slice names repeat ({', '.join(repeated)}); name the slices with --name")
    for path in paths:
        _require_exists(path)
    _check_output(args.output, overwrite=args.overwrite)

    import sd_inspire as si

    slices = {}
    for path, name in zip(paths, names, strict=True):
        with _reading(path):
            sdata = si.io.read(path, technology=args.technology, dataset_id=name)
        if args.no_images:
            for image in list(sdata.images):
                del sdata.images[image]
        slices[name] = sdata
    sdata = si.pp.concat(slices)
    table = sdata[Key.TABLE]
    measured = table.varm[Key.MEASURED]
    technology = table.obs.groupby(Key.SLICE, observed=True)[Key.TECHNOLOGY].first()
    spots = table.obs[Key.SLICE].value_counts()
    _write_store(sdata, args.output)
    for path, name in zip(paths, names, strict=True):
        _stdout(
            f"{name}: {int(spots[name])} spots x {int(measured[name].sum())} genes ({technology[name]}) from {path}"
        )
    _stdout(
        f"wrote {_absolute(args.output)} ({len(names)} slice{'s' * (len(names) > 1)}, {table.n_obs} spots, "
        f"{table.n_vars} genes)"
    )
    return 0


def _slice_name(path: Path) -> str:
    """A slice's default name: its folder (``outs`` counts as its parent) or its file name without suffixes."""
    path = _absolute(path)
    if path.is_dir():
        return path.parent.name if path.name == "outs" else path.name
    name = path.name
    while any(name.endswith(s) for s in _FILE_SUFFIXES):
        name = name[: name.rindex(".")]
    return name or path.name


# --- integrate ---------------------------------------------------------------------------------------------------


def _integrate(args: argparse.Namespace) -> int:
    _check_options(args, ("n_factors", "n_latent", "n_domains", "max_steps", "batch_size", "n_models", "n_top_genes"))
    if args.n_components is not None and not args.n_domains:
        _usage(args, "--n-components needs --n-domains")
    for flag in ("smooth", "refine"):
        value = getattr(args, flag)
        if value is not None and not args.n_domains:
            _usage(args, f"--{flag} needs --n-domains")
        if value is not None and value < 0:
            raise CLIError(f"--{flag} must be an integer >= 0, got {value}")
    if args.n_components is not None and args.n_components < args.n_domains:
        raise CLIError(f"--n-components must be at least --n-domains ({args.n_domains}), got {args.n_components}")
    if args.n_hops < 0:
        raise CLIError(f"--n-hops must be an integer >= 0, got {args.n_hops}")
    for store in args.stores:
        _require_exists(store)
    resolved = [Path(store).resolve() for store in args.stores]
    repeated = sorted(
        {str(store) for store, path in zip(args.stores, resolved, strict=True) if resolved.count(path) > 1}
    )
    if repeated:
        raise CLIError(f"the same store is given more than once ({', '.join(repeated)}): its spots would be duplicated")
    _check_output(args.output, overwrite=args.overwrite)
    if args.model_dir is not None and (args.model_dir / "model.pt").exists():
        raise CLIError(f"{args.model_dir} already holds a model; choose another --model-dir")
    figure_names = ["factors", "programs", "history"] + (["domains"] if args.n_domains else [])
    figures = _prepare_figures(args.figures, figure_names, overwrite=args.overwrite) if args.figures else []

    import sd_inspire as si

    sdata = _load_stores(args.stores)
    n_obs = sdata[Key.TABLE].n_obs
    for option in ("n_domains", "n_components"):  # checked before training, which would otherwise be lost
        value = getattr(args, option)
        if value is not None and value > n_obs:
            raise CLIError(f"--{option.replace('_', '-')} {value} exceeds the number of spots in the input ({n_obs})")
    before = _keys(sdata)
    if not args.n_domains and Key.INSPIRE_DOMAIN in sdata[Key.TABLE].obs:
        _stderr(
            f"{PROG}: warning: obs[{Key.INSPIRE_DOMAIN!r}] is from an earlier run and is kept as it is; "
            "pass --n-domains to recompute it"
        )
    if args.n_top_genes is not None or args.gene_space is not None:  # preprocessing with these settings, from counts
        given = {"n_top_genes": args.n_top_genes, "gene_space": args.gene_space}
        table = sdata[Key.TABLE]
        si.pp.reset_counts(table)
        si.pp.preprocess(table, **{k: v for k, v in given.items() if v is not None})
    start = time.perf_counter()
    si.tl.integrate(
        sdata,
        n_factors=args.n_factors,
        n_latent=args.n_latent,
        encoder=args.encoder,
        n_hops=args.n_hops,
        features=args.features,
        structure=args.structure,
        alignment=args.alignment,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        n_models=args.n_models,
        refine_factors=args.refine_factors,
        device=args.device,
        random_state=args.seed,
        model_dir=args.model_dir,
        show_progress_bar=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    if args.n_domains:
        si.tl.domains(
            sdata,
            n_domains=args.n_domains,
            n_components=args.n_components,
            smooth=args.smooth,
            refine=_DEFAULT_REFINE if args.refine is None else args.refine,
            random_state=args.seed,
            show_progress_bar=not args.no_progress,
        )
    written = _written(before, _keys(sdata), domains=bool(args.n_domains))
    _write_store(sdata, args.output)
    for path in figures:
        _draw(sdata, path)
    _summary(sdata, args, seconds, written, figures)
    return 0


def _check_options(args: argparse.Namespace, positive: Sequence[str]) -> None:
    """Check the integer options ``positive`` and ``--threads`` (>= 1) and ``--device``; set torch's threads."""
    for option in (*positive, "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    if not _DEVICE.fullmatch(args.device):
        raise CLIError(f"--device {args.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if args.threads is not None:  # checked above with the positive integers
        import torch

        torch.set_num_threads(args.threads)


def _map(args: argparse.Namespace) -> int:
    _check_options(args, ("max_steps", "batch_size"))
    for store in [*args.stores, args.model]:
        _require_exists(store)
    _check_output(args.output, overwrite=args.overwrite)

    import sd_inspire as si
    from sd_inspire.model import InspireModel

    with _reading(args.model):
        model = InspireModel.load(args.model, device=args.device)
    sdata = _load_stores(args.stores)
    before = _keys(sdata)
    start = time.perf_counter()
    si.tl.map_query(
        sdata,
        model,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        refine_factors=args.refine_factors,
        device=args.device,
        random_state=args.seed,
        show_progress_bar=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    written = _written(before, _keys(sdata), domains=False)
    _write_store(sdata, args.output)
    _summary(sdata, args, seconds, written, [], verb="mapped")
    _stdout(f"reference: {args.model} ({model.reference_id}), slices {', '.join(model.slice_names)}")
    return 0


def _load_stores(paths: Sequence[Path]) -> SpatialData:
    """One SpatialData with table ``"table"`` and ``obs["slice"]``; several stores are combined slice by slice."""
    import sd_inspire as si

    loaded = []
    for path in paths:
        with _reading(path):
            sdata = si.io.read_zarr(path)
        sdata.path = None  # results go to the output store only, never into an input
        if Key.TABLE not in sdata.tables:
            raise CLIError(
                f"{path}: the store has no table {Key.TABLE!r} (tables: {sorted(sdata.tables)}); "
                "write stores with `sd-inspire read`"
            )
        loaded.append(sdata)
    if len(loaded) == 1 and Key.SLICE in loaded[0][Key.TABLE].obs:
        return loaded[0]
    slices: dict[str, SpatialData] = {}
    for path, sdata in zip(paths, loaded, strict=True):
        store = _slice_name(path).removesuffix(".zarr")
        for name, part in si.pp.split(sdata, table_key=Key.TABLE, name=store).items():
            key = name if name not in slices else f"{store}_{name}"
            if key in slices:
                raise CLIError(f"{path}: slice {name!r} is in more than one store; rename the stores")
            slices[key] = part
    obs_names = [n for part in slices.values() for n in part[Key.TABLE].obs_names]
    # several stores: combined from raw counts, then preprocessed (and the graph built) as one
    index_unique = None if len(set(obs_names)) == len(obs_names) else "-"
    return si.pp.concat(slices, index_unique=index_unique, reset_counts=len(loaded) > 1)


def _keys(sdata: SpatialData) -> dict[str, set[str]]:
    table = sdata[Key.TABLE]
    keys = {"tables": set(sdata.tables), "obs": set(table.obs.columns), "var": set(table.var.columns)}
    for where in ("obsm", "varm", "obsp", "layers", "uns"):
        keys[where] = set(getattr(table, where).keys())
    return keys


def _written(before: dict[str, set[str]], after: dict[str, set[str]], *, domains: bool) -> dict[str, list[str]]:
    """Keys that are new, or rewritten by ``tl.integrate`` (and ``tl.domains``): names starting with ``inspire``."""

    def rewritten(key: str) -> bool:
        return key.startswith((Key.INSPIRE, f"X_{Key.INSPIRE}")) and (domains or not key.startswith(Key.INSPIRE_DOMAIN))

    out = {}
    for where, keys in after.items():
        new = sorted(k for k in keys if k not in before[where] or rewritten(k))
        if new:
            out[where] = new
    return out


def _summary(
    sdata: SpatialData,
    args: argparse.Namespace,
    seconds: float,
    written: dict[str, list[str]],
    figures: list[Path],
    *,
    verb: str = "integrated",
) -> None:
    table = sdata[Key.TABLE]
    uns = table.uns[Key.INSPIRE]
    spots = table.obs[Key.SLICE].value_counts(sort=False)
    per_slice = ", ".join(f"{name}: {int(n)}" for name, n in spots.items())
    _stdout(
        f"{verb} {table.n_obs} spots in {len(spots)} slice{'s' * (len(spots) != 1)} ({per_slice}); {len(uns['genes'])} genes in the "
        f"model (of {table.n_vars})"
    )
    history = {k: v for k, v in uns["history"].items() if not k.startswith("_")}
    history = {k: history[k] for k in sorted(history, key=lambda k: k != "loss")}  # the total first
    n_steps = len(next(iter(history.values()), []))
    train = float(sum(uns["history"].get("_seconds", [0.0])))
    n_models = getattr(args, "n_models", 1)
    per_model = f" per model, {n_models} models" if n_models > 1 else ""
    command = "integrate" if verb == "integrated" else "map"
    threads = uns.get("train_params", {}).get("torch_threads")
    on = f" on {threads} torch thread{'s' * (threads != 1)}" if threads is not None else ""
    _stdout(f"training: {n_steps} steps in {train:.1f} s{on}{per_model}; {command} took {seconds:.1f} s in all")
    from sd_inspire._utils import fit_name, judged_curve

    change = float(uns.get("loss_change", math.nan))
    judged = judged_curve(history)
    fit = fit_name(judged)
    if math.isnan(change):
        _stdout(f"convergence: {len(history.get(judged, []))} steps are too few to tell whether {fit} converged")
    else:
        verdict = "converged" if uns.get("converged", False) else "NOT converged (raise --max-steps)"
        _stdout(f"convergence of {fit}: loss changed {100 * change:+.1f}% over the last tenth of the steps: {verdict}")
    _stdout("final loss terms: " + ", ".join(f"{k} {_last(v):.4g}" for k, v in history.items()))
    if getattr(args, "n_domains", None):
        sizes = table.obs[Key.INSPIRE_DOMAIN].value_counts().sort_index()
        _stdout(
            f"domains: {len(sizes)} in obs[{Key.INSPIRE_DOMAIN!r}] ("
            + ", ".join(f"{d}: {n}" for d, n in sizes.items())
            + ")"
        )
    _stdout("keys written:")
    for where, keys in written.items():
        prefix = "tables" if where == "tables" else f"table.{where}"
        _stdout(f"  {prefix}: {', '.join(keys)}")
    for path in figures:
        _stdout(f"figure: {path}")
    _stdout(f"wrote {_absolute(args.output)}")


def _last(values: np.ndarray | Sequence[float]) -> float:
    return float(values[-1]) if len(values) else float("nan")


def _prepare_figures(folder: Path, names: Sequence[str], *, overwrite: bool) -> list[Path]:
    """Create the figure folder and return the figure paths; refuse to replace figures without ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise CLIError(f"--figures {folder}: exists and is not a folder")
    paths = [_absolute(folder) / f"{name}.png" for name in names]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise CLIError(f"--figures {folder}: {', '.join(existing)} exist; pass --overwrite to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    return paths


def _draw(sdata: SpatialData, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    import sd_inspire as si

    factors = np.asarray(sdata[Key.TABLE].obsm[f"{Key.INSPIRE}_factors"])
    strongest = [int(k) for k in np.argsort(factors.var(axis=0))[::-1][:_FIGURE_FACTORS]]
    draw = {
        "factors": lambda: si.pl.factors(sdata, factors=strongest, n_genes=3, save=path, show=False),
        "programs": lambda: si.pl.loadings(sdata, factors=strongest, save=path, show=False),
        "history": lambda: si.pl.history(sdata, save=path, show=False),
        "domains": lambda: si.pl.domains(sdata, key=Key.INSPIRE_DOMAIN, save=path, show=False),
    }[path.stem]
    plt.close(draw())


# --- shared helpers ----------------------------------------------------------------------------------------------


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise CLIError(f"{path}: no such file or folder")


def _check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite``, and never replace a folder that is not a zarr store."""
    from sd_inspire.io._store import clean_leftovers, is_zarr_store

    if path.parent.is_dir():
        clean_leftovers(_absolute(path))  # first: a store a killed run moved aside is put back
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise CLIError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir() and not is_zarr_store(path):
        raise CLIError(f"{path} is a folder but not a zarr store; refusing to replace it")
    if not path.is_dir():
        raise CLIError(f"{path} is a file, not a zarr store; refusing to replace it")


def _write_store(sdata: SpatialData, path: Path) -> None:
    """Write a new store at ``path`` (checked by :func:`_check_output`), swapped in atomically."""
    from sd_inspire.io import write_zarr

    write_zarr(sdata, _absolute(path), overwrite=True)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Name ``path`` in the message of a reading error that does not name it already."""
    try:
        yield
    except (ValueError, KeyError, OSError) as err:
        message = _one_line(err)
        if str(path) in message:
            raise
        raise CLIError(f"cannot read {path}: {message}") from err


def _one_line(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    else:
        text = str(err)
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    text = " ".join(text.split())
    return text or type(err).__name__


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    args.parser.error(message)
    raise AssertionError  # pragma: no cover - argparse exits


def _exit_code(code: int | str | None) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _stderr(str(code))
    return EXIT_ERROR


def _version() -> str:
    from sd_inspire import __version__

    return __version__


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    _stderr(f"{PROG}: warning: {' '.join(str(message).split())}")
