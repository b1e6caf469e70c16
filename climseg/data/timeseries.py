"""Synthetic CAM5-like time series: history files in which cyclones and rivers live,
move and die, with their true event ids kept so that tracking can be scored.

Data flow: :func:`simulate_events` draws every event's life from the seed (genesis
time and place, motion, intensity) on the model's time axis; :func:`generate_timeseries`
then builds each time step's fields with the per-snapshot physics of
:mod:`climseg.data.synthetic` (:func:`~climseg.data.synthetic.build_snapshot`) and writes
one netCDF file per model day, ``<case>.cam.h2.YYYY-MM-DD-00000.nc``, as CAM5 names its
history files.

Events:

* **Tropical cyclones** form at 7-20 degrees latitude, drift westward (4-7 m/s) and
  poleward (1-2.5 m/s) in the trade winds, recurve eastward and speed up poleward of
  their recurvature latitude (22-32 degrees), and live 3-10 days; their maximum wind
  grows from 26 m/s to a peak of 30-70 m/s and decays again (a sine over the life).
* **Atmospheric rivers** form in the subtropics (12-26 degrees), drift eastward
  (6-12 m/s) and slightly poleward, grow to their full length and vapour content and
  fade again over 1.5-4 days.
* The background weather is one smooth random field per run, carried eastward by one
  degree of longitude every six hours.

A simulation starts ten model days before the first written step, so the series
starts with events already under way (those are cut at the start, as in a real run).

Each file holds ``time`` (CF, ``hours since <start>``, calendar ``noleap`` like CAM5),
``lat``/``lon`` (CF coordinates), the 16 CAM5 variables (float32, ``(time, lat, lon)``,
CAM5 units), ``LABELS`` (0 background, 1 tropical cyclone, 2 atmospheric river) and
``TRUE_EVENT_ID`` (the id of the event each labelled cell belongs to, 0 elsewhere).
The output folder also holds ``true_events.csv`` (one row per event),
``true_tracks.csv`` (one row per event and step: the generator's centre and labelled
pixels) and ``climseg-timeseries.json`` (the parameters). The same seed gives the same
series whatever the number of worker processes. :func:`series_files`,
:func:`read_true_event_ids` and :func:`read_truth` read the truth back, for
:func:`climseg.analytics.scoring.score_tracking`.
"""

import concurrent.futures
import dataclasses
import os
import re

import numpy as np

from climseg.constants import ATMOSPHERIC_RIVER, CHANNEL_UNITS, CHANNELS, CLASS_NAMES, TROPICAL_CYCLONE
from climseg.data.generate import check_generator_options
from climseg.data.synthetic import (
    GALE_WIND,
    GENERATOR_VERSION,
    Features,
    NoiseGrid,
    build_snapshot,
    draw_cyclone,
    draw_weather,
    grid,
    river_axis,
)
from climseg.data.truth import write_truth
from climseg.errors import ConfigError, UserError
from climseg.output import atomic_directory, atomic_path, write_json
from climseg.progress import progress_bar
from climseg.sphere import EARTH_RADIUS_M, central_angle, degrees_of_latitude, degrees_of_longitude

TIMESERIES_VERSION = 1
SPIN_UP_HOURS = 240.0
LONG_NAMES = {
    "TMQ": "Total (vertically integrated) precipitable water",
    "U850": "Zonal wind at 850 mbar pressure surface",
    "V850": "Meridional wind at 850 mbar pressure surface",
    "UBOT": "Lowest model level zonal wind",
    "VBOT": "Lowest model level meridional wind",
    "QREFHT": "Reference height humidity",
    "PS": "Surface pressure",
    "PSL": "Sea level pressure",
    "T200": "Temperature at 200 mbar pressure surface",
    "T500": "Temperature at 500 mbar pressure surface",
    "PRECT": "Total (convective and large-scale) precipitation rate (liq + ice)",
    "TS": "Surface temperature (radiative)",
    "TREFHT": "Reference height temperature",
    "Z1000": "Geopotential Z at 1000 mbar pressure surface",
    "Z200": "Geopotential Z at 200 mbar pressure surface",
    "ZBOT": "Lowest model level height",
}
DAYS_PER_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # noleap


