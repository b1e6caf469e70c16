"""``climseg track --like climatenet``: ClimateNet's events, checked against a re-derivation of its rules.

The re-derivation (:func:`_climatenet_walk`) is written from the behaviour of ClimateNet's
``track_events`` (andregraubner/ClimateNet, ``climatenet/track_events.py``) as docs/analytics.md
describes it, the slow way ClimateNet does it: objects found by a breadth-first search from each
unvisited labelled cell in row-major order on a grid that wraps both ways, then a walk over the steps
in time order and over each step's labelled cells in row-major order, in which an undecided object
starts a new event (or is dropped as too small) and every cell of an event hands its event on to the
undecided objects of the same class under it in the next ``look_ahead`` steps, if their number in
their step is below 100. climseg computes the same events from sparse graphs
(:mod:`climseg.analytics.track_climatenet`); the event ids must agree cell for cell.
"""

import csv
import json
import os

import netCDF4
import numpy as np
import pytest
from scipy import ndimage

from climseg.analytics.track import track, track_arrays
from climseg.analytics.track_options import TrackOptions, climatenet_options
from climseg.cli import main
from climseg.data.synthetic import Features, grid
from climseg.data.timeseries import generate_timeseries
from climseg.errors import DataError

RNG = np.random.default_rng()


def _climatenet_walk(masks, look_ahead=1, min_steps=5, tc_pixels=250, ar_pixels=250):
    """Event ids (T, H, W) of ClimateNet's rules, numbered in the order its walk creates them
    (0 outside kept events), and the number of kept events per class ``{1: n, 2: n}``."""
    steps, h, w = masks.shape
    threshold = {1: tc_pixels, 2: ar_pixels}
    numbers, members = [], []  # per step: cell -> object number (1..n); object number -> its cells
    for t in range(steps):
        flat = masks[t].reshape(-1)
        number, cells = {}, [None]
        for start in np.flatnonzero(flat).tolist():  # row-major order
            if start in number:
                continue
            n, cls = len(cells), flat[start]
            number[start], queue, found = n, [start], [start]
            while queue:
                i, j = divmod(queue.pop(), w)
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        q = ((i + di) % h) * w + (j + dj) % w  # wraps across both edges
                        if q not in number and flat[q] == cls:
                            number[q] = n
                            queue.append(q)
                            found.append(q)
            cells.append(found)
        assert len(cells) <= 1000
        numbers.append(number)
        members.append(cells)

    def big_enough(t, n):
        size = len(members[t][n])
        return size >= 2 and size >= threshold[int(masks[t].reshape(-1)[members[t][n][0]])]

    decided = [{} for _ in range(steps)]  # per step: object number -> event (None: dropped)
    created = 0
    for t in range(steps):
        for cell in sorted(numbers[t]):
            n = numbers[t][cell]
            if n not in decided[t]:
                decided[t][n] = created if big_enough(t, n) else None
                created += decided[t][n] is not None
            event = decided[t][n]
            if event is None:
                continue
            for u in range(t + 1, min(t + 1 + look_ahead, steps)):
                m = numbers[u].get(cell)
                same_class = m is not None and masks[u].reshape(-1)[cell] == masks[t].reshape(-1)[cell]
                if same_class and m < 100 and m not in decided[u]:
                    decided[u][m] = event if big_enough(u, m) else None
    seen = {}
    for t in range(steps):
        for event in set(decided[t].values()) - {None}:
            seen.setdefault(event, set()).add(t)
    kept = sorted(e for e, s in seen.items() if len(s) >= min_steps)
    new_id = {e: k + 1 for k, e in enumerate(kept)}
    ids = np.zeros(masks.shape, np.int64)
    classes = {}
    for t in range(steps):
        flat = ids[t].reshape(-1)
        for n, event in decided[t].items():
            if event in new_id:
                flat[members[t][n]] = new_id[event]
                classes[new_id[event]] = int(masks[t].reshape(-1)[members[t][n][0]])
    return ids, {c: sum(1 for v in classes.values() if v == c) for c in (1, 2)}


def _options(look_ahead, min_steps, tc_pixels, ar_pixels):
    return TrackOptions(
        min_size={1: (float(tc_pixels), "px"), 2: (float(ar_pixels), "px")},
        look_ahead=look_ahead,
        min_steps=min_steps,
        rules="climatenet",
    )


def _moving_blobs(rng, steps, h, w, sigma, threshold):
    """Objects of both classes that drift east, grow, merge and split: a smooth random field
    renewed a little every step, cut at +-threshold; they touch the first and last rows too."""
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
    out = np.zeros((steps, h, w), np.uint8)
    for t in range(steps):
        fresh = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
        field = 0.8 * field + 0.6 * fresh
        g = np.roll(field / field.std(), t, axis=1)
        out[t][g > threshold] = 1
        out[t][g < -threshold] = 2
    return out


