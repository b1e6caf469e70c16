"""netCDF input in any variable-name convention: the 16 DeepCAM channels as 2-D fields
on a latitude-longitude grid, from one file or a set of files merged on time and grid.

Data flow: :func:`open_netcdf` expands the inputs (paths, glob patterns, folders) into
files and scans each (:func:`climseg.data.netcdf_file.scan_file`: the grid and its checks,
every field variable with its time axis and pressure levels); :func:`merge_scanned` matches the
channels asked for against a convention (:mod:`climseg.data.variables`: CAM5, ERA5, CMIP6,
auto-detected, or a ``--variables`` mapping), joins each variable's files in time order
(CMIP-style ``tas_Amon_MODEL_..._185001-189912.nc`` pieces, ERA5's pressure-level and
single-level files) and checks that every channel sees the same grid and the same time steps.
It returns a :class:`NetCDFInput`; :func:`read_netcdf_step` then reads one time step at a time
(bounded memory), selects the pressure level, converts units and derives channels.
:mod:`climseg.data.inputs` groups many files into several such series (``climseg predict``).

Fields are ``(time, lat, lon)``, ``(lat, lon)``, or with a pressure axis
``(time, level, lat, lon)`` / ``(level, lat, lon)``; the pressure coordinate (``plev``,
``level``, ``pressure_level``, ``lev``, ``isobaricInhPa``...) is read in any pressure unit (Pa,
hPa, ``millibars``...) from its ``units``. Coordinates ``lat``/``latitude`` and
``lon``/``longitude`` give the grid (any monotonic latitudes within [-90, 90], e.g. Gaussian;
longitudes from -180 or from 0, spanning at most 360 degrees; any size). The coordinate names
known, here and to every other reader of netCDF in climseg (:mod:`climseg.data.masks`,
:mod:`climseg.data.climatenet`), are the tables :data:`LAT_NAMES`, :data:`LON_NAMES`,
:data:`TIME_NAMES` (``time``, ``t``, ERA5's ``valid_time``) and :data:`LEVEL_NAMES` of
:mod:`climseg.data.netcdf_file`, looked up by :func:`find_name`. Fields are returned south to
north (flipped if a file's latitudes descend), the orientation the networks are trained in;
packed int16 fields (``scale_factor``/``add_offset``) come back unpacked, netCDF-3 files read like
netCDF-4 ones. Calendars are read with cftime (``standard``, ``proleptic_gregorian``, ``noleap``,
``360_day``...); the steps of every file, and of the files joined, must strictly increase. A
variable without a time axis (a fixed field) serves every step.
"""

import dataclasses

import numpy as np

from climseg.constants import CHANNELS
from climseg.data import variables as conventions
from climseg.data.netcdf_file import (
    LAT_NAMES,
    LEVEL_NAMES,
    LON_NAMES,
    SUFFIXES,
    TIME_NAMES,
    Segment,
    expand_inputs,
    find_name,
    is_netcdf,
    open_dataset,
    scan_file,
)
from climseg.errors import DataError
from climseg.sphere import is_global

# the names of the file layer that the readers of netCDF input have always imported from here
__all__ = [
    "LAT_NAMES",
    "LEVEL_NAMES",
    "LON_NAMES",
    "SUFFIXES",
    "TIME_NAMES",
    "NetCDFInput",
    "Segment",
    "create_cam5_grid",
    "expand_inputs",
    "find_name",
    "is_netcdf",
    "merge_scanned",
    "open_dataset",
    "open_netcdf",
    "read_netcdf_step",
    "write_cam5_netcdf",
]


@dataclasses.dataclass
class NetCDFInput:
    """An open description of a netCDF input (one file or a merged set): grid, times, and
    where each channel lives."""

    path: str
    lat: np.ndarray  # ascending
    lon: np.ndarray  # increasing: as in the file, unwrapped where it jumps a turn (sphere.monotonic_longitudes)
    flipped: bool  # the (first) file stores latitudes north to south
    periodic: bool  # the grid goes all the way round in longitude
    times: list  # one label per time step ("" without a time dimension)
    variables: dict  # channel name -> (first) variable name in the files
    time_dim: str = None
    paths: list = None  # every file of the input
    convention: str = "CAM5"
    plans: dict = None  # channel -> variables.Plan
    segments: dict = None  # variable name -> [Segment] in time order
    dates: list = None  # cftime dates of the steps (None without a time axis)
    time_units: str = None
    calendar: str = None


def open_netcdf(path, channels=CHANNELS, optional=(), convention="auto", variables=None):
    """Check a netCDF input (a file, or a set of files: paths, glob patterns, folders)
    and describe it as one series; DataError naming the file on any problem. ``channels`` must be
    present; those also in ``optional`` are used when present. ``convention``: auto,
    CAM5, ERA5 or CMIP6; ``variables``: a mapping file (or a loaded table) instead."""
    return merge_scanned([scan_file(p) for p in expand_inputs(path)], channels, optional, convention, variables)


