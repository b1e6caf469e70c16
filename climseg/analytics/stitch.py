"""Stitching: the components that :mod:`climseg.analytics.track` scans at every step, joined through
time into events, and the events described (the rows of ``events.csv`` and ``tracks.csv``).

Data flow: per step, the kept components (class, pixels, area, area-weighted unit-vector sums and,
under ClimateNet's rules, their number in the step) and the overlaps between components of nearby
steps come in; :func:`stitch` makes the components the nodes and the overlaps the edges of one
sparse graph (under ClimateNet's rules only the overlap each component keeps,
:func:`climseg.analytics.track_climatenet.parent_links`), takes its connected components
(``scipy.sparse.csgraph``) as the events, drops those seen on fewer than ``min_steps`` steps,
numbers the rest 1..E by their first step (then first component) and describes them: class, first
and last time, steps seen, lifetime, per-step centroid on the sphere and area, peak and mean area,
travel distance (great-circle distances between successive centroids), mean speed, genesis and
lysis positions.
"""

import dataclasses

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from climseg import sphere
from climseg.analytics import track_climatenet
from climseg.constants import CLASS_NAMES


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
    """Join the scanned components of all steps into events (see the module docstring): every
    overlap links (climseg's rules), or only the one ClimateNet's rules keep per component
    (:func:`climseg.analytics.track_climatenet.parent_links`)."""
    nsteps = series.hours.size
    counts = np.zeros(nsteps, np.int64)
    parts = {}
    for nodes, _ in scanned:
        for t, cls, pixels, area, vectors, rank in nodes:
            counts[t] = cls.size
            parts[t] = (cls, pixels, area, vectors, rank)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])
    node_step = np.repeat(np.arange(nsteps), counts)
    node_local = (np.arange(total) - offsets[node_step] + 1).astype(np.int64)
    cls = np.concatenate([parts[t][0] for t in range(nsteps)]) if total else np.zeros(0, np.int64)
    pixels = np.concatenate([parts[t][1] for t in range(nsteps)]) if total else np.zeros(0, np.int64)
    area = np.concatenate([parts[t][2] for t in range(nsteps)]) if total else np.zeros(0)
    vectors = np.concatenate([parts[t][3] for t in range(nsteps)]) if total else np.zeros((0, 3))
    edges = [e for _, part in scanned for e in part]
    a = np.concatenate([offsets[t1] + l1 - 1 for t1, l1, _, _, _ in edges]) if edges else np.zeros(0, np.int64)
    b = np.concatenate([offsets[t2] + l2 - 1 for _, _, t2, l2, _ in edges]) if edges else np.zeros(0, np.int64)
    if options.rules == "climatenet" and edges:
        rank = np.concatenate([parts[t][4] for t in range(nsteps)])
        step_a = np.concatenate([np.full(l1.size, t1, np.int64) for t1, l1, _, _, _ in edges])
        first = np.concatenate([k for _, _, _, _, k in edges])
        a, b = track_climatenet.parent_links(a, b, step_a, first, rank[b])
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
