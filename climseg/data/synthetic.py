"""Synthetic CAM5-like samples in the DeepCAM layout, with labelled cyclones and rivers.

Each sample is a global latitude-longitude snapshot (row 0 is the southernmost
latitude, longitudes start at 0 E) of the 16 DeepCAM variables in CAM5 units,
built in three layers:

1. A zonal-mean climate on the Earth's land and sea (:mod:`climseg.data.planet`: trade winds
   and westerly jets, subtropical highs and subpolar lows, land and sea surface temperatures
   falling poleward with warm tropical water and cooler water off the subtropical west coasts,
   an ITCZ rain band), plus smooth random "weather": pressure anomalies with the winds in
   geostrophic balance with them, temperature and moisture anomalies. The random fields are
   drawn on a fixed 1-degree grid and interpolated, so one seed gives the same planet at any
   output resolution. Orography over land (the same for every sample) separates surface from
   sea-level pressure.
2. Tropical cyclones over the sea 8-30 degrees from the equator: Holland pressure profile,
   modified-Rankine winds turning counter-clockwise in the northern and
   clockwise in the southern hemisphere (with frictional inflow at the
   surface), a warm core aloft, saturated air, an eyewall rain ring.
3. Atmospheric rivers: curved filaments of water vapour 300-1000 km wide and
   2500-6000 km long, from the subtropics poleward and eastward, carrying a
   jet along their axis and rain at their poleward end; three in four head for a west coast of
   a mid-latitude continent, and over land their vapour and jet rain out within some 600 km.

Moisture, heights and near-surface fields are then derived from the primary
fields with the usual thermodynamics (Clausius-Clapeyron, hypsometric
equation), so that the variables co-vary as in a model.

Labels mark the planted features by the criteria used to find them in model
output: a cyclone is the connected area around its centre where the
lowest-level wind reaches gale force (17.5 m/s, 34 kt); a river is the area of
its filament where the vapour transport TMQ x |V850| reaches 250 kg m-1 s-1.
Cyclone labels take precedence where the two meet.
"""

import dataclasses

import numpy as np

from climseg.constants import ATMOSPHERIC_RIVER, BACKGROUND, CHANNELS, TROPICAL_CYCLONE
from climseg.data import planet
from climseg.data.deepcam import grid
from climseg.data.planet import NoiseGrid
from climseg.data.variables import GRAVITY, R_DRY
from climseg.errors import UserError
from climseg.sphere import EARTH_RADIUS_M, central_angle, degrees_of_latitude, degrees_of_longitude, label_components

OMEGA = 7.292e-5  # s-1
GALE_WIND = 17.5  # m s-1, tropical-storm threshold (34 kt)
IVT_THRESHOLD = 250.0  # kg m-1 s-1, the usual atmospheric-river threshold
ORDER = {name: i for i, name in enumerate(CHANNELS)}
GENERATOR_VERSION = 2  # 2: cyclones over warm sea, rivers onto west coasts, the Earth's land
LANDFALL_FRACTION = 0.75  # rivers aimed at a west coast
INLAND_FADE_M = 600e3  # a river's vapour and jet fall by e over this much land along its axis


@dataclasses.dataclass(frozen=True)
class Features:
    """How many features a sample holds (Poisson means, caps) and their sizes."""

    cyclones_mean: float = 3.0
    cyclones_max: int = 8
    rivers_mean: float = 4.0
    rivers_max: int = 9

    def __post_init__(self):
        for name, flag in (("cyclones_mean", "--cyclones"), ("rivers_mean", "--rivers")):
            if getattr(self, name) < 0:
                raise UserError(f"{flag} must not be negative")


def _zonal(lat, centre, width):
    return np.exp(-(((np.abs(lat) - centre) / width) ** 2))


def _geostrophic_wind(pressure, rho=1.0):
    """Geostrophic (u, v) of a pressure field on the base grid, f floored at 12 degrees."""
    lat = np.deg2rad(NoiseGrid.lat)[:, None]
    dy = EARTH_RADIUS_M * np.deg2rad(1.0)
    dx = EARTH_RADIUS_M * np.maximum(np.cos(lat), np.cos(np.deg2rad(75.0))) * np.deg2rad(1.0)
    dpdy = np.gradient(pressure, axis=0) / dy
    dpdx = (np.roll(pressure, -1, axis=1) - np.roll(pressure, 1, axis=1)) / (2.0 * dx)
    sin = np.sin(lat)
    f = 2.0 * OMEGA * np.sign(sin + 1e-9) * np.maximum(np.abs(sin), np.sin(np.deg2rad(12.0)))
    # weak geostrophy near the equator; no jets crossing the poles
    damp = (1.0 - np.exp(-((np.rad2deg(lat) / 10.0) ** 2))) * (
        1.0 - np.exp(-(((90.0 - np.abs(np.rad2deg(lat))) / 12.0) ** 2))
    )
    return (-dpdy / (rho * f) * damp).astype(np.float32), (dpdx / (rho * f) * damp).astype(np.float32)