def _write_masks(path, masks, lat, lon, hours):
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", lat.size)
        ds.createDimension("lon", lon.size)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "hours since 2000-01-01 00:00:00", "noleap"
        t[:] = hours
        ds.createVariable("lat", "f8", ("lat",))[:] = lat
        ds.createVariable("lon", "f8", ("lon",))[:] = lon
        ds.createVariable("mask", "u1", ("time", "lat", "lon"))[:] = masks


def _read_event_ids(folder):
    names = sorted(f for f in os.listdir(folder) if f.endswith("_event_id.nc"))
    return np.concatenate([np.asarray(netCDF4.Dataset(os.path.join(folder, n))["event_id"][:]) for n in names])


def _labels(folder):
    names = sorted(f for f in os.listdir(folder) if f.endswith(".nc"))
    return np.concatenate([np.asarray(netCDF4.Dataset(os.path.join(folder, n)).variables["LABELS"][:]) for n in names])


# ----------------------------------------------------------------------------- generated series


@pytest.mark.slow
def test_the_issues_series_gives_climatenets_events(tmp_path):
    """The series of the report (40 steps of 384 x 576, ClimateNet's 250 px, look-ahead 1, at least 5 steps),
    through the command line."""
    seed = int(RNG.integers(1 << 30))
    series = tmp_path / "series"
    generate_timeseries(str(series), 40, 3.0, 384, 576, seed=seed, workers=2, progress=False)
    inputs = sorted(str(series / f) for f in os.listdir(series) if f.endswith(".nc"))
    assert main(["track", *inputs, "--out", str(tmp_path / "events"), "--like", "climatenet", "--no-progress"]) == 0
    expected, counts = _climatenet_walk(_labels(series))
    assert np.array_equal(_read_event_ids(str(tmp_path / "events")), expected), f"seed {seed}"
    meta = json.loads((tmp_path / "events" / "track.json").read_text())
    assert meta["options"]["rules"] == "climatenet"
    assert meta["events"] == {"tropical_cyclone": counts[1], "atmospheric_river": counts[2]}, f"seed {seed}"


@pytest.mark.parametrize(
    "height, width, look_ahead, min_steps, tc_pixels, ar_pixels",
    [(96, 144, 1, 5, 250, 250), (96, 144, 2, 2, 1, 1), (72, 108, 3, 3, 12, 40)],
)
def test_generated_series_give_climatenets_events(tmp_path, height, width, look_ahead, min_steps, tc_pixels, ar_pixels):
    seed = int(RNG.integers(1 << 30))
    generate_timeseries(
        str(tmp_path / "s"),
        24,
        3.0,
        height,
        width,
        seed=seed,
        workers=1,
        progress=False,
        features=Features(cyclones_mean=5.0, rivers_mean=6.0),
    )
    masks = _labels(tmp_path / "s")
    lat, lon = grid(height, width)
    options = _options(look_ahead, min_steps, tc_pixels, ar_pixels)
    ids, events, _ = track_arrays(masks, lat, lon, 3.0 * np.arange(24), options)
    expected, counts = _climatenet_walk(masks, look_ahead, min_steps, tc_pixels, ar_pixels)
    assert np.array_equal(ids, expected), f"seed {seed}"
    assert [sum(e["class"] == c for e in events) for c in ("tropical_cyclone", "atmospheric_river")] == [
        counts[1],
        counts[2],
    ]


# ----------------------------------------------------------------------------- objects that merge and split


@pytest.mark.parametrize("look_ahead", [1, 2, 3])
def test_many_merging_objects_give_climatenets_events(look_ahead):
    # up to ~200 objects a step (ClimateNet's limit of 100 for continuing objects matters), objects on
    # the first and last rows (its wrap-around joins them), mergers and splits at every step
    seed = int(RNG.integers(1 << 30))
    masks = _moving_blobs(np.random.default_rng(seed), 10, 56, 84, 1.0, 0.7)
    lat, lon = grid(56, 84)
    ids, _, _ = track_arrays(masks, lat, lon, 6.0 * np.arange(10), _options(look_ahead, 2, 2, 3))
    expected, _ = _climatenet_walk(masks, look_ahead, 2, 2, 3)
    assert np.array_equal(ids, expected), f"seed {seed}"
    # latitudes north to south: the row-major order is the array's, as ClimateNet reads it
    ids, _, _ = track_arrays(masks, lat[::-1], lon, 6.0 * np.arange(10), _options(look_ahead, 2, 2, 3))
    assert np.array_equal(ids, expected), f"seed {seed}"


