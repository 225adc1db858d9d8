"""One write path into a SpatialData zarr store, atomic at the element level.

Every element sd-inspire writes into a user's store (a table, the factor table, new transformations) goes through
:func:`write_elements`:

1. the new element is written completely under ``STORE/.sd-inspire/PID-ID/`` (a hidden folder without zarr
   metadata, which zarr and spatialdata do not list), by spatialdata's own writer; a table opened out of core gets
   a staged copy whose matrix chunks are hard links to the ones in the store (no data copied) and whose in-memory
   parts are written anew;
2. the store's consolidated metadata is removed (a reader then lists the folders, so it can never describe an
   element that was swapped since);
3. each staged element is exchanged with the one in the store by one atomic rename (``renameat2`` with
   ``RENAME_EXCHANGE`` on Linux, ``renamex_np`` with ``RENAME_SWAP`` on macOS); elsewhere the old element is moved
   into the staging folder first, recorded in a journal, and put back by the next run if the process died between
   the two renames;
4. the consolidated metadata is written again and the staging folder removed.

A process killed at any point leaves every element either as it was or as it was meant to be, and the store
readable by :func:`spatialdata.read_zarr`. The staging folder a killed process leaves behind is found and removed
(restoring any element journalled in step 3) by the next write or :func:`sd_inspire.io.read_zarr` on that store.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sd_inspire._chunks import is_lazy
from sd_inspire._logging import logger

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from spatialdata import SpatialData

#: Hidden folder in the store root that holds the elements being written.
STAGING = ".sd-inspire"
#: Parts of a table read into memory when it is opened out of core; the matrices (X, layers) stay on disk.
SMALL_KEYS = ("obs", "var", "obsm", "varm", "obsp", "varp", "uns")
_METADATA_FILES = frozenset({"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"})
_JOURNAL = "journal.json"


def write_elements(sdata: SpatialData, names: Sequence[str], *, transformations: Sequence[str] = ()) -> None:
    """Write elements of a SpatialData into its backing store, each one atomically.

    Parameters
    ----------
    sdata
        A SpatialData backed by a zarr store (``sdata.path``).
    names
        Elements to write; one already in the store is replaced. A table opened out of core
        (:func:`sd_inspire.io.read_zarr`) keeps its matrices on disk: only its in-memory parts are written anew.
    transformations
        Elements on disk whose coordinate transformations are rewritten from memory.

    Raises
    ------
    ValueError
        If a table opened out of core lost rows after it was opened (its matrices on disk no longer match).
    """
    root = Path(sdata.path)
    recover_store(root)
    types = {name: element_type for element_type, name, _ in sdata.gen_elements()}
    on_disk = set(sdata.elements_paths_on_disk())
    with _staging(root) as stage:
        staged = []
        for k, name in enumerate(names):
            rel, into = f"{types[name]}/{name}", stage / f"new{k}"  # each element staged as a store of its own
            if types[name] == "tables" and rel in on_disk and has_lazy_matrices(sdata.tables[name]):
                _stage_table_parts(sdata, name, root / rel, into / rel)
            else:
                _stage_element(sdata, name, into)
            staged.append((rel, into / rel))
        _drop_consolidated_metadata(root)
        try:
            for rel, new in staged:
                _swap_in(stage, new, root, rel)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=f"Object at {STAGING}", category=UserWarning)
                for name in transformations:  # each one rewrites one metadata file, which zarr replaces atomically
                    sdata.write_transformations(name)
        finally:
            _consolidate(root)
    written = [rel for rel, _ in staged] + [f"transformations of {n}" for n in transformations]
    logger.info("Wrote %s into %s", ", ".join(written), root)


def recover_store(root: str | Path) -> None:
    """Finish what a killed write into ``root`` left: restore journalled elements, remove its staging folder.

    Staging folders of processes still running are left alone.
    """
    root = Path(root)
    folder = root / STAGING
    if not folder.is_dir():
        return
    recovered = []
    for stage in sorted(folder.iterdir()):
        pid = _pid_of(stage)
        if pid is not None and pid != os.getpid() and is_running(pid):
            logger.warning("%s is being written by process %d: its staging folder %s is left alone", root, pid, stage)
            continue
        _restore_journalled(stage, root)
        shutil.rmtree(stage, ignore_errors=True)
        recovered.append(stage.name)
    with contextlib.suppress(OSError):
        folder.rmdir()
    if recovered:
        _consolidate(root)
        warnings.warn(
            f"{str(root)!r} holds what an interrupted write left ({', '.join(recovered)} in {STAGING}/): removed. "
            "Every element is as it was before or after that write.",
            UserWarning,
            stacklevel=3,
        )


def has_lazy_matrices(table: object) -> bool:
    """Whether a table's X or a layer is kept on disk (a dask array)."""
    return is_lazy(table.X) or any(is_lazy(v) for v in table.layers.values())


