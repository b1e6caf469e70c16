"""Event tracking: class masks through time in, event ids and an events table out.

Data flow (``climseg track MASKS... --out DIR``):

1. :func:`climseg.data.masks.open_mask_series` checks every input (one grid, a time axis,
   times that increase across the files in the order given; coordinates named as every
   netCDF reader of climseg knows them) and builds one time axis in hours.
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
4. **Write** (parallel over input files; the format is :mod:`climseg.data.events`'s; every file
   goes first to the run's staging folder, and all are renamed into ``DIR`` together at the end,
   replacing an earlier run there as a whole: :class:`climseg.output.OutputBatch`): each
   input ``NAME`` gets ``NAME_event_id.nc``
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

import contextlib
import dataclasses
import json
import os

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from climseg import sphere
from climseg.analytics.track_options import TrackOptions, size_thresholds
from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.data.events import (
    EVENT_COLUMNS,
    FORMAT,
    TRACK_COLUMNS,
    create_event_id_netcdf,
    event_id_name,
    track_summary,
    write_occupancy,
    write_table,
)
from climseg.data.masks import MaskReader, MaskSeries, open_mask_series
from climseg.errors import ConfigError, DataError
from climseg.output import (
    OutputBatch,
    RunLock,
    check_complete,
    check_output_location,
    check_workers,
    worker_pool,
    write_json,
)
from climseg.progress import progress_bar

CHUNK_STEPS = 64


# ----------------------------------------------------------------------------- scan


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
    limits = size_thresholds(options)
    with MaskReader(series) as reader:
        nodes, edges, cells, labels = _scan_steps(
            reader.read, start, stop, options.look_ahead, series.periodic, weights, limits
        )
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
    series = MaskSeries(
        [],
        lat,
        lon,
        sphere.is_global(lon),
        hours,
        "hours",
        "standard",
        list(times) if times is not None else [f"{h:g}" for h in hours],
    )
    weights = sphere.grid_weights(lat, lon)
    limits = size_thresholds(options)
    nodes, edges, cells, labels = _scan_steps(
        lambda t: masks[t], 0, hours.size, options.look_ahead, series.periodic, weights, limits
    )
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
        return cells[offsets[i] : offsets[i + 1]], labels[offsets[i] : offsets[i + 1]]


def _chunks(steps, parts):
    bounds = np.linspace(0, steps, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


# ----------------------------------------------------------------------------- stitch


@dataclasses.dataclass
class Tracking:
    """Result of :func:`stitch`: node tables, each node's event (0: dropped), per-event tables."""

    node_step: np.ndarray
    node_local: np.ndarray  # component number within its step (1..n)
    node_event: np.ndarray
    offsets: np.ndarray  # first node of each step (steps + 1,)
    events: list  # dict per event
    tracks: list  # dict per event and step


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
    r_lon = sphere.wrap_longitudes(r_lon, series.lon)  # positions in the grid's convention (from -180 or 0)
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
        events.append(
            dict(
                id=e,
                **{"class": CLASS_NAMES[event_class[e]]},
                first_time=series.times[r_step[i]],
                last_time=series.times[r_step[j]],
                first_step=int(r_step[i]),
                last_step=int(r_step[j]),
                steps=int(j - i + 1),
                lifetime_hours=lifetime,
                peak_area_km2=float(r_area[i : j + 1].max()),
                mean_area_km2=float(r_area[i : j + 1].mean()),
                distance_km=dist,
                mean_speed_m_s=(dist * 1000.0 / (lifetime * 3600.0)) if lifetime > 0 else float("nan"),
                genesis_lat=float(r_lat[i]),
                genesis_lon=float(r_lon[i]),
                lysis_lat=float(r_lat[j]),
                lysis_lon=float(r_lon[j]),
            )
        )
    for k in range(rows.size):
        tracks.append(
            dict(
                id=int(r_event[k]),
                **{"class": CLASS_NAMES[event_class[r_event[k]]]},
                step=int(r_step[k]),
                time=series.times[r_step[k]],
                time_hours=float(r_hours[k]),
                lat=float(r_lat[k]),
                lon=float(r_lon[k]),
                area_km2=float(r_area[k]),
                pixels=int(r_pixels[k]),
                components=int(r_parts[k]),
            )
        )
    return events, tracks


