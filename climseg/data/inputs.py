"""Sets of netCDF files as series: what ``climseg predict`` (and its pipeline) reads, grouped
and merged on time and grid exactly as ``climseg label`` merges its input.

Data flow: :func:`open_input_series` expands the inputs (paths, glob patterns, folders:
:func:`climseg.data.netcdf_file.expand_inputs`), scans each file once
(:func:`~climseg.data.netcdf_file.scan_file`), groups the files into series and merges each
group (:func:`climseg.data.netcdf.merge_scanned`: one grid, every variable's pieces in time
order, every channel on the same steps). A file joins the first series on its grid that holds
none of its variables within its time span (the pieces of a variable must follow each other, as
they are joined); a file that repeats variables and times of an earlier one starts another
series. So a CMIP set (``psl_...``, ``uas_...``, ``tas_..._185001-189912.nc`` and
``tas_..._190001-194912.nc``), ERA5's pressure-level and single-level files, and a run's daily
history files each become one series, while two ensemble members or two experiments on the same
times stay two.

Each series is written as the files of its time axis (:func:`series_outputs`): one output per
file of the first channel's variable, named after it (``NAME`` of ``NAME_mask.nc``), copying
that file's grid, latitude order and time axis, the way ``climseg label`` names its masks.
"""

import dataclasses
import os

from climseg.constants import CHANNELS
from climseg.data.netcdf import NetCDFInput, merge_scanned, same_grid
from climseg.data.netcdf_file import expand_inputs, scan_file
from climseg.errors import DataError, UserError


@dataclasses.dataclass
class SeriesOutput:
    """One output of a series: the steps of one file of its time axis."""

    stem: str  # NAME of the outputs (NAME_mask.nc), the source file's name without suffix
    source: str  # the file whose grid, latitude order and time axis the output copies
    steps: list  # the series' steps it holds (global indices, increasing)
    time_dim: str = None  # the time dimension in ``source`` (None: the file has none)
    flipped: bool = False  # ``source`` stores latitudes north to south


@dataclasses.dataclass
class InputSeries:
    """A merged series (:class:`~climseg.data.netcdf.NetCDFInput`) and its outputs."""

    info: NetCDFInput
    outputs: list


def series_outputs(info):
    """The outputs of a merged input (see the module docstring): one :class:`SeriesOutput` per file
    holding the first channel's steps, in time order; a UserError when two share a name."""
    ref = info.segments[info.plans[next(iter(info.plans))].names[0]]
    outputs, start, stems = [], 0, {}
    for seg in ref:
        stem = os.path.splitext(os.path.basename(seg.path))[0]
        if stem in stems:
            raise UserError(f"{seg.path}: has the same name as {stems[stem]}; their outputs would collide")
        stems[stem] = seg.path
        n = max(seg.ntime, 1)
        outputs.append(SeriesOutput(stem, seg.path, list(range(start, start + n)), seg.time_dim, seg.flipped))
        start += n
    return outputs


def _overlaps(spans, seg):
    """True when ``seg``'s steps reach into one of ``spans`` ([(first, last)] of the pieces a series
    holds of its variable): the pieces of one variable must follow each other, as
    :func:`climseg.data.netcdf.merge_scanned` joins them."""
    for first, last in spans:
        try:
            if not (seg.dates[-1] < first or last < seg.dates[0]):
                return True
        except TypeError:  # another calendar: never the same series
            return True
    return False


def _fits(group, grid, segments):
    """True when a file (its grid and segments) can join ``group``: the same grid, and none of its
    variables with a time axis already there within its time span. A fixed field (no time axis)
    that the group holds already is the same field again (a run's orography in every history
    file), unless the file holds nothing else: a snapshot repeating a snapshot's variables is
    another series."""
    try:
        same_grid(group["grid"], grid)
    except DataError:
        return False
    snapshot = not any(seg.ntime for seg in segments)
    for seg in segments:
        spans = group["spans"].get(seg.name)
        if spans is None:
            continue
        if seg.ntime and (None in spans or _overlaps(spans, seg)):
            return False
        if not seg.ntime and snapshot:
            return False
    return True


def group_files(scanned):
    """Files already scanned (``[(grid, [Segment])]``) in groups that each make one series
    (see the module docstring), in the order of their first files."""
    groups = []
    for grid, segments in scanned:
        group = next((g for g in groups if _fits(g, grid, segments)), None)
        if group is None:
            group = dict(grid=grid, spans={}, members=[])
            groups.append(group)
        group["members"].append((grid, segments))
        for seg in segments:
            group["spans"].setdefault(seg.name, []).append((seg.dates[0], seg.dates[-1]) if seg.ntime else None)
    return [g["members"] for g in groups]


def open_input_series(inputs, channels=CHANNELS, optional=(), convention="auto", variables=None):
    """The netCDF ``inputs`` (paths, glob patterns, folders) as merged series, each checked
    (:func:`~climseg.data.netcdf.merge_scanned`) with its outputs: ``[InputSeries]`` in the order
    of their first files. ``channels`` must be present in every series, ``optional`` ones are
    read where present; ``convention``/``variables`` as for :func:`~climseg.data.netcdf.open_netcdf`.
    DataError naming the file on any problem, UserError when two outputs share a name."""
    scanned = [scan_file(path) for path in expand_inputs(inputs)]
    series, stems = [], {}
    for members in group_files(scanned):
        info = merge_scanned(members, channels, optional, convention, variables)
        outputs = series_outputs(info)
        for out in outputs:
            if out.stem in stems:
                raise UserError(f"{out.source}: has the same name as {stems[out.stem]}; their outputs would collide")
            stems[out.stem] = out.source
        series.append(InputSeries(info, outputs))
    return series
