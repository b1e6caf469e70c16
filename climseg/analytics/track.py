"""Event tracking: class masks through time in, event ids and an events table out.

Data flow (``climseg track MASKS... --out DIR``):

1. :func:`open_mask_series` checks every input (one grid, a time axis, times that
   increase across the files in the order given) and builds one time axis in hours.
2. **Scan** (parallel over contiguous chunks of time steps): each step's class mask is
   split into connected components per class (8-connected, joined across the date line
   on global grids, never across the poles: :mod:`climseg.sphere`); components
   below the class's size threshold (pixels or km^2) are dropped; each component's
   pixels, area and area-weighted unit-vector sum are kept, and its overlaps with the
   components of the previous ``look_ahead`` steps of the same class are counted on the
   labelled cells only (no per-pixel Python). A chunk relabels the ``look_ahead`` steps
   before it, so the overlaps across chunk boundaries are the ones a serial run finds.
3. **Stitch**: the components of all steps are the nodes, the overlaps the edges of one
   sparse graph; its connected components (``scipy.sparse.csgraph``) are the events.
   Events seen on fewer than ``min_steps`` steps are dropped; the rest are numbered 1..E
   by their first step (then first component). The result does not depend on the
   number of chunks or workers.
4. **Write** (parallel over input files): each input ``NAME`` gets ``NAME_event_id.nc``
   (CF netCDF, ``event_id(time, lat, lon)``, 0 outside events; uint16 while the
   ids fit, else int32); the folder gets
   ``events.csv`` (one row per event), ``tracks.csv`` (one row per event and step), the
   same as Parquet when pyarrow is installed, ``occupancy.nc`` (per class and cell, the
   number of steps inside an event of that class) and ``track.json`` (format version,
   options, inputs, time axis).

:func:`track_arrays` does the same in memory, in one process, for masks already loaded
(an xarray user's ``DataArray.values``): event ids and the two tables come back.

Per event: class, first and last time, steps seen, lifetime (hours from the first to
the last step seen), per-step centroid on the sphere (area-weighted mean of unit
vectors, so right across the date line) and area, peak and mean area, travel distance
(sum of great-circle distances between successive centroids), mean speed (distance over
lifetime), genesis and lysis positions (first and last centroids).
"""
import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import shutil
import tempfile

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from climseg import sphere
from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.errors import ConfigError, DataError, UserError
from climseg.output import atomic_path, write_json
from climseg.progress import progress_bar

FORMAT = "climseg-events"
FORMAT_VERSION = 1
CHUNK_STEPS = 64
MASK_VARIABLES = ("mask", "LABELS", "labels", "class_mask")
LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")
TIME_NAMES = ("time", "t")
CLIMATENET = dict(min_steps=5, look_ahead=1, min_size={1: (250.0, "px"), 2: (250.0, "px")})


@dataclasses.dataclass
class TrackOptions:
    """Tracking parameters: minimum size per class (``(value, "px" | "km2")``), steps
    ahead an overlap may link (``look_ahead``), fewest steps an event must be seen on."""

    min_size: dict = dataclasses.field(default_factory=lambda: {1: (5000.0, "km2"), 2: (50000.0, "km2")})
    look_ahead: int = 1
    min_steps: int = 2

    def check(self):
        if self.look_ahead < 1:
            raise ConfigError(f"--look-ahead {self.look_ahead}: must be at least 1")
        if self.min_steps < 1:
            raise ConfigError(f"--min-steps {self.min_steps}: must be at least 1")
        for c, (value, unit) in self.min_size.items():
            if value < 0 or unit not in ("px", "km2"):
                raise ConfigError(f"minimum size of {CLASS_NAMES[c]}: {value} {unit} is not a size")
        return self