def check_rows_on_disk(sdata: SpatialData, name: str) -> None:
    """Raise if table ``name`` has fewer or more rows in memory than in its store (spots removed after reading).

    Writing such a table would delete those spots' rows (raw counts included) from the store, or mismatch the
    matrices kept there.

    Raises
    ------
    ValueError
        If the numbers of rows differ.
    """
    import zarr

    if sdata.path is None or not (group := Path(sdata.path) / "tables" / name / "obs").is_dir():
        return
    obs = zarr.open_group(group, mode="r", use_consolidated=False)
    n_on_disk = int(obs[obs.attrs["_index"]].shape[0])
    n_obs = sdata.tables[name].n_obs
    if n_on_disk != n_obs:
        raise ValueError(
            f"Table {name!r} has {n_obs} rows in memory but {n_on_disk} in {str(sdata.path)!r} (spots removed after "
            "it was read): writing it there would delete rows from the store. Write the SpatialData to a new store "
            "first (`sdata.write(new_path)`), or work on a copy (`copy=True`)."
        )


# --- staging


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    stage = root / STAGING / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir(parents=True)
    try:
        yield stage
    finally:
        _restore_journalled(stage, root)
        shutil.rmtree(stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            stage.parent.rmdir()


def _stage_element(sdata: SpatialData, name: str, into: Path) -> None:
    """Write element ``name`` alone into a new store ``into``, by spatialdata's writer."""
    from spatialdata import SpatialData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notes on sharding and parquet files, already seen on the first write
        single = SpatialData.init_from_elements({name: sdata[name]})
        single.write(into, overwrite=False, consolidate_metadata=False)


def _stage_table_parts(sdata: SpatialData, name: str, source: Path, target: Path) -> None:
    """Stage an out-of-core table: its group with the matrix chunks hard-linked, and what memory holds written anew.

    The in-memory parts (obs, var, obsm, ...) are rewritten; a matrix kept on disk stays linked, one computed in
    memory since (a new layer) is written, one deleted from the table is dropped.
    """
    import zarr
    from anndata.io import write_elem

    check_rows_on_disk(sdata, name)
    _link_tree(source, target)
    table, group = sdata.tables[name], zarr.open_group(target, mode="r+", use_consolidated=False)
    for key in SMALL_KEYS:
        value = getattr(table, key)
        write_elem(group, key, value if key in ("obs", "var", "uns") else dict(value))
    if table.X is not None and not is_lazy(table.X):
        write_elem(group, "X", table.X)
    layers = group.require_group("layers")
    for key in set(layers.keys()) - set(table.layers.keys()):
        del layers[key]
    for key, value in table.layers.items():
        if not is_lazy(value):
            write_elem(layers, key, value)


def _link_tree(source: Path, target: Path) -> None:
    """Mirror a zarr tree: metadata files copied (they may be rewritten), chunks hard-linked (never rewritten)."""
    for folder, _, files in os.walk(source):
        out = target / Path(folder).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for file in files:
            if file.endswith(".partial"):
                continue  # a temporary of an interrupted zarr write
            src, dst = Path(folder) / file, out / file
            if file in _METADATA_FILES:
                shutil.copy2(src, dst)
                continue
            try:
                os.link(src, dst)
            except OSError:  # a file system without hard links
                shutil.copy2(src, dst)


# --- swapping


def _swap_in(stage: Path, new: Path, root: Path, rel: str) -> None:
    """Put the staged element ``new`` at ``root/rel``; what was there ends up in the staging folder."""
    target = root / rel
    if not target.parent.is_dir():  # the store has no element of this type yet: add the empty group first
        group = stage / "groups" / target.parent.name
        group.mkdir(parents=True)
        shutil.copy2(new.parent / "zarr.json", group / "zarr.json")
        group.rename(target.parent)
    if not target.exists():
        new.rename(target)
        return
    if exchange_paths(new, target):
        return
    _write_journal(stage, rel)
    old = stage / "old" / rel
    old.parent.mkdir(parents=True, exist_ok=True)
    target.rename(old)
    new.rename(target)


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            at_fdcwd, rename_exchange = -100, 2
            result = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
        elif sys.platform == "darwin":
            rename_swap = 2
            result = libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap)
        else:
            return False
    except (AttributeError, OSError):  # no such call in this C library
        return False
    return result == 0


def _restore_journalled(stage: Path, root: Path) -> None:
    """Put back an element moved out of the store whose replacement never arrived (a kill between two renames)."""
    for rel in _read_journal(stage):
        target, old = root / rel, stage / "old" / rel
        if not target.exists() and old.exists():
            old.rename(target)


def _write_journal(stage: Path, rel: str) -> None:
    moved = [*_read_journal(stage), rel]
    tmp = stage / f"{_JOURNAL}.tmp"
    tmp.write_text(json.dumps(moved))
    tmp.replace(stage / _JOURNAL)


def _read_journal(stage: Path) -> list[str]:
    try:
        return list(json.loads((stage / _JOURNAL).read_text()))
    except (OSError, ValueError):
        return []


