"""CAM5-style netCDF input: the 16 DeepCAM variables as 2-D fields on a
latitude-longitude grid, with or without a time dimension.

Each variable (``TMQ``, ``U850``, ... matched without regard to case) has
dimensions ``(lat, lon)`` or ``(time, lat, lon)``; coordinate variables
``lat``/``latitude`` and ``lon``/``longitude`` give the grid. Fields are
returned south-to-north (flipped if the file's latitudes descend), which is
the orientation the networks are trained in.
"""
import dataclasses
import os

import numpy as np

from climseg.constants import CHANNELS
from climseg.errors import DataError

LAT_NAMES = ("lat", "latitude", "nav_lat")
LON_NAMES = ("lon", "longitude", "nav_lon")
TIME_NAMES = ("time", "t")


@dataclasses.dataclass
class NetCDFInput:
    """An open description of one netCDF file: grid, times, and where each channel lives."""

    path: str
    lat: np.ndarray            # ascending
    lon: np.ndarray            # as in the file, unwrapped to increase (e.g. 0..180, 180..360 for -180..180 stored from 0)
    flipped: bool              # the file stores latitudes north to south
    periodic: bool             # the grid goes all the way round in longitude
    times: list                # one label per time step ("" without a time dimension)
    variables: dict            # channel name -> variable name in the file
    time_dim: str = None


def _find(names, candidates):
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def open_netcdf(path, channels=CHANNELS, optional=()):
    """Check a netCDF file and describe it; DataError naming the file on any problem.
    ``channels`` must be present; those also in ``optional`` are used when present."""
    import netCDF4

    try:
        ds = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable netCDF file ({str(exc).splitlines()[0]})") from None
    with ds:
        names = list(ds.variables)
        lat_name, lon_name = _find(names, LAT_NAMES), _find(names, LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: no latitude/longitude coordinate variables (lat, lon)")
        lat = np.asarray(ds.variables[lat_name][:], dtype=np.float64).reshape(-1)
        lon = np.asarray(ds.variables[lon_name][:], dtype=np.float64).reshape(-1)
        variables, missing = {}, []
        lower = {n.lower(): n for n in names}
        for c in channels:
            if c.lower() in lower:
                variables[c] = lower[c.lower()]
            elif c not in optional:
                missing.append(c)
        if missing:
            raise DataError(f"{path}: missing variable(s) {', '.join(missing)}")
        time_dim, ntime = None, None
        for v in variables.values():
            var = ds.variables[v]
            dims = var.dimensions
            if len(dims) == 3:
                t = dims[0]
                if time_dim not in (None, t) or (ntime is not None and ntime != var.shape[0]):
                    raise DataError(f"{path}: variables disagree on the time dimension ({v} uses {t})")
                time_dim, ntime = t, var.shape[0]
            elif len(dims) != 2:
                raise DataError(f"{path}: variable {v} has dimensions {dims}; expected (time, lat, lon) or (lat, lon)")
            if tuple(var.shape[-2:]) != (len(lat), len(lon)):
                raise DataError(f"{path}: variable {v} has shape {tuple(var.shape)}; the grid is {len(lat)} x {len(lon)}")
        times = [""] if time_dim is None else _time_labels(ds, time_dim, ntime)
    flipped = len(lat) > 1 and lat[0] > lat[-1]
    if len(lat) > 1 and not np.all(np.diff(lat[::-1] if flipped else lat) > 0):
        raise DataError(f"{path}: latitudes are not monotonic")
    lon = np.rad2deg(np.unwrap(np.deg2rad(lon)))
    if len(lon) > 1 and not np.all(np.diff(lon) > 0):
        raise DataError(f"{path}: longitudes are not monotonic")
    step = (lon[-1] - lon[0]) / max(len(lon) - 1, 1)
    periodic = len(lon) > 1 and abs(lon[-1] - lon[0] + step - 360.0) < 0.5 * step
    return NetCDFInput(path=path, lat=lat[::-1].copy() if flipped else lat, lon=lon, flipped=flipped,
                       periodic=periodic, times=times, variables=variables, time_dim=time_dim)


def _time_labels(ds, time_dim, n):
    var = ds.variables.get(time_dim)
    if var is None:
        return [f"step {i}" for i in range(n)]
    try:
        import netCDF4

        dates = netCDF4.num2date(var[:], var.units, getattr(var, "calendar", "standard"))
        return [str(d)[:19] for d in np.atleast_1d(dates)]
    except Exception:  # units missing or unparsable: fall back to raw values
        return [f"{float(v):g}" for v in np.atleast_1d(var[:])]


def read_netcdf_step(info, index, channels=None):
    """Fields of time step ``index`` as float32 (H, W, C), rows south to north
    (``channels``: default, every channel the file was opened with and has)."""
    import netCDF4

    channels = list(info.variables) if channels is None else channels
    out = np.empty((len(info.lat), len(info.lon), len(channels)), np.float32)
    with netCDF4.Dataset(info.path, "r") as ds:
        for k, c in enumerate(channels):
            var = ds.variables[info.variables[c]]
            field = var[index] if var.ndim == 3 else var[...]
            if np.ma.is_masked(field):
                raise DataError(f"{info.path}: variable {info.variables[c]} holds missing values (time step {index})")
            field = np.asarray(field, dtype=np.float32)
            if not np.all(np.isfinite(field)):
                raise DataError(f"{info.path}: variable {info.variables[c]} holds NaN or Inf (time step {index})")
            out[..., k] = field[::-1] if info.flipped else field
    return out


def write_cam5_netcdf(path, fields, lat, lon, times=None, channels=CHANNELS):
    """Write fields (T, H, W, C) or (H, W, C) as a CAM5-style netCDF file (one variable per channel)."""
    import netCDF4

    from climseg.constants import CHANNEL_UNITS
    from climseg.io import atomic_path

    fields = np.asarray(fields, dtype=np.float32)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w") as ds:
        ds.createDimension("lat", len(lat))
        ds.createDimension("lon", len(lon))
        dims = ("lat", "lon")
        if fields.ndim == 4:
            ds.createDimension("time", None)
            t = ds.createVariable("time", "f8", ("time",))
            t.units, t.calendar = "days since 2000-01-01 00:00:00", "noleap"
            t[:] = np.arange(fields.shape[0]) * 0.125 if times is None else times
            dims = ("time",) + dims
        la = ds.createVariable("lat", "f8", ("lat",))
        la.units = "degrees_north"
        la[:] = lat
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.units = "degrees_east"
        lo[:] = lon
        for k, c in enumerate(channels):
            v = ds.createVariable(c, "f4", dims)
            v.units = CHANNEL_UNITS.get(c, "")
            v[:] = fields[..., k]


def is_netcdf(path):
    """True for the usual netCDF file suffixes (.nc, .nc4, .netcdf, .cdf)."""
    return os.path.splitext(path)[1].lower() in (".nc", ".nc4", ".netcdf", ".cdf")