def parse_size(text, option="--min-size"):
    """``250px``, ``250`` (pixels) or ``5e4km2`` -> ``(value, unit)``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(px|pixels?|km2|km\^2)?\s*", str(text))
    if not m:
        raise ConfigError(f"{option} {text}: expected a size such as 250px or 50000km2")
    unit = "km2" if (m.group(2) or "px").startswith("km") else "px"
    return float(m.group(1)), unit


# ----------------------------------------------------------------------------- inputs

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
    hours: np.ndarray          # hours since ``time_units``' reference, one per step
    time_units: str
    calendar: str
    times: list                # ISO-like labels, one per step

    def locate(self, step):
        """(file, index within it) of a global step."""
        k = int(np.searchsorted(self.starts, step, side="right")) - 1
        return self.files[k], step - self.files[k].first

    @property
    def starts(self):
        return np.array([f.first for f in self.files])


def _find(names, candidates):
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    return None


def open_mask_series(paths, variable=None):
    """Check the inputs and describe them as one series; DataError naming the file on any problem."""
    import cftime

    from climseg.data.netcdf import open_dataset

    if not paths:
        raise UserError("no mask files given")
    files, lat0, lon0, hours, times = [], None, None, [], []
    units = calendar = None
    stems = {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        with open_dataset(path) as ds:
            names = list(ds.variables)
            name = _find(names, [variable]) if variable else _find(names, MASK_VARIABLES)
            if name is None:
                wanted = variable or " or ".join(MASK_VARIABLES)
                raise DataError(f"{path}: no mask variable {wanted} (choose one with --variable)")
            var = ds.variables[name]
            lat_name, lon_name = _find(names, LAT_NAMES), _find(names, LON_NAMES)
            if lat_name is None or lon_name is None:
                raise DataError(f"{path}: no latitude/longitude coordinate variables (lat, lon)")
            lat = np.asarray(ds.variables[lat_name][:], np.float64).reshape(-1)
            lon = np.asarray(ds.variables[lon_name][:], np.float64).reshape(-1)
            dims = var.dimensions
            time_name = _find(names, TIME_NAMES)
            if len(dims) == 3:
                if time_name is None or ds.variables[time_name].dimensions != (dims[0],):
                    raise DataError(f"{path}: {name} has a first dimension {dims[0]} but no time coordinate for it")
                has_time_dim, nsteps = True, var.shape[0]
            elif len(dims) == 2 and time_name is not None and ds.variables[time_name].size == 1:
                has_time_dim, nsteps = False, 1             # ClimateNet: LABELS(lat, lon) and one time value
            elif len(dims) == 2:
                raise DataError(f"{path}: mask {name} has no time dimension (and the file no single time value)")
            else:
                raise DataError(f"{path}: {name} has dimensions {dims}; expected (time, lat, lon)")
            if tuple(var.shape[-2:]) != (lat.size, lon.size):
                raise DataError(f"{path}: {name} has shape {tuple(var.shape)}; the grid is {lat.size} x {lon.size}")
            tvar = ds.variables[time_name]
            if not hasattr(tvar, "units"):
                raise DataError(f"{path}: time variable {time_name} has no units")
            cal = getattr(tvar, "calendar", "standard")
            try:
                dates = cftime.num2date(np.asarray(tvar[:], np.float64).reshape(-1), tvar.units, cal)
            except Exception as exc:
                raise DataError(f"{path}: time units {tvar.units!r} ({cal}) unreadable: {exc}") from None
            if units is None:
                units, calendar = _hours_units(tvar.units), cal
            elif _calendar_kind(cal) != _calendar_kind(calendar):
                raise DataError(f"{path}: calendar {cal} differs from {calendar} of the first file")
            h = np.asarray(cftime.date2num(list(np.atleast_1d(dates)), units, calendar), np.float64).reshape(-1)
        flipped = lat.size > 1 and lat[0] > lat[-1]
        lat_asc = lat[::-1] if flipped else lat
        if lat.size > 1 and not np.all(np.diff(lat_asc) > 0):
            raise DataError(f"{path}: latitudes are not monotonic")
        lon_u = np.rad2deg(np.unwrap(np.deg2rad(lon)))
        if lon.size > 1 and not np.all(np.diff(lon_u) > 0):
            raise DataError(f"{path}: longitudes are not monotonic")
        if lat0 is None:
            lat0, lon0 = lat_asc.copy(), lon_u
        elif lat_asc.shape != lat0.shape or lon_u.shape != lon0.shape or not (
                np.allclose(lat_asc, lat0, atol=1e-6) and np.allclose(lon_u, lon0, atol=1e-6)):
            raise DataError(f"{path}: grid {lat.size} x {lon.size} differs from the grid of {files[0].path} "
                            f"({lat0.size} x {lon0.size}); track one grid at a time")
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise UserError(f"{path}: has the same name as {stems[stem]}; their outputs would collide")
        stems[stem] = path
        files.append(MaskFile(path, name, bool(flipped), has_time_dim, len(hours), int(nsteps), stem))
        hours.extend(h.tolist())
        times.extend(str(d)[:19] for d in np.atleast_1d(dates))
        if h.size != nsteps:
            raise DataError(f"{path}: {h.size} time values for {nsteps} mask steps")
    hours = np.asarray(hours)
    bad = np.flatnonzero(np.diff(hours) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        f = next(f for f in reversed(files) if f.first <= i)
        raise DataError(f"{f.path}: time does not increase at {times[i]} (after {times[i - 1]}); "
                        "give the files in time order, without repeated steps")
    return MaskSeries(files, lat0, lon0, sphere.is_global(lon0), hours, units, calendar, times)


def _hours_units(units):
    since = units.split("since", 1)[1].strip() if "since" in units else "1970-01-01"
    return f"hours since {since}"


def _calendar_kind(cal):
    cal = (cal or "standard").lower()
    return {"gregorian": "standard", "proleptic_gregorian": "standard", "365_day": "noleap", "366_day": "all_leap"}.get(cal, cal)


class _Reader:
    """Reads steps of a series, keeping the current file open."""

    def __init__(self, series):
        self.series, self.path, self.ds = series, None, None

    def read(self, step):
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
        if m.size and (m.min() < 0 or m.max() >= NUM_CLASSES):
            raise DataError(f"{f.path}: {f.variable} holds values outside 0..{NUM_CLASSES - 1} at {self.series.times[step]}")
        m = m.astype(np.uint8, copy=False)
        return m[::-1] if f.flipped else m

    def close(self):
        if self.ds is not None:
            self.ds.close()
        self.ds = self.path = None


# ----------------------------------------------------------------------------- scan

def _thresholds(options):
    """Per-class (minimum pixels, minimum km^2)."""
    out = {}
    for c in range(1, NUM_CLASSES):
        value, unit = options.min_size.get(c, (0.0, "px"))
        out[c] = (value, 0.0) if unit == "px" else (0.0, value)
    return out


def components(mask, periodic, weights, limits):
    """Components of one step kept by the size limits: ``(index, component, class,
    pixels, area, vectors)``, components numbered 1..n in the order found."""
    index, comp, owner = sphere.label_classes_sparse(mask, NUM_CLASSES, periodic)
    n = owner.size - 1
    if n == 0:
        return index, comp, owner[1:], np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3))
    size = n + 1
    pixels = np.bincount(comp, minlength=size)[1:]
    sums = [np.bincount(comp, weights=v, minlength=size)[1:] for v in sphere.cell_weights(weights, index)]
    area, vectors = sums[0], np.stack(sums[1:], axis=-1)
    cls = owner[1:]
    min_px = np.array([0.0] + [limits[c][0] for c in range(1, NUM_CLASSES)])[cls]
    min_km2 = np.array([0.0] + [limits[c][1] for c in range(1, NUM_CLASSES)])[cls]
    keep = (pixels >= min_px) & (area >= min_km2)
    if not keep.all():
        renumber = np.zeros(size, np.int32)
        renumber[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        sel = keep[comp - 1]
        index, comp = index[sel], renumber[comp[sel]]
        cls, pixels, area, vectors = cls[keep], pixels[keep], area[keep], vectors[keep]
    return index, comp, cls, pixels, area, vectors


def _overlaps(index_a, comp_a, index_b, comp_b, dense, cls_a, cls_b):
    """Pairs (component at a, component at b) of the same class that share cells.
    ``dense`` is a zeroed scratch array of the grid's size; it is zero again on return."""
    if index_a.size == 0 or index_b.size == 0:
        return np.zeros((0, 2), np.int64)
    dense[index_a] = comp_a
    prev = dense[index_b]
    dense[index_a] = 0
    hit = prev > 0
    if not hit.any():
        return np.zeros((0, 2), np.int64)
    a, b = prev[hit].astype(np.int64), comp_b[hit].astype(np.int64)
    pairs = np.unique(a * (int(comp_b.max()) + 1) + b)
    a, b = pairs // (int(comp_b.max()) + 1), pairs % (int(comp_b.max()) + 1)
    same = cls_a[a - 1] == cls_b[b - 1]
    return np.stack([a[same], b[same]], axis=-1)