def test_files_stored_north_to_south_chunked_and_parallel(tmp_path, monkeypatch):
    import climseg.analytics.track as track_module

    seed = int(RNG.integers(1 << 30))
    north_first = _moving_blobs(np.random.default_rng(seed), 12, 40, 60, 1.5, 0.8)
    lat, lon = grid(40, 60)
    # two files with their rows north to south, as ERA5 stores them: ClimateNet reads them in that order
    _write_masks(tmp_path / "a.nc", north_first[:5], lat[::-1], lon, 3.0 * np.arange(5))
    _write_masks(tmp_path / "b.nc", north_first[5:], lat[::-1], lon, 3.0 * np.arange(5, 12))
    options = _options(2, 2, 3, 3)
    expected, _ = _climatenet_walk(north_first, 2, 2, 3, 3)
    inputs = [str(tmp_path / "a.nc"), str(tmp_path / "b.nc")]
    track(inputs, str(tmp_path / "serial"), options, progress=False, log=lambda *_: None)
    monkeypatch.setattr(track_module, "CHUNK_STEPS", 4)  # chunk edges inside the files
    track(inputs, str(tmp_path / "chunked"), options, workers=2, progress=False, log=lambda *_: None)
    for out in ("serial", "chunked"):  # event files hold their rows south to north
        assert np.array_equal(_read_event_ids(str(tmp_path / out)), expected[:, ::-1]), f"seed {seed}"
    for name in ("events.csv", "tracks.csv"):
        assert (tmp_path / "serial" / name).read_text() == (tmp_path / "chunked" / name).read_text()


def test_a_merger_ends_one_event_under_climatenets_rules():
    # two rivers at step 0 merge into one at step 1 and go on together: ClimateNet's rules keep the
    # event of the one met first in row-major order and end the other; climseg's keep one event
    h, w = 20, 30
    lat, lon = grid(h, w)
    masks = np.zeros((4, h, w), np.uint8)
    masks[0, 4:6, 4:12] = 2  # met first (lower row index)
    masks[0, 10:12, 4:12] = 2
    masks[1:, 4:12, 4:12] = 2  # covers both
    options = _options(1, 1, 1, 1)
    ids, events, _ = track_arrays(masks, lat, lon, 6.0 * np.arange(4), options)
    assert [e["steps"] for e in events] == [4, 1]
    assert ids[0, 5, 5] == ids[3, 5, 5] == 1 and ids[0, 10, 5] == 2
    assert np.array_equal(ids, _climatenet_walk(masks, 1, 1, 1, 1)[0])
    options.rules = "climseg"
    _, events, _ = track_arrays(masks, lat, lon, 6.0 * np.arange(4), options)
    assert [e["steps"] for e in events] == [4]


def test_wrap_around_and_single_cells():
    h, w = 12, 16
    lat, lon = grid(h, w)
    masks = np.zeros((2, h, w), np.uint8)
    masks[:, 0, 3:6] = 2
    masks[:, h - 1, 6] = 2  # diagonal neighbour of (0, 5) across the first and last rows
    masks[:, 5, 9] = 1  # a single cell: ClimateNet never keeps one, whatever the threshold
    masks[:, 7, 0] = masks[:, 7, w - 1] = 1  # across the date line (any grid)
    region = lon - 100.0  # not global: ClimateNet wraps the columns all the same
    for lons in (lon, region):
        ids, events, _ = track_arrays(masks, lat, lons, [0.0, 6.0], _options(1, 1, 0, 0))
        assert len(events) == 2 and ids[0, 0, 3] == ids[0, h - 1, 6] and ids[0, 5, 9] == 0
        assert ids[0, 7, 0] == ids[0, 7, w - 1] > 0
    _, events, _ = track_arrays(masks, lat, lon, [0.0, 6.0], TrackOptions(min_size={1: (0, "px"), 2: (0, "px")}))
    assert len(events) == 4  # climseg's rules: never across the poles, single cells kept by a 0 px threshold


def test_too_many_objects_are_refused_and_the_preset(tmp_path, capsys):
    masks = np.zeros((2, 80, 100), np.uint8)
    masks[:, ::2, ::2] = 1  # 2000 single cells
    lat, lon = grid(80, 100)
    with pytest.raises(DataError, match="step 0: 2000 objects"):
        track_arrays(masks, lat, lon, [0.0, 3.0], climatenet_options())
    _write_masks(tmp_path / "m.nc", masks, lat, lon, [0.0, 3.0])
    assert main(["track", str(tmp_path / "m.nc"), "--out", str(tmp_path / "o"), "--like", "climatenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "2000 objects" in err and "\n" not in err
    # --like climatenet --rules climseg: ClimateNet's values under climseg's rules
    masks[:] = 0
    masks[:, 10:30, 10:30] = 2
    _write_masks(tmp_path / "n.nc", masks, lat, lon, [0.0, 3.0])
    argv = ["track", str(tmp_path / "n.nc"), "--like", "climatenet", "--min-steps", "1", "--no-progress"]
    assert main(argv + ["--out", str(tmp_path / "p"), "--rules", "climseg"]) == 0
    meta = json.loads((tmp_path / "p" / "track.json").read_text())
    assert meta["options"]["rules"] == "climseg" and meta["options"]["min_steps"] == 1
    with open(tmp_path / "p" / "events.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
