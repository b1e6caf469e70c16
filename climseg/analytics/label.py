"""Heuristic labels for data nobody labelled: tropical-cyclone and atmospheric-river masks
(0 background, 1 TC, 2 AR) from the physical fields, the way the SC18 training data were
made with TECA (Prabhat et al. 2012, 2015), written in ``climseg predict``'s mask format.

Data flow: :func:`label` opens the netCDF inputs as one series (any variable-name
convention, :mod:`climseg.data.netcdf`), and when a percentile threshold is asked for,
computes the local climatology of the river field from a sample of steps
(:func:`river_climatology`). Worker processes (``workers``), or MPI ranks when started
by ``mpirun`` (each rank taking every size-th file, with its own worker processes), then
take one output file each (one per file of the series' time axis) and go through its
steps one at a time (bounded memory): :func:`detect_cyclones` finds the storm centres and
their areas, :func:`detect_rivers` the river mask. Every process then links all storm
centres through time (:func:`link_cyclones`; the table of centres is small and shared by
an allgather under MPI), drops short-lived ones, and the workers write
``NAME_mask.nc`` (``mask(time, lat, lon)``, CF ``flag_values``/``flag_meanings``, the
file's own coordinates and times), which ``climseg track`` reads; ``dataset`` also writes
the steps and labels as a DeepCAM training set for ``climseg train``.
DeepCAM HDF5 samples get ``NAME_mask.h5`` (dataset ``mask``). ``summary.json`` lists
every step's storms and rivers.

Tropical cyclones (defaults: :class:`LabelOptions`; every distance is on the sphere):

1. candidates: local minima of sea-level pressure (PSL) within ``tc_candidate_km``,
   equatorward of ``tc_max_lat``;
2. the 850 hPa relative vorticity (:func:`relative_vorticity`, from U850/V850, cyclonic
   sign by hemisphere) reaches ``tc_vorticity`` within ``tc_core_km``;
3. a warm core: the upper-level temperature (mean of T200 and T500) within ``tc_core_km``
   exceeds its mean within ``tc_environment_km`` by ``tc_warm_core``;
4. a closed depression: PSL rises by ``tc_pressure_rise`` within ``tc_environment_km``;
5. gale-force low-level wind (UBOT/VBOT, else U850/V850) within ``tc_wind_km``;
6. the mask: the connected area around the centre, within ``tc_mask_km``, where the
   low-level wind reaches gale force or the pressure deficit is at least
   ``tc_mask_deficit`` of the centre's;
7. in a series, centres at consecutive steps closer than ``tc_max_speed`` x interval are
   linked; tracks shorter than ``tc_min_hours`` are dropped unless cut by the start or
   end of the series.

Atmospheric rivers: the field is IVT when the input has it (``IVT``, or ERA5's
``viwve``/``viwvn``), else the proxy TMQ x |V850|, else TMQ; cells at or above the
threshold (absolute ``ar_threshold``, or with ``ar_percentile`` the larger of that and the
local percentile of the series or of the latitude circle) form 8-connected objects (joined
across the date line on global grids); an object is kept when it is long
(``ar_min_length_km``: the largest great-circle distance across it), narrow (length / width
>= ``ar_min_aspect`` and width <= ``ar_max_width_km``, width = area / length), carries
vapour poleward (mean TMQ x V850 x sign(lat) >= ``ar_min_poleward``) and reaches from the
subtropics (a cell equatorward of ``ar_origin_lat``) poleward (a cell beyond
``ar_reach_lat``). Objects that fail are tried again at the higher thresholds
``ar_threshold x ar_levels``, which separates rivers from the moist tropics they are joined
to. Cyclone labels take precedence where the two meet.
"""
import concurrent.futures
import dataclasses
import os
import time

import numpy as np
from scipy import ndimage

from climseg import sphere
from climseg.constants import ATMOSPHERIC_RIVER, CHANNELS, CLASS_NAMES, NUM_CLASSES, TROPICAL_CYCLONE
from climseg.data.netcdf import create_mask_netcdf
from climseg.errors import ConfigError, DataError, UserError
from climseg.output import atomic_path, write_json
from climseg.progress import progress_bar

EARTH_RADIUS_M = sphere.EARTH_RADIUS_KM * 1000.0
GALE_WIND = 17.0              # m s-1