def _saturation_vapour_pressure(t):
    """Bolton (1980), Pa, t in K."""
    return 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))


# ----------------------------------------------------------------------------- features


def _local_offsets(lat, lon, lat0, lon0):
    """East and north distances (m) of every grid point from (lat0, lon0), longitude wrapped."""
    dlon = (lon[None, :] - lon0 + 180.0) % 360.0 - 180.0
    coslat = np.cos(np.deg2rad(0.5 * (lat[:, None] + lat0)))
    dx = EARTH_RADIUS_M * np.deg2rad(dlon) * coslat
    dy = EARTH_RADIUS_M * np.deg2rad(lat[:, None] - lat0) * np.ones_like(dlon)
    return dx.astype(np.float32), dy.astype(np.float32)


def draw_cyclone(rng, others, genesis=False):
    """A tropical cyclone drawn from ``rng``, over the sea and more than 2500 km from the centres
    (``lat``, ``lon``) of ``others``, or None after 100 tries: at its genesis (``genesis``: 5-20
    degrees from the equator over water of at least 26.5 C, :func:`climseg.data.planet.cyclone_genesis_ok`)
    or at any point of its life (8-30 degrees). Six in ten in the northern hemisphere. A dict of its
    centre, ``hemisphere``, maximum wind ``vmax`` (m/s), radius of maximum wind ``rmax`` and of gale
    force ``r34`` (m), outer decay ``alpha``, Holland pressure ``deficit`` (Pa), ``warm_core`` (K),
    ``rain`` and ``moisture``."""
    for _ in range(100):
        hemisphere = 1.0 if rng.random() < 0.6 else -1.0
        lat0 = hemisphere * (rng.uniform(*planet.GENESIS_LAT) if genesis else rng.uniform(8.0, 30.0))
        lon0 = rng.uniform(0.0, 360.0)
        where = planet.cyclone_genesis_ok(lat0, lon0) if genesis else not planet.is_land(lat0, lon0)
        if where and all(EARTH_RADIUS_M * central_angle(lat0, lon0, o["lat"], o["lon"]) > 2.5e6 for o in others):
            break
    else:
        return None
    while True:
        vmax = rng.uniform(30.0, 70.0)  # max lowest-level wind, m/s
        rmax = rng.uniform(20e3, 60e3)  # radius of maximum wind, m
        alpha = rng.uniform(0.35, 0.7)  # outer decay exponent
        r34 = rmax * (vmax / GALE_WIND) ** (1.0 / alpha)
        if 200e3 <= r34 <= 650e3:
            break
    deficit = 1.15 * np.e * vmax**2 / 1.5  # Holland (1980) with B = 1.5, Pa
    return dict(
        lat=lat0,
        lon=lon0,
        hemisphere=hemisphere,
        vmax=vmax,
        rmax=rmax,
        alpha=alpha,
        r34=r34,
        deficit=deficit,
        warm_core=2.0 + 0.1 * (vmax - GALE_WIND),
        rain=rng.uniform(3e-6, 1.2e-5),
        moisture=rng.uniform(15.0, 28.0),
    )