# ----------------------------------------------------------------------------- write


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
    """Write one input file's ``event_id`` netCDF into ``out_dir`` (the run's staging folder: renamed
    into place with the run's other files at the end); add its steps to ``occupancy``."""
    h, w = series.lat.size, series.lon.size
    ds, ev = create_event_id_netcdf(os.path.join(out_dir, event_id_name(f.stem)), series, f, series_events)
    with ds:
        ids = np.zeros(h * w, ev.dtype)
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


def track(inputs, out, options=None, variable=None, workers=1, log=print, progress=True):
    """Track events through the class masks ``inputs`` into the folder ``out`` with ``options`` (a
    :class:`TrackOptions`; default its defaults); returns the ``track.json`` summary dict (see the
    module docstring). Every option and the output location are checked before the masks are
    read; the files are written as one batch that replaces an earlier ``track`` run in ``out`` as
    a whole (:class:`~climseg.output.OutputBatch`), and the masks' folders are held against
    writers (a shared :class:`~climseg.output.RunLock`) while they are read and refused while a
    killed label run's renames are unfinished (:func:`~climseg.output.check_complete`)."""
    options = (options if options is not None else TrackOptions()).check()
    check_workers(workers)
    check_output_location(out, "folder")
    with contextlib.ExitStack() as stack:
        for folder in sorted({os.path.dirname(os.path.abspath(os.fspath(p))) for p in inputs} - {os.path.abspath(out)}):
            stack.enter_context(RunLock(folder, shared=True))
            check_complete(folder, "masks folder")
        series = open_mask_series(inputs, variable)
        for f in series.files:
            if f.steps == 0:
                raise DataError(f"{f.path}: the time axis has length 0 (no steps to track)")
        nsteps = series.hours.size
        if options.look_ahead > max(1, nsteps - 1):
            raise ConfigError(f"--look-ahead {options.look_ahead}: more than the series' {nsteps} steps allow")
        batch = stack.enter_context(
            OutputBatch(out, command="track", inputs=[f.path for f in series.files], earlier=_earlier_run)
        )
        batch.check([event_id_name(f.stem) for f in series.files] + list(TRACK_FILES))
        result, occupancy = _track_series(series, options, workers, batch, progress)
        write_occupancy(batch.path("occupancy.nc"), series, occupancy)
        write_table(os.path.join(batch.staging, "events"), result.events, EVENT_COLUMNS)
        write_table(os.path.join(batch.staging, "tracks"), result.tracks, TRACK_COLUMNS)
        summary = track_summary(series, result.events, options, int(result.node_event.size))
        write_json(batch.path("track.json"), summary)
    counts = summary["events"]
    log(
        f"climseg: {counts['tropical_cyclone']} tropical cyclones and {counts['atmospheric_river']} atmospheric rivers "
        f"tracked through {nsteps} steps; events.csv, tracks.csv and event ids written to {out}"
    )
    return summary


#: the files of a track folder besides the event ids (Parquet ones only with pyarrow)
TRACK_FILES = ("events.csv", "events.parquet", "tracks.csv", "tracks.parquet", "occupancy.nc", "track.json")


def _earlier_run(folder):
    """The files of a ``track`` run written into ``folder`` before runs kept a manifest (its track.json)."""
    with open(os.path.join(folder, "track.json")) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        return []
    return [n for n in meta.get("event_files", []) if isinstance(n, str)] + list(TRACK_FILES)


def _track_series(series, options, workers, batch, progress):
    """Scan, stitch and write the event ids into the batch's staging folder: ``(Tracking, occupancy)``.
    The pool ends its workers before the batch removes the staging folder, whatever stops the run."""
    nsteps = series.hours.size
    # chunks of at most CHUNK_STEPS steps (bounded memory), at least 4 per worker (balance)
    chunks = _chunks(nsteps, min(nsteps, max(workers * 4 if workers > 1 else 1, -(-nsteps // CHUNK_STEPS))))
    scanned = []
    scratch = batch.scratch
    with worker_pool(workers, len(chunks)) as mapper:
        with progress_bar(total=nsteps, desc="track", unit="step", disable=not progress) as bar:
            for (a, b), res in zip(chunks, mapper(_scan_chunk, [(series, options, a, b, scratch) for a, b in chunks])):
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
        jobs = [(series, g, batch.staging, scratch, chunks, len(result.events)) for g in groups]
        occupancy = None
        with progress_bar(total=len(jobs), desc="write event ids", unit="part", disable=not progress) as bar:
            for occ in mapper(_write_event_files, jobs):
                occupancy = occ if occupancy is None else occupancy + occ
                bar.update()
    return result, occupancy