def parse_interval(text):
    """Hours of an interval written ``3h``, ``6H``, ``90min``, ``1d`` or a plain number of hours."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(h|hr|hours?|min|minutes?|d|days?)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ConfigError(f"--interval {text}: expected a duration such as 3h, 90min or 1d")
    value, unit = float(m.group(1)), (m.group(2) or "h").lower()
    hours = value / 60.0 if unit.startswith("m") else value * 24.0 if unit.startswith("d") else value
    if hours <= 0:
        raise ConfigError(f"--interval {text}: must be positive")
    return hours


def noleap_date(hours, start_year):
    """(year, month, day, hour) of ``hours`` after ``start_year``-01-01 00:00 in the noleap calendar."""
    day, hour = divmod(float(hours), 24.0)
    year, doy = divmod(int(day), 365)
    month = 0
    while doy >= DAYS_PER_MONTH[month]:
        doy -= DAYS_PER_MONTH[month]
        month += 1
    return start_year + year, month + 1, doy + 1, hour


# ----------------------------------------------------------------------------- events


@dataclasses.dataclass
class Event:
    """One simulated event: its class, parameters and life on the model's time axis (hours)."""

    id: int
    cls: int
    birth: float
    life: float
    params: dict
    path: list = dataclasses.field(default_factory=list, repr=False)  # cyclones: hourly positions, filled on demand


def _envelope(age, life):
    return float(np.sin(np.pi * np.clip(age / life, 0.0, 1.0)))


def _move(lat, lon, east, north, seconds):
    """Move a point by velocity (east, north) m/s for ``seconds``; poleward of about 78 degrees
    the longitude step stays what it is there (cos(lat) floored at 0.2)."""
    lat2 = lat + degrees_of_latitude(north * seconds)
    lon2 = lon + degrees_of_longitude(east * seconds, lat, 0.2)
    return float(np.clip(lat2, -80.0, 80.0)), float(lon2 % 360.0)


def cyclone_at(event, hours):
    """The cyclone dict (as :func:`climseg.data.synthetic.draw_cyclone` draws it) of
    ``event`` at model time ``hours``; its motion is integrated from genesis in hourly
    steps (kept on the event, so later calls continue where earlier ones stopped)."""
    p = event.params
    if not event.path:
        event.path.append((p["lat"], p["lon"]))
    steps = int(np.floor(hours - event.birth + 1e-9))
    while len(event.path) <= steps:
        lat, lon = event.path[-1]
        turn = float(np.clip((abs(lat) - p["recurve"]) / 6.0, 0.0, 1.0))
        east = (1.0 - turn) * -p["west"] + turn * p["east"]
        north = p["hemisphere"] * ((1.0 - turn) * p["north"] + turn * 2.0 * p["north"])
        event.path.append(_move(lat, lon, east, north, 3600.0))
    lat, lon = event.path[max(steps, 0)]
    vmax = 26.0 + (p["vpeak"] - 26.0) * _envelope(hours - event.birth, event.life)
    r34 = p["rmax"] * (vmax / GALE_WIND) ** (1.0 / p["alpha"])
    return dict(
        lat=lat,
        lon=lon,
        hemisphere=p["hemisphere"],
        vmax=vmax,
        rmax=p["rmax"],
        alpha=p["alpha"],
        r34=r34,
        deficit=1.15 * np.e * vmax**2 / 1.5,
        warm_core=2.0 + 0.1 * (vmax - GALE_WIND),
        rain=p["rain"],
        moisture=p["moisture"],
    )


def river_at(event, hours):
    """The river dict (as :func:`climseg.data.synthetic.draw_river` draws it) of ``event``
    at model time ``hours``."""
    p = event.params
    age = hours - event.birth
    grow = _envelope(age, event.life)
    lat, lon = _move(p["lat"], p["lon"], p["drift_east"], p["hemisphere"] * p["drift_north"], age * 3600.0)
    length = p["length"] * (0.45 + 0.55 * grow)
    lats, lons = river_axis(lat, lon, p["hemisphere"], length, p["heading0"], p["heading1"])
    return dict(
        lats=lats,
        lons=lons,
        length=length,
        hemisphere=p["hemisphere"],
        sigma=p["sigma"],
        vapour=p["vapour"] * (0.35 + 0.65 * grow),
        jet=p["jet"] * (0.5 + 0.5 * grow),
        rain=p["rain"],
    )


