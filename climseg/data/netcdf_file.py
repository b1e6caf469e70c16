"""One netCDF file's header, read the same way by every reader of netCDF in climseg: the
coordinate names, the grid and its checks, the time axis, the pressure levels, and where each
field variable's steps are.

Data flow: :func:`expand_inputs` turns paths, glob patterns and folders into files;
:func:`scan_file` opens one (:func:`open_dataset`), finds its coordinates by the name tables
(:data:`LAT_NAMES`, :data:`LON_NAMES`, :data:`TIME_NAMES`, :data:`LEVEL_NAMES`, matched in any
case by :func:`find_name`), checks them (:func:`check_grid`: finite, latitudes within [-90, 90]
and monotonic, longitudes increasing after unwrapping and spanning at most 360 degrees), refuses
a header that declares far more data than the file holds (:func:`check_declared_size`), reads
each time axis (:func:`read_time_axis`: CF units and calendar through cftime, strictly
increasing) and describes every field variable on the grid as a :class:`Segment`.
:mod:`climseg.data.netcdf` merges the segments of many files into one input;
:mod:`climseg.data.masks` reads class masks with the same tables and checks.

Conventions read as they are written:

* **time**: ``time``, ``t`` or ERA5's ``valid_time`` (new CDS), or any axis whose ``units``
  contain ``since``; numbers of any type (ERA5's int32 hours since 1900, the new CDS's int64
  seconds since 1970, CMIP's days since 1850), any CF calendar;
* **pressure levels**: ``plev``, ``level``, ``pressure_level``, ``lev``, ``isobaricInhPa``... in
  any pressure unit of :data:`climseg.data.variables.UNIT_TABLE` (Pa, hPa, ``millibars`` as the
  classic CDS writes it, ``mbar``, ``mb``, kPa); an axis named ``lev``/``level`` in other units
  (hybrid sigma ``1``, model level numbers, heights) is not a pressure axis, and its variables are
  left out;
* **packed** variables (int16 with ``scale_factor``/``add_offset``, as the classic CDS writes
  every field) are unpacked by netCDF4 on reading; ``_FillValue``/``missing_value`` cells read
  as missing; netCDF-3 (classic, 64-bit offset) and netCDF-4 files alike;
* **ERA5 and ERA5T together** (a classic-CDS download that reaches the last months): an
  ``expver`` axis whose members fill different steps; each cell is read from the member that
  holds it (:attr:`Segment.expver_axis`).
"""

import dataclasses
import glob
import os

import numpy as np

from climseg.data import variables as conventions
from climseg.errors import DataError, first_line
from climseg.sphere import coordinate_problem, monotonic_longitudes

# the coordinate names every netCDF reader of climseg knows (find_name matches them in any case)
LAT_NAMES = ("lat", "latitude", "nav_lat")
LON_NAMES = ("lon", "longitude", "nav_lon")
TIME_NAMES = ("time", "t", "valid_time")
LEVEL_NAMES = ("plev", "level", "pressure_level", "lev", "isobaricinhpa", "pressure", "pres", "p")
# level axes that can only be pressure: other units there are an error, not another kind of level
PRESSURE_ONLY_NAMES = ("plev", "pressure_level", "isobaricinhpa", "pressure", "pres", "p")
EXPVER_NAMES = ("expver",)
SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")
# deflate (netCDF-4's compression) cannot shrink data more than about 1032:1: a header declaring more
# than this many times the file's size (and more than HOLLOW_BYTES) describes data the file cannot hold
MAX_COMPRESSION = 1100
HOLLOW_BYTES = 64 << 20


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
    expver_axis: int = -1  # position of an ERA5/ERA5T ``expver`` axis whose members are combined (-1: none)


def find_name(names, candidates):
    """The first of ``candidates`` (e.g. :data:`LAT_NAMES`) among ``names`` (a file's variable
    names), matched without regard to case, as the file spells it; None when none is there."""
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    return None


