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


#: Choices of :func:`sd_inspire.tl.integrate`'s options, the first of each its default (the model and the CLI read
#: these): the graph encoder, the encoder's input, what the latent space keeps, and how slices are aligned.
ENCODERS = ("lgcn", "gat")
FEATURES = ("pearson", "lognorm")
STRUCTURES = ("smoothed", "multiscale")
ALIGNMENTS = ("both", "adversarial", "mnn")
#: EM passes of each spot's factor proportions on its own counts after training (``tl.integrate``'s
#: ``refine_factors``): chosen on the suite's ten simulations that know the true proportions (*Concepts*).
REFINE_PASSES = 5


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
    BLANK_COUNTS = "blank_counts"  # MERFISH blank codewords
    # layers
    COUNTS = "counts"
    # var / varm
    MEASURED = "measured"
    N_SLICES_MEASURED = "n_slices_measured"
    HIGHLY_VARIABLE = "highly_variable"
    MITO = "mt"
    # uns
    PREPROCESS = "preprocess"
    SIMULATION = "simulation"
    MICRONS_PER_PIXEL = "microns_per_pixel"  # size of one coordinate unit
    # SpatialData
    TABLE = "table"
    SHAPES_SUFFIX = "shapes"
    # results of sd_inspire.tl (their default key_added)
    INSPIRE = "inspire"  # tl.integrate: obsm["X_inspire"], obsm["inspire_factors"], uns["inspire"], ...
    INSPIRE_DOMAIN = "inspire_domain"  # tl.domains: obs["inspire_domain"]


@unique
class VisiumFile(StrEnum):
    """File names of a Space Ranger ``outs/`` folder (Space Ranger 1.x-3.x)."""

    OUTS_DIR = "outs"  # the folder holding the outputs, inside the sample folder
    FILTERED_COUNTS = "filtered_feature_bc_matrix.h5"
    RAW_COUNTS = "raw_feature_bc_matrix.h5"
    SPATIAL_DIR = "spatial"
    SCALEFACTORS = "scalefactors_json.json"
    POSITIONS_V1 = "tissue_positions_list.csv"  # Space Ranger 1.x, no header
    POSITIONS_V2 = "tissue_positions.csv"  # Space Ranger >= 2.0, with header
    SPOT_DIAMETER_KEY = "spot_diameter_fullres"
    HIRES_SCALE_KEY = "tissue_hires_scalef"
    LOWRES_SCALE_KEY = "tissue_lowres_scalef"
    HIRES_IMAGE = "tissue_hires_image.png"
    LOWRES_IMAGE = "tissue_lowres_image.png"
    # MatrixMarket folders (Space Ranger >= 1.0: gzipped *.tsv.gz / *.mtx.gz; re-exports are often not gzipped)
    FILTERED_MTX_DIR = "filtered_feature_bc_matrix"
    RAW_MTX_DIR = "raw_feature_bc_matrix"
    MTX = "matrix.mtx"
    BARCODES = "barcodes.tsv"
    FEATURES = "features.tsv"  # gene id, gene name, feature type
    GENES = "genes.tsv"  # Cell Ranger 2.x layout: gene id, gene name
    GZIP_SUFFIX = ".gz"
    H5_MATRIX_GROUP = "matrix"  # 10x HDF5 v3 schema; v2 files hold one group per genome
    H5_BARCODES = "barcodes"
    # tissue positions columns (the 1.x file has no header: this order)
    BARCODE = "barcode"
    IN_TISSUE = "in_tissue"
    ARRAY_ROW = "array_row"
    ARRAY_COL = "array_col"
    PXL_ROW = "pxl_row_in_fullres"  # y
    PXL_COL = "pxl_col_in_fullres"  # x
    # var columns and values
    GENE_IDS = "gene_ids"
    FEATURE_TYPES = "feature_types"
    GENE_EXPRESSION = "Gene Expression"
    # table keys written by spatialdata_io.visium
    SPOT_ID = "spot_id"


#: Diameter of a Visium spot in µm (10x Genomics technical note CG000239).
VISIUM_SPOT_DIAMETER_UM = 55.0
#: Size of a Slide-seq puck pixel in µm (Rodriques et al. 2019).
SLIDESEQ_MICRONS_PER_PIXEL = 0.65
#: Diameter of a Slide-seq bead in µm.
SLIDESEQ_BEAD_DIAMETER_UM = 10.0
#: Diameter drawn for a MERFISH cell without a volume or boundary, in µm.
MERFISH_DEFAULT_CELL_DIAMETER_UM = 10.0