def merge_scanned(scanned, channels=CHANNELS, optional=(), convention="auto", variables=None):
    """One :class:`NetCDFInput` from files already scanned (``[(grid, [Segment])]`` of
    :func:`climseg.data.netcdf_file.scan_file`, in the order given): one grid, every variable's
    pieces joined in time order, every channel found by the convention, every channel on the same
    time steps, every unit convertible; DataError naming the file otherwise."""
    paths = [grid["path"] for grid, _ in scanned]
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    grid, found = None, {}
    for g, segs in scanned:
        if grid is None:
            grid = g
        else:
            same_grid(grid, g)
        for seg in segs:
            found.setdefault(seg.name, []).append(seg)
    available = {name: set().union(*(s.levels for s in segs)) for name, segs in found.items()}
    name, plans = conventions.resolve(available, list(channels), optional, convention, variables, f"{where}: ")
    used = {n for plan in plans.values() for n in plan.names}
    segments = {n: _join_in_time(found[n]) for n in used}
    dates, ref = None, None
    for n in sorted(used):
        d = [x for s in segments[n] for x in s.dates]
        if not d:
            continue
        if dates is None:
            dates, ref = d, n
        elif len(d) != len(dates) or any(a != b for a, b in zip(d, dates)):
            raise DataError(
                f"{where}: {n} has {len(d)} time steps ({_span(d)}) but {ref} has {len(dates)} "
                f"({_span(dates)}); the files must cover the same times"
            )
    first = next((s for n in sorted(used) for s in segments[n] if s.ntime), None)
    times = [""] if dates is None else [str(x)[:19] for x in dates]
    time_units = calendar = time_dim = None
    if first is not None:
        time_units, calendar, time_dim = first.time_units, first.calendar, first.time_dim
    for n in used:
        for s in segments[n]:
            s.step_seconds = _step_seconds(dates)
    for c, plan in plans.items():  # units checked now, not at the first step read
        for source, n in zip(plan.recipe.sources, plan.names):
            for s in segments[n]:
                if source.scale is None:
                    conventions.to_channel_units(
                        np.zeros(1, np.float32),
                        source.units or s.units,
                        source.kind,
                        s.step_seconds,
                        f"{s.path}: {c}: variable {s.name} ",
                    )
    lat, lon, flipped = grid["lat"], grid["lon"], grid["flipped"]
    return NetCDFInput(
        path=paths[0],
        lat=lat,
        lon=lon,
        flipped=flipped,
        periodic=is_global(lon),
        times=times,
        variables={c: p.names[0] for c, p in plans.items()},
        time_dim=time_dim,
        paths=paths,
        convention=name,
        plans=plans,
        segments=segments,
        dates=dates,
        time_units=time_units,
        calendar=calendar,
    )


def _span(dates):
    return f"{str(dates[0])[:19]} to {str(dates[-1])[:19]}" if dates else "none"


def _step_seconds(dates):
    if not dates or len(dates) < 2:
        return None
    try:
        return float((dates[1] - dates[0]).total_seconds())
    except (TypeError, AttributeError):
        return None


def same_grid(a, b):
    """DataError naming ``b``'s file unless the grids ``a`` and ``b`` (of
    :func:`~climseg.data.netcdf_file.scan_file`) are the same: latitudes within 1e-4 degrees,
    longitudes the same modulo 360."""
    if (
        a["lat"].shape != b["lat"].shape
        or a["lon"].shape != b["lon"].shape
        or not (
            np.allclose(a["lat"], b["lat"], atol=1e-4) and np.allclose(a["lon"] % 360.0, b["lon"] % 360.0, atol=1e-4)
        )
    ):
        raise DataError(
            f"{b['path']}: grid {len(b['lat'])} x {len(b['lon'])} differs from the grid of {a['path']} "
            f"({len(a['lat'])} x {len(a['lon'])})"
        )


def _join_in_time(segments):
    """A variable's pieces in time order; a fixed field must be alone."""
    timed = [s for s in segments if s.ntime]
    if not timed:
        return segments[:1]
    try:
        timed.sort(key=lambda s: s.dates[0])
    except TypeError:
        raise DataError(f"{timed[0].path}: {timed[0].name} is split over files with different calendars") from None
    for a, b in zip(timed[:-1], timed[1:]):
        if not a.dates[-1] < b.dates[0]:
            raise DataError(f"{b.path}: {b.name} repeats time steps of {a.path}")
    return timed


