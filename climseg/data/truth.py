"""The truth of a generated time series (``climseg generate --timesteps``): what the generator
planted, kept beside the history files so that tracking can be scored against it
(:mod:`climseg.analytics.scoring`).

* ``TRUE_EVENT_ID`` in every history file: (time, lat, lon), the id of the event each labelled pixel
  belongs to (0 elsewhere);
* ``true_events.csv``: id, class, first and last step, steps, birth and death hours of every event
  that was labelled at least once;
* ``true_tracks.csv``: id, class, step, time in hours, centre latitude and longitude and labelled
  pixels of every event at every step it was labelled.

Written by :mod:`climseg.data.timeseries` (:func:`write_truth`), read here.
"""

import csv
import glob
import os

import numpy as np

from climseg.constants import CLASS_NAMES
from climseg.output import atomic_path


def write_truth(folder, events, rows):
    """Write ``true_tracks.csv`` (``rows``: every event and step with labelled pixels, as ``(id, class, step,
    hours, centre_lat, centre_lon, pixels)``) and ``true_events.csv`` (one row per event of ``events`` that
    was labelled); returns ``[(id, class)]`` of those events."""
    rows = sorted((r for r in rows if r[6] > 0), key=lambda r: (r[0], r[2]))
    with atomic_path(os.path.join(folder, "true_tracks.csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "class", "step", "time_hours", "centre_lat", "centre_lon", "pixels"])
        for i, cls, step, h, la, lo, px in rows:
            w.writerow([i, CLASS_NAMES[cls], step, f"{h:g}", f"{la:.4f}", f"{lo:.4f}", px])
    by_event = {}
    for r in rows:
        by_event.setdefault(r[0], []).append(r)
    seen = []
    with atomic_path(os.path.join(folder, "true_events.csv")) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "class", "first_step", "last_step", "steps", "birth_hours", "death_hours"])
        for e in events:
            if e.id not in by_event:
                continue
            rs = by_event[e.id]
            seen.append((e.id, e.cls))
            w.writerow(
                [e.id, CLASS_NAMES[e.cls], rs[0][2], rs[-1][2], len(rs), f"{e.birth:g}", f"{e.birth + e.life:g}"]
            )
    return seen


def series_files(folder):
    """The history files of a generated series (``*.cam.h2.*.nc``), in time order."""
    return sorted(glob.glob(os.path.join(folder, "*.cam.h2.*.nc")))


def read_true_event_ids(path):
    """``TRUE_EVENT_ID`` of one history file of a generated series: int64 (time, lat, lon)."""
    import netCDF4

    with netCDF4.Dataset(path) as ds:
        ds.set_auto_mask(False)
        return np.asarray(ds.variables["TRUE_EVENT_ID"][:], np.int64)


def read_truth(folder):
    """``(events, tracks)`` of a generated series: ``true_events.csv`` as ``{id: row}`` and
    ``true_tracks.csv`` as ``{(id, step): (centre_lat, centre_lon)}``."""
    with open(os.path.join(folder, "true_events.csv"), newline="") as f:
        events = {int(r["id"]): r for r in csv.DictReader(f)}
    with open(os.path.join(folder, "true_tracks.csv"), newline="") as f:
        tracks = {
            (int(r["id"]), int(r["step"])): (float(r["centre_lat"]), float(r["centre_lon"])) for r in csv.DictReader(f)
        }
    return events, tracks
