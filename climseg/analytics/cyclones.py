"""Tropical cyclones in the physical fields of one step, and their tracks through time: the
physics of ``climseg label`` (the way the SC18 training data were labelled with TECA,
Prabhat et al. 2012, 2015), apart from running it over files and processes
(:mod:`climseg.analytics.label`).

Data flow: :func:`detect_cyclones` takes one step's fields (CAM5 names and units, rows
south to north) and returns the storms: their centres and the flat indices of their masks;
:func:`link_cyclones` then links the centres of all steps into tracks and says which storms
to keep. Every distance is on the sphere (:mod:`climseg.sphere`); the windows are
:func:`band_filter` boxes of a half-width in km, sized for each 10-degree latitude band and
wrapping round the date line on global grids, so that each criterion is one
``scipy.ndimage`` filter over the whole grid and only the few centres are handled one by one.

The criteria (thresholds: :class:`~climseg.analytics.label_options.LabelOptions`; defaults
and sources in docs/labelling.md):

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
"""

import numpy as np
from scipy import ndimage

from climseg import sphere
from climseg.analytics.label_options import LabelOptions
from climseg.sphere import EARTH_RADIUS_M

# ----------------------------------------------------------------------------- fields on the sphere


def relative_vorticity(u, v, lat, lon, periodic=True):
    """Relative vorticity of a horizontal wind on the sphere,
    ``zeta = (dv/dlambda - d(u cos phi)/dphi) / (R cos phi)``.

    Parameters
    ----------
    u, v : array_like (H, W)
        Eastward and northward wind (m s-1), rows in the order of ``lat``.
    lat, lon : array_like
        Cell-centre latitudes (H,; any monotonic spacing, e.g. Gaussian) and longitudes (W,),
        degrees.
    periodic : bool
        The grid goes all the way round: the longitude differences wrap.

    Returns
    -------
    numpy.ndarray (H, W) of float64
        ``zeta`` in s-1, positive anticlockwise; 0 where ``cos(phi)`` ~ 0.

    Notes
    -----
    Centred differences (one-sided at the latitude ends); ``R`` is
    :data:`climseg.sphere.EARTH_RADIUS_M`. Solid-body rotation ``u = U cos(phi)`` gives
    ``zeta = 2 U sin(phi) / R``, which tests/test_label.py checks.

    References
    ----------
    Holton and Hakim (2013): *An Introduction to Dynamic Meteorology*, 5th ed., vorticity in
    spherical coordinates.
    """
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


def _latitude_bands(lat, rows):
    """Rows split into bands of about 10 degrees latitude (over which one window fits)."""
    if rows.size == 0:
        return []
    edges = np.flatnonzero(np.diff(np.floor(lat[rows] / 10.0)) != 0) + 1
    return np.split(rows, edges)