def _scan_steps(read, start, stop, look_ahead, periodic, weights, limits):
    """Components and overlaps of steps [start, stop) of ``read(t) -> mask``, relabelling
    the ``look_ahead`` steps before ``start``: ``(nodes, edges, cells, labels)``."""
    dense = None
    recent = {}
    nodes, edges, cells, labels = [], [], [], []
    for t in range(max(0, start - look_ahead), stop):
        mask = read(t)
        if dense is None:
            dense = np.zeros(mask.size, np.int32)
        comp = components(mask, periodic, weights, limits)
        recent[t] = comp
        recent.pop(t - look_ahead - 1, None)
        if t < start:
            continue
        index, label, cls, pixels, area, vectors = comp
        nodes.append((t, cls, pixels, area, vectors))
        cells.append(index.astype(np.int64))
        labels.append(label.astype(np.int32))
        for d in range(1, look_ahead + 1):
            if t - d in recent:
                p = recent[t - d]
                pairs = _overlaps(p[0], p[1], index, label, dense, p[2], cls)
                if pairs.size:
                    edges.append((t - d, pairs[:, 0], t, pairs[:, 1]))
    return nodes, edges, cells, labels


def _scan_chunk(job):
    """:func:`_scan_steps` of a chunk of the series' files; the steps' labelled cells and
    components go to ``scratch`` for the writer."""
    series, options, start, stop, scratch = job
    weights = sphere.grid_weights(series.lat, series.lon)
    limits = _thresholds(options)
    reader = _Reader(series)
    try:
        nodes, edges, cells, labels = _scan_steps(reader.read, start, stop, options.look_ahead, series.periodic,
                                                  weights, limits)
    finally:
        reader.close()
    counts = np.array([c.size for c in cells], np.int64)
    with open(_scratch_file(scratch, start), "wb") as f:
        np.save(f, np.concatenate([[0], np.cumsum(counts)]))
        np.save(f, np.concatenate(cells) if cells else np.zeros(0, np.int64))
        np.save(f, np.concatenate(labels) if labels else np.zeros(0, np.int32))
    return nodes, edges