def is_netcdf(path):
    """True for the usual netCDF file suffixes (.nc, .nc4, .netcdf, .cdf)."""
    return os.path.splitext(os.fspath(path))[1].lower() in SUFFIXES


def expand_inputs(inputs, suffixes=SUFFIXES):
    """Files named by ``inputs`` (a path, a glob pattern or a folder, or a list of them), in the
    order given (a folder's files with one of ``suffixes`` and a pattern's matches sorted by
    name), each once."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = []
    for item in items:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(tuple(suffixes)) and not f.startswith(".")
            )
            if not found:
                raise DataError(f"{item}: is a folder without netCDF files ({', '.join(suffixes)})")
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


def open_dataset(path):
    """``netCDF4.Dataset(path)`` for reading, or a one-line DataError naming the file."""
    import netCDF4

    try:
        return netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable netCDF file ({first_line(exc)})") from None


def check_grid(path, lat, lon):
    """``(latitudes ascending, longitudes increasing, flipped)`` of a file's coordinate values,
    or a DataError naming the file (:func:`climseg.sphere.coordinate_problem`). ``flipped``: the
    file stores latitudes north to south; longitudes are :func:`~climseg.sphere.monotonic_longitudes`."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    problem = coordinate_problem(lat, lon)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    flipped = bool(lat.size > 1 and lat[0] > lat[-1])
    return (lat[::-1].copy() if flipped else lat), monotonic_longitudes(lon), flipped


def _bytes(n):
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return ""


def check_declared_size(path, ds, names, grid):
    """Refuse, from the header alone, a file whose variables ``names`` declare far more data than
    the file can hold (more than :data:`HOLLOW_BYTES`, and more than :data:`MAX_COMPRESSION`
    times the file's size): a truncated file or a damaged header, which would otherwise be read
    (and held in memory) before its missing values are found. ``grid``: (height, width)."""
    declared = 0.0
    for name in names:
        var = ds.variables[name]
        itemsize = getattr(var.dtype, "itemsize", 0)  # str variables have none
        declared += float(np.prod(var.shape, dtype=np.float64)) * itemsize
    size = os.path.getsize(path)
    if declared > HOLLOW_BYTES and declared > MAX_COMPRESSION * max(size, 1):
        raise DataError(
            f"{path}: its header declares {_bytes(declared)} of fields on a {grid[0]} x {grid[1]} grid, but the "
            f"file holds {_bytes(size)}, more than any compression can give; the file is truncated or its "
            "header damaged (nothing was read)"
        )


def read_time_axis(ds, path, dim):
    """``(dates, units, calendar)`` of the time axis ``dim`` (a dimension, or a time variable of that
    name; cftime objects; step numbers when the axis has no units); DataError naming the file when
    the units cannot be read or the times do not strictly increase."""
    import cftime

    var = ds.variables.get(dim)
    n = var.size if var is not None else len(ds.dimensions[dim])
    if var is None or not hasattr(var, "units"):
        return [float(i) for i in range(n)], None, None
    calendar = getattr(var, "calendar", "standard")
    values = np.asarray(var[:], np.float64).reshape(-1)
    try:
        dates = list(np.atleast_1d(cftime.num2date(values, var.units, calendar)))
    except Exception as exc:  # noqa: BLE001 - any failure is an unreadable time axis
        raise DataError(f"{path}: time units {var.units!r} ({calendar}) unreadable: {exc}") from None
    bad = np.flatnonzero(~(np.diff(values) > 0))
    if bad.size:
        i = int(bad[0]) + 1
        raise DataError(
            f"{path}: time ({dim}) does not increase at step {i} ({str(dates[i])[:19]} after "
            f"{str(dates[i - 1])[:19]}); the steps of a file must be in time order, without repeats"
        )
    return dates, var.units, calendar


