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
3. **Stitch** (:mod:`climseg.analytics.stitch`): the components of all steps are the nodes, the
   overlaps the edges of one sparse graph; its connected components (``scipy.sparse.csgraph``) are
   the events. Under
   ClimateNet's rules (``--like climatenet``, :mod:`climseg.analytics.track_climatenet`) the grid
   wraps in both directions and each component keeps one of its overlaps, ClimateNet's choice.
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
import json
import os

import numpy as np

from climseg import sphere
from climseg.analytics import track_climatenet
from climseg.analytics.stitch import stitch
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


def components(mask, periodic, weights, limits, rules="climseg", flipped=False):
    """Components of one step kept by the size limits: ``(index, component, class, pixels, area,
    vectors, rank)``, components numbered 1..n in the order found. Under the ClimateNet rules
    (:mod:`climseg.analytics.track_climatenet`) the grid wraps in both directions, the components are
    numbered by their first cell in the file's row-major order (``flipped``: rows stored north to
    south) and ``rank`` is each kept one's number among all of the step's components; else None."""
    if rules == "climatenet":
        index, comp, owner = track_climatenet.label_torus(mask, flipped)
        rank = np.arange(1, owner.size, dtype=np.int64)
    else:
        index, comp, owner = sphere.label_classes_sparse(mask, NUM_CLASSES, periodic)
        rank = None
    n = owner.size - 1
    if n == 0:
        return index, comp, owner[1:], np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3)), rank
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
        rank = rank[keep] if rank is not None else None
    return index, comp, cls, pixels, area, vectors, rank


def _overlaps(index_a, comp_a, index_b, comp_b, dense, cls_a, cls_b, keys_b=None):
    """Pairs (component at a, component at b) of the same class that share cells, and with ``keys_b``
    (the row-major positions of the cells ``index_b``) the first shared cell of each pair, else None.
    ``dense`` is a zeroed scratch array of the grid's size; it is zero again on return."""
    if index_a.size == 0 or index_b.size == 0:
        return np.zeros((0, 2), np.int64), None if keys_b is None else np.zeros(0, np.int64)
    dense[index_a] = comp_a
    prev = dense[index_b]
    dense[index_a] = 0
    hit = prev > 0
    if not hit.any():
        return np.zeros((0, 2), np.int64), None if keys_b is None else np.zeros(0, np.int64)
    span = int(comp_b.max()) + 1
    codes = prev[hit].astype(np.int64) * span + comp_b[hit].astype(np.int64)
    if keys_b is None:
        pairs, first = np.unique(codes), None
    else:
        pairs, first = track_climatenet.first_overlap_keys(codes, keys_b[hit])
    a, b = pairs // span, pairs % span
    same = cls_a[a - 1] == cls_b[b - 1]
    return np.stack([a[same], b[same]], axis=-1), None if first is None else first[same]


def _scan_steps(read, start, stop, options, periodic, weights, limits, flipped=lambda t: False):
    """Components and overlaps of steps [start, stop) of ``read(t) -> mask``, relabelling
    the ``look_ahead`` steps before ``start``: ``(nodes, edges, cells, labels)``. Under the
    ClimateNet rules each edge also carries the first shared cell of its pair in the earlier step's
    row-major order (``flipped(t)``: step t's file stores its rows north to south)."""
    dense = None
    recent = {}
    look_ahead, climatenet = options.look_ahead, options.rules == "climatenet"
    nodes, edges, cells, labels = [], [], [], []
    for t in range(max(0, start - look_ahead), stop):
        mask = read(t)
        if dense is None:
            dense = np.zeros(mask.size, np.int32)
        try:
            comp = components(mask, periodic, weights, limits, options.rules, flipped(t))
        except DataError as exc:
            raise DataError(f"step {t}: {exc}") from None
        recent[t] = comp
        recent.pop(t - look_ahead - 1, None)
        if t < start:
            continue
        index, label, cls, pixels, area, vectors, rank = comp
        nodes.append((t, cls, pixels, area, vectors, rank))
        cells.append(index.astype(np.int64))
        labels.append(label.astype(np.int32))
        for d in range(1, look_ahead + 1):
            if t - d in recent:
                p = recent[t - d]  # ClimateNet walks the cells of step t - d in its file's row-major order
                keys = track_climatenet.row_major_keys(index, mask.shape, flipped(t - d)) if climatenet else None
                pairs, first = _overlaps(p[0], p[1], index, label, dense, p[2], cls, keys)
                if pairs.size:
                    edges.append((t - d, pairs[:, 0], t, pairs[:, 1], first))
    return nodes, edges, cells, labels


def _scan_chunk(job):
    """:func:`_scan_steps` of a chunk of the series' files; the steps' labelled cells and
    components go to ``scratch`` for the writer."""
    series, options, start, stop, scratch = job
    weights = sphere.grid_weights(series.lat, series.lon)
    limits = size_thresholds(options)
    with MaskReader(series) as reader:
        nodes, edges, cells, labels = _scan_steps(
            reader.read, start, stop, options, series.periodic, weights, limits, lambda t: series.locate(t)[0].flipped
        )
    counts = np.array([c.size for c in cells], np.int64)
    with open(_scratch_file(scratch, start), "wb") as f:
        np.save(f, np.concatenate([[0], np.cumsum(counts)]))
        np.save(f, np.concatenate(cells) if cells else np.zeros(0, np.int64))
        np.save(f, np.concatenate(labels) if labels else np.zeros(0, np.int32))
    return nodes, edges


def track_arrays(masks, lat, lon, hours, options=None, times=None):
    """Track events in memory, in one process: ``masks`` (T, H, W) class indices on the grid
    ``lat`` (ascending or descending, the rows of ``masks``) x ``lon``, ``hours`` (T,) increasing.
    Returns ``(event_id (T, H, W) int32, events, tracks)`` with the rows of ``events.csv`` and
    ``tracks.csv`` as dicts; the same events as :func:`track` on the same masks (the ClimateNet
    rules' row-major order is that of ``masks`` as given)."""
    options = (options or TrackOptions()).check()
    masks = np.asarray(masks)
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    hours = np.asarray(hours, np.float64)
    if masks.ndim != 3 or masks.shape[1:] != (lat.size, lon.size) or hours.shape != (masks.shape[0],):
        raise DataError(f"masks of shape {masks.shape} do not fit {hours.size} times on a {lat.size} x {lon.size} grid")
    flipped = bool(lat.size > 1 and lat[0] > lat[-1])
    if flipped:
        masks, lat = masks[:, ::-1], lat[::-1]
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
        lambda t: masks[t], 0, hours.size, options, series.periodic, weights, limits, lambda t: flipped
    )
    result = stitch(series, [(nodes, edges)], options)
    ids = np.zeros(masks.shape, np.int32)
    flat = ids.reshape(hours.size, -1)
    for t in range(hours.size):
        lo, hi = result.offsets[t], result.offsets[t + 1]
        event = np.concatenate([[0], result.node_event[lo:hi]]).astype(np.int32)
        flat[t, cells[t]] = event[labels[t]]
    return (ids[:, ::-1] if flipped else ids), result.events, result.tracks


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
