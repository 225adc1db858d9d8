#!/usr/bin/env bash
# Build the separate environment of the peer methods: benchmarks/peers/.venv (never a project dependency).
#
#   bash benchmarks/peers/setup.sh                                    # CellCharter + GraphST
#   INSPIRE_SRC=/path/to/INSPIRE bash benchmarks/peers/setup.sh       # ... and the published INSPIRE code
#
# Installs requirements.txt under constraints.txt (torch==2.13.0, the CPU build on this machine's disk, and the
# exact versions of everything else). The published INSPIRE code (github.com/jiazhao97/INSPIRE) has no licence, so
# it is not redistributed here: get it yourself and point INSPIRE_SRC at it, either a clone
# (git clone https://github.com/jiazhao97/INSPIRE.git; the folder holding INSPIRE/__init__.py) or a bare git
# directory of that repository. setup.sh copies its INSPIRE/ package into .venv/inspire_published/, applies the
# compatibility edits of patch_inspire.py and puts it on the venv's path. Tested with commit
# 12b7516d835b59370568340a2fb302e781252263 (2024-09-25). Without INSPIRE_SRC, run_peers.py reports the method
# "inspire" as not installed. Safe to rerun: the venv is reused, pip installs only what is missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3.11}"
VENV="$HERE/.venv"
INSPIRE_TESTED=12b7516d835b59370568340a2fb302e781252263

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$HERE/constraints.txt" -r "$HERE/requirements.txt"

if [ -z "${INSPIRE_SRC:-}" ]; then
    echo "setup.sh: INSPIRE_SRC is not set; the published INSPIRE will be reported as not installed (see README.md)."
else
    DEST="$VENV/inspire_published"
    rm -rf "$DEST"
    mkdir -p "$DEST"
    if [ -f "$INSPIRE_SRC/INSPIRE/__init__.py" ]; then
        cp -r "$INSPIRE_SRC/INSPIRE" "$DEST/"
        COMMIT="$(git -C "$INSPIRE_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
    elif git --git-dir="$INSPIRE_SRC" rev-parse --verify -q HEAD >/dev/null; then
        git --git-dir="$INSPIRE_SRC" archive HEAD INSPIRE | tar -x -C "$DEST"
        COMMIT="$(git --git-dir="$INSPIRE_SRC" rev-parse HEAD)"
    else
        echo "setup.sh: INSPIRE_SRC=$INSPIRE_SRC holds neither INSPIRE/__init__.py nor a git repository" >&2
        exit 1
    fi
    "$VENV/bin/python" "$HERE/patch_inspire.py" "$DEST/INSPIRE"
    echo "$COMMIT" > "$DEST/COMMIT"
    SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$DEST" > "$SITE/inspire_published.pth"
    if [ "$COMMIT" != "$INSPIRE_TESTED" ]; then
        echo "setup.sh: INSPIRE commit $COMMIT differs from the tested $INSPIRE_TESTED" >&2
    fi
    echo "setup.sh: published INSPIRE ($COMMIT) installed in $DEST"
fi

"$VENV/bin/python" - <<'EOF'
import importlib
import warnings

warnings.filterwarnings("ignore")
for name in ["cellcharter", "scvi", "squidpy", "GraphST", "INSPIRE"]:
    try:
        module = importlib.import_module(name)
        print(f"  {name:12s} imports ({getattr(module, '__version__', 'no __version__')})")
    except Exception as error:  # noqa: BLE001 - report and go on
        print(f"  {name:12s} does NOT import: {type(error).__name__}: {error}")
EOF
