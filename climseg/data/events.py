"""The events format (``climseg-events``, version 1): the folder that ``climseg track``
writes and ``climseg analyze`` and :func:`climseg.analytics.scoring.score_tracking` read.

* ``NAME_event_id.nc`` per mask file ``NAME`` (:func:`event_id_name`,
  :func:`create_event_id_netcdf`): CF netCDF, ``event_id(time, lat, lon)``, 0 outside events;
  uint16 while the ids fit, else int32; latitudes ascending, longitudes increasing as in the
  masks (from -180 or from 0: CF coordinates, never wrapped);
* ``events.csv`` (one row per event, :data:`EVENT_COLUMNS`) and ``tracks.csv`` (one row per
  event and step, :data:`TRACK_COLUMNS`), the same as Parquet when pyarrow is installed
  (:func:`write_table`);
* ``occupancy.nc`` (:func:`write_occupancy`, :func:`read_occupancy`): per class and cell, the
  number of steps inside an event of that class, and the series' ``total_steps``;
* ``track.json``: :data:`FORMAT`, :data:`FORMAT_VERSION`, options, inputs, time axis, grid,
  event counts; :func:`read_events` checks it before it reads the tables.

The writers take the series as :class:`climseg.data.masks.MaskSeries` describes it.
"""

import csv
import json
import os

import numpy as np

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.errors import DataError
from climseg.output import atomic_path

FORMAT = "climseg-events"
FORMAT_VERSION = 1
EVENT_COLUMNS = [
    "id",
    "class",
    "first_time",
    "last_time",
    "first_step",
    "last_step",
    "steps",
    "lifetime_hours",
    "peak_area_km2",
    "mean_area_km2",
    "distance_km",
    "mean_speed_m_s",
    "genesis_lat",
    "genesis_lon",
    "lysis_lat",
    "lysis_lon",
]
TRACK_COLUMNS = ["id", "class", "step", "time", "time_hours", "lat", "lon", "area_km2", "pixels", "components"]


def event_id_name(stem):
    """File name of the event ids of the mask file named ``stem`` (without its suffix)."""
    return f"{stem}_event_id.nc"


def create_event_id_netcdf(path, series, mask_file, events):
    """Open ``path`` (netCDF4, mode ``"w"``) as the event-id file of ``mask_file`` (a
    :class:`~climseg.data.masks.MaskFile` of ``series``): its times, the series' grid and an
    empty ``event_id(time, lat, lon)``, uint16 when ``events`` (the number of events) fits,
    else int32, chunked by step. Returns ``(dataset, event_id variable)``; the caller fills
    it a step at a time and closes the dataset."""
    import netCDF4

    h, w = series.lat.size, series.lon.size
    ds = netCDF4.Dataset(path, "w", format="NETCDF4")
    try:
        ds.Conventions = "CF-1.8"
        ds.source = f"climseg track of {os.path.basename(mask_file.path)} ({FORMAT} version {FORMAT_VERSION})"
        ds.createDimension("time", None)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        tv = ds.createVariable("time", "f8", ("time",))
        tv.standard_name, tv.units, tv.calendar, tv.axis = "time", series.time_units, series.calendar, "T"
        tv[:] = series.hours[mask_file.first : mask_file.first + mask_file.steps]
        la = ds.createVariable("lat", "f8", ("lat",))
        la.standard_name, la.units, la.axis = "latitude", "degrees_north", "Y"
        la[:] = series.lat
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.standard_name, lo.units, lo.axis = "longitude", "degrees_east", "X"
        lo[:] = series.lon  # increasing, from -180 or from 0 as in the masks
        # uint16 while the ids fit (half the bytes to compress), else int32
        dtype = "u2" if int(events) < 65535 else "i4"
        ev = ds.createVariable(
            "event_id", dtype, ("time", "lat", "lon"), zlib=True, complevel=1, shuffle=False, chunksizes=(1, h, w)
        )
        ev.long_name = "id of the tracked event (events.csv) each cell belongs to; 0 outside events"
        ev.valid_min = np.int32(0)
    except BaseException:
        ds.close()
        raise
    return ds, ev