def scan_file(path):
    """``(grid, [Segment])`` of one file: its ascending latitudes, increasing longitudes, and
    every variable on that grid (see the module docstring)."""
    with open_dataset(path) as ds:
        names = list(ds.variables)
        lat_name, lon_name = find_name(names, LAT_NAMES), find_name(names, LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: no latitude/longitude coordinate variables (lat, lon)")
        lat_var, lon_var = ds.variables[lat_name], ds.variables[lon_name]
        lat_dim = lat_var.dimensions[0] if lat_var.ndim == 1 else None
        lon_dim = lon_var.dimensions[0] if lon_var.ndim == 1 else None
        lat, lon, flipped = check_grid(path, lat_var[:], lon_var[:])
        coords = {lat_name, lon_name}
        fields = []
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
            fields.append(name)
        check_declared_size(path, ds, fields, (len(lat), len(lon)))
        segments, times = [], {}
        for name in fields:
            seg = _segment(ds, path, name, ds.variables[name], flipped, times)
            if seg is not None:
                segments.append(seg)
    return dict(lat=lat, lon=lon, flipped=flipped, path=path), segments


def _segment(ds, path, name, var, flipped, times):
    """The Segment of one field variable, or None when it lies on levels that are not pressure."""
    lead = var.dimensions[:-2]
    time_dim = level_dim = expver_dim = None
    for d in lead:
        size = var.shape[var.dimensions.index(d)]
        if _is_time(ds, d):
            time_dim = d
        elif level_dim is None and _is_level(ds, d):
            level_dim = d
        elif d.lower() in EXPVER_NAMES and size > 1:
            expver_dim = d
        elif size != 1:
            raise DataError(
                f"{path}: variable {name} has dimensions {var.dimensions}; expected (time, lat, lon), "
                f"(time, level, lat, lon) or (lat, lon)"
            )
    levels = {}
    if level_dim is not None:
        hpa = _levels_hpa(ds, path, level_dim)
        if hpa is None:
            return None  # model levels, heights...: not a field on pressure levels
        levels = {float(p): i for i, p in enumerate(hpa)}
    dates = []
    if time_dim is not None:
        if time_dim not in times:
            times[time_dim] = read_time_axis(ds, path, time_dim)
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
        expver_axis=var.dimensions.index(expver_dim) if expver_dim else -1,
    )


def _is_time(ds, dim):
    if dim.lower() in TIME_NAMES:
        return True
    var = ds.variables.get(dim)
    return var is not None and "since" in str(getattr(var, "units", ""))


def _is_pressure_units(units):
    return units is not None and conventions.canonical_units(units) in conventions.UNIT_TABLE["pressure"]


def _is_level(ds, dim):
    if dim.lower() in LEVEL_NAMES:
        return True
    var = ds.variables.get(dim)
    if var is None:
        return False
    return _is_pressure_units(getattr(var, "units", None)) or getattr(var, "standard_name", "") == "air_pressure"


def _levels_hpa(ds, path, dim):
    """The pressure (hPa) of each level of the axis ``dim``; None when the axis is not one of
    pressure (its units say model levels, sigma, heights)."""
    var = ds.variables.get(dim)
    if var is None:
        raise DataError(f"{path}: pressure axis {dim} has no coordinate variable")
    values = np.asarray(var[:], dtype=np.float64).reshape(-1)
    units = getattr(var, "units", None)
    if units is None:
        return values / 100.0 if values.max() > 1100.0 else values  # no units: Pa when above 1100
    if _is_pressure_units(units):
        return values * conventions.UNIT_TABLE["pressure"][conventions.canonical_units(units)][0] / 100.0
    if dim.lower() in PRESSURE_ONLY_NAMES or getattr(var, "standard_name", "") == "air_pressure":
        known = ", ".join(sorted(conventions.UNIT_TABLE["pressure"]))
        raise DataError(f"{path}: pressure axis {dim} has units {units!r}; expected a pressure unit ({known})")
    return None