def track_arrays(masks, lat, lon, hours, options=None, times=None):
    """Track events in memory, in one process: ``masks`` (T, H, W) class indices on the grid
    ``lat`` (ascending) x ``lon``, ``hours`` (T,) increasing. Returns ``(event_id (T, H, W)
    int32, events, tracks)`` with the rows of ``events.csv`` and ``tracks.csv`` as dicts;
    the same events as :func:`track` on the same masks."""
    options = (options or TrackOptions()).check()
    masks = np.asarray(masks)
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    hours = np.asarray(hours, np.float64)
    if masks.ndim != 3 or masks.shape[1:] != (lat.size, lon.size) or hours.shape != (masks.shape[0],):
        raise DataError(f"masks of shape {masks.shape} do not fit {hours.size} times on a {lat.size} x {lon.size} grid")
    if hours.size > 1 and not np.all(np.diff(hours) > 0):
        raise DataError("times do not increase")
    series = MaskSeries([], lat, lon, sphere.is_global(lon), hours, "hours", "standard",
                        list(times) if times is not None else [f"{h:g}" for h in hours])
    weights = sphere.grid_weights(lat, lon)
    limits = _thresholds(options)
    nodes, edges, cells, labels = _scan_steps(lambda t: masks[t], 0, hours.size, options.look_ahead,
                                              series.periodic, weights, limits)
    result = stitch(series, [(nodes, edges)], options)
    ids = np.zeros(masks.shape, np.int32)
    flat = ids.reshape(hours.size, -1)
    for t in range(hours.size):
        lo, hi = result.offsets[t], result.offsets[t + 1]
        event = np.concatenate([[0], result.node_event[lo:hi]]).astype(np.int32)
        flat[t, cells[t]] = event[labels[t]]
    return ids, result.events, result.tracks


