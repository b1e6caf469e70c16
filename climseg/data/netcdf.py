"""netCDF input in any variable-name convention: the 16 DeepCAM channels as 2-D fields
on a latitude-longitude grid, from one file or a set of files merged on time and grid.

Data flow: :func:`open_netcdf` expands the inputs (paths, glob patterns, folders) into
files, lists every field variable of every file (its time axis, its pressure levels),
matches the channels asked for against a convention (:mod:`climseg.data.variables`:
CAM5, ERA5, CMIP6, auto-detected, or a ``--variables`` mapping), joins each variable's
files in time order (CMIP-style ``tas_Amon_MODEL_..._185001-189912.nc`` pieces) and
checks that every channel sees the same grid and the same time steps. It returns a
:class:`NetCDFInput`; :func:`read_netcdf_step` then reads one time step at a time
(bounded memory), selects the pressure level, converts units and derives channels.

Fields are ``(time, lat, lon)``, ``(lat, lon)``, or with a pressure axis
``(time, level, lat, lon)`` / ``(level, lat, lon)``; the pressure coordinate (``plev``,
``level``, ``pressure_level``, ``lev``, ``isobaricInhPa``...) is read in Pa or hPa from its
``units``. Coordinates ``lat``/``latitude`` and ``lon``/``longitude`` give the grid (any
monotonic latitudes, e.g. Gaussian; any size). The coordinate names known, here and to every
other reader of netCDF in climseg (:mod:`climseg.data.masks`, :mod:`climseg.data.climatenet`),
are the tables :data:`LAT_NAMES`, :data:`LON_NAMES`, :data:`TIME_NAMES` and
:data:`LEVEL_NAMES`, looked up by :func:`find_name`. Fields are returned south to north
(flipped if a file's latitudes descend), the orientation the networks are trained in.
Calendars are read with cftime (``standard``, ``proleptic_gregorian``, ``noleap``,
``360_day``...). A variable without a time axis (a fixed field) serves every step.
"""

import dataclasses
import glob
import os

import numpy as np

from climseg.constants import CHANNELS
from climseg.data import variables as conventions
from climseg.errors import DataError, first_line
from climseg.sphere import is_global

# the coordinate names every netCDF reader of climseg knows (find_name matches them in any case)
LAT_NAMES = ("lat", "latitude", "nav_lat")
LON_NAMES = ("lon", "longitude", "nav_lon")
TIME_NAMES = ("time", "t", "valid_time")
LEVEL_NAMES = ("plev", "level", "pressure_level", "lev", "isobaricinhpa", "pressure", "pres", "p")
SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


@dataclasses.dataclass
class Segment:
    """One variable in one file: where its time steps and pressure levels are."""

    path: str
    name: str
    units: str
    ntime: int  # 0: no time axis (a fixed field)
    levels: dict  # hPa -> index on the level axis ({} without one)
    level_axis: int  # position of the level axis (-1 without one)
    flipped: bool
    dates: list  # cftime dates of the steps ([] without a time axis)
    step_seconds: float = None
    time_dim: str = None
    axes: tuple = ()
    time_units: str = None
    calendar: str = None


@dataclasses.dataclass
class NetCDFInput:
    """An open description of a netCDF input (one file or a merged set): grid, times, and
    where each channel lives."""

    path: str
    lat: np.ndarray  # ascending
    lon: np.ndarray  # as in the file, unwrapped to increase (e.g. 0..180, 180..360 for -180..180 stored from 0)
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


def find_name(names, candidates):
    """The first of ``candidates`` (e.g. :data:`LAT_NAMES`) among ``names`` (a file's variable
    names), matched without regard to case, as the file spells it; None when none is there."""
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    return None


