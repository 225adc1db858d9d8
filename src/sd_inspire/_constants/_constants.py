"""Constants: data keys written into tables and vendor file names read by :mod:`sd_inspire.io`."""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class Technology(StrEnum):
    """Spatial transcriptomics technologies known to sd-inspire.

    The technology decides defaults such as the spatial graph built by :func:`sd_inspire.gr.spatial_neighbors`.
    """

    VISIUM = "visium"  # 55 µm spots on a hexagonal lattice, 100 µm centre to centre
    STEREOSEQ = "stereoseq"  # square bins of DNB spots (bin50 = 25 µm)
    SLIDESEQ = "slideseq"  # 10 µm beads, densely and irregularly packed
    MERFISH = "merfish"  # segmented single cells, targeted gene panel
    XENIUM = "xenium"  # segmented single cells, targeted gene panel
    UNKNOWN = "unknown"


class Key:
    """Names of the keys that sd-inspire reads and writes in tables and SpatialData objects."""

    # obs
    SLICE = "slice"
    REGION = "region"
    INSTANCE = "instance_id"
    TECHNOLOGY = "technology"
    DOMAIN = "domain"
    TOTAL_COUNTS = "total_counts"
    N_GENES = "n_genes_by_counts"
    PCT_MITO = "pct_counts_mt"
    # obsm
    SPATIAL = "spatial"
    TRUE_PROPORTIONS = "true_proportions"
    # layers
    COUNTS = "counts"
    # var / varm
    MEASURED = "measured"
    HIGHLY_VARIABLE = "highly_variable"
    MITO = "mt"
    # uns
    PREPROCESS = "preprocess"
    SIMULATION = "simulation"
    # SpatialData
    TABLE = "table"
    SHAPES_SUFFIX = "shapes"


@unique
class VisiumFile(StrEnum):
    """File names of a Space Ranger ``outs/`` folder (Space Ranger 1.x-3.x)."""

    FILTERED_COUNTS = "filtered_feature_bc_matrix.h5"
    RAW_COUNTS = "raw_feature_bc_matrix.h5"
    SPATIAL_DIR = "spatial"
    SCALEFACTORS = "scalefactors_json.json"
    POSITIONS_V1 = "tissue_positions_list.csv"  # Space Ranger 1.x, no header
    POSITIONS_V2 = "tissue_positions.csv"  # Space Ranger >= 2.0, with header
    SPOT_DIAMETER_KEY = "spot_diameter_fullres"


#: Diameter of a Visium spot in µm (10x Genomics technical note CG000239).
VISIUM_SPOT_DIAMETER_UM = 55.0