def read_event_ids(folder, stem):
    """The event ids (int64, (time, lat, lon)) of the mask file ``stem`` in a track folder."""
    import netCDF4

    with netCDF4.Dataset(os.path.join(folder, event_id_name(stem))) as ds:
        ds.set_auto_mask(False)
        return np.asarray(ds.variables["event_id"][:], np.int64)


def write_occupancy(path, series, occupancy):
    """``occupancy.nc``: ``steps_in_event(class, lat, lon)`` from ``occupancy`` (classes, H * W)
    on the series' grid, and the series' number of steps as ``total_steps``."""
    import netCDF4

    h, w = series.lat.size, series.lon.size
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.Conventions = "CF-1.8"
        ds.total_steps = np.int32(series.hours.size)
        ds.createDimension("class", NUM_CLASSES)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        la = ds.createVariable("lat", "f8", ("lat",))
        la.standard_name, la.units = "latitude", "degrees_north"
        la[:] = series.lat
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.standard_name, lo.units = "longitude", "degrees_east"
        lo[:] = series.lon  # increasing, from -180 or from 0 as in the masks
        v = ds.createVariable("steps_in_event", "i4", ("class", "lat", "lon"), zlib=True)
        v.long_name = "number of time steps the cell lies inside a tracked event of the class"
        v.flag_meanings = " ".join(CLASS_NAMES)
        v[:] = occupancy.reshape(NUM_CLASSES, h, w)


def read_occupancy(folder):
    """``(lat, lon, steps_in_event (class, lat, lon) float64, total_steps)`` of a track folder
    (or its ``events.csv``); DataError when ``occupancy.nc`` is missing."""
    import netCDF4

    path = os.path.join(_folder(folder), "occupancy.nc")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing (rerun climseg track)")
    with netCDF4.Dataset(path) as ds:
        lat = np.asarray(ds.variables["lat"][:], np.float64)
        lon = np.asarray(ds.variables["lon"][:], np.float64)
        occupancy = np.asarray(ds.variables["steps_in_event"][:], np.float64)
        total = int(ds.total_steps)
    return lat, lon, occupancy, total


def write_table(stem, rows, columns):
    """``stem.csv`` always; ``stem.parquet`` too when pyarrow is installed."""
    with atomic_path(stem + ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(k, v) for k, v in r.items()})
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        return
    table = pyarrow.table({c: [r[c] for r in rows] for c in columns})
    with atomic_path(stem + ".parquet") as tmp:
        pyarrow.parquet.write_table(table, tmp)


def _csv_value(column, value):
    """A table cell: positions (``lat``, ``lon``, ``*_lat``, ``*_lon``) to 4 decimals, other
    floats to 6 significant digits, the rest as it is."""
    if not isinstance(value, float):
        return value
    if column in ("lat", "lon") or column.endswith(("_lat", "_lon")):
        return f"{value:.4f}"
    return f"{value:.6g}"


def _folder(path):
    """The folder of a track output given as the folder or as a file in it."""
    path = os.fspath(path)
    return os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else path


def read_events(folder):
    """``(track.json dict, events rows, tracks rows)`` of a ``climseg track`` output folder
    (or its ``events.csv``); DataError when it is missing or of another format version."""
    folder = _folder(folder)
    meta_path = os.path.join(folder, "track.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"{folder}: no track.json (not a climseg track output folder)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{meta_path}: events of format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this climseg reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    tables = []
    for name in ("events.csv", "tracks.csv"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing")
        with open(path, newline="") as f:
            tables.append(list(csv.DictReader(f)))
    if tables[0] and list(tables[0][0]) != EVENT_COLUMNS:
        raise DataError(f"{os.path.join(folder, 'events.csv')}: columns differ from version {FORMAT_VERSION}'s")
    return meta, tables[0], tables[1]
