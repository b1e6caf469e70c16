"""Tracking scored against the truth of a generated series: ``climseg track`` on the
``LABELS`` of ``climseg generate --timesteps`` should find the generator's own events, and
``climseg track`` on a network's masks of the series (``climseg predict``'s ``NAME_mask.nc``,
tracked into ``NAME_mask_event_id.nc``) is scored the same way.

Data flow: :func:`score_tracking` reads the tracked events and their event-id files
(:mod:`climseg.data.events`) and the series' true event ids and tables
(:mod:`climseg.data.timeseries`), counts the cells every (true, tracked) pair of events
shares over the whole series, matches the events one to one by mutual best overlap, and
compares the matched pairs' lifetimes and centres.
"""

import os

import numpy as np

from climseg.constants import CLASS_NAMES
from climseg.data.events import read_event_ids, read_events
from climseg.data.truth import read_true_event_ids, read_truth, series_files
from climseg.errors import DataError
from climseg.sphere import haversine_km


def _event_stems(series_folder, track_folder, meta):
    """For each history file of the series, the stem of the masks tracked for it: ``NAME`` when
    its own ``LABELS`` were tracked, ``NAME_mask`` when ``climseg predict`` or ``climseg label``
    made the masks. DataError naming the track folder when a history file was not tracked."""
    tracked = {os.path.splitext(os.path.basename(p))[0] for p in meta.get("inputs", [])}
    stems = []
    for path in series_files(series_folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        found = next((s for s in (stem, f"{stem}_mask") if s in tracked), None)
        if found is None:
            raise DataError(
                f"{track_folder}: no event ids of {os.path.basename(path)} (tracked: "
                f"{', '.join(sorted(tracked)) or 'nothing'}); track the series' own files or its NAME_mask.nc masks"
            )
        stems.append((path, found))
    return stems


def _overlaps(series_folder, track_folder, meta):
    """``(true ids, tracked ids, shared cells)`` of every pair of events that share cells."""
    keys, counts = [], []
    for path, stem in _event_stems(series_folder, track_folder, meta):
        true_ids = read_true_event_ids(path).reshape(-1)
        ids = read_event_ids(track_folder, stem).reshape(-1)
        both = (true_ids > 0) & (ids > 0)
        k, c = np.unique(true_ids[both] * (1 << 32) + ids[both], return_counts=True)
        keys.append(k)
        counts.append(c)
    k = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    c = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    k, inverse = np.unique(k, return_inverse=True)
    c = np.bincount(inverse, weights=c).astype(np.int64) if k.size else c
    return k >> 32, k & ((1 << 32) - 1), c


def _best_matches(true_of, tracked_of, shared):
    """For each true event its tracked event of most shared cells, and the reverse."""
    best_for_true, best_for_tracked = {}, {}
    for t, e, n in zip(true_of.tolist(), tracked_of.tolist(), shared.tolist()):
        if n > best_for_true.get(t, (0, 0))[1]:
            best_for_true[t] = (e, n)
        if n > best_for_tracked.get(e, (0, 0))[1]:
            best_for_tracked[e] = (t, n)
    return best_for_true, best_for_tracked


def score_tracking(series_folder, track_folder, min_steps=1):
    """Tracked events (a ``climseg track`` output of this series' ``LABELS``) against the
    generator's true events, matched one to one by pixel overlap over the whole series
    (mutual best: the tracked event that shares most cells with a true event, and vice versa).

    Returns per class: ``true`` (true events seen on at least ``min_steps`` steps),
    ``tracked``, ``matched``, ``recall`` (matched / true), ``precision`` (matched / tracked),
    ``lifetime_error_steps`` (mean absolute difference of steps seen, matched events) and
    ``centre_error_km`` (mean great-circle distance between the tracked centroid and the
    generator's centre over the matched events' common steps; cyclones only)."""
    meta, events, tracks = read_events(track_folder)
    best_for_true, best_for_tracked = _best_matches(*_overlaps(series_folder, track_folder, meta))
    true_events, true_tracks = read_truth(series_folder)
    tracked_steps = {(int(r["id"]), int(r["step"])): (float(r["lat"]), float(r["lon"])) for r in tracks}
    tracked = {int(e["id"]): e for e in events}
    out = {}
    for cls in CLASS_NAMES[1:]:
        true_ids = [i for i, r in true_events.items() if r["class"] == cls and int(r["steps"]) >= min_steps]
        tracked_ids = [i for i, e in tracked.items() if e["class"] == cls]
        matched = [
            (t, best_for_true[t][0])
            for t in true_ids
            if t in best_for_true
            and best_for_tracked.get(best_for_true[t][0], (None,))[0] == t
            and tracked[best_for_true[t][0]]["class"] == cls
        ]
        life = [abs(int(tracked[e]["steps"]) - int(true_events[t]["steps"])) for t, e in matched]
        dist = []
        if cls == CLASS_NAMES[1]:
            for t, e in matched:
                for (tid, step), (la, lo) in true_tracks.items():
                    if tid == t and (e, step) in tracked_steps:
                        dist.append(float(haversine_km(la, lo, *tracked_steps[(e, step)])))
        out[cls] = dict(
            true=len(true_ids),
            tracked=len(tracked_ids),
            matched=len(matched),
            recall=len(matched) / len(true_ids) if true_ids else None,
            precision=len(matched) / len(tracked_ids) if tracked_ids else None,
            lifetime_error_steps=float(np.mean(life)) if life else None,
            centre_error_km=float(np.mean(dist)) if dist else None,
        )
    return out
