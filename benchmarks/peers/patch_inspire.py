"""Apply the compatibility edits to a copy of the published INSPIRE package (jiazhao97/INSPIRE).

    python patch_inspire.py DIR      # DIR is the copied package folder, the one holding utils.py

The published code targets Python 3.8, pandas 1.5 and scanpy 1.8; each edit below only keeps it running with the
versions in constraints.txt and changes no model, loss, default or preprocessing step. Every edit must match its
file the stated number of times (or be applied already), otherwise the script stops: a new upstream commit then
needs a look. The list is repeated in README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# (file, published text, number of occurrences, replacement, why)
EDITS = [
    (
        "utils.py",
        "genes_shared = genes_shared & adata_st.var.index",
        1,
        "genes_shared = genes_shared.intersection(adata_st.var.index)",
        "pandas >= 2: `Index & Index` is an element-wise logical AND, no longer the set intersection",
    ),
    (
        "utils.py",
        "hvgs_shared = hvgs_shared & hvgs",
        2,
        "hvgs_shared = hvgs_shared.intersection(hvgs)",
        "pandas >= 2: `Index & Index` is an element-wise logical AND, no longer the set intersection",
    ),
]


def main(folder: str) -> None:
    root = Path(folder)
    for name, old, count, new, why in EDITS:
        path = root / name
        text = path.read_text()
        if text.count(old) == count:
            path.write_text(text.replace(old, new))
            print(f"patched {name}: {why}")
        elif old not in text and new in text:
            print(f"already patched {name}: {why}")
        else:
            sys.exit(f"patch_inspire.py: expected {count} x '{old}' in {path}; upstream code changed?")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
