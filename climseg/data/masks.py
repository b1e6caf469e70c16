"""Class-mask files: the one format that ``climseg predict`` and ``climseg label`` write and
``climseg track`` reads, in netCDF and in HDF5, and the reader of a series of them.

Writing (0 background, 1 tropical cyclone, 2 atmospheric river; CF ``flag_values`` and
``flag_meanings`` on the mask):

* netCDF ``NAME_mask.nc``: ``mask(time, lat, lon)`` (or ``mask(lat, lon)``) of uint8 on the
  grid and time axis copied from the netCDF input it was made from (:func:`create_mask_netcdf`;
  :func:`create_mask_variable` adds the mask to a file whose coordinates are written otherwise);
* HDF5 ``NAME_mask.h5`` from a DeepCAM sample: dataset ``mask`` (H, W) of uint8, the flags and
  the ``source`` sample's name as attributes (:func:`create_mask_hdf5`).

The writers return the open file and the empty mask; the caller fills it in the file's own
row order (flipped back when the input stores latitudes north to south) and closes the file.

Reading: :func:`open_mask_series` checks mask files (paths, glob patterns or folders; a mask
variable named as in :data:`MASK_VARIABLES`, e.g. ``mask`` or ClimateNet's ``LABELS``;
coordinates and time found by the name tables of :mod:`climseg.data.netcdf_file`, so ERA5's
``valid_time`` and ``latitude`` are read like CAM5's ``time`` and ``lat``, with the same grid
checks and the same refusal of a header that declares far more than the file holds), puts them
in time order and describes them as one series, :class:`MaskSeries`: one grid (latitudes
ascending, longitudes increasing as in the files: from -180 or from 0), one strictly increasing
time axis in hours, the files. :class:`MaskReader` then reads the series a step at a time, rows
south to north, with the class values checked (whole numbers 0..2; 1.5 is refused, not rounded).
"""

import dataclasses
import os

import numpy as np

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.data.netcdf_file import (
    LAT_NAMES,
    LON_NAMES,
    TIME_NAMES,
    check_declared_size,
    check_grid,
    expand_inputs,
    find_name,
    open_dataset,
    read_time_axis,
)
from climseg.errors import DataError, UserError
from climseg.sphere import is_global

MASK_VARIABLES = ("mask", "LABELS", "labels", "class_mask")
MASK_LONG_NAME = "extreme weather class"


# ----------------------------------------------------------------------------- writing


def create_mask_variable(ds, dims):
    """An empty ``mask`` variable of uint8 on ``dims`` in the open netCDF4 dataset ``ds``
    (compressed), with its ``long_name`` and CF ``flag_values``/``flag_meanings``."""
    mask = ds.createVariable("mask", "u1", tuple(dims), zlib=True)
    mask.long_name = MASK_LONG_NAME
    mask.flag_values = np.arange(NUM_CLASSES, dtype=np.uint8)
    mask.flag_meanings = " ".join(CLASS_NAMES)
    return mask


def create_mask_netcdf(path, like, time_dim, note):
    """Open ``path`` (netCDF4, mode ``"w"``) as a class-mask file on the grid of the netCDF file
    ``like``: its time axis (``time_dim``, or none), latitude and longitude copied with their
    attributes, and an empty ``mask(time, lat, lon)`` (or ``mask(lat, lon)``)
    (:func:`create_mask_variable`); ``note`` becomes the file's ``source``. Returns
    ``(dataset, mask variable)``; the caller fills the mask (rows in the file's latitude
    order) and closes the dataset."""
    import netCDF4

    dst = netCDF4.Dataset(path, "w")
    try:
        with netCDF4.Dataset(like) as src:
            names = list(src.variables)
            dims = []
            if time_dim:
                dst.createDimension(time_dim, None)
                dims.append(time_dim)
                if time_dim in src.variables:
                    _copy_variable(src, dst, time_dim)
            for var in (find_name(names, LAT_NAMES), find_name(names, LON_NAMES)):
                dim = src.variables[var].dimensions[0]
                dst.createDimension(dim, len(src.dimensions[dim]))
                dims.append(dim)
                _copy_variable(src, dst, var)
        mask = create_mask_variable(dst, dims)
        dst.source = note
        dst.Conventions = "CF-1.8"
    except BaseException:
        dst.close()
        raise
    return dst, mask