# --- consolidated metadata


def _drop_consolidated_metadata(root: Path) -> None:
    """Remove the store's consolidated metadata (zarr v3: a key of the root zarr.json; v2: .zmetadata), atomically."""
    meta = root / "zarr.json"
    if meta.is_file():
        doc = json.loads(meta.read_text())
        if doc.pop("consolidated_metadata", None) is not None:
            tmp = root / f"zarr.json.{uuid.uuid4().hex[:8]}.partial"
            tmp.write_text(json.dumps(doc, indent=2))
            tmp.replace(meta)
    with contextlib.suppress(FileNotFoundError):
        (root / ".zmetadata").unlink()


def _consolidate(root: Path) -> None:
    import zarr

    group = zarr.open_group(root, mode="r+", use_consolidated=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr notes that parquet files (points) are not zarr
        zarr.consolidate_metadata(group.store)


# --- processes


def _pid_of(stage: Path) -> int | None:
    head = stage.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, as another user
        return True
    return True


def write_zarr(sdata: SpatialData, path: str | Path, *, overwrite: bool = False) -> None:
    """Write a SpatialData to a new zarr store, all at once or not at all.

    The store is written in full next to ``path`` (``.NAME.partial-PID``) by spatialdata's writer, then moved to
    ``path``; an existing store there (``overwrite=True``) is exchanged with the new one in one atomic rename where
    the file system allows it (Linux, macOS), else by two renames undone on failure. An interrupted or killed
    write never leaves a half-written store at ``path``, and what a killed write left beside it is removed (or put
    back, if the old store was moved aside) by the next write. zarr's notices about its future defaults are not
    shown. Afterwards ``sdata.path`` is ``path``. Read the store back with :func:`sd_inspire.io.read_zarr`.

    Parameters
    ----------
    sdata
        The data to write (elements read lazily from another store are read from there).
    path
        The new store, a folder ending in ``.zarr`` by convention.
    overwrite
        Replace a zarr store already at ``path``. A folder that is not a zarr store, or a file, is never replaced.

    Returns
    -------
    Nothing; ``sdata.path`` becomes ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    ValueError
        If ``path`` is a file or a folder that is not a zarr store, or the store ``sdata`` is backed by (its
        elements read lazily from there would be lost with it).

    Examples
    --------
    >>> import tempfile, pathlib, sd_inspire as si
    >>> sdata = si.datasets.simulate(2, n_spots=50, n_genes=100)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "slices.zarr"
    >>> si.io.write_zarr(sdata, path)
    >>> si.io.read_zarr(path)["table"].n_obs
    100
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{str(path)!r} exists; pass `overwrite=True` to replace it.")
        if not is_zarr_store(path):
            raise ValueError(
                f"{str(path)!r} is not a zarr store (a file, or a folder without zarr metadata); not replaced."
            )
        if sdata.path is not None and Path(sdata.path).resolve() == path.resolve():
            raise ValueError(
                f"{str(path)!r} is the store this SpatialData is read from: write to a new path (functions of "
                "sd-inspire write their results into the store themselves)."
            )
    staging = path.parent / f".{path.name}.partial-{os.getpid()}"
    _remove(staging)
    try:
        with warnings.catch_warnings():
            for message, category in _ZARR_NOTICES:
                warnings.filterwarnings("ignore", message=message, category=category)
            sdata.write(staging)
        if not (path.exists() or path.is_symlink()):
            staging.rename(path)
        elif not exchange_paths(staging, path):  # no atomic exchange here: two renames, undone on failure
            backup = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(backup)
            try:
                staging.rename(path)
            except BaseException:
                backup.rename(path)
                raise
            _remove(backup)
    finally:
        _remove(staging)  # after an exchange, the old store
    sdata.path = path


#: zarr's and spatialdata's notices about their own defaults, shown at every write and not actionable by a user.
_ZARR_NOTICES = (
    ("zarr v3 autosharding", UserWarning),
    (".*[Cc]onsolidated metadata", UserWarning),
    ("Call to deprecated class Scaler", DeprecationWarning),  # ome-zarr, called by spatialdata's image writer
)


def clean_leftovers(path: Path) -> None:
    """Remove what a killed :func:`write_zarr` of ``path`` left; put a moved-out store back if ``path`` is gone."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-(\d+)")
    if not path.parent.is_dir():
        return
    for leftover in sorted(path.parent.iterdir()):
        match = pattern.fullmatch(leftover.name)
        if match is None or (int(match[2]) != os.getpid() and is_running(int(match[2]))):
            continue
        if match[1] == "old" and not (path.exists() or path.is_symlink()):
            leftover.rename(path)
            what = f"restored {path} from {leftover.name}"
        else:
            _remove(leftover)
            what = f"removed {leftover}"
        warnings.warn(f"{what}, left by an interrupted run (process {match[2]})", UserWarning, stacklevel=3)


def is_zarr_store(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