def _cyclone_fields(c, lat, lon):
    """Per-cyclone perturbation fields (numpy arrays on the output grid)."""
    dx, dy = _local_offsets(lat, lon, c["lat"], c["lon"])
    r = np.sqrt(dx**2 + dy**2) + 1.0
    rm, vmax, alpha = c["rmax"], c["vmax"], c["alpha"]
    speed = np.where(r < rm, vmax * r / rm, vmax * (rm / r) ** alpha) * np.exp(-((r / 2.5e6) ** 4))
    # tangential unit vector: counter-clockwise (north) / clockwise (south)
    tx, ty = -dy / r * c["hemisphere"], dx / r * c["hemisphere"]
    rx, ry = dx / r, dy / r
    inflow = np.deg2rad(20.0)
    u_bot = speed * (np.cos(inflow) * tx - np.sin(inflow) * rx)
    v_bot = speed * (np.cos(inflow) * ty - np.sin(inflow) * ry)
    u850 = speed / 0.85 * (np.cos(inflow / 2) * tx - np.sin(inflow / 2) * rx)
    v850 = speed / 0.85 * (np.cos(inflow / 2) * ty - np.sin(inflow / 2) * ry)
    psl = -c["deficit"] * (1.0 - np.exp(-((rm / r) ** 1.5)))
    core = np.exp(-((r / 300e3) ** 2))
    ring = np.exp(-(((r - 1.5 * rm) / rm) ** 2))
    rain = c["rain"] * (ring + 0.25 * np.exp(-((r / 350e3) ** 2)))
    return dict(
        r=r,
        u_bot=u_bot,
        v_bot=v_bot,
        u850=u850,
        v850=v850,
        psl=psl,
        t500=c["warm_core"] * core,
        t200=1.3 * c["warm_core"] * core,
        tmq=c["moisture"] * np.exp(-((r / 280e3) ** 2)),
        humid=np.exp(-((r / 400e3) ** 2)),
        rain=rain,
    )


def aim_river(rng, along=(0.0, 0.0)):
    """Where an atmospheric river lies, drawn from ``rng``: ``(lat, lon, hemisphere, length,
    heading0, heading1)`` for :func:`river_axis`. Three in four end on a west coast of a mid-latitude
    continent (:func:`climseg.data.planet.west_coasts`), their axis ending ``along`` (a range, m)
    east of the coast (negative: still at sea); the others start 12-26 degrees from the equator
    anywhere. The axis starts 5-42 degrees from the equator (None after 20 tries)."""
    for _ in range(20):
        length = rng.uniform(2.5e6, 6.0e6)
        heading0, heading1 = np.deg2rad(rng.uniform(35.0, 70.0)), np.deg2rad(rng.uniform(0.0, 30.0))
        if rng.random() >= LANDFALL_FRACTION:
            hemisphere = 1.0 if rng.random() < 0.5 else -1.0
            return hemisphere * rng.uniform(12.0, 26.0), rng.uniform(0.0, 360.0), hemisphere, length, heading0, heading1
        coasts = planet.west_coasts()
        k = int(rng.integers(coasts[0].size))
        end_lat, end_lon = coasts[0][k] + rng.uniform(-0.5, 0.5), coasts[1][k] + rng.uniform(-0.5, 0.5)
        end_lon += degrees_of_longitude(rng.uniform(*along), end_lat)
        hemisphere = float(np.sign(end_lat))
        lat = end_lat - hemisphere * 20.0
        for _ in range(4):  # the start latitude whose axis ends at end_lat
            lats, lons = river_axis(lat, 0.0, hemisphere, length, heading0, heading1)
            lat += end_lat - lats[-1]
        if 5.0 <= abs(lat) <= 42.0:
            east = np.rad2deg(np.unwrap(np.deg2rad(river_axis(lat, 0.0, hemisphere, length, heading0, heading1)[1])))
            return lat, (end_lon - east[-1]) % 360.0, hemisphere, length, heading0, heading1
    return None


def draw_river(rng, cyclones):
    """An atmospheric river drawn from ``rng`` (:func:`aim_river`; a landfalling one ends up to 1500 km
    before or 500 km past its coast), its axis (:func:`river_axis`) more than 1200 km from the
    ``cyclones``, or None after 30 tries: a dict of the axis points ``lats``, ``lons`` (every 25 km),
    ``length`` and width ``sigma`` (m), ``hemisphere``, ``vapour``, ``jet`` and ``rain``."""
    for _ in range(30):
        aim = aim_river(rng, along=(-1.5e6, 0.5e6))
        if aim is None:
            continue
        lats, lons = river_axis(*aim)
        if all((EARTH_RADIUS_M * central_angle(lats, lons, c["lat"], c["lon"])).min() > 1.2e6 for c in cyclones):
            return dict(
                lats=lats,
                lons=lons,
                length=aim[3],
                hemisphere=aim[2],
                sigma=rng.uniform(130e3, 300e3),
                vapour=rng.uniform(14.0, 30.0),
                jet=rng.uniform(10.0, 22.0),
                rain=rng.uniform(1e-7, 6e-7),
            )
    return None