def _copy_variable(src, dst, name):
    var = src.variables[name]
    new = dst.createVariable(name, var.datatype, var.dimensions)
    new.setncatts({k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"})
    new[:] = var[:]


def create_mask_hdf5(path, shape, source):
    """Open ``path`` (h5py, mode ``"w"``) as the class-mask file of the DeepCAM sample named
    ``source``: an empty dataset ``mask`` of uint8 and ``shape`` (H, W), compressed, with
    ``flag_values``, ``flag_meanings`` and ``source`` attributes. Returns ``(file, mask
    dataset)``; the caller fills the mask (rows south to north) and closes the file."""
    import h5py

    f = h5py.File(path, "w")
    try:
        mask = f.create_dataset("mask", shape=tuple(shape), dtype="u1", compression="gzip", chunks=True)
        mask.attrs["flag_values"] = np.arange(NUM_CLASSES, dtype=np.uint8)
        mask.attrs["flag_meanings"] = " ".join(CLASS_NAMES)
        mask.attrs["source"] = os.path.basename(source)
    except BaseException:
        f.close()
        raise
    return f, mask


# ----------------------------------------------------------------------------- reading a series


@dataclasses.dataclass
class MaskFile:
    """One input: where its mask lives and which of the series' steps it holds."""

    path: str
    variable: str
    flipped: bool
    has_time_dim: bool
    first: int
    steps: int
    stem: str


@dataclasses.dataclass
class MaskSeries:
    """All inputs as one series: grid (lat ascending), time axis, files."""

    files: list
    lat: np.ndarray
    lon: np.ndarray
    periodic: bool
    hours: np.ndarray  # hours since ``time_units``' reference, one per step
    time_units: str
    calendar: str
    times: list  # ISO-like labels, one per step

    def locate(self, step):
        """(file, index within it) of a global step."""
        k = int(np.searchsorted(self.starts, step, side="right")) - 1
        return self.files[k], step - self.files[k].first

    @property
    def starts(self):
        """The first global step of each file."""
        return np.array([f.first for f in self.files])


def open_mask_series(paths, variable=None):
    """Check the mask files ``paths`` (files, glob patterns or folders: the netCDF files in them)
    and describe them as one :class:`MaskSeries`, the files in time order (by their first step, as
    the pieces of a netCDF input are joined); ``variable`` names the mask (default: the first of
    :data:`MASK_VARIABLES` present). DataError naming the file on any problem: no mask, a grid out
    of range or unlike the first file's, a header declaring far more than the file holds, times
    that do not strictly increase within a file or across the files (a repeated step)."""
    if not paths:
        raise UserError("no mask files given")
    scanned = [_scan_mask_file(os.fspath(p), variable) for p in expand_inputs(paths)]
    units, calendar = _hours_units(scanned[0]["units"]), scanned[0]["calendar"]
    for scan in scanned:
        if _calendar_kind(scan["calendar"]) != _calendar_kind(calendar):
            raise DataError(
                f"{scan['path']}: calendar {scan['calendar']} differs from {calendar} of {scanned[0]['path']}"
            )
        scan["hours"] = _hours(scan["dates"], units, calendar)
    scanned.sort(key=lambda scan: float(scan["hours"][0]))  # stable: equal starts stay in the order given
    files, lat0, lon0, hours, times = [], None, None, [], []
    stems = {}
    for scan in scanned:
        path, lat, lon, h, dates, nsteps = (scan[k] for k in ("path", "lat", "lon", "hours", "dates", "steps"))
        if h.size != nsteps:
            raise DataError(f"{path}: {h.size} time values for {nsteps} mask steps")
        if lat0 is None:
            lat0, lon0 = lat, lon
        elif (
            lat.shape != lat0.shape
            or lon.shape != lon0.shape
            or not (np.allclose(lat, lat0, atol=1e-6) and np.allclose(lon % 360.0, lon0 % 360.0, atol=1e-6))
        ):
            raise DataError(
                f"{path}: grid {lat.size} x {lon.size} differs from the grid of {files[0].path} "
                f"({lat0.size} x {lon0.size}); track one grid at a time"
            )
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise UserError(f"{path}: has the same name as {stems[stem]}; their outputs would collide")
        stems[stem] = path
        if hours and h[0] <= hours[-1]:
            raise DataError(
                f"{path}: starts at {str(dates[0])[:19]}, not after the end of {files[-1].path} ({times[-1]}); "
                "the files repeat time steps"
            )
        files.append(MaskFile(path, scan["name"], scan["flipped"], scan["has_time_dim"], len(hours), int(nsteps), stem))
        hours.extend(h.tolist())
        times.extend(str(d)[:19] for d in np.atleast_1d(dates))
    hours = np.asarray(hours)
    return MaskSeries(files, lat0, lon0, is_global(lon0), hours, units, calendar, times)


def _scan_mask_file(path, variable):
    """One mask file's ``path``, mask ``name``, ``lat`` (ascending), ``lon`` (increasing), ``flipped``,
    ``has_time_dim``, ``steps``, ``dates``, time ``units`` and ``calendar``, as a dict; DataError
    naming the file on any problem."""
    with open_dataset(path) as ds:
        names = list(ds.variables)
        name = find_name(names, [variable]) if variable else find_name(names, MASK_VARIABLES)
        if name is None:
            wanted = variable or " or ".join(MASK_VARIABLES)
            raise DataError(f"{path}: no mask variable {wanted} (choose one with --variable)")
        var = ds.variables[name]
        lat_name, lon_name = find_name(names, LAT_NAMES), find_name(names, LON_NAMES)
        if lat_name is None or lon_name is None:
            raise DataError(f"{path}: no latitude/longitude coordinate variables (lat, lon)")
        lat, lon, flipped = check_grid(path, ds.variables[lat_name][:], ds.variables[lon_name][:])
        dims = var.dimensions
        time_name = find_name(names, TIME_NAMES)
        if len(dims) == 3:
            if time_name is None or ds.variables[time_name].dimensions != (dims[0],):
                raise DataError(f"{path}: {name} has a first dimension {dims[0]} but no time coordinate for it")
            has_time_dim, nsteps = True, var.shape[0]
        elif len(dims) == 2 and time_name is not None and ds.variables[time_name].size == 1:
            has_time_dim, nsteps = False, 1  # ClimateNet: LABELS(lat, lon) and one time value
        elif len(dims) == 2:
            raise DataError(f"{path}: mask {name} has no time dimension (and the file no single time value)")
        else:
            raise DataError(f"{path}: {name} has dimensions {dims}; expected (time, lat, lon)")
        if tuple(var.shape[-2:]) != (lat.size, lon.size):
            raise DataError(f"{path}: {name} has shape {tuple(var.shape)}; the grid is {lat.size} x {lon.size}")
        check_declared_size(path, ds, [name], (lat.size, lon.size))
        if not hasattr(ds.variables[time_name], "units"):
            raise DataError(f"{path}: time variable {time_name} has no units")
        dates, units, cal = read_time_axis(ds, path, time_name)
        if len(dates) == 0:
            raise DataError(f"{path}: {name}: its time axis has length 0 (no time steps)")
    return dict(
        path=path,
        name=name,
        lat=lat,
        lon=lon,
        flipped=flipped,
        has_time_dim=has_time_dim,
        steps=nsteps,
        dates=dates,
        units=units,
        calendar=cal,
    )


def _hours(dates, units, calendar):
    import cftime

    return np.asarray(cftime.date2num(list(np.atleast_1d(dates)), units, calendar), np.float64).reshape(-1)


def _hours_units(units):
    since = units.split("since", 1)[1].strip() if "since" in units else "1970-01-01"
    return f"hours since {since}"


def _calendar_kind(cal):
    cal = (cal or "standard").lower()
    same = {"gregorian": "standard", "proleptic_gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}
    return same.get(cal, cal)


class MaskReader:
    """Reads the steps of a :class:`MaskSeries` (uint8 (H, W), rows south to north), keeping
    the current file open; DataError naming the file and time for NaN/Inf or values that are
    not classes. Close it when done (or use it in a ``with`` block)."""

    def __init__(self, series):
        self.series, self.path, self.ds = series, None, None

    def read(self, step):
        """The class mask of global step ``step``."""
        import netCDF4

        f, k = self.series.locate(step)
        if f.path != self.path:
            self.close()
            self.ds, self.path = netCDF4.Dataset(f.path, "r"), f.path
            self.ds.set_auto_mask(False)
        var = self.ds.variables[f.variable]
        m = np.asarray(var[k] if f.has_time_dim else var[...])
        if m.dtype.kind == "f":
            if not np.all(np.isfinite(m)):
                raise DataError(f"{f.path}: {f.variable} holds NaN or Inf at {self.series.times[step]}")
            fraction = m != np.round(m)
            if fraction.any():
                raise DataError(
                    f"{f.path}: {f.variable} holds values that are not whole classes (e.g. {m[fraction][0]:g}) "
                    f"at {self.series.times[step]}; a class mask holds the integers 0..{NUM_CLASSES - 1}"
                )
        elif m.dtype.kind not in "iub":
            raise DataError(f"{f.path}: {f.variable} is of type {m.dtype}, not a class mask of integers")
        if m.size and (m.min() < 0 or m.max() >= NUM_CLASSES):
            raise DataError(
                f"{f.path}: {f.variable} holds values outside 0..{NUM_CLASSES - 1} at {self.series.times[step]}"
            )
        m = m.astype(np.uint8, copy=False)
        return m[::-1] if f.flipped else m

    def close(self):
        """Close the open file, if any."""
        if self.ds is not None:
            self.ds.close()
        self.ds = self.path = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