def _locate(segments, index):
    """(segment, index within it) of global step ``index``."""
    for s in segments:
        if not s.ntime:
            return s, None
        if index < s.ntime:
            return s, index
        index -= s.ntime
    raise IndexError(index)


def read_netcdf_step(info, index, channels=None):
    """Fields of time step ``index`` as float32 (H, W, C), rows south to north, in the CAM5
    units of each channel (``channels``: default, every channel the input was opened with)."""
    import netCDF4

    channels = list(info.variables) if channels is None else channels
    out = np.empty((len(info.lat), len(info.lon), len(channels)), np.float32)
    handles = {}
    try:
        for k, c in enumerate(channels):
            plan = info.plans[c]
            fields = []
            for source, name in zip(plan.recipe.sources, plan.names):
                seg, local = _locate(info.segments[name], index)
                if seg.path not in handles:
                    handles[seg.path] = netCDF4.Dataset(seg.path, "r")
                fields.append(_read_source(handles[seg.path], seg, local, source, c, index))
            out[..., k] = fields[0] if plan.recipe.derive is None else plan.recipe.derive(*fields)
    finally:
        for ds in handles.values():
            ds.close()
    return out


def _read_source(ds, seg, local, source, channel, index):
    var = ds.variables[seg.name]
    key = []
    for pos, dim in enumerate(seg.axes[:-2]):
        if dim == seg.time_dim:
            key.append(local)
        elif pos == seg.level_axis:
            if source.level is None:
                raise DataError(
                    f"{seg.path}: {channel}: variable {seg.name} has pressure levels; name one "
                    f"(level: ... in a --variables file)"
                )
            key.append(next(i for p, i in seg.levels.items() if abs(p - source.level) < 0.5))
        elif pos == seg.expver_axis:
            key.append(slice(None))
        else:
            key.append(0)
    field = var[tuple(key)] if key else var[...]
    if seg.expver_axis >= 0:
        field = _combine_members(field)
    if np.ma.is_masked(field):
        raise DataError(f"{seg.path}: variable {seg.name} holds missing values (time step {index})")
    field = np.asarray(field, dtype=np.float32)
    if not np.all(np.isfinite(field)):
        raise DataError(f"{seg.path}: variable {seg.name} holds NaN or Inf (time step {index})")
    if seg.flipped:
        field = field[::-1]
    if source.scale is not None:
        return field * np.float32(source.scale) + np.float32(source.offset)
    units = source.units if source.units is not None else seg.units
    return conventions.to_channel_units(
        field, units, source.kind, seg.step_seconds, f"{seg.path}: {channel}: variable {seg.name} "
    )


def _combine_members(members):
    """One field from ERA5's ``expver`` members (E, H, W): each cell from the first member that
    holds it (ERA5 where it exists, else ERA5T); still masked where none does."""
    members = np.ma.asarray(members)
    field = members[0].copy()
    for member in members[1:]:
        missing = np.ma.getmaskarray(field)
        if not missing.any():
            break
        field[missing] = member[missing]
    return field


def create_cam5_grid(ds, lat, lon, steps=None, times=None, unlimited=True):
    """The coordinates of a CAM5-style file in the open netCDF4 dataset ``ds``: ``lat``
    (degrees_north), ``lon`` (degrees_east) and, with ``steps``, ``time`` (days since 2000-01-01,
    noleap; 3-hourly unless ``times`` are given), unlimited unless ``unlimited=False`` (fixed-size
    dimensions keep the variables contiguous). Returns the dimensions of a field variable."""
    ds.createDimension("lat", len(lat))
    ds.createDimension("lon", len(lon))
    dims = ("lat", "lon")
    if steps is not None:
        ds.createDimension("time", None if unlimited else steps)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "days since 2000-01-01 00:00:00", "noleap"
        t[:] = np.arange(steps) * 0.125 if times is None else times
        dims = ("time",) + dims
    la = ds.createVariable("lat", "f8", ("lat",))
    la.units = "degrees_north"
    la[:] = lat
    lo = ds.createVariable("lon", "f8", ("lon",))
    lo.units = "degrees_east"
    lo[:] = lon
    return dims


def write_cam5_netcdf(path, fields, lat, lon, times=None, channels=CHANNELS):
    """Write fields (T, H, W, C) or (H, W, C) as a CAM5-style netCDF file (one variable per channel)."""
    import netCDF4

    from climseg.constants import CHANNEL_UNITS
    from climseg.output import atomic_path

    fields = np.asarray(fields, dtype=np.float32)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w") as ds:
        dims = create_cam5_grid(ds, lat, lon, fields.shape[0] if fields.ndim == 4 else None, times)
        for k, c in enumerate(channels):
            v = ds.createVariable(c, "f4", dims)
            v.units = CHANNEL_UNITS.get(c, "")
            v[:] = fields[..., k]