def river_axis(lat, lon, hemisphere, length, heading0, heading1, step=25e3):
    """Points (lats, lons) every ``step`` m along an AR axis of ``length`` m from (lat, lon),
    poleward and eastward, its heading (radians from east) turning from ``heading0`` to ``heading1``."""
    n = int(length / step) + 1
    h = heading0 + (heading1 - heading0) * np.arange(n - 1) / max(n - 1, 1)
    # always poleward (0 <= heading <= 90 degrees): the latitudes are a clipped cumulative sum
    north = np.cumsum(hemisphere * degrees_of_latitude(step * np.sin(h)))
    lats = np.clip(lat + np.concatenate([[0.0], north]), -72.0, 72.0)
    east = np.cumsum(degrees_of_longitude(step * np.cos(h), lats[1:]))
    return lats, (lon + np.concatenate([[0.0], east])) % 360.0


def _river_fields(a, lat, lon):
    """AR perturbations: vapour filament, along-axis jet, rain; plus its footprint."""
    H, W = len(lat), len(lon)
    margin = 4.0 * a["sigma"]
    lat_pad = degrees_of_latitude(margin)
    rows = np.flatnonzero((lat >= a["lats"].min() - lat_pad) & (lat <= a["lats"].max() + lat_pad))
    out = dict(
        tmq=np.zeros((H, W), np.float32),
        u=np.zeros((H, W), np.float32),
        v=np.zeros((H, W), np.float32),
        rain=np.zeros((H, W), np.float32),
        footprint=np.zeros((H, W), bool),
    )
    if rows.size == 0:
        return out
    # tangent (east, north) of the axis at each point
    dlat = np.gradient(a["lats"])
    dlon = np.gradient(np.unwrap(np.deg2rad(a["lons"]))) * np.cos(np.deg2rad(a["lats"]))
    dlat = np.deg2rad(dlat)
    norm = np.hypot(dlat, dlon) + 1e-12
    te, tn = dlon / norm, dlat / norm
    s = np.linspace(0.0, a["length"], len(a["lats"]))
    sub_lat = lat[rows]
    best = np.full((rows.size, W), np.inf, np.float32)
    best_k = np.zeros((rows.size, W), np.int32)
    for k in range(len(a["lats"])):  # nearest axis point of every grid point
        dx, dy = _local_offsets(sub_lat, lon, a["lats"][k], a["lons"][k])
        d2 = dx * dx + dy * dy
        closer = d2 < best
        best = np.where(closer, d2, best)
        best_k = np.where(closer, k, best_k)
    d = np.sqrt(best)
    frac = s[best_k] / a["length"]
    envelope = (1.0 - np.exp(-((frac / 0.15) ** 2))) * (1.0 - np.exp(-(((1.0 - frac) / 0.15) ** 2)))
    inland = np.cumsum(planet.is_land(a["lats"], a["lons"])) * (a["length"] / max(len(a["lats"]) - 1, 1))
    envelope = envelope * np.exp(-inland / INLAND_FADE_M)[best_k]  # rained out over land
    sigma = a["sigma"]
    shape = np.exp(-0.5 * (d / sigma) ** 2) * envelope
    jet = a["jet"] * np.exp(-0.5 * (d / (1.5 * sigma)) ** 2) * envelope
    out["tmq"][rows] = a["vapour"] * shape
    out["u"][rows] = jet * te[best_k]
    out["v"][rows] = jet * tn[best_k]
    out["rain"][rows] = a["rain"] * shape * np.clip((frac - 0.55) / 0.3, 0.0, 1.0)
    out["footprint"][rows] = (d <= 2.2 * sigma) & (envelope > 0.25)
    return out


# ----------------------------------------------------------------------------- sample


def generate_sample(height, width, seed, split="train", index=0, features=Features()):
    """One synthetic sample: ``(data[H, W, 16] float32, labels[H, W] int32, meta)``.

    The same ``(seed, split, index)`` gives the same sample at any resolution
    (up to sampling), independent of how many other samples are drawn.
    """
    split_id = {"train": 0, "validation": 1}.get(split, 2)
    rng = np.random.default_rng([int(seed), split_id, int(index), GENERATOR_VERSION])
    lat, lon = grid(height, width)
    base = NoiseGrid(lat, lon)
    weather = draw_weather(rng, base)
    cyclones = []
    for _ in range(min(rng.poisson(features.cyclones_mean), features.cyclones_max)):
        c = draw_cyclone(rng, cyclones)
        if c is not None:
            cyclones.append(c)
    rivers = []
    for _ in range(min(rng.poisson(features.rivers_mean), features.rivers_max)):
        r = draw_river(rng, cyclones)
        if r is not None:
            rivers.append(r)
    data, labels, _ = build_snapshot(base, lat, lon, weather, cyclones, rivers)
    meta = dict(
        cyclones=[{k: float(v) for k, v in c.items()} for c in cyclones],
        rivers=[
            dict(
                start=(float(r["lats"][0]), float(r["lons"][0])),
                end=(float(r["lats"][-1]), float(r["lons"][-1])),
                length_km=r["length"] / 1e3,
                width_km=2 * r["sigma"] / 1e3,
            )
            for r in rivers
        ],
    )
    return data, labels, meta


