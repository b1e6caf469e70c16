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
* ``track.json`` (:func:`track_summary`): :data:`FORMAT`, :data:`FORMAT_VERSION`, options,
  inputs, time axis, grid, event counts.

Reading: :func:`read_events` checks ``track.json`` and every cell of both tables before it
returns them, and :func:`read_occupancy` checks ``occupancy.nc`` against ``track.json``: an
edited, foreign or mixed folder is refused with one line that names the file and the field.

The writers take the series as :class:`climseg.data.masks.MaskSeries` describes it.
"""

import csv
import json
import os
import re

import numpy as np

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.errors import DataError, first_line
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


def track_summary(series, events, options, components):
    """The ``track.json`` dict of a tracked ``series`` (:class:`~climseg.data.masks.MaskSeries`):
    format and version, inputs and their event-id files, the time axis, the grid, the options
    (``min_size`` per class, ``look_ahead``, ``min_steps``), the events per class (``events``: the
    rows of ``events.csv``) and the number of ``components`` found."""
    nsteps = series.hours.size
    counts = {CLASS_NAMES[c]: sum(1 for e in events if e["class"] == CLASS_NAMES[c]) for c in range(1, NUM_CLASSES)}
    return dict(
        format=FORMAT,
        version=FORMAT_VERSION,
        inputs=[f.path for f in series.files],
        event_files=[event_id_name(f.stem) for f in series.files],
        steps=int(nsteps),
        first_time=series.times[0],
        last_time=series.times[-1],
        time_units=series.time_units,
        calendar=series.calendar,
        interval_hours=float(np.median(np.diff(series.hours))) if nsteps > 1 else None,
        grid=dict(
            height=int(series.lat.size),
            width=int(series.lon.size),
            periodic=bool(series.periodic),
            lat_first=float(series.lat[0]),
            lat_last=float(series.lat[-1]),
            lon_first=float(series.lon[0]),
            lon_last=float(series.lon[-1]),
        ),
        options=dict(
            min_size={CLASS_NAMES[c]: f"{v:g}{u}" for c, (v, u) in options.min_size.items()},
            look_ahead=options.look_ahead,
            min_steps=options.min_steps,
            rules=options.rules,
        ),
        events=counts,
        components=int(components),
    )


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


def read_occupancy(folder, meta=None):
    """``(lat, lon, steps_in_event (class, lat, lon) float64, total_steps)`` of a track folder
    (or its ``events.csv``); DataError naming the file and what is wrong when ``occupancy.nc`` is
    missing, unreadable or not the one of ``meta`` (the folder's ``track.json``: its steps and grid)."""
    import netCDF4

    path = os.path.join(_folder(folder), "occupancy.nc")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing (rerun climseg track)")
    try:
        ds = netCDF4.Dataset(path)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable netCDF file ({first_line(exc)})") from None
    with ds:
        for name in ("lat", "lon", "steps_in_event"):
            if name not in ds.variables:
                raise DataError(f"{path}: no variable {name!r} (not a climseg track occupancy.nc)")
        ds.set_auto_mask(False)
        lat = np.asarray(ds.variables["lat"][:], np.float64).reshape(-1)
        lon = np.asarray(ds.variables["lon"][:], np.float64).reshape(-1)
        var = ds.variables["steps_in_event"]
        if var.shape != (NUM_CLASSES, lat.size, lon.size):
            raise DataError(
                f"{path}: steps_in_event has shape {var.shape}; expected ({NUM_CLASSES}, {lat.size}, {lon.size})"
            )
        occupancy = np.asarray(var[:], np.float64)
        total = getattr(ds, "total_steps", None)
    if isinstance(total, np.ndarray) and total.size == 1:
        total = total.reshape(-1)[0]
    if not isinstance(total, (int, np.integer)) or total < 1:
        raise DataError(f"{path}: attribute total_steps {total!r}; expected a whole number of steps >= 1")
    total = int(total)
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        raise DataError(f"{path}: lat or lon holds NaN or Inf")
    if not np.all(np.isfinite(occupancy)) or occupancy.min(initial=0) < 0 or occupancy.max(initial=0) > total:
        raise DataError(f"{path}: steps_in_event holds values outside 0..{total} (total_steps)")
    if meta is not None:
        grid = meta["grid"]
        if (lat.size, lon.size) != (grid["height"], grid["width"]) or total != meta["steps"]:
            raise DataError(
                f"{path}: {total} steps on a {lat.size} x {lon.size} grid, but track.json says {meta['steps']} "
                f"steps on {grid['height']} x {grid['width']} (files of two runs?)"
            )
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
    """``(track.json dict, events rows, tracks rows)`` of a ``climseg track`` output folder (or its
    ``events.csv``), every row a dict of the table's text. Checked before anything is used: the
    format and version, every field of ``track.json`` (:data:`META_FIELDS`), the columns and every
    cell of both tables (:data:`EVENT_KINDS`, :data:`TRACK_KINDS`: types, ranges, steps within the
    series), that each track row belongs to an event of its class, and that the tables hold the
    events ``track.json`` counts; a DataError names the file, the line and the field it refuses."""
    folder = _folder(folder)
    meta_path = os.path.join(folder, "track.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"{folder}: no track.json (not a climseg track output folder)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: unreadable ({first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: holds a JSON {type(meta).__name__}, not the object of a climseg track folder")
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise DataError(
            f"{meta_path}: events of format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this climseg reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    _check_meta(meta_path, meta)
    events = _read_table(os.path.join(folder, "events.csv"), EVENT_COLUMNS, EVENT_KINDS, meta["steps"])
    tracks = _read_table(os.path.join(folder, "tracks.csv"), TRACK_COLUMNS, TRACK_KINDS, meta["steps"])
    _check_tables(folder, meta, events, tracks)
    return meta, events, tracks


_TIME = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-\d{2}")
#: track.json's fields and what each must be
META_FIELDS = {
    "steps": "a whole number >= 1",
    "first_time": "a time YYYY-MM-DD...",
    "last_time": "a time YYYY-MM-DD... not before first_time",
    "interval_hours": "a number of hours > 0 (null for one step)",
    "time_units": "text",
    "calendar": "text",
    "grid": "an object with height, width (>= 1), periodic, lat_first, lat_last, lon_first, lon_last",
    "events": "an object with a count >= 0 per class",
    "event_files": "a list of file names",
    "inputs": "a list of paths",
}
#: the kind of every column of events.csv and tracks.csv (:func:`_cell`)
EVENT_KINDS = dict(
    zip(EVENT_COLUMNS, "id class time time step step steps hours area area area speed lat lon lat lon".split())
)
TRACK_KINDS = dict(zip(TRACK_COLUMNS, "id class step time number lat lon area count count1".split()))
_EXPECTED = {
    "id": "a whole number >= 1",
    "class": f"one of {', '.join(CLASS_NAMES[1:])}",
    "time": "a time YYYY-MM-DD...",
    "step": "a step of the series",
    "steps": "a number of steps of the series",
    "hours": "a number of hours >= 0",
    "area": "a number >= 0",
    "speed": "a number >= 0 (nan for an event of one step)",
    "lat": "a latitude in -90..90",
    "lon": "a finite longitude",
    "number": "a finite number",
    "count": "a whole number >= 0",
    "count1": "a whole number >= 1",
}


def _check_meta(path, meta):
    def bad(name):
        return DataError(f"{path}: field {name!r} is {meta.get(name)!r}; expected {META_FIELDS[name]}")

    for name in META_FIELDS:
        if name not in meta:
            raise DataError(f"{path}: no field {name!r} ({META_FIELDS[name]})")
    if not _whole(meta["steps"], 1):
        raise bad("steps")
    for name in ("first_time", "last_time"):
        if not isinstance(meta[name], str) or not _TIME.match(meta[name]):
            raise bad(name)
    if meta["last_time"] < meta["first_time"]:
        raise bad("last_time")
    interval = meta["interval_hours"]
    if not (interval is None and meta["steps"] == 1) and not (_number(interval) and 0 < interval < 1e9):
        raise bad("interval_hours")
    months = _month_index(meta["last_time"]) - _month_index(meta["first_time"])
    if months > (meta["steps"] - 1) * (interval or 0) / (24 * 28) + 1:  # a month has at least 28 days
        raise DataError(
            f"{path}: first_time {meta['first_time']} to last_time {meta['last_time']} spans more than "
            f"{meta['steps']} steps of {interval} hours"
        )
    for name in ("time_units", "calendar"):
        if not isinstance(meta[name], str):
            raise bad(name)
    grid = meta["grid"]
    if not (
        isinstance(grid, dict)
        and _whole(grid.get("height"), 1)
        and _whole(grid.get("width"), 1)
        and isinstance(grid.get("periodic"), bool)
        and all(_number(grid.get(k)) for k in ("lat_first", "lat_last", "lon_first", "lon_last"))
    ):
        raise bad("grid")
    counts = meta["events"]
    if not (isinstance(counts, dict) and all(_whole(counts.get(c), 0) for c in CLASS_NAMES[1:])):
        raise bad("events")
    for name in ("event_files", "inputs"):
        if not (isinstance(meta[name], list) and all(isinstance(n, str) for n in meta[name])):
            raise bad(name)


def _read_table(path, columns, kinds, steps):
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != columns:
                what = "no header line" if not header else f"the columns {', '.join(header[:4])}..."
                raise DataError(
                    f"{path}: {what}; expected the columns of version {FORMAT_VERSION}: {', '.join(columns)}"
                )
            rows = []
            for line, cells in enumerate(reader, start=2):
                if len(cells) != len(columns):
                    raise DataError(f"{path}: line {line} has {len(cells)} fields; expected {len(columns)}")
                for column, value in zip(columns, cells):
                    if not _cell(kinds[column], value, steps):
                        raise DataError(f"{path}: line {line}, {column} {value!r}: expected {_EXPECTED[kinds[column]]}")
                rows.append(dict(zip(columns, cells)))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text table ({first_line(exc)})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a CSV table ({first_line(exc)})") from None
    return rows


def _cell(kind, text, steps):
    """Whether the cell ``text`` is of ``kind`` (see :data:`EVENT_KINDS`) in a series of ``steps``."""
    if kind == "class":
        return text in CLASS_NAMES[1:]
    if kind == "time":
        return bool(_TIME.match(text))
    if kind in ("id", "step", "steps", "count", "count1"):
        try:
            value = int(text)
        except ValueError:
            return False
        low, high = dict(id=(1, None), step=(0, steps - 1), steps=(1, steps), count=(0, None), count1=(1, None))[kind]
        return value >= low and (high is None or value <= high)
    try:
        value = float(text)
    except ValueError:
        return False
    if kind == "speed" and np.isnan(value):
        return True
    if not np.isfinite(value):
        return False
    return value >= 0 if kind in ("hours", "area", "speed") else -90 <= value <= 90 if kind == "lat" else True


def _check_tables(folder, meta, events, tracks):
    path = os.path.join(folder, "events.csv")
    classes = {}
    for line, e in enumerate(events, start=2):
        if e["id"] in classes:
            raise DataError(f"{path}: line {line}, id {e['id']} appears twice")
        classes[e["id"]] = e["class"]
        if e["last_time"] < e["first_time"] or int(e["last_step"]) < int(e["first_step"]):
            raise DataError(f"{path}: line {line}, event {e['id']} ends before it begins")
        if e["first_time"] < meta["first_time"] or e["last_time"] > meta["last_time"]:
            raise DataError(
                f"{path}: line {line}, event {e['id']} ({e['first_time']} to {e['last_time']}) lies outside the "
                f"series of track.json ({meta['first_time']} to {meta['last_time']})"
            )
    for c in CLASS_NAMES[1:]:
        found = sum(1 for e in events if e["class"] == c)
        if found != meta["events"][c]:
            raise DataError(
                f"{path}: {found} events of class {c}, but track.json counts {meta['events'][c]} "
                f"(files of two runs, or an edited table?)"
            )
    path = os.path.join(folder, "tracks.csv")
    for line, t in enumerate(tracks, start=2):
        if classes.get(t["id"]) != t["class"]:
            raise DataError(f"{path}: line {line}, id {t['id']} ({t['class']}) is no event of events.csv")


def _month_index(time):
    return int(time[:4]) * 12 + int(time[5:7]) - 1


def _whole(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