@unique
class StereoseqFile(StrEnum):
    """STOmics Stereo-seq (SAW) file suffixes, GEM column names, GEF (HDF5) groups, datasets and fields."""

    # file suffixes
    GEM_SUFFIX = ".gem"  # tab-separated text: "#Key=Value" header lines, a column header line, one line per DNB/gene
    GZIP_SUFFIX = ".gz"  # *.gem.gz
    GEF_SUFFIX = ".gef"  # square-bin GEF (SAW: *.raw.gef, *.tissue.gef, *.tissuecut.gef)
    CELLBIN_GEF_SUFFIX = ".cellbin.gef"  # also *.adjusted.cellbin.gef
    # GEM header and columns
    COMMENT = "#"
    GENE = "geneID"  # GEMv0.1: holds the gene name; GEMv0.2 adds GENE_NAME. Also a GEF field (see below)
    GENE_NAME = "geneName"  # GEMv0.2 column; GEF gene field (GEF version > 3: next to GENE; cell-bin GEF <= 3: alone)
    X = "x"  # DNB coordinate (500 nm pitch); also a GEF field
    Y = "y"
    COUNT = "MIDCount"  # SAW >= 5
    COUNT_V1 = "MIDCounts"  # older GEMs
    COUNT_UMI = "UMICount"  # older GEMs and stereopy exports
    EXON = "ExonCount"  # optional, ignored
    # square-bin GEF: geneExp/bin1/{expression (x, y, count), gene (gene | geneID + geneName, offset, count), exon}
    GENE_EXP = "geneExp"
    BIN1 = "bin1"
    EXPRESSION = "expression"
    GENE_DATASET = "gene"  # dataset of genes (both GEFs); also the gene-name field of square-bin GEF version <= 3
    GEF_COUNT = "count"  # counts per expression row; genes: rows of the gene in `expression`
    OFFSET = "offset"  # first row of a gene (square bins) or of a cell's genes in `cellExp` (cell bins)
    # cell-bin GEF: cellBin/{cell, gene, cellExp (geneID = row of `gene`, count), cellBorder}
    CELL_BIN = "cellBin"
    CELL = "cell"  # fields id, x, y, offset, geneCount, expCount, dnbCount, area, cellTypeID, clusterID
    CELL_EXP = "cellExp"
    CELL_BORDER = "cellBorder"  # (n_cells, 32, 2) int16 offsets from the cell centre, padded with 32767
    CELL_ID = "id"
    GENE_COUNT = "geneCount"  # number of rows of a cell in `cellExp`
    # keys written into the table's uns
    BIN_SIZE = "bin_size"
    FILE_FORMAT = "file_format"
    GENE_KEY = "gene_key"
    METADATA = "metadata"  # GEM header lines or GEF root attributes


@unique
class SlideseqFile(StrEnum):
    """Slide-seq puck files (Slide-seq v1 "ForR" exports and Slide-seqV2 pipeline outputs)."""

    BEADS_FOR_R = "BeadLocationsForR.csv"  # v1 "ForR": barcodes,xcoord,ycoord
    BEADS = "bead_locations.csv"  # v2 pipeline
    BEADS_ALT = "BeadLocations.csv"
    DGE_FOR_R = "MappedDGEForR.csv"  # genes x beads, first column gene names
    DGE_SUFFIX = ".digital_expression.txt"  # genes x beads, tab-separated, optionally gzipped
    DGE_GENE = "GENE"  # first header cell of a Drop-seq tools digital expression file
    # MatrixMarket exports: "<prefix>matrix.mtx(.gz)" with "<prefix>barcodes.tsv(.gz)" and features/genes
    MTX_SUFFIX = ".mtx"
    MTX_BARCODES_SUFFIX = "barcodes.tsv"
    MTX_FEATURES_SUFFIX = "features.tsv"
    MTX_GENES_SUFFIX = "genes.tsv"
    H5AD_SUFFIX = ".h5ad"  # beads x genes AnnData with raw counts (converted data sets)
    CSV_SUFFIX = ".csv"  # other dense matrices: comma-separated if .csv, else tab-separated
    GZIP_SUFFIX = ".gz"
    BARCODE = "barcodes"
    BARCODE_ALT = "barcode"
    X = "xcoord"
    Y = "ycoord"


@unique
class MerscopeFile(StrEnum):
    """Vizgen MERSCOPE vendor outputs (``region_*`` folder of the MERSCOPE analysis pipeline)."""

    CELL_BY_GENE = "cell_by_gene.csv"  # may carry a prefix, e.g. "small_cell_by_gene.csv"
    CELL_METADATA = "cell_metadata.csv"
    BOUNDARIES = "cell_boundaries.parquet"  # MERSCOPE >= 233: one parquet of polygons
    CELL_ID = "cell"  # first column of cell_by_gene; metadata's first column is unnamed (or "EntityID")
    X = "center_x"  # µm
    Y = "center_y"  # µm
    FOV = "fov"
    VOLUME = "volume"
    BLANK_PREFIX = "Blank"  # blank codewords: "Blank-7" or "Blank.7" once read through R
    METADATA_CELL_ID = "EntityID"  # first column of newer cell_metadata.csv (older: unnamed); cell_boundaries' id
    Z_INDEX = "ZIndex"  # boundaries repeat per z-plane
    GEOMETRY = "Geometry"  # WKB polygons in cell_boundaries.parquet