def expand_inputs(inputs):
    """Files named by ``inputs`` (a path, a glob pattern or a folder, or a list of them),
    in the order given (a folder's and a pattern's netCDF files sorted by name)."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(SUFFIXES) and not f.startswith(".")
            )
            if not found:
                raise DataError(f"{item}: folder holds no netCDF files (.nc)")
            files += found
        elif any(ch in item for ch in "*?[") and not os.path.exists(item):
            found = sorted(glob.glob(item))
            if not found:
                raise DataError(f"{item}: no files match")
            files += found
        elif not os.path.isfile(item):
            raise DataError(f"{item}: no such file")
        else:
            files.append(item)
    seen, unique = set(), []
    for f in files:
        if os.path.abspath(f) not in seen:
            seen.add(os.path.abspath(f))
            unique.append(f)
    return unique


def open_netcdf(path, channels=CHANNELS, optional=(), convention="auto", variables=None):
    """Check a netCDF input (a file, or a set of files: paths, glob patterns, folders)
    and describe it; DataError naming the file on any problem. ``channels`` must be
    present; those also in ``optional`` are used when present. ``convention``: auto,
    CAM5, ERA5 or CMIP6; ``variables``: a mapping file (or a loaded table) instead."""
    paths = expand_inputs(path)
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    grid, found = None, {}
    for p in paths:
        g, segs = _scan_file(p)
        if grid is None:
            grid = g
        else:
            _same_grid(grid, g)
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


def open_dataset(path):
    """``netCDF4.Dataset(path)`` for reading, or a one-line DataError naming the file."""
    import netCDF4

    try:
        return netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable netCDF file ({first_line(exc)})") from None


def _scan_file(path):
    """``(grid, [Segment])`` of one file: its ascending latitudes, unwrapped longitudes,
    and every variable on that grid."""
    with open_dataset(path) as ds:
        names = list(ds.variables)
        lat_name, lon_name = find_name(names, LAT_NAMES), find_name(names, LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: no latitude/longitude coordinate variables (lat, lon)")
        lat_var, lon_var = ds.variables[lat_name], ds.variables[lon_name]
        lat = np.asarray(lat_var[:], dtype=np.float64).reshape(-1)
        lon = np.asarray(lon_var[:], dtype=np.float64).reshape(-1)
        lat_dim = lat_var.dimensions[0] if lat_var.ndim == 1 else None
        lon_dim = lon_var.dimensions[0] if lon_var.ndim == 1 else None
        flipped = len(lat) > 1 and lat[0] > lat[-1]
        if len(lat) > 1 and not np.all(np.diff(lat[::-1] if flipped else lat) > 0):
            raise DataError(f"{path}: latitudes are not monotonic")
        lon = np.rad2deg(np.unwrap(np.deg2rad(lon)))
        if len(lon) > 1 and not np.all(np.diff(lon) > 0):
            raise DataError(f"{path}: longitudes are not monotonic")
        coords = {lat_name, lon_name}
        segments, times = [], {}
        for name, var in ds.variables.items():
            dims = var.dimensions
            if name in coords or name in ds.dimensions or var.ndim < 2:
                continue
            if lat_dim is not None and dims[-2:] != (lat_dim, lon_dim):
                continue
            if tuple(var.shape[-2:]) != (len(lat), len(lon)):
                if var.ndim == 2 and lat_dim is None:
                    raise DataError(
                        f"{path}: variable {name} has shape {tuple(var.shape)}; the grid is {len(lat)} x {len(lon)}"
                    )
                continue
            seg = _segment(ds, path, name, var, flipped, times)
            if seg is not None:
                segments.append(seg)
    return dict(lat=lat[::-1].copy() if flipped else lat, lon=lon, flipped=flipped, path=path), segments


def _segment(ds, path, name, var, flipped, times):
    """The Segment of one field variable, or None when its leading axes are not time/level."""
    lead = var.dimensions[:-2]
    time_dim = level_dim = None
    for d in lead:
        if _is_time(ds, d):
            time_dim = d
        elif level_dim is None and _is_level(ds, d):
            level_dim = d
        elif var.shape[var.dimensions.index(d)] != 1:
            raise DataError(
                f"{path}: variable {name} has dimensions {var.dimensions}; expected (time, lat, lon), "
                f"(time, level, lat, lon) or (lat, lon)"
            )
    levels = {}
    if level_dim is not None:
        levels = {float(p): i for i, p in enumerate(_levels_hpa(ds, path, level_dim))}
    dates = []
    if time_dim is not None:
        if time_dim not in times:
            times[time_dim] = _dates(ds, path, time_dim)
        dates = times[time_dim][0]
        if len(dates) == 0:
            raise DataError(f"{path}: variable {name}: its time axis has length 0 (no time steps)")
    units, calendar = (times[time_dim][1], times[time_dim][2]) if time_dim else (None, None)
    return Segment(
        path=path,
        name=name,
        units=getattr(var, "units", None),
        ntime=len(dates) if time_dim else 0,
        levels=levels,
        level_axis=var.dimensions.index(level_dim) if level_dim else -1,
        flipped=flipped,
        dates=list(dates),
        time_dim=time_dim,
        axes=var.dimensions,
        time_units=units,
        calendar=calendar,
    )


def _is_time(ds, dim):
    if dim.lower() in TIME_NAMES:
        return True
    var = ds.variables.get(dim)
    return var is not None and "since" in str(getattr(var, "units", ""))


def _is_level(ds, dim):
    var = ds.variables.get(dim)
    if dim.lower() in LEVEL_NAMES:
        return True
    units = str(getattr(var, "units", "")).strip().lower() if var is not None else ""
    return units in ("pa", "hpa", "mbar", "millibar", "mb")


def _levels_hpa(ds, path, dim):
    var = ds.variables.get(dim)
    if var is None:
        raise DataError(f"{path}: pressure axis {dim} has no coordinate variable")
    values = np.asarray(var[:], dtype=np.float64).reshape(-1)
    units = getattr(var, "units", None)
    if units is None:
        return values / 100.0 if values.max() > 1100.0 else values  # no units: Pa when above 1100
    key = conventions.canonical_units(units)
    if key not in conventions.UNIT_TABLE["pressure"]:
        raise DataError(f"{path}: pressure axis {dim} has units {units!r}; expected Pa or hPa")
    return values * conventions.UNIT_TABLE["pressure"][key][0] / 100.0


def _dates(ds, path, dim):
    """``(dates, units, calendar)`` of a time axis (cftime objects)."""
    import cftime

    var = ds.variables.get(dim)
    n = len(ds.dimensions[dim])
    if var is None or not hasattr(var, "units"):
        return [float(i) for i in range(n)], None, None
    calendar = getattr(var, "calendar", "standard")
    try:
        dates = cftime.num2date(np.asarray(var[:], np.float64).reshape(-1), var.units, calendar)
    except Exception as exc:  # noqa: BLE001 - any failure is an unreadable time axis
        raise DataError(f"{path}: time units {var.units!r} ({calendar}) unreadable: {exc}") from None
    return list(np.atleast_1d(dates)), var.units, calendar


def _same_grid(a, b):
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
        else:
            key.append(0)
    field = var[tuple(key)] if key else var[...]
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


def is_netcdf(path):
    """True for the usual netCDF file suffixes (.nc, .nc4, .netcdf, .cdf)."""
    return os.path.splitext(path)[1].lower() in (".nc", ".nc4", ".netcdf", ".cdf")
