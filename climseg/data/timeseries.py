"""Synthetic CAM5-like time series: history files in which cyclones and rivers live,
move and die, with their true event ids kept so that tracking can be scored.

Data flow: :func:`climseg.data.storms.simulate_events` draws every event's life from the seed
(genesis time and place, motion, intensity) on the model's time axis; :func:`generate_timeseries`
then builds each time step's fields with the per-snapshot physics of
:mod:`climseg.data.synthetic` (:func:`~climseg.data.synthetic.build_snapshot`) and writes
one netCDF file per model day, ``<case>.cam.h2.YYYY-MM-DD-00000.nc``, as CAM5 names its
history files.

Events:

* **Tropical cyclones** form over the sea 5-20 degrees from the equator where the water is at
  least 26.5 C (:mod:`climseg.data.planet`: the Earth's land, warm tropical water, cooler water
  off the subtropical west coasts), drift westward (4-7 m/s) and poleward (1-2.5 m/s) in the
  trade winds, recurve eastward and speed up poleward of their recurvature latitude (22-32
  degrees), and live up to 3-10 days; over the sea their maximum wind grows from 26 m/s to a peak
  of 30-70 m/s and decays again (a sine over the planned life), over land it decays as Kaplan
  and DeMaria (1995) measured (:func:`climseg.data.storms.cyclone_path`), and a storm whose wind falls below gale
  force ends there (about 18 hours after landfall).
* **Atmospheric rivers** start 5-42 degrees from the equator, drift eastward (6-12 m/s) and
  slightly poleward, grow to their full length and vapour content and fade again over 1.5-4
  days; three in four reach a west coast of a mid-latitude continent at the middle of their
  life, and their vapour and jet rain out over some 600 km of land.
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
from climseg.data.planet import NoiseGrid
from climseg.data.storms import TIMESERIES_VERSION, cyclone_at, river_at, simulate_events
from climseg.data.synthetic import GENERATOR_VERSION, Features, build_snapshot, draw_weather, grid
from climseg.data.truth import write_truth
from climseg.errors import ConfigError, UserError
from climseg.output import atomic_directory, atomic_path, write_json
from climseg.progress import progress_bar

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
    compress: bool = False


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
            v = ds.createVariable(
                c, "f4", dims, chunksizes=(1, spec.height, spec.width), zlib=spec.compress, complevel=1, shuffle=True
            )
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
    compress=False,
):
    """Write a synthetic time series into the folder ``out`` (see the module docstring);
    ``compress``: the 16 fields zlib-compressed (level 1, shuffled; ``LABELS`` and
    ``TRUE_EVENT_ID`` always are). Returns a summary dict (also ``out/climseg-timeseries.json``)."""
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
    spec = SeriesSpec(
        height, width, int(seed), float(interval_hours), int(timesteps), start_year, case, features, bool(compress)
    )
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
