"""climseg.data.timeseries: CAM5-like history files with moving events and their truth."""

import csv
import json
import os

import netCDF4
import numpy as np
import pytest

from climseg import sphere
from climseg.cli import main
from climseg.constants import CHANNEL_UNITS, CHANNELS, TROPICAL_CYCLONE
from climseg.data import planet
from climseg.data.synthetic import Features
from climseg.data.timeseries import cyclone_at, noleap_date, parse_interval, river_at, simulate_events
from climseg.errors import ConfigError

RNG = np.random.default_rng()


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts") / "series"
    seed = int(RNG.integers(1 << 30))
    assert (
        main(
            [
                "generate",
                str(out),
                "--timesteps",
                "10",
                "--interval",
                "6h",
                "--height",
                "40",
                "--width",
                "56",
                "--seed",
                str(seed),
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    return out, seed


def test_files_are_cam5_like_and_cf(series):
    out, _ = series
    files = sorted(f for f in os.listdir(out) if f.endswith(".nc"))
    # 10 steps every 6 h: days 1 and 2 hold four steps each, day 3 the last two
    assert files == [f"climseg.cam.h2.2106-01-0{d}-00000.nc" for d in (1, 2, 3)]
    hours = []
    for name in files:
        with netCDF4.Dataset(out / name) as ds:
            t = ds.variables["time"]
            assert t.units == "hours since 2106-01-01 00:00:00" and t.calendar == "noleap"
            assert t.standard_name == "time"
            assert ds.variables["lat"].standard_name == "latitude" and ds.variables["lat"].units == "degrees_north"
            assert ds.variables["lon"].standard_name == "longitude" and ds.variables["lon"].units == "degrees_east"
            for c in CHANNELS:
                v = ds.variables[c]
                assert v.dimensions == ("time", "lat", "lon") and v.units == CHANNEL_UNITS[c]
                assert np.all(np.isfinite(v[:]))
            labels = np.asarray(ds.variables["LABELS"][:])
            ids = np.asarray(ds.variables["TRUE_EVENT_ID"][:])
            assert set(np.unique(labels)) <= {0, 1, 2}
            assert np.array_equal(ids > 0, labels > 0)
            hours += list(t[:])
    assert hours == [6.0 * k for k in range(10)]
    meta = json.loads((out / "climseg-timeseries.json").read_text())
    assert meta["timesteps"] == 10 and meta["interval_hours"] == 6.0 and meta["files"] == files


def test_truth_tables_agree_with_the_ids(series):
    out, _ = series
    with open(out / "true_tracks.csv") as f:
        rows = list(csv.DictReader(f))
    pixels = {}
    for name in sorted(f for f in os.listdir(out) if f.endswith(".nc")):
        with netCDF4.Dataset(out / name) as ds:
            first = int(round(ds.variables["time"][0] / 6.0))
            for k, ids in enumerate(np.asarray(ds.variables["TRUE_EVENT_ID"][:])):
                for i, n in zip(*np.unique(ids[ids > 0], return_counts=True)):
                    pixels[(int(i), first + k)] = int(n)
    assert pixels == {(int(r["id"]), int(r["step"])): int(r["pixels"]) for r in rows}
    with open(out / "true_events.csv") as f:
        events = {int(r["id"]): r for r in csv.DictReader(f)}
    for i, e in events.items():
        steps = sorted(s for (j, s) in pixels if j == i)
        assert (int(e["first_step"]), int(e["last_step"]), int(e["steps"])) == (steps[0], steps[-1], len(steps))


def test_deterministic_whatever_the_workers(series, tmp_path):
    out, seed = series
    assert (
        main(
            [
                "generate",
                str(tmp_path / "again"),
                "--timesteps",
                "10",
                "--interval",
                "6h",
                "--height",
                "40",
                "--width",
                "56",
                "--seed",
                str(seed),
                "--workers",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    for name in sorted(f for f in os.listdir(out) if f.endswith(".nc")):
        with netCDF4.Dataset(out / name) as a, netCDF4.Dataset(tmp_path / "again" / name) as b:
            for v in ("TMQ", "PSL", "LABELS", "TRUE_EVENT_ID"):
                assert np.array_equal(a.variables[v][:], b.variables[v][:])
    assert (out / "true_tracks.csv").read_text() == (tmp_path / "again" / "true_tracks.csv").read_text()


def test_cyclones_drift_west_and_poleward_then_recurve():
    # 240 days: about 160 cyclones, of which about 7.5% live to recurve (none recurving: p ~ 1e-5)
    seed = int(RNG.integers(1 << 30))
    events = simulate_events(seed, 24 * 240.0, Features(cyclones_mean=4.0))
    cyclones = [e for e in events if e.cls == TROPICAL_CYCLONE]
    assert len(cyclones) >= 5, seed
    recurved = 0
    for e in cyclones:
        track = [cyclone_at(e, e.birth + h) for h in np.arange(0.0, e.life, 6.0)]
        lats = np.array([abs(c["lat"]) for c in track])
        assert np.all(np.diff(lats) > 0)  # always poleward
        dlon = (np.diff([c["lon"] for c in track]) + 180.0) % 360.0 - 180.0
        early = [d for c, d in zip(track, dlon) if abs(c["lat"]) < e.params["recurve"]]
        late = [d for c, d in zip(track, dlon) if abs(c["lat"]) > e.params["recurve"] + 6.0]
        assert all(d < 0 for d in early)  # westward in the trades
        assert all(d > 0 for d in late)  # eastward after recurvature
        recurved += bool(late)
        assert 3 * 24 <= e.params["planned_life"] <= 10 * 24 and e.life <= e.params["planned_life"]
        if not any(planet.is_land(la, lo) for la, lo, _ in e.path):
            vmax = np.array([c["vmax"] for c in track])
            assert vmax.max() > vmax[0] and vmax.max() > vmax[-1]  # genesis, peak, decay
            assert e.life == e.params["planned_life"]
    assert recurved >= 1, seed


def test_cyclones_form_over_warm_sea_and_decay_over_land():
    seed = int(RNG.integers(1 << 30))
    events = simulate_events(seed, 24 * 240.0, Features(cyclones_mean=4.0))
    cyclones = [e for e in events if e.cls == TROPICAL_CYCLONE]
    landfalls = 0
    for e in cyclones:
        lat, lon, vmax = e.path[0]
        assert 5.0 <= abs(lat) <= 20.0 and not planet.is_land(lat, lon), seed
        assert planet.ocean_surface_temperature()[int(lat + 90.0), int(lon % 360.0)] >= 299.65  # 26.5 C
        assert vmax == pytest.approx(26.0)
        land = [bool(planet.is_land(la, lo)) for la, lo, _ in e.path]
        winds = [v for _, _, v in e.path]
        for k in range(1, len(e.path)):
            if land[k]:  # Kaplan and DeMaria (1995): V(t) = V_b + (R V_0 - V_b) exp(-alpha t), hour by hour
                start = (0.9 if not land[k - 1] else 1.0) * winds[k - 1]
                assert winds[k] == pytest.approx(13.74 + (start - 13.74) * np.exp(-0.095))
        if e.life < e.params["planned_life"]:  # only land ends a storm early (over land or weakened by it)
            assert any(land) and winds[-1] >= 17.5, seed
            landfalls += 1
            if land[-1]:  # below gale force within 28 hours of its last landfall: from at most
                # 0.9 x 70 m/s, V_b + (63 - V_b) exp(-0.095 t) falls below 17.5 m/s after 27.1 hours
                landfall = max(k for k in range(1, len(land)) if land[k] and not land[k - 1])
                assert len(e.path) - landfall <= 28
    assert landfalls >= 1, seed


def test_rivers_drift_east_and_grow_then_fade():
    events = simulate_events(int(RNG.integers(1 << 30)), 24 * 20.0, Features(rivers_mean=5.0))
    rivers = [e for e in events if e.cls != TROPICAL_CYCLONE]
    assert rivers
    for e in rivers:
        states = [river_at(e, e.birth + h) for h in (0.0, e.life / 2, e.life * 0.99)]
        assert states[1]["length"] > states[0]["length"] and states[1]["length"] > states[2]["length"]
        assert states[1]["vapour"] > states[0]["vapour"]
        dlon = (states[1]["lons"][0] - states[0]["lons"][0] + 180.0) % 360.0 - 180.0
        assert dlon > 0


def test_rivers_reach_the_west_coasts():
    seed = int(RNG.integers(1 << 30))
    events = simulate_events(seed, 24 * 60.0, Features(rivers_mean=5.0))
    rivers = [e for e in events if e.cls != TROPICAL_CYCLONE]
    coast_lat, coast_lon = planet.west_coasts()
    ashore = 0
    for e in rivers:
        r = river_at(e, e.birth + e.life / 2)  # at the middle of its life, at its full length
        end = (r["lats"][-1], r["lons"][-1])
        ashore += sphere.haversine_km(end[0], end[1], coast_lat, coast_lon).min() < 400.0
    # three in four are aimed at a coast; within 400 km of it at mid-life: 67 % on average of about 120
    # rivers (40 seeds: standard deviation 3.4 %, at least 96 rivers), below 55 % about once in 6000 draws
    assert len(rivers) >= 60 and ashore >= 0.55 * len(rivers), (seed, ashore, len(rivers))
    assert np.all(np.abs(coast_lat) >= 30) and np.all(np.abs(coast_lat) <= 60)
    # the coasts: California, Oregon, British Columbia, Chile, western Europe, south-west Africa and Australia
    for la, lo in ((38, 237), (45, 236), (52, 232), (-35, 288), (-45, 286), (43, 351), (-32, 18), (-31, 115)):
        assert sphere.haversine_km(la, lo, coast_lat, coast_lon).min() < 400.0, (la, lo)


def test_interval_and_calendar():
    assert parse_interval("3h") == 3.0 and parse_interval("90min") == 1.5 and parse_interval("1d") == 24.0
    assert parse_interval("6") == 6.0
    with pytest.raises(ConfigError):
        parse_interval("soon")
    assert noleap_date(0.0, 2106) == (2106, 1, 1, 0.0)
    assert noleap_date(59 * 24 + 21, 2106) == (2106, 3, 1, 21.0)  # no 29 February
    assert noleap_date(365 * 24, 2106) == (2107, 1, 1, 0.0)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--timesteps", "4", "--interval", "soon"], "--interval"),
        (["--timesteps", "4", "--format", "hdf5"], "--format hdf5"),
        (["--format", "netcdf"], "--timesteps"),
        (["--timesteps", "0"], "--timesteps 0"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, argv, words):
    assert main(["generate", str(tmp_path / "x"), "--height", "16", "--width", "32"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("climseg: error: ") and words in err and "\n" not in err
    assert not os.path.exists(tmp_path / "x")