def simulate_events(seed, hours_total, features=Features(), spin_up=SPIN_UP_HOURS):
    """Every event of a run of ``hours_total`` model hours (and ``spin_up`` hours before
    it, at negative times), drawn from ``seed``: genesis is a Poisson process whose rate
    keeps on average ``features.cyclones_mean`` cyclones and ``features.rivers_mean``
    rivers alive, capped at ``cyclones_max``/``rivers_max`` at once."""
    rng = np.random.default_rng([int(seed), 13, GENERATOR_VERSION, TIMESERIES_VERSION])
    events, check_hours = [], 6.0
    cyclone_life, river_life = (72.0, 240.0), (36.0, 96.0)
    rates = (
        features.cyclones_mean / np.mean(cyclone_life) * check_hours,
        features.rivers_mean / np.mean(river_life) * check_hours,
    )
    hours = -spin_up
    while hours < hours_total:
        alive = [e for e in events if e.birth <= hours < e.birth + e.life]
        cyclones = [cyclone_at(e, hours) for e in alive if e.cls == TROPICAL_CYCLONE]
        rivers = [river_at(e, hours) for e in alive if e.cls == ATMOSPHERIC_RIVER]
        for _ in range(rng.poisson(rates[0])):
            if len(cyclones) >= features.cyclones_max:
                break
            c = draw_cyclone(rng, cyclones + [dict(lat=float(r["lats"][0]), lon=float(r["lons"][0])) for r in rivers])
            if c is None:
                continue
            c["lat"] = c["hemisphere"] * rng.uniform(7.0, 20.0)
            params = dict(
                lat=c["lat"],
                lon=c["lon"],
                hemisphere=c["hemisphere"],
                vpeak=c["vmax"],
                rmax=c["rmax"],
                alpha=c["alpha"],
                rain=c["rain"],
                moisture=c["moisture"],
                west=rng.uniform(4.0, 7.0),
                north=rng.uniform(1.0, 2.5),
                east=rng.uniform(5.0, 9.0),
                recurve=rng.uniform(22.0, 32.0),
            )
            e = Event(len(events) + 1, TROPICAL_CYCLONE, hours, rng.uniform(*cyclone_life), params)
            events.append(e)
            cyclones.append(cyclone_at(e, hours))
        for _ in range(rng.poisson(rates[1])):
            if len(rivers) >= features.rivers_max:
                break
            params = _draw_river_params(rng, cyclones, rivers)
            if params is None:
                continue
            e = Event(len(events) + 1, ATMOSPHERIC_RIVER, hours, rng.uniform(*river_life), params)
            events.append(e)
            rivers.append(river_at(e, hours))
        hours += check_hours
    return events


def _draw_river_params(rng, cyclones, rivers):
    for _ in range(10):
        hemisphere = 1.0 if rng.random() < 0.5 else -1.0
        p = dict(
            lat=hemisphere * rng.uniform(12.0, 26.0),
            lon=rng.uniform(0.0, 360.0),
            hemisphere=hemisphere,
            length=rng.uniform(2.5e6, 6.0e6),
            heading0=np.deg2rad(rng.uniform(35.0, 70.0)),
            heading1=np.deg2rad(rng.uniform(0.0, 30.0)),
            sigma=rng.uniform(130e3, 300e3),
            vapour=rng.uniform(14.0, 30.0),
            jet=rng.uniform(10.0, 22.0),
            rain=rng.uniform(1e-7, 6e-7),
            drift_east=rng.uniform(6.0, 12.0),
            drift_north=rng.uniform(0.3, 1.2),
        )
        lats, lons = river_axis(p["lat"], p["lon"], hemisphere, p["length"], p["heading0"], p["heading1"])
        clear_of_cyclones = all(
            (EARTH_RADIUS_M * central_angle(lats, lons, c["lat"], c["lon"])).min() > 1.5e6 for c in cyclones
        )
        clear_of_rivers = all(
            (
                EARTH_RADIUS_M
                * central_angle(lats[::8, None], lons[::8, None], r["lats"][None, ::8], r["lons"][None, ::8])
            ).min()
            > 2.0e6
            for r in rivers
        )
        if clear_of_cyclones and clear_of_rivers:
            return p
    return None