def _scratch_file(scratch, start):
    return os.path.join(scratch, f"chunk-{start:09d}.npy")


class _ScratchReader:
    """Labelled cells and components of any step, from the scan's scratch files."""

    def __init__(self, scratch, chunks):
        self.scratch, self.starts = scratch, np.array([a for a, _ in chunks])
        self.current, self.data = None, None

    def read(self, step):
        k = int(np.searchsorted(self.starts, step, side="right")) - 1
        if k != self.current:
            with open(_scratch_file(self.scratch, int(self.starts[k])), "rb") as f:
                self.data = (np.load(f), np.load(f), np.load(f))
            self.current = k
        offsets, cells, labels = self.data
        i = step - int(self.starts[k])
        return cells[offsets[i]:offsets[i + 1]], labels[offsets[i]:offsets[i + 1]]


def _chunks(steps, parts):
    bounds = np.linspace(0, steps, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# ----------------------------------------------------------------------------- stitch

@dataclasses.dataclass
class Tracking:
    """Result of :func:`stitch`: node tables, each node's event (0: dropped), per-event tables."""

    node_step: np.ndarray
    node_local: np.ndarray       # component number within its step (1..n)
    node_event: np.ndarray
    offsets: np.ndarray          # first node of each step (steps + 1,)
    events: list                 # dict per event
    tracks: list                 # dict per event and step


def stitch(series, scanned, options):
    """Join the scanned components of all steps into events (see the module docstring)."""
    nsteps = series.hours.size
    counts = np.zeros(nsteps, np.int64)
    parts = {}
    for nodes, _ in scanned:
        for t, cls, pixels, area, vectors in nodes:
            counts[t] = cls.size
            parts[t] = (cls, pixels, area, vectors)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    node_step = np.repeat(np.arange(nsteps), counts)
    node_local = (np.arange(total) - offsets[node_step] + 1).astype(np.int64)
    cls = np.concatenate([parts[t][0] for t in range(nsteps)]) if total else np.zeros(0, np.int64)
    pixels = np.concatenate([parts[t][1] for t in range(nsteps)]) if total else np.zeros(0, np.int64)
    area = np.concatenate([parts[t][2] for t in range(nsteps)]) if total else np.zeros(0)
    vectors = np.concatenate([parts[t][3] for t in range(nsteps)]) if total else np.zeros((0, 3))
    a = [offsets[t1] + l1 - 1 for _, edges in scanned for t1, l1, _, _ in edges]
    b = [offsets[t2] + l2 - 1 for _, edges in scanned for _, _, t2, l2 in edges]
    a = np.concatenate(a) if a else np.zeros(0, np.int64)
    b = np.concatenate(b) if b else np.zeros(0, np.int64)
    graph = sparse.coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(total, total))
    _, group = csgraph.connected_components(graph, directed=False) if total else (0, np.zeros(0, np.int64))
    ngroups = int(group.max()) + 1 if total else 0
    first_node = np.full(ngroups, total, np.int64)
    np.minimum.at(first_node, group, np.arange(total))
    # steps seen per group: distinct (group, step) pairs
    gs = np.unique(group.astype(np.int64) * nsteps + node_step)
    steps_seen = np.bincount(gs // nsteps, minlength=ngroups)
    kept = np.flatnonzero(steps_seen >= options.min_steps)
    kept = kept[np.argsort(first_node[kept], kind="stable")]
    event_of_group = np.zeros(ngroups, np.int64)
    event_of_group[kept] = np.arange(1, kept.size + 1)
    node_event = event_of_group[group] if total else np.zeros(0, np.int64)
    events, tracks = _describe_events(series, node_event, node_step, cls, pixels, area, vectors, kept.size)
    return Tracking(node_step, node_local, node_event, offsets, events, tracks)


def _describe_events(series, node_event, node_step, cls, pixels, area, vectors, nevents):
    nsteps = series.hours.size
    sel = np.flatnonzero(node_event > 0)
    if nevents == 0:
        return [], []
    key = node_event[sel] * nsteps + node_step[sel]
    rows, inverse = np.unique(key, return_inverse=True)
    r_event, r_step = rows // nsteps, rows % nsteps
    r_area = np.bincount(inverse, weights=area[sel], minlength=rows.size)
    r_pixels = np.bincount(inverse, weights=pixels[sel], minlength=rows.size).astype(np.int64)
    r_parts = np.bincount(inverse, minlength=rows.size)
    r_vec = np.stack([np.bincount(inverse, weights=vectors[sel, k], minlength=rows.size) for k in range(3)], -1)
    r_lat, r_lon = sphere.from_unit_vectors(r_vec[:, 0], r_vec[:, 1], r_vec[:, 2])
    r_hours = series.hours[r_step]
    same = r_event[1:] == r_event[:-1]
    hop = np.where(same, sphere.haversine_km(r_lat[:-1], r_lon[:-1], r_lat[1:], r_lon[1:]), 0.0)
    distance = np.bincount(r_event[1:], weights=hop, minlength=nevents + 1)
    event_class = np.zeros(nevents + 1, np.int64)
    event_class[node_event[sel]] = cls[sel]
    start = np.searchsorted(r_event, np.arange(1, nevents + 1))
    stop = np.searchsorted(r_event, np.arange(1, nevents + 1), side="right")
    events, tracks = [], []
    for e in range(1, nevents + 1):
        i, j = start[e - 1], stop[e - 1] - 1
        lifetime = float(r_hours[j] - r_hours[i])
        dist = float(distance[e])
        events.append(dict(
            id=e, **{"class": CLASS_NAMES[event_class[e]]}, first_time=series.times[r_step[i]],
            last_time=series.times[r_step[j]], first_step=int(r_step[i]), last_step=int(r_step[j]),
            steps=int(j - i + 1), lifetime_hours=lifetime, peak_area_km2=float(r_area[i:j + 1].max()),
            mean_area_km2=float(r_area[i:j + 1].mean()), distance_km=dist,
            mean_speed_m_s=(dist * 1000.0 / (lifetime * 3600.0)) if lifetime > 0 else float("nan"),
            genesis_lat=float(r_lat[i]), genesis_lon=float(r_lon[i]), lysis_lat=float(r_lat[j]), lysis_lon=float(r_lon[j])))
    for k in range(rows.size):
        tracks.append(dict(id=int(r_event[k]), **{"class": CLASS_NAMES[event_class[r_event[k]]]}, step=int(r_step[k]),
                           time=series.times[r_step[k]], time_hours=float(r_hours[k]), lat=float(r_lat[k]),
                           lon=float(r_lon[k]), area_km2=float(r_area[k]), pixels=int(r_pixels[k]),
                           components=int(r_parts[k])))
    return events, tracks


# ----------------------------------------------------------------------------- write

EVENT_COLUMNS = ["id", "class", "first_time", "last_time", "first_step", "last_step", "steps", "lifetime_hours",
                 "peak_area_km2", "mean_area_km2", "distance_km", "mean_speed_m_s", "genesis_lat", "genesis_lon",
                 "lysis_lat", "lysis_lon"]
TRACK_COLUMNS = ["id", "class", "step", "time", "time_hours", "lat", "lon", "area_km2", "pixels", "components"]


def _write_event_files(job):
    """Write the ``event_id`` netCDF files of some inputs from the scan's scratch files;
    returns per-class occupancy counts (classes, H*W) of their steps."""
    series, group, out_dir, scratch, chunks, series_events = job
    h, w = series.lat.size, series.lon.size
    occupancy = np.zeros((NUM_CLASSES, h * w), np.int32)
    reader = _ScratchReader(scratch, chunks)
    for f, lookups in group:
        _write_event_file(series, f, lookups, out_dir, reader, occupancy, series_events)
    return occupancy


def _write_event_file(series, f, lookups, out_dir, reader, occupancy, series_events):
    """Write one input file's ``event_id`` netCDF; add its steps to ``occupancy``."""
    import netCDF4

    h, w = series.lat.size, series.lon.size
    path = os.path.join(out_dir, f"{f.stem}_event_id.nc")
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
            ds.Conventions = "CF-1.8"
            ds.source = f"climseg track of {os.path.basename(f.path)} ({FORMAT} version {FORMAT_VERSION})"
            ds.createDimension("time", None)
            ds.createDimension("lat", h)
            ds.createDimension("lon", w)
            tv = ds.createVariable("time", "f8", ("time",))
            tv.standard_name, tv.units, tv.calendar, tv.axis = "time", series.time_units, series.calendar, "T"
            tv[:] = series.hours[f.first: f.first + f.steps]
            la = ds.createVariable("lat", "f8", ("lat",))
            la.standard_name, la.units, la.axis = "latitude", "degrees_north", "Y"
            la[:] = series.lat
            lo = ds.createVariable("lon", "f8", ("lon",))
            lo.standard_name, lo.units, lo.axis = "longitude", "degrees_east", "X"
            lo[:] = series.lon % 360.0
            # uint16 while the ids fit (half the bytes to compress), else int32
            dtype = "u2" if int(series_events) < 65535 else "i4"
            ev = ds.createVariable("event_id", dtype, ("time", "lat", "lon"), zlib=True, complevel=1,
                                   shuffle=False, chunksizes=(1, h, w))
            ev.long_name = "id of the tracked event (events.csv) each cell belongs to; 0 outside events"
            ev.valid_min = np.int32(0)
            ids = np.zeros(h * w, np.dtype(dtype))
            for k in range(f.steps):
                index, comp = reader.read(f.first + k)
                event, event_class = lookups[k]
                ids[index] = event[comp]
                ev[k] = ids.reshape(h, w)
                labelled = ids[index] > 0
                cell_class = event_class[comp[labelled]]
                for c in range(1, NUM_CLASSES):
                    occupancy[c, index[labelled][cell_class == c]] += 1
                ids[index] = 0


def track(inputs, out, options=TrackOptions(), variable=None, workers=1, log=print, progress=True):
    """Track events through the class masks ``inputs`` into the folder ``out``; returns the
    ``track.json`` summary dict (see the module docstring)."""
    options.check()
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    series = open_mask_series(inputs, variable)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    nsteps = series.hours.size
    # chunks of at most CHUNK_STEPS steps (bounded memory), at least 4 per worker (balance)
    chunks = _chunks(nsteps, min(nsteps, max(workers * 4 if workers > 1 else 1, -(-nsteps // CHUNK_STEPS))))
    scanned = []
    pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else None
    scratch = tempfile.mkdtemp(prefix=".climseg-track-", dir=out)
    try:
        with progress_bar(total=nsteps, desc="track", unit="step", disable=not progress) as bar:
            jobs = [(series, options, a, b, scratch) for a, b in chunks]
            results = pool.map(_scan_chunk, jobs) if pool else map(_scan_chunk, jobs)
            for (a, b), res in zip(chunks, results):
                scanned.append(res)
                bar.update(b - a)
        result = stitch(series, scanned, options)
        event_class = np.array([0] + [CLASS_NAMES.index(e["class"]) for e in result.events], np.int64)
        groups = [[] for _ in range(min(len(series.files), workers * 2))]
        for i, f in enumerate(series.files):
            lookups = []
            for t in range(f.first, f.first + f.steps):
                lo, hi = result.offsets[t], result.offsets[t + 1]
                event = np.concatenate([[0], result.node_event[lo:hi]]).astype(np.int32)
                lookups.append((event, event_class[event]))
            groups[i * len(groups) // len(series.files)].append((f, lookups))
        jobs = [(series, g, out, scratch, chunks, len(result.events)) for g in groups]
        occupancy = None
        with progress_bar(total=len(jobs), desc="write event ids", unit="part", disable=not progress) as bar:
            for occ in (pool.map(_write_event_files, jobs) if pool else map(_write_event_files, jobs)):
                occupancy = occ if occupancy is None else occupancy + occ
                bar.update()
    finally:
        if pool:
            pool.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    _write_occupancy(os.path.join(out, "occupancy.nc"), series, occupancy)
    _write_table(os.path.join(out, "events"), result.events, EVENT_COLUMNS)
    _write_table(os.path.join(out, "tracks"), result.tracks, TRACK_COLUMNS)
    counts = {CLASS_NAMES[c]: sum(1 for e in result.events if e["class"] == CLASS_NAMES[c]) for c in range(1, NUM_CLASSES)}
    summary = dict(format=FORMAT, version=FORMAT_VERSION, inputs=[f.path for f in series.files],
                   event_files=[f"{f.stem}_event_id.nc" for f in series.files], steps=int(nsteps),
                   first_time=series.times[0], last_time=series.times[-1], time_units=series.time_units,
                   calendar=series.calendar, interval_hours=float(np.median(np.diff(series.hours))) if nsteps > 1 else None,
                   grid=dict(height=int(series.lat.size), width=int(series.lon.size), periodic=series.periodic,
                             lat_first=float(series.lat[0]), lat_last=float(series.lat[-1]),
                             lon_first=float(series.lon[0]), lon_last=float(series.lon[-1])),
                   options=dict(min_size={CLASS_NAMES[c]: f"{v:g}{u}" for c, (v, u) in options.min_size.items()},
                                look_ahead=options.look_ahead, min_steps=options.min_steps),
                   events=counts, components=int(result.node_event.size))
    write_json(os.path.join(out, "track.json"), summary)
    log(f"climseg: {counts['tropical_cyclone']} tropical cyclones and {counts['atmospheric_river']} atmospheric rivers "
        f"tracked through {nsteps} steps; events.csv, tracks.csv and event ids written to {out}")
    return summary


def _write_occupancy(path, series, occupancy):
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
        lo[:] = series.lon % 360.0
        v = ds.createVariable("steps_in_event", "i4", ("class", "lat", "lon"), zlib=True)
        v.long_name = "number of time steps the cell lies inside a tracked event of the class"
        v.flag_meanings = " ".join(CLASS_NAMES)
        v[:] = occupancy.reshape(NUM_CLASSES, h, w)


def _write_table(stem, rows, columns):
    """``stem.csv`` always; ``stem.parquet`` too when pyarrow is installed."""
    with atomic_path(stem + ".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and k not in ("lat", "lon") and not k.endswith(("_lat", "_lon"))
                            else f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        return
    table = pyarrow.table({c: [r[c] for r in rows] for c in columns})
    with atomic_path(stem + ".parquet") as tmp:
        pyarrow.parquet.write_table(table, tmp)


def read_events(folder):
    """``(track.json dict, events rows, tracks rows)`` of a ``climseg track`` output folder
    (or its ``events.csv``); DataError when it is missing or of another format version."""
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        folder = os.path.dirname(os.path.abspath(folder))
    meta_path = os.path.join(folder, "track.json")
    if not os.path.isfile(meta_path):
        raise DataError(f"{folder}: no track.json (not a climseg track output folder)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: events of format {meta.get('format')!r} version {meta.get('version')!r}; "
                        f"this climseg reads {FORMAT!r} version {FORMAT_VERSION}")
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