def draw_weather(rng, base):
    """The random "weather" of one snapshot: smooth noise fields on the 1-degree base grid
    (``temp``, ``temp2``, ``strat``, ``press``, ``moist``, ``rain``, ``wind``; seven draws from ``rng``)."""
    names = ("temp", "temp2", "strat", "press", "moist", "rain", "wind")
    sigmas = (10.0, 7.0, 12.0, 7.0, 6.0, 3.0, 4.0)
    return {name: base.noise(rng, sigma) for name, sigma in zip(names, sigmas)}


def build_snapshot(base, lat, lon, weather, cyclones, rivers):
    """Fields and labels of one snapshot from its weather (:func:`draw_weather`), cyclones
    (:func:`draw_cyclone` dicts) and rivers (:func:`draw_river` dicts); no random draws.
    Returns ``(data[H, W, 16] float32, labels[H, W] int32, features)`` where ``features``
    lists ``(class, mask)`` of every labelled feature in the order it was painted
    (rivers, then cyclones, which take precedence)."""
    height, width = len(lat), len(lon)
    phi = lat[:, None].astype(np.float32)
    coslat = np.cos(np.deg2rad(phi))
    shape = (height, width)

    # 1. background climate + weather
    n_temp, n_temp2, n_strat = weather["temp"], weather["temp2"], weather["strat"]
    n_press, n_moist, n_rain, n_wind = weather["press"], weather["moist"], weather["rain"], weather["wind"]
    p_amp = (250.0 + 800.0 * np.sin(np.deg2rad(NoiseGrid.lat)) ** 2)[:, None].astype(np.float32)
    p_anom = p_amp * n_press
    ug, vg = _geostrophic_wind(p_anom)
    z_surface = base.resample(planet.orography())
    ts = planet.surface_temperature(base, lat) + 2.0 * base.resample(n_temp)
    t500 = 236.0 + 32.0 * coslat**2 + 1.8 * base.resample(0.7 * n_temp + 0.7 * n_temp2)
    t200 = 218.0 - 3.0 * coslat**4 + 2.0 * _zonal(phi, 45.0, 15.0) + 1.5 * base.resample(n_strat)
    psl = (
        101200.0
        + 800.0 * _zonal(phi, 32.0, 10.0)
        - 1300.0 * _zonal(phi, 62.0, 9.0)
        - 300.0 * np.exp(-((phi / 8.0) ** 2))
        + base.resample(p_anom)
    )
    u850 = (
        -6.0 * _zonal(phi, 13.0, 9.0)
        + 12.0 * _zonal(phi, 45.0, 12.0)
        - 3.0 * _zonal(phi, 72.0, 8.0)
        + base.resample(ug)
        + 1.5 * base.resample(n_wind)
    )
    v850 = (
        -2.0 * np.sign(phi) * _zonal(phi, 12.0, 8.0)
        + base.resample(vg)
        + 1.5 * base.resample(np.roll(n_wind, 90, axis=1))
    )
    rh = np.clip(0.72 + 0.08 * np.exp(-((phi / 20.0) ** 2)) + 0.07 * base.resample(n_moist), 0.3, 0.97)
    moist_anom = 0.12 * base.resample(n_moist)
    rain = (1.0e-7 * np.exp(-(((phi - 6.0) / 6.0) ** 2)) + 4.0e-8 * _zonal(phi, 45.0, 10.0) + 1.0e-8) * np.exp(
        base.resample(0.9 * n_rain + 0.6 * n_moist - 0.5 * n_press) - 0.8
    )
    u850 = np.broadcast_to(u850, shape).astype(np.float32)
    v850 = np.broadcast_to(v850, shape).astype(np.float32)
    u_bot_extra = np.zeros(shape, np.float32)
    v_bot_extra = np.zeros(shape, np.float32)
    tmq_extra = np.zeros(shape, np.float32)
    rh = np.broadcast_to(rh, shape).copy()
    psl = np.broadcast_to(psl, shape).astype(np.float32)
    t500 = np.broadcast_to(t500, shape).astype(np.float32)
    t200 = np.broadcast_to(t200, shape).astype(np.float32)
    ts = np.broadcast_to(ts, shape).astype(np.float32)
    rain = np.broadcast_to(rain, shape).astype(np.float32)

    # 2. tropical cyclones
    cyclone_fields = []
    for c in cyclones:
        f = _cyclone_fields(c, lat, lon)
        cyclone_fields.append(f)
        psl = psl + f["psl"]
        u850 = u850 + f["u850"]
        v850 = v850 + f["v850"]
        u_bot_extra += f["u_bot"] - 0.7 * _rotate(f["u850"], f["v850"], phi)[0]
        v_bot_extra += f["v_bot"] - 0.7 * _rotate(f["u850"], f["v850"], phi)[1]
        t500 = t500 + f["t500"]
        t200 = t200 + f["t200"]
        tmq_extra += f["tmq"]
        rh = np.maximum(rh, 0.97 * f["humid"])
        rain = rain + f["rain"]

    # 3. atmospheric rivers
    footprints = []
    for r in rivers:
        f = _river_fields(r, lat, lon)
        footprints.append(f["footprint"])
        tmq_extra += f["tmq"]
        u850 = u850 + f["u"]
        v850 = v850 + f["v"]
        rain = rain + f["rain"]
        rh = np.minimum(rh + 0.15 * f["tmq"] / r["vapour"], 0.97)

    # 4. derived fields
    u_bot, v_bot = _rotate(u850, v850, phi)
    u_bot = 0.7 * u_bot + u_bot_extra
    v_bot = 0.7 * v_bot + v_bot_extra
    trefht = ts - 0.8
    ps = psl * np.exp(-z_surface * GRAVITY / (R_DRY * ts))
    qrefht = 0.622 * rh * _saturation_vapour_pressure(trefht) / ps
    tmq = qrefht * ps / (R_DRY * trefht) * 2300.0 * np.exp(moist_anom) + tmq_extra
    z1000 = R_DRY / GRAVITY * trefht * np.log(psl / 1.0e5)
    t_layer = 0.25 * trefht + 0.45 * t500 + 0.30 * t200
    z200 = z1000 + R_DRY / GRAVITY * t_layer * np.log(1000.0 / 200.0)
    zbot = R_DRY / GRAVITY * trefht * np.log(1.0 / 0.9925)

    fields = dict(
        TMQ=tmq,
        U850=u850,
        V850=v850,
        UBOT=u_bot,
        VBOT=v_bot,
        QREFHT=qrefht,
        PS=ps,
        PSL=psl,
        T200=t200,
        T500=t500,
        PRECT=np.maximum(rain, 0.0),
        TS=ts,
        TREFHT=trefht,
        Z1000=z1000,
        Z200=z200,
        ZBOT=zbot,
    )
    data = np.empty((height, width, len(CHANNELS)), np.float32)
    for name, value in fields.items():
        data[..., ORDER[name]] = value

    # 5. labels
    labels = np.full(shape, BACKGROUND, np.int32)
    painted = []
    ivt = tmq * np.hypot(u850, v850)
    for fp in footprints:
        region = fp & (ivt >= IVT_THRESHOLD)
        labels[region] = ATMOSPHERIC_RIVER
        painted.append((ATMOSPHERIC_RIVER, region))
    wind = np.hypot(u_bot, v_bot)
    for c, f in zip(cyclones, cyclone_fields):
        region = (f["r"] <= 1.6 * c["r34"]) & ((wind >= GALE_WIND) | (f["r"] <= 1.2 * c["rmax"]))
        region = _component_at(region, f["r"])
        labels[region] = TROPICAL_CYCLONE
        painted.append((TROPICAL_CYCLONE, region))
    return data, labels, painted


def _rotate(u, v, phi, angle_deg=20.0):
    """Turn winds toward low pressure (counter-clockwise north, clockwise south)."""
    ang = np.deg2rad(angle_deg) * np.sign(phi)
    cos, sin = np.cos(ang), np.sin(ang)
    return u * cos - v * sin, u * sin + v * cos


def _component_at(region, r):
    """The connected part of ``region`` that contains the point nearest the centre."""
    lab, _ = label_components(region, periodic=True)
    keep = lab[np.unravel_index(np.argmin(r), r.shape)]
    return (lab == keep) if keep else np.zeros_like(region)