# ----------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class SeriesSpec:
    """What to build: grid, times and events."""

    height: int
    width: int
    seed: int
    interval_hours: float
    timesteps: int
    start_year: int = 2106
    case: str = "climseg"
    features: Features = Features()


def _snapshot(spec, events, hours):
    """Fields, labels and true event ids of one step at model time ``hours``."""
    lat, lon = grid(spec.height, spec.width)
    base = NoiseGrid(lat, lon)
    weather = _weather(spec.seed, base)
    shift = int(round(hours / 6.0))  # one degree eastward every six hours
    weather = {k: np.roll(v, shift, axis=1) for k, v in weather.items()}
    alive = [e for e in events if e.birth <= hours < e.birth + e.life]
    rivers = [e for e in alive if e.cls == ATMOSPHERIC_RIVER]
    cyclones = [e for e in alive if e.cls == TROPICAL_CYCLONE]
    cdicts = [cyclone_at(e, hours) for e in cyclones]
    rdicts = [river_at(e, hours) for e in rivers]
    data, labels, painted = build_snapshot(base, lat, lon, weather, cdicts, rdicts)
    ids = np.zeros(labels.shape, np.int32)
    for e, (_, region) in zip(rivers + cyclones, painted):  # painted: rivers first, then cyclones
        ids[region] = e.id
    ids[labels == 0] = 0
    centres = [(e.id, e.cls, d["lat"], d["lon"]) for e, d in zip(cyclones, cdicts)]
    centres += [
        (e.id, e.cls, float(d["lats"][len(d["lats"]) // 2]), float(d["lons"][len(d["lons"]) // 2]))
        for e, d in zip(rivers, rdicts)
    ]
    return data, labels, ids, centres


_WEATHER = {}


def _weather(seed, base):
    """The run's weather (drawn once per seed and process)."""
    if seed not in _WEATHER:
        _WEATHER.clear()
        _WEATHER[seed] = draw_weather(np.random.default_rng([int(seed), 17, GENERATOR_VERSION]), base)
    return _WEATHER[seed]


def _day_file(spec, day_hours):
    y, m, d, _ = noleap_date(day_hours, spec.start_year)
    return f"{spec.case}.cam.h2.{y:04d}-{m:02d}-{d:02d}-00000.nc"


def _write_day(job):
    """Build and write one day's file; returns the per-step true-track rows."""
    folder, spec, events, steps = job
    import netCDF4

    lat, lon = grid(spec.height, spec.width)
    hours = [s * spec.interval_hours for s in steps]
    name = _day_file(spec, hours[0])
    rows = []
    with atomic_path(os.path.join(folder, name)) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.Conventions = "CF-1.8"
        ds.title = "climseg synthetic CAM5-like history file"
        ds.source = f"climseg.data.timeseries version {TIMESERIES_VERSION}, seed {spec.seed}"
        ds.case = spec.case
        ds.createDimension("time", None)
        ds.createDimension("lat", spec.height)
        ds.createDimension("lon", spec.width)
        t = ds.createVariable("time", "f8", ("time",))
        t.standard_name, t.long_name = "time", "time"
        t.units, t.calendar = f"hours since {spec.start_year:04d}-01-01 00:00:00", "noleap"
        t.axis = "T"
        la = ds.createVariable("lat", "f8", ("lat",))
        la.standard_name, la.long_name, la.units, la.axis = "latitude", "latitude", "degrees_north", "Y"
        la[:] = lat
        lo = ds.createVariable("lon", "f8", ("lon",))
        lo.standard_name, lo.long_name, lo.units, lo.axis = "longitude", "longitude", "degrees_east", "X"
        lo[:] = lon
        dims = ("time", "lat", "lon")
        variables = {}
        for c in CHANNELS:
            v = ds.createVariable(c, "f4", dims, chunksizes=(1, spec.height, spec.width))
            v.units, v.long_name = CHANNEL_UNITS[c], LONG_NAMES[c]
            variables[c] = v
        lab = ds.createVariable("LABELS", "i4", dims, zlib=True, complevel=1, chunksizes=(1, spec.height, spec.width))
        lab.long_name = "extreme weather class"
        lab.flag_values = np.arange(len(CLASS_NAMES), dtype=np.int32)
        lab.flag_meanings = " ".join(CLASS_NAMES)
        tid = ds.createVariable(
            "TRUE_EVENT_ID", "i4", dims, zlib=True, complevel=1, chunksizes=(1, spec.height, spec.width)
        )
        tid.long_name = "id of the generated event each labelled cell belongs to (true_events.csv), 0 outside events"
        for k, (step, h) in enumerate(zip(steps, hours)):
            data, labels, ids, centres = _snapshot(spec, events, h)
            t[k] = h
            for j, c in enumerate(CHANNELS):
                variables[c][k] = data[..., j]
            lab[k] = labels
            tid[k] = ids
            pixels = np.bincount(ids.reshape(-1), minlength=len(events) + 1)
            rows += [(i, cls, step, h, la_, lo_, int(pixels[i])) for i, cls, la_, lo_ in centres]
    return name, rows


#: The longest series the generator writes: its events are simulated over the whole span first
#: (about half a minute per model year on a 2-core machine, 2026-12-03).
MAX_SPAN_YEARS = 100


def generate_timeseries(
    out,
    timesteps,
    interval_hours=3.0,
    height=768,
    width=1152,
    seed=0,
    workers=None,
    progress=True,
    features=Features(),
    case="climseg",
    start_year=2106,
):
    """Write a synthetic time series into the folder ``out`` (see the module docstring);
    returns a summary dict (also ``out/climseg-timeseries.json``)."""
    if height < 8 or width < 8:
        raise UserError(f"height {height} and width {width} must be at least 8")
    if timesteps < 1:
        raise UserError(f"--timesteps {timesteps}: need at least 1")
    if not (np.isfinite(interval_hours) and interval_hours > 0):
        raise UserError(f"--interval {interval_hours} hours: must be a positive number of hours")
    if timesteps * interval_hours > MAX_SPAN_YEARS * 8760.0:  # the events are simulated over the whole span
        raise UserError(
            f"--timesteps {timesteps} every {interval_hours:g} h span {timesteps * interval_hours / 8760.0:.3g} years; "
            f"at most {MAX_SPAN_YEARS} years"
        )
    check_generator_options(height, width, seed, workers, features)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", case):
        raise UserError(f"case name {case!r}: use letters, digits, '_', '-' and '.' only")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"{out}: already exists and is not an empty folder")
    spec = SeriesSpec(height, width, int(seed), float(interval_hours), int(timesteps), start_year, case, features)
    events = simulate_events(seed, timesteps * interval_hours, features)
    days = {}
    for s in range(timesteps):
        days.setdefault(int(s * interval_hours // 24), []).append(s)
    workers = max(1, min(workers or min(8, os.cpu_count() or 1), len(days)))
    with (
        atomic_directory(out) as tmp,
        progress_bar(total=len(days), desc=f"generate {timesteps} steps", unit="day", disable=not progress) as bar,
    ):
        jobs = [(tmp, spec, events, steps) for steps in days.values()]
        results = []
        if workers > 1:
            with concurrent.futures.ProcessPoolExecutor(workers) as pool:
                for res in pool.map(_write_day, jobs):
                    results.append(res)
                    bar.update()
        else:
            for job in jobs:
                results.append(_write_day(job))
                bar.update()
        rows = [r for _, rs in results for r in rs]
        seen = write_truth(tmp, events, rows)
        summary = dict(
            generator="climseg.data.timeseries",
            version=TIMESERIES_VERSION,
            seed=int(seed),
            height=height,
            width=width,
            timesteps=timesteps,
            interval_hours=interval_hours,
            calendar="noleap",
            start=f"{start_year:04d}-01-01 00:00:00",
            case=case,
            files=[n for n, _ in results],
            cyclones=sum(1 for e in seen if e[1] == TROPICAL_CYCLONE),
            rivers=sum(1 for e in seen if e[1] == ATMOSPHERIC_RIVER),
            features=dataclasses.asdict(features),
        )
        write_json(os.path.join(tmp, "climseg-timeseries.json"), summary)
    return summary