@dataclasses.dataclass
class LabelOptions:
    """Thresholds of the labeller; the defaults and their sources are in docs/labelling.md."""

    method: str = "tc+ar"                 # which classes: tc+ar, tc or ar
    # tropical cyclones
    tc_max_lat: float = 45.0              # deg; candidates equatorward of this
    tc_candidate_km: float = 300.0        # PSL minimum within this distance
    tc_vorticity: float = 3.5e-5          # s-1, 850 hPa cyclonic vorticity (Zhao et al. 2009; Knutson et al. 2007)
    tc_core_km: float = 222.0             # 2 deg: vorticity maximum and warm core near the centre (TECA max_core_radius)
    tc_warm_core: float = 0.8             # K, upper-level warm anomaly (TECA max_core_temperature_delta)
    tc_environment_km: float = 556.0      # 5 deg: warm-core surroundings and closed-depression radius (TECA)
    tc_pressure_rise: float = 400.0       # Pa, PSL rise within tc_environment_km (TECA max_pressure_delta)
    tc_wind: float = GALE_WIND            # m s-1, low-level wind (TECA min_wind_speed; 34 kt gale force)
    tc_wind_km: float = 300.0             # wind criterion within this distance
    tc_mask_km: float = 500.0             # largest extent of a storm's mask (our choice, not from the literature)
    tc_mask_deficit: float = 0.5          # mask also where the deficit is >= this share of the centre's
    tc_max_speed: float = 1600.0 / 86.4  # m s-1, fastest storm motion: 1600 km a day (TECA max_daily_distance)
    tc_min_hours: float = 24.0            # shortest track kept (tracks cut by the series' ends are kept)
    # atmospheric rivers
    ar_field: str = "auto"                # auto, ivt, proxy (TMQ x |V850|) or tmq
    ar_threshold: float = None            # absolute; default 250 kg m-1 s-1 (IVT, proxy) or 20 kg m-2 (TMQ)
    ar_percentile: float = None           # e.g. 85: threshold = max(absolute, local percentile of the series)
    ar_min_length_km: float = 2000.0      # Ralph et al. 2004; Guan and Waliser 2015
    ar_min_aspect: float = 2.0            # length / width (Guan and Waliser 2015)
    ar_max_width_km: float = 1000.0       # Ralph et al. 2004 (narrow: < 1000 km)
    ar_levels: tuple = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.4)   # threshold multiples tried in turn (250..600 for IVT)
    ar_min_poleward: float = 50.0         # kg m-1 s-1, object-mean poleward transport (Guan and Waliser 2015)
    ar_min_lat: float = 0.0               # deg; cells equatorward of this are not rivers
    ar_origin_lat: float = 35.0           # deg; equatorward end within the (sub)tropics
    ar_reach_lat: float = 30.0            # deg; poleward end beyond this
    ar_climatology: str = "series"        # series (each cell over the series' steps) or zonal (each step's latitude circle)
    ar_climatology_steps: int = 240       # steps sampled for the series climatology

    def check(self):
        if self.method not in ("tc+ar", "tc", "ar"):
            raise ConfigError(f"--method {self.method}: expected tc+ar, tc or ar")
        if self.ar_field not in ("auto", "ivt", "proxy", "tmq"):
            raise ConfigError(f"--ar-field {self.ar_field}: expected auto, ivt, proxy or tmq")
        if self.ar_climatology not in ("series", "zonal"):
            raise ConfigError(f"--ar-climatology {self.ar_climatology}: expected series or zonal")
        if self.ar_percentile is not None and not 0.0 < self.ar_percentile < 100.0:
            raise ConfigError(f"--ar-percentile {self.ar_percentile}: expected a value between 0 and 100")
        for name in ("tc_vorticity", "tc_wind", "tc_mask_km", "tc_max_speed", "ar_min_length_km", "ar_min_aspect"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
        return self


DEFAULT_THRESHOLDS = {"ivt": 250.0, "proxy": 250.0, "tmq": 20.0}   # Rutz et al. 2014; Ralph et al. 2004


# ----------------------------------------------------------------------------- fields on the sphere

def relative_vorticity(u, v, lat, lon, periodic=True):
    """Relative vorticity (s-1) of the wind (u east, v north; m s-1; (H, W), rows in the order
    of ``lat``) on the sphere: ``zeta = (dv/dlambda - d(u cos phi)/dphi) / (R cos phi)``,
    centred differences (wrapping in longitude on global grids); 0 where cos(phi) ~ 0."""
    lat = np.asarray(lat, np.float64)
    lon = np.rad2deg(np.unwrap(np.deg2rad(np.asarray(lon, np.float64))))
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    cos = np.cos(phi)[:, None]
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    if periodic and lon.size > 2:
        step = (lam[-1] - lam[0]) / (lam.size - 1)
        dv = (np.roll(v, -1, axis=1) - np.roll(v, 1, axis=1)) / (2.0 * step)
    else:
        dv = np.gradient(v, lam, axis=1)
    ducos = np.gradient(u * cos, phi, axis=0) if lat.size > 1 else np.zeros_like(u)
    with np.errstate(divide="ignore", invalid="ignore"):
        zeta = (dv - ducos) / (EARTH_RADIUS_M * cos)
    zeta[np.broadcast_to(np.abs(cos) < 1e-6, zeta.shape)] = 0.0
    return zeta


def _bands(lat, rows):
    """Rows split into bands of about 10 degrees latitude (over which one window fits)."""
    if rows.size == 0:
        return []
    edges = np.flatnonzero(np.diff(np.floor(lat[rows] / 10.0)) != 0) + 1
    return np.split(rows, edges)


def band_filter(field, lat, lon, periodic, radius_km, kind, rows=None):
    """``kind`` (max, min or mean) of ``field`` over a box of half-width ``radius_km`` around
    every cell of ``rows`` (default all), the box's columns sized for each latitude band
    (``scipy.ndimage`` filters; wrapping in longitude on global grids). Other rows are NaN."""
    h, w = field.shape
    rows = np.arange(h) if rows is None else rows
    ns, ew = sphere.grid_spacings_km(lat, lon)
    func = {"max": ndimage.maximum_filter, "min": ndimage.minimum_filter, "mean": ndimage.uniform_filter}[kind]
    out = np.full(field.shape, np.nan, np.float32 if field.dtype == np.float32 else np.float64)
    for band in _bands(lat, rows):
        a, b = band[0], band[-1] + 1
        ry = int(np.ceil(radius_km / max(np.min(ns[a:b]), 1e-6)))
        rx = int(min(np.ceil(radius_km / max(np.min(ew[a:b]), 1e-6)), w // 2))
        lo, hi = max(0, a - ry), min(h, b + ry)
        res = func(field[lo:hi], size=(2 * ry + 1, 2 * rx + 1), mode=("nearest", "wrap" if periodic else "nearest"))
        out[a:b] = res[a - lo: b - lo]
    return out


# ----------------------------------------------------------------------------- tropical cyclones

def detect_cyclones(fields, lat, lon, periodic=True, options=None):
    """Storm centres and areas of one step. ``fields``: dict of (H, W) arrays in CAM5 units,
    rows south to north: PSL, U850, V850, T200 and/or T500, optionally UBOT and VBOT.
    Returns a list of dicts (``lat``, ``lon``, ``row``, ``col``, ``psl`` Pa, ``wind`` m s-1,
    ``vorticity`` s-1, ``warm_core`` K, ``pressure_rise`` Pa, ``index``: flat indices of the
    storm's mask)."""
    o = options or LabelOptions()
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    psl = np.asarray(fields["PSL"], np.float64)
    rows = np.flatnonzero(np.abs(lat) <= o.tc_max_lat)
    if rows.size == 0:
        return []
    candidates = (psl == band_filter(psl, lat, lon, periodic, o.tc_candidate_km, "min", rows))
    candidates[[0, -1]] = False                                 # not at the grid's edge rows
    if not periodic:
        candidates[:, [0, -1]] = False
    rise = band_filter(psl, lat, lon, periodic, o.tc_environment_km, "max", rows) - psl
    candidates &= rise >= o.tc_pressure_rise
    if not candidates.any():
        return []
    hemisphere = np.where(lat >= 0, 1.0, -1.0)[:, None]
    zeta = relative_vorticity(fields["U850"], fields["V850"], lat, lon, periodic) * hemisphere
    vort = band_filter(zeta, lat, lon, periodic, o.tc_core_km, "max", rows)
    candidates &= vort >= o.tc_vorticity
    upper = [np.asarray(fields[k], np.float64) for k in ("T200", "T500") if k in fields]
    temp = sum(upper) / len(upper)
    warm = (band_filter(temp, lat, lon, periodic, o.tc_core_km, "max", rows)
            - band_filter(temp, lat, lon, periodic, o.tc_environment_km, "mean", rows))
    candidates &= warm >= o.tc_warm_core
    u, v = (fields["UBOT"], fields["VBOT"]) if "UBOT" in fields and "VBOT" in fields else (fields["U850"], fields["V850"])
    speed = np.hypot(np.asarray(u, np.float64), np.asarray(v, np.float64))
    wind = band_filter(speed, lat, lon, periodic, o.tc_wind_km, "max", rows)
    candidates &= wind >= o.tc_wind
    lab, n = ndimage.label(candidates, structure=sphere.EIGHT_CONNECTED)   # plateaus: one centre each
    if n == 0:
        return []
    rr, cc = np.nonzero(candidates)
    order = np.lexsort((psl[rr, cc], lab[rr, cc]))                      # by plateau, then pressure
    first = order[np.r_[True, np.diff(lab[rr, cc][order]) != 0]]      # the lowest cell of each plateau
    storms = []
    for r, c in sorted(zip(rr[first], cc[first]), key=lambda rc: psl[rc]):   # deepest first
        index = _storm_area(psl, speed, lat, lon, periodic, r, c, rise[r, c], o)
        storms.append(dict(lat=float(lat[r]), lon=float(lon[c] % 360.0), row=int(r), col=int(c),
                           psl=float(psl[r, c]), wind=float(wind[r, c]), vorticity=float(vort[r, c]),
                           warm_core=float(warm[r, c]), pressure_rise=float(rise[r, c]), index=index))
    return storms


def _storm_area(psl, speed, lat, lon, periodic, r, c, rise, o):
    """Flat indices of the connected area around (r, c) within ``tc_mask_km`` where the wind
    reaches gale force or the deficit is at least ``tc_mask_deficit`` of the centre's."""
    h, w = psl.shape
    ns, ew = sphere.grid_spacings_km(lat, lon)
    ry = int(np.ceil(o.tc_mask_km / max(np.min(ns), 1e-6)))
    r0, r1 = max(0, r - ry), min(h, r + ry + 1)
    rx = int(np.ceil(o.tc_mask_km / max(np.min(ew[r0:r1]), 1e-6)))
    if periodic:
        cols = np.arange(c - rx, c + rx + 1) % w if 2 * rx + 1 < w else np.arange(w)
    else:
        cols = np.arange(max(0, c - rx), min(w, c + rx + 1))
    sub_psl, sub_speed = psl[r0:r1][:, cols], speed[r0:r1][:, cols]
    dist = sphere.haversine_km(lat[r], lon[c], lat[r0:r1, None], lon[None, cols])
    threshold = psl[r, c] + (1.0 - o.tc_mask_deficit) * rise
    region = (dist <= o.tc_mask_km) & ((sub_speed >= o.tc_wind) | (sub_psl <= threshold))
    lab, _ = ndimage.label(region, structure=sphere.EIGHT_CONNECTED)
    here = lab[r - r0, np.flatnonzero(cols == c)[0]]
    if here == 0:
        return np.array([r * w + c], np.int64)
    rr, cc = np.nonzero(lab == here)
    return np.unique((rr + r0).astype(np.int64) * w + cols[cc])


def link_cyclones(steps, hours, options=None):
    """Link storm centres through time. ``steps``: per step a list of (lat, lon); ``hours``:
    each step's time in hours. Returns per step a list of booleans: keep this storm (its
    track lasts at least ``tc_min_hours``, or is cut by the first or last step)."""
    o = options or LabelOptions()
    track_of = [np.full(len(s), -1, np.int64) for s in steps]
    first, last, ntracks = [], [], 0
    for t, centres in enumerate(steps):
        prev = steps[t - 1] if t else []
        taken = set()
        if centres and prev:
            a, b = np.asarray(prev, np.float64), np.asarray(centres, np.float64)
            dist = sphere.haversine_km(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])
            limit = o.tc_max_speed * 3.6 * max(hours[t] - hours[t - 1], 1e-9)
            order = np.argsort(dist, axis=None)
            used_prev = set()
            for k in order:
                i, j = divmod(int(k), len(centres))
                if dist[i, j] > limit:
                    break
                if i in used_prev or j in taken:
                    continue
                used_prev.add(i)
                taken.add(j)
                track_of[t][j] = track_of[t - 1][i]
                last[track_of[t][j]] = t
        for j in range(len(centres)):
            if j not in taken:
                track_of[t][j] = ntracks
                first.append(t)
                last.append(t)
                ntracks += 1
    n = len(steps)
    step_hours = float(np.median(np.diff(hours))) if n > 1 else 0.0
    keep_track = np.array([(hours[last[k]] - hours[first[k]] + step_hours >= o.tc_min_hours)
                           or first[k] == 0 or last[k] == n - 1 for k in range(ntracks)], bool)
    return [[bool(keep_track[k]) for k in tr] for tr in track_of], track_of


# ----------------------------------------------------------------------------- atmospheric rivers

def river_field(fields, which="auto"):
    """``(name, field)``: IVT when present, else TMQ x |V850|, else TMQ (``which`` forces one)."""
    if which in ("auto", "ivt") and "IVT" in fields:
        return "ivt", np.asarray(fields["IVT"], np.float32)
    if which in ("auto", "proxy") and all(k in fields for k in ("TMQ", "U850", "V850")):
        return "proxy", (fields["TMQ"] * np.hypot(fields["U850"], fields["V850"])).astype(np.float32)
    if which in ("auto", "tmq") and "TMQ" in fields:
        return "tmq", np.asarray(fields["TMQ"], np.float32)
    raise DataError(f"the atmospheric-river field {which} needs " + {"ivt": "IVT", "proxy": "TMQ, U850 and V850",
                                                                     "tmq": "TMQ", "auto": "IVT or TMQ"}[which])


def poleward_transport(fields, lat):
    """Poleward vapour transport proxy TMQ x V850 x sign(lat) (kg m-1 s-1), or None without them."""
    if "TMQ" not in fields or "V850" not in fields:
        return None
    sign = np.where(np.asarray(lat) >= 0, 1.0, -1.0)[:, None]
    return (fields["TMQ"] * fields["V850"] * sign).astype(np.float32)


def detect_rivers(field, threshold, lat, lon, periodic=True, options=None, weights=None, poleward=None):
    """River mask (bool (H, W)) of one step: cells with ``field >= threshold`` (a number or an
    (H, W) array) grouped into objects that pass the shape conditions; objects that fail are
    tried again at the higher thresholds ``threshold x ar_levels`` (after Guan and Waliser
    2015, who raise the percentile from 85 to 95 for objects too large to be rivers).
    With ``poleward`` (the poleward vapour transport, (H, W)), an object's mean must reach
    ``ar_min_poleward``. ``weights``: the flat cell areas in km^2 (computed when None).
    Also returns the kept objects' descriptions."""
    o = options or LabelOptions()
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    field = np.asarray(field)
    weights = weights if weights is not None else sphere.cell_areas(lat, lon).reshape(-1)
    kept, objects = np.zeros(field.shape, bool), []
    for level in o.ar_levels:
        above = (field >= np.asarray(threshold) * level) & ~kept
        if o.ar_min_lat > 0:
            above &= (np.abs(lat) >= o.ar_min_lat)[:, None]
        if not above.any():
            break
        mask, found = _river_objects(above, lat, lon, periodic, o, weights, poleward)
        kept |= mask
        objects += found
    return kept, objects


def _river_objects(above, lat, lon, periodic, o, weights, poleward=None):
    """The objects of ``above`` that pass the shape conditions: (mask, descriptions)."""
    labels, n = sphere.label_components(above, periodic)
    if n == 0:
        return np.zeros(above.shape, bool), []
    cells = np.flatnonzero(labels)                               # the labelled cells only
    comp = labels.reshape(-1)[cells]
    pixels = np.bincount(comp, minlength=n + 1)[1:]
    area = np.bincount(comp, weights=weights[cells], minlength=n + 1)[1:]
    order = cells[np.argsort(comp, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(pixels)])
    h, w = above.shape
    ns, ew = sphere.grid_spacings_km(lat, lon)
    diagonal = np.hypot(np.max(ns), np.max(ew))                  # the longest step between 8-neighbours
    keep = np.zeros(n + 1, bool)
    objects = []
    for k in range(n):
        if pixels[k] * diagonal < o.ar_min_length_km:             # cannot be long enough: skip the geometry
            continue
        idx = order[starts[k]: starts[k + 1]]
        if poleward is not None:
            transport_k = float(np.asarray(poleward).reshape(-1)[idx].mean())
            if transport_k < o.ar_min_poleward:
                continue
        la, lo = lat[idx // w], lon[idx % w]
        alat = np.abs(la)
        if alat.min() > o.ar_origin_lat or alat.max() < o.ar_reach_lat:
            continue
        length = _diameter_km(la, lo)
        width = area[k] / max(length, 1e-9)
        aspect = length / max(width, 1e-9)
        if length >= o.ar_min_length_km and aspect >= o.ar_min_aspect and width <= o.ar_max_width_km:
            keep[k + 1] = True
            objects.append(dict(length_km=float(length), width_km=float(width), aspect=float(aspect),
                                poleward_transport=None if poleward is None else transport_k,
                                area_km2=float(area[k]), lat_min=float(la.min()), lat_max=float(la.max())))
    return keep[labels], objects


def _diameter_km(la, lo, samples=4000):
    """Largest great-circle distance between two cells (two farthest-point sweeps from the
    first cell; at most ``samples`` cells)."""
    if la.size > samples:
        pick = np.linspace(0, la.size - 1, samples).astype(np.int64)
        la, lo = la[pick], lo[pick]
    a = np.argmax(sphere.haversine_km(la[0], lo[0], la, lo))
    d = sphere.haversine_km(la[a], lo[a], la, lo)
    b = np.argmax(d)
    return float(sphere.haversine_km(la[b], lo[b], la, lo).max())


def river_climatology(info, options, progress=False):
    """Local ``ar_percentile`` of the river field over the series (at most
    ``ar_climatology_steps`` steps, evenly spaced), on a grid coarsened to about 100 000
    cells and repeated back to full size: float32 (H, W)."""
    from climseg.data.netcdf import read_netcdf_step

    n = len(info.times)
    steps = np.unique(np.linspace(0, n - 1, min(n, options.ar_climatology_steps)).astype(np.int64))
    h, w = len(info.lat), len(info.lon)
    stride = max(1, int(np.ceil(np.sqrt(h * w / 100_000))))
    names = list(info.variables)
    sample = []
    with progress_bar(total=len(steps), desc="climatology", unit="step", disable=not progress) as bar:
        for t in steps:
            data = read_netcdf_step(info, int(t), names)
            fields = {c: data[..., i] for i, c in enumerate(names)}
            sample.append(_coarsen(river_field(fields, options.ar_field)[1], stride))
            bar.update()
    pct = np.percentile(np.stack(sample), options.ar_percentile, axis=0).astype(np.float32)
    return np.repeat(np.repeat(pct, stride, axis=0), stride, axis=1)[:h, :w]


def _coarsen(field, stride):
    if stride == 1:
        return field
    h, w = field.shape
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    padded = np.pad(field, ((0, hp - h), (0, wp - w)), mode="edge")
    return padded.reshape(hp // stride, stride, wp // stride, stride).mean(axis=(1, 3))


# ----------------------------------------------------------------------------- one step

def label_step(fields, lat, lon, periodic, options, threshold, weights=None):
    """``(rivers bool (H, W), storms list, river objects)`` of one step's fields (dict)."""
    rivers, objects, storms = None, [], []
    if options.method in ("tc+ar", "ar"):
        _, field = river_field(fields, options.ar_field)
        poleward = poleward_transport(fields, lat)
        if options.ar_percentile is not None and options.ar_climatology == "zonal":
            threshold = np.maximum(threshold, np.percentile(field, options.ar_percentile, axis=1)[:, None])
        rivers, objects = detect_rivers(field, threshold, lat, lon, periodic, options, weights, poleward)
    if options.method in ("tc+ar", "tc"):
        storms = detect_cyclones(fields, lat, lon, periodic, options)
    if rivers is None:
        rivers = np.zeros((len(lat), len(lon)), bool)
    return rivers, storms, objects


def _channels_for(options):
    """(required, optional) channels of a method."""
    required, optional = [], []
    if options.method in ("tc+ar", "tc"):
        required += ["PSL", "U850", "V850"]
        optional += ["T200", "T500", "UBOT", "VBOT"]
    if options.method in ("tc+ar", "ar"):
        if options.ar_field == "ivt":
            required.append("IVT")
        elif options.ar_field == "tmq":
            required.append("TMQ")
        elif options.ar_field == "proxy":
            required += [c for c in ("TMQ", "U850", "V850") if c not in required]
        else:
            optional += ["IVT", "TMQ"]
        optional += ["TMQ", "U850", "V850"]          # the proxy and the poleward-transport test, when there
    optional = list(dict.fromkeys(optional))
    return required, [c for c in optional if c not in required]


# ----------------------------------------------------------------------------- files

@dataclasses.dataclass
class _Job:
    """One output file: a run of the series' steps."""

    name: str                  # output file name
    source: str                # file whose coordinates and times the mask copies
    steps: list                # global step indices
    local: list                # the same steps in ``source``
    time_var: str = None
    kind: str = "netcdf"


def _jobs(info):
    """One job per file of the series' time axis (the file holding the first channel's steps)."""
    ref = info.segments[info.plans[next(iter(info.plans))].names[0]]
    jobs, start, stems = [], 0, {}
    for seg in ref:
        stem = os.path.splitext(os.path.basename(seg.path))[0]
        if stem in stems:
            raise UserError(f"{seg.path}: has the same name as {stems[stem]}; their outputs would collide")
        stems[stem] = seg.path
        n = max(seg.ntime, 1)
        jobs.append(_Job(f"{stem}_mask.nc", seg.path, list(range(start, start + n)), list(range(n)), seg.time_dim))
        start += n
    return jobs


def _scan_job(args):
    """Worker: detect rivers and storms in every step of one job; rivers go to a temporary
    .npy file in the output folder (bounded memory), storms come back."""
    info, job, options, threshold, out = args
    from climseg.data.netcdf import read_netcdf_step

    names = list(info.variables)
    weights = sphere.cell_areas(info.lat, info.lon).reshape(-1)
    h, w = len(info.lat), len(info.lon)
    tmp = os.path.join(out, f".{job.name}.rivers.npy")
    rivers = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.bool_, shape=(len(job.steps), h, w))
    storms, objects = [], []
    for k, t in enumerate(job.steps):
        data = read_netcdf_step(info, t, names)
        fields = {c: data[..., i] for i, c in enumerate(names)}
        if options.method != "ar" and not ("T200" in fields or "T500" in fields):
            raise DataError(f"{info.path}: the warm-core test needs T200 or T500")
        rivers[k], s, o = label_step(fields, info.lat, info.lon, info.periodic, options, threshold, weights)
        storms.append(s)
        objects.append(o)
    rivers.flush()
    del rivers
    return tmp, storms, objects


def _write_job(args):
    """Worker: paint the kept storms over the rivers and write the mask file."""
    info, job, tmp, storms, keep, out, dataset = args
    rivers = np.load(tmp, mmap_mode="r")
    h, w = rivers.shape[1:]
    masks = np.zeros(rivers.shape, np.uint8)
    for k in range(len(job.steps)):
        masks[k][rivers[k]] = ATMOSPHERIC_RIVER
        flat = masks[k].reshape(-1)
        for s, kept in zip(storms[k], keep[k]):
            if kept:
                flat[s["index"]] = TROPICAL_CYCLONE
    del rivers
    seg_flipped = _flipped(job.source)
    with atomic_path(os.path.join(out, job.name)) as path:
        dst, mask = create_mask_netcdf(path, job.source, job.time_var, f"climseg label on {os.path.basename(job.source)}")
        with dst:
            data = masks[:, ::-1] if seg_flipped else masks
            mask[:] = data if job.time_var else data[0]
    os.unlink(tmp)
    counts = [np.bincount(m.reshape(-1), minlength=NUM_CLASSES) for m in masks]
    partials = _write_samples(dataset, job, masks) if dataset is not None else []
    return job.name, counts, partials


def _write_samples(dataset, job, masks):
    """Each step of a job as a DeepCAM sample (``climate/data`` H x W x 16 rows south to north,
    ``climate/labels_0``) in ``dataset['folder']/train`` or ``/validation``; returns the
    training samples' partial statistics."""
    from climseg.data.netcdf import read_netcdf_step
    from climseg.data.synthetic import write_sample

    partials = []
    for k, t in enumerate(job.steps):
        data = read_netcdf_step(dataset["info"], t, list(CHANNELS))
        split = "validation" if t >= dataset["first_validation"] else "train"
        when = dataset["info"].times[t]
        stamp = when[:13].replace(" ", "-") if len(when) >= 13 and when[4] == "-" else f"step{t:06d}"
        labels = masks[k].astype(np.int32)
        write_sample(os.path.join(dataset["folder"], split, f"data-{stamp}-{t:06d}.h5"), data, labels)
        if split == "train":
            d64 = data.reshape(-1, data.shape[-1]).astype(np.float64)
            partials.append(dict(min=d64.min(axis=0), max=d64.max(axis=0), sum=d64.sum(axis=0),
                                 sumsq=(d64 * d64).sum(axis=0), count=d64.shape[0],
                                 classes=np.bincount(labels.reshape(-1), minlength=NUM_CLASSES)))
    return partials


def _flipped(path):
    import netCDF4

    from climseg.data.netcdf import LAT_NAMES, _find

    with netCDF4.Dataset(path) as ds:
        lat = np.asarray(ds.variables[_find(list(ds.variables), LAT_NAMES)][:]).reshape(-1)
    return lat.size > 1 and lat[0] > lat[-1]


def _hours(info):
    if info.dates is None:
        return np.zeros(len(info.times))
    try:
        import cftime

        return np.asarray(cftime.date2num(info.dates, "hours since 1900-01-01", info.calendar), np.float64)
    except Exception:  # noqa: BLE001 - no calendar: the step indices, 1 h apart
        return np.arange(len(info.times), dtype=np.float64)


def label(inputs, out, options=None, convention="auto", variables=None, workers=1, progress=True, log=print,
          dataset=None, validation_fraction=0.125):
    """Label ``inputs`` (netCDF files in any convention, merged into one series, and/or
    DeepCAM HDF5 samples): write ``NAME_mask.nc`` / ``NAME_mask.h5`` and ``summary.json``
    into ``out``. With ``dataset`` (a folder), the netCDF steps and their labels also become
    a DeepCAM training set there (``train/``, ``validation/``: the last
    ``validation_fraction`` of the steps, ``stats.h5``) for ``climseg train --data``; the
    input must then hold all 16 channels. Returns the summary dict."""
    from climseg.data.netcdf import is_netcdf, open_netcdf

    options = (options or LabelOptions()).check()
    if not inputs:
        raise UserError("no input files given")
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    from climseg.data.variables import conventions_for

    conventions_for(convention, variables)   # a bad --convention or --variables file is refused before any work
    inputs = [os.fspath(p) for p in inputs]
    hdf5 = [p for p in inputs if os.path.isfile(p) and not is_netcdf(p) and not os.path.isdir(p)]
    netcdf = [p for p in inputs if p not in hdf5]
    required, optional = _channels_for(options)
    info = open_netcdf(netcdf, required + optional, optional, convention, variables) if netcdf else None
    if info is not None:
        if options.method != "ar" and not ("T200" in info.variables or "T500" in info.variables):
            raise DataError(f"{info.path}: the warm-core test needs T200 or T500 (neither found)")
        if options.method != "tc" and options.ar_field == "auto" and not (
                "IVT" in info.variables or "TMQ" in info.variables):
            raise DataError(f"{info.path}: atmospheric rivers need IVT or TMQ (neither found)")
    for p in hdf5:
        _check_hdf5(p)
    data_info = None
    if dataset is not None:
        if info is None:
            raise UserError("--dataset needs netCDF input (a series of the 16 channels)")
        if os.path.exists(dataset) and (not os.path.isdir(dataset) or os.listdir(dataset)):
            raise UserError(f"{dataset}: already exists and is not an empty folder")
        if not 0.0 < validation_fraction < 1.0 or len(info.times) < 2:
            raise UserError(f"--validation-fraction {validation_fraction} must lie between 0 and 1, and the "
                            f"series needs at least 2 steps (it has {len(info.times)})")
        if _mpi_comm() is not None:
            raise UserError("--dataset is written by one process: run it without mpirun (--workers for processes)")
        data_info = open_netcdf(netcdf, CHANNELS, (), convention, variables)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: exists and is not a folder")
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    summary = dict(options=dataclasses.asdict(options), inputs=[], steps=0)
    if info is not None and data_info is not None:
        from climseg.output import atomic_directory

        with atomic_directory(dataset) as folder:
            os.makedirs(os.path.join(folder, "train"))
            os.makedirs(os.path.join(folder, "validation"))
            n = len(info.times)
            first_validation = n - min(n - 1, max(1, int(round(n * validation_fraction))))
            target = dict(info=data_info, folder=folder, first_validation=first_validation)
            entries, partials = _label_series(info, out, options, workers, progress, target)
            _write_dataset_stats(folder, partials)
        summary["inputs"] += entries
        summary["dataset"] = dict(folder=dataset, train=first_validation, validation=n - first_validation)
    elif info is not None:
        summary["inputs"] += _label_series(info, out, options, workers, progress)[0]
        summary["convention"] = info.convention
        summary["variables"] = {c: " + ".join(p.names) for c, p in info.plans.items()}
    comm = _mpi_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    samples = {i: _label_hdf5(p, out, options) for i, p in enumerate(hdf5) if i % size == rank}
    if comm is not None:
        for part in comm.allgather(samples):
            samples.update(part)
    summary["inputs"] += [samples[i] for i in range(len(hdf5))]
    summary["steps"] = sum(len(i["time_steps"]) for i in summary["inputs"])
    summary["seconds"] = time.perf_counter() - started
    if rank != 0:
        return summary                                      # rank 0 writes the summary and reports
    write_json(os.path.join(out, "summary.json"), summary)
    storms = sum(e["cyclones"] for i in summary["inputs"] for e in i["time_steps"])
    rivers = sum(e["rivers"] for i in summary["inputs"] for e in i["time_steps"])
    log(f"climseg: labelled {summary['steps']} steps in {summary['seconds']:.1f} s ({storms} cyclone and "
        f"{rivers} river labels); masks and summary.json written to {out}")
    return summary


def _write_dataset_stats(folder, partials):
    from climseg.data.stats import ChannelStats, write_stats

    count = sum(p["count"] for p in partials)
    classes = sum(p["classes"] for p in partials).astype(np.float64)
    stats = ChannelStats(minval=np.min([p["min"] for p in partials], axis=0),
                         maxval=np.max([p["max"] for p in partials], axis=0),
                         mean=sum(p["sum"] for p in partials) / count, sqmean=sum(p["sumsq"] for p in partials) / count,
                         class_frequencies=classes / classes.sum())
    write_stats(os.path.join(folder, "stats.h5"), stats)


def _label_series(info, out, options, workers, progress, dataset=None):
    threshold = options.ar_threshold
    if options.method != "tc":
        fields = {c: np.zeros(1, np.float32) for c in info.variables}
        name = river_field(fields, options.ar_field)[0]
        threshold = DEFAULT_THRESHOLDS[name] if threshold is None else threshold
        if options.ar_percentile is not None and options.ar_climatology == "series":
            threshold = np.maximum(river_climatology(info, options, progress), np.float32(threshold))
    jobs = _jobs(info)
    comm = _mpi_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    mine = list(range(rank, len(jobs), size))                  # under MPI: every size-th file from the rank's own
    pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 and len(mine) > 1 else None
    mapper = pool.map if pool else map
    try:
        scanned = {}
        with progress_bar(total=len(info.times), desc="label", unit="step", disable=not progress or rank) as bar:
            for i, result in zip(mine, mapper(_scan_job, [(info, jobs[i], options, threshold, out) for i in mine])):
                scanned[i] = result
                bar.update(len(result[1]) * size)
        if comm is not None:                                   # every rank links every storm (a small table)
            for part in comm.allgather({i: r for i, r in scanned.items()}):
                scanned.update(part)
        scanned = [scanned[i] for i in range(len(jobs))]
        all_storms = [s for _, storms, _ in scanned for s in storms]
        keep, tracks = link_cyclones([[(s["lat"], s["lon"]) for s in step] for step in all_storms], _hours(info), options)
        entries, offset, args = [], 0, []
        for i, (job, (tmp, storms, _)) in enumerate(zip(jobs, scanned)):
            if i in mine:
                args.append((info, job, tmp, storms, keep[offset: offset + len(storms)], out, dataset))
            offset += len(storms)
        written = dict(zip(mine, mapper(_write_job, args)))
        if comm is not None:
            for part in comm.allgather(written):
                written.update(part)
        written = [written[i] for i in range(len(jobs))]
    except BaseException:
        for i in mine:
            tmp = os.path.join(out, f".{jobs[i].name}.rivers.npy")
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    finally:
        if pool:
            pool.shutdown()
    offset = 0
    partials = [p for _, _, part in written for p in part]
    for job, (_, storms, objects), (name, counts, _) in zip(jobs, scanned, written):
        steps = []
        for k, t in enumerate(job.steps):
            kept = [dict({key: v for key, v in s.items() if key not in ("index", "row", "col")},
                         track=int(tracks[offset + k][i]), pixels=int(s["index"].size))
                    for i, s in enumerate(storms[k]) if keep[offset + k][i]]
            frac = counts[k] / max(counts[k].sum(), 1)
            steps.append(dict(index=t, time=info.times[t], cyclones=len(kept), rivers=len(objects[k]),
                              fractions=dict(zip(CLASS_NAMES, np.round(frac, 6).tolist())),
                              storms=kept, river_objects=objects[k]))
        offset += len(job.steps)
        entries.append(dict(file=job.source, mask=name, time_steps=steps))
    return entries, partials


def _mpi_comm():
    """MPI.COMM_WORLD when an MPI launcher started several processes (and mpi4py is there)."""
    from climseg.distributed.launch import detect_launcher

    info = detect_launcher()
    if info.launcher != "mpi" or info.world_size < 2:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError("climseg label under mpirun needs mpi4py (pip install mpi4py)") from None
    return MPI.COMM_WORLD


def _check_hdf5(path):
    import h5py

    from climseg.data.deepcam import DATA_KEY

    try:
        with h5py.File(path, "r") as f:
            if DATA_KEY not in f:
                raise DataError(f"{path}: missing dataset {DATA_KEY}")
            shape = f[DATA_KEY].shape
    except OSError as exc:
        raise DataError(f"{path}: neither a readable HDF5 nor a netCDF file ({str(exc).splitlines()[0]})") from None
    if len(shape) != 3 or shape[2] != len(CHANNELS):
        raise DataError(f"{path}: {DATA_KEY} has shape {tuple(shape)}; expected (height, width, {len(CHANNELS)})")


def _label_hdf5(path, out, options):
    """A DeepCAM sample (global, regular grid assumed, rows south to north): NAME_mask.h5."""
    import h5py

    from climseg.data.deepcam import read_sample

    data, _ = read_sample(path, labels=False)
    h, w = data.shape[:2]
    lat = -90.0 + (np.arange(h) + 0.5) * 180.0 / h
    lon = np.arange(w) * 360.0 / w
    fields = {c: data[..., i] for i, c in enumerate(CHANNELS)}
    threshold = options.ar_threshold
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[river_field(fields, options.ar_field)[0]]
    rivers, storms, objects = label_step(fields, lat, lon, True, options, threshold)
    mask = np.where(rivers, ATMOSPHERIC_RIVER, 0).astype(np.uint8)
    for s in storms:
        mask.reshape(-1)[s["index"]] = TROPICAL_CYCLONE
    name = f"{os.path.splitext(os.path.basename(path))[0]}_mask.h5"
    with atomic_path(os.path.join(out, name)) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("mask", data=mask, compression="gzip")
        d.attrs["flag_values"] = np.arange(NUM_CLASSES, dtype=np.uint8)
        d.attrs["flag_meanings"] = " ".join(CLASS_NAMES)
        d.attrs["source"] = os.path.basename(path)
    frac = np.bincount(mask.reshape(-1), minlength=NUM_CLASSES) / mask.size
    return dict(file=path, mask=name, time_steps=[dict(
        index=0, time="", cyclones=len(storms), rivers=len(objects),
        fractions=dict(zip(CLASS_NAMES, np.round(frac, 6).tolist())),
        storms=[{k: v for k, v in s.items() if k not in ("index", "row", "col")} for s in storms],
        river_objects=objects)])
