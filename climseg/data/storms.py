"""The lives of the events of a generated time series (:mod:`climseg.data.timeseries`): when and where
each tropical cyclone and atmospheric river forms, how it moves, grows and dies, on the model's time
axis in hours.

Data flow: :func:`simulate_events` draws every event from the seed, checking every six model hours
whether new ones form (a Poisson process whose rate keeps the requested mean alive); a cyclone's
whole hourly path and intensity is computed when it forms (:func:`cyclone_path`: it moves with the
trade winds and recurves, strengthens and weakens over the sea, decays over land and ends when its
wind falls below gale force); a river's parameters are drawn so that three in four reach a west
coast at the middle of their life (:func:`climseg.data.synthetic.aim_river`). :func:`cyclone_at`
and :func:`river_at` then give the state of an event at any hour, as the per-snapshot physics of
:mod:`climseg.data.synthetic` takes it. The same seed gives the same events.
"""

import dataclasses

import numpy as np

from climseg.constants import ATMOSPHERIC_RIVER, TROPICAL_CYCLONE
from climseg.data.planet import is_land, kaplan_demaria_decay
from climseg.data.synthetic import GALE_WIND, GENERATOR_VERSION, Features, aim_river, draw_cyclone, river_axis
from climseg.sphere import EARTH_RADIUS_M, central_angle, degrees_of_latitude, degrees_of_longitude

TIMESERIES_VERSION = 1  # the series' layout; with GENERATOR_VERSION, part of the seed of its events
SPIN_UP_HOURS = 240.0


@dataclasses.dataclass
class Event:
    """One simulated event: its class, parameters and life on the model's time axis (hours)."""

    id: int
    cls: int
    birth: float
    life: float
    params: dict
    path: list = dataclasses.field(default_factory=list, repr=False)  # cyclones: hourly (lat, lon, vmax)


def _envelope(age, life):
    return float(np.sin(np.pi * np.clip(age / life, 0.0, 1.0)))


def _move(lat, lon, east, north, seconds):
    """Move a point by velocity (east, north) m/s for ``seconds``; poleward of about 78 degrees
    the longitude step stays what it is there (cos(lat) floored at 0.2)."""
    lat2 = lat + degrees_of_latitude(north * seconds)
    lon2 = lon + degrees_of_longitude(east * seconds, lat, 0.2)
    return float(np.clip(lat2, -80.0, 80.0)), float(lon2 % 360.0)


def cyclone_path(params, planned_life):
    """Hourly ``(lat, lon, vmax)`` of a cyclone from its genesis for at most ``planned_life`` hours,
    ending the hour its wind falls below gale force. Over the sea its maximum wind grows from 26 m/s
    to its peak ``vpeak`` and falls again (a sine over the planned life); over land it decays as
    Kaplan and DeMaria (1995) measured (:func:`climseg.data.planet.kaplan_demaria_decay`), and back
    over the sea it keeps the fraction of the sea's wind it had left."""
    p = params
    lat, lon, strength, was_land, vmax = p["lat"], p["lon"], 1.0, False, None
    path = []
    for hour in range(int(np.ceil(planned_life)) + 1):
        sea_wind = 26.0 + (p["vpeak"] - 26.0) * _envelope(float(hour), planned_life)
        on_land = bool(is_land(lat, lon))
        if on_land:
            vmax = float(kaplan_demaria_decay(vmax if vmax is not None else sea_wind, 1.0, not was_land))
            strength = vmax / sea_wind
        else:
            vmax = sea_wind * strength
        if vmax < GALE_WIND:
            break
        path.append((lat, lon, vmax))
        was_land = on_land
        turn = float(np.clip((abs(lat) - p["recurve"]) / 6.0, 0.0, 1.0))
        east = (1.0 - turn) * -p["west"] + turn * p["east"]
        north = p["hemisphere"] * ((1.0 - turn) * p["north"] + turn * 2.0 * p["north"])
        lat, lon = _move(lat, lon, east, north, 3600.0)
    return path


def cyclone_at(event, hours):
    """The cyclone dict (as :func:`climseg.data.synthetic.draw_cyclone` draws it) of ``event`` at
    model time ``hours``, from its hourly path (:func:`cyclone_path`)."""
    p = event.params
    lat, lon, vmax = event.path[int(np.clip(np.floor(hours - event.birth + 1e-9), 0, len(event.path) - 1))]
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
            others = cyclones + [dict(lat=float(r["lats"][0]), lon=float(r["lons"][0])) for r in rivers]
            c = draw_cyclone(rng, others, genesis=True)
            if c is None:
                continue
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
            planned = params["planned_life"] = rng.uniform(*cyclone_life)
            path = cyclone_path(params, planned)
            if not path:
                continue
            e = Event(len(events) + 1, TROPICAL_CYCLONE, hours, min(planned, float(len(path))), params, path)
            events.append(e)
            cyclones.append(cyclone_at(e, hours))
        for _ in range(rng.poisson(rates[1])):
            if len(rivers) >= features.rivers_max:
                break
            life = rng.uniform(*river_life)
            params = _draw_river_params(rng, cyclones, rivers, life)
            if params is None:
                continue
            e = Event(len(events) + 1, ATMOSPHERIC_RIVER, hours, life, params)
            events.append(e)
            rivers.append(river_at(e, hours))
        hours += check_hours
    return events


def _draw_river_params(rng, cyclones, rivers, life):
    """A river's parameters (:func:`climseg.data.synthetic.aim_river`: three in four reach a west coast
    at the middle of their ``life``, at their full length), or None after 10 tries: its axis at birth
    must lie 1500 km from the ``cyclones`` and 2000 km from the other ``rivers``."""
    for _ in range(10):
        aim = aim_river(rng)
        if aim is None:
            continue
        lat, lon, hemisphere, length, heading0, heading1 = aim
        p = dict(
            hemisphere=hemisphere,
            length=length,
            heading0=heading0,
            heading1=heading1,
            sigma=rng.uniform(130e3, 300e3),
            vapour=rng.uniform(14.0, 30.0),
            jet=rng.uniform(10.0, 22.0),
            rain=rng.uniform(1e-7, 6e-7),
            drift_east=rng.uniform(6.0, 12.0),
            drift_north=rng.uniform(0.3, 1.2),
        )
        # where it starts at birth: half a life of drift before the aimed position
        p["lat"], p["lon"] = _move(lat, lon, -p["drift_east"], -hemisphere * p["drift_north"], life * 1800.0)
        lats, lons = river_axis(p["lat"], p["lon"], hemisphere, length * 0.45, heading0, heading1)
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
