"""Shared docstring fragments, substituted with docrep: ``@d.dedent`` and ``%(name)s``."""

from __future__ import annotations

from docrep import DocstringProcessor

_data = """\
data
    Annotated table (:class:`~anndata.AnnData`) or :class:`~spatialdata.SpatialData` holding it."""
_table_key = """\
table_key
    Name of the table in a :class:`~spatialdata.SpatialData`; may be omitted when it holds a single table or a
    table named ``"table"``. Ignored for :class:`~anndata.AnnData` input."""
_slice_key = """\
slice_key
    Column of :attr:`~anndata.AnnData.obs` with the slice of each spot, as written by
    :func:`sd_inspire.pp.concat`."""
_copy = """\
copy
    Return a modified copy of the table instead of writing into ``data``."""
_copy_returns = """\
If ``copy=True``, the modified :class:`~anndata.AnnData`; otherwise ``None``, and the table of ``data`` is
updated in place"""
_random_state = """\
random_state
    Seed (or :class:`numpy.random.Generator`) for every random choice of the function. ``None`` draws fresh
    entropy, so results are not reproducible. No global random state is read or changed."""

_save = """\
save
    Write the figure to this path (format from the suffix).
dpi
    Resolution when saving.
show
    Show the figure (:func:`matplotlib.pyplot.show`) and return ``None``; ``False`` returns it instead, to change
    or compose it. ``None`` follows ``sd_inspire.settings.autoshow`` (``True`` unless changed), as scanpy does,
    except with ``ax``: the figure being composed is returned, not shown. In Jupyter the figure is shown once."""

_ax = """\
ax
    Draw into this matplotlib axis (the plot must then have one panel: one slice, one factor or one term), e.g.
    to compose a figure of your own; legends and colour bars go into its figure."""

d = DocstringProcessor(
    data=_data,
    table_key=_table_key,
    slice_key=_slice_key,
    copy=_copy,
    copy_returns=_copy_returns,
    random_state=_random_state,
    save=_save,
    ax=_ax,
)

__all__ = ["d"]