def band_filter(field, lat, lon, periodic, radius_km, kind, rows=None):
    """Maximum, minimum or mean of a field over a box of ``radius_km`` around every cell.

    Parameters
    ----------
    field : numpy.ndarray (H, W)
        Rows in the order of ``lat``.
    lat, lon : array_like
        Cell-centre latitudes and longitudes, degrees.
    periodic : bool
        Wrap the boxes round the date line (global grids).
    radius_km : float
        Half-width of the box, north-south and east-west.
    kind : {"max", "min", "mean"}
        The ``scipy.ndimage`` filter.
    rows : array_like of int, optional
        The rows wanted (default all); the other rows are NaN.

    Returns
    -------
    numpy.ndarray (H, W)
        float32 for a float32 ``field``, else float64.

    Notes
    -----
    The box's rows and columns are sized for each 10-degree latitude band from the grid
    spacings (:func:`climseg.sphere.grid_spacings_km`): the smallest spacing of the band
    sets the count, so the box is never smaller than ``radius_km``.
    """
    h, w = field.shape
    rows = np.arange(h) if rows is None else rows
    ns, ew = sphere.grid_spacings_km(lat, lon)
    func = {"max": ndimage.maximum_filter, "min": ndimage.minimum_filter, "mean": ndimage.uniform_filter}[kind]
    out = np.full(field.shape, np.nan, np.float32 if field.dtype == np.float32 else np.float64)
    for band in _latitude_bands(lat, rows):
        a, b = band[0], band[-1] + 1
        ry = int(np.ceil(radius_km / max(np.min(ns[a:b]), 1e-6)))
        rx = int(min(np.ceil(radius_km / max(np.min(ew[a:b]), 1e-6)), w // 2))
        lo, hi = max(0, a - ry), min(h, b + ry)
        res = func(field[lo:hi], size=(2 * ry + 1, 2 * rx + 1), mode=("nearest", "wrap" if periodic else "nearest"))
        out[a:b] = res[a - lo : b - lo]
    return out


# ----------------------------------------------------------------------------- tropical cyclones


def detect_cyclones(fields, lat, lon, periodic=True, options=None):
    """Storm centres and their areas in the fields of one step (criteria 1-6 of the module).

    Parameters
    ----------
    fields : dict of (H, W) arrays
        CAM5 names and units, rows south to north: PSL, U850, V850, T200 and/or T500,
        optionally UBOT and VBOT (else the wind criterion uses U850/V850).
    lat, lon : array_like
        Cell-centre latitudes (ascending) and longitudes, degrees.
    periodic : bool
        Global grid: windows and masks wrap round the date line.
    options : LabelOptions, optional
        The ``tc_*`` thresholds (default :class:`LabelOptions`).

    Returns
    -------
    list of dict
        One per storm, deepest first: ``lat``, ``lon``, ``row``, ``col``, ``psl`` (Pa),
        ``wind`` (m s-1), ``vorticity`` (s-1), ``warm_core`` (K), ``pressure_rise`` (Pa) and
        ``index``, the flat indices of the storm's mask.

    References
    ----------
    Vitart, Anderson, Stern (1997), J. Climate 10; Zhao, Held, Lin, Vecchi (2009), J. Climate
    22; TECA's ``teca_tc_candidates`` (Prabhat et al. 2012, 2015).
    """
    o = options or LabelOptions()
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    psl = np.asarray(fields["PSL"], np.float64)
    rows = np.flatnonzero(np.abs(lat) <= o.tc_max_lat)
    if rows.size == 0:
        return []
    candidates = psl == band_filter(psl, lat, lon, periodic, o.tc_candidate_km, "min", rows)
    candidates[[0, -1]] = False  # not at the grid's edge rows
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
    warm = band_filter(temp, lat, lon, periodic, o.tc_core_km, "max", rows) - band_filter(
        temp, lat, lon, periodic, o.tc_environment_km, "mean", rows
    )
    candidates &= warm >= o.tc_warm_core
    low_level = ("UBOT", "VBOT") if "UBOT" in fields and "VBOT" in fields else ("U850", "V850")
    u, v = fields[low_level[0]], fields[low_level[1]]
    speed = np.hypot(np.asarray(u, np.float64), np.asarray(v, np.float64))
    wind = band_filter(speed, lat, lon, periodic, o.tc_wind_km, "max", rows)
    candidates &= wind >= o.tc_wind
    lab, n = ndimage.label(candidates, structure=sphere.EIGHT_CONNECTED)  # plateaus: one centre each
    if n == 0:
        return []
    rr, cc = np.nonzero(candidates)
    order = np.lexsort((psl[rr, cc], lab[rr, cc]))  # by plateau, then pressure
    first = order[np.r_[True, np.diff(lab[rr, cc][order]) != 0]]  # the lowest cell of each plateau
    storms = []
    for r, c in sorted(zip(rr[first], cc[first]), key=lambda rc: psl[rc]):  # deepest first
        index = _storm_area(psl, speed, lat, lon, periodic, r, c, rise[r, c], o)
        storms.append(
            dict(
                lat=float(lat[r]),
                lon=float(lon[c] % 360.0),
                row=int(r),
                col=int(c),
                psl=float(psl[r, c]),
                wind=float(wind[r, c]),
                vorticity=float(vort[r, c]),
                warm_core=float(warm[r, c]),
                pressure_rise=float(rise[r, c]),
                index=index,
            )
        )
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
    """Link storm centres through time into tracks (criterion 7 of the module).

    Parameters
    ----------
    steps : list of list of (lat, lon)
        The storm centres of each step, degrees.
    hours : array_like
        Each step's time in hours.
    options : LabelOptions, optional
        ``tc_max_speed`` and ``tc_min_hours`` (default :class:`LabelOptions`).

    Returns
    -------
    keep : list of list of bool
        Per step and storm: keep it (its track lasts at least ``tc_min_hours``, or is cut by
        the first or last step).
    tracks : list of numpy.ndarray
        Per step, each storm's track number.

    Notes
    -----
    Centres at consecutive steps are matched closest pair first, each at most once, while
    closer than ``tc_max_speed`` x the interval (great-circle distances). A track's
    duration counts one interval beyond its last step.

    References
    ----------
    TECA's ``teca_tc_trajectory`` (``max_daily_distance`` 1600 km).
    """
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
    keep_track = np.array(
        [
            (hours[last[k]] - hours[first[k]] + step_hours >= o.tc_min_hours) or first[k] == 0 or last[k] == n - 1
            for k in range(ntracks)
        ],
        bool,
    )
    return [[bool(keep_track[k]) for k in tr] for tr in track_of], track_of
