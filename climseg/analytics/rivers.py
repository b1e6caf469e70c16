"""Atmospheric rivers in the physical fields of one step: the physics of ``climseg label``,
apart from running it over files and processes (:mod:`climseg.analytics.label`).

Data flow: :func:`river_field` picks the field a river is a threshold of (IVT when the input
has it, ``IVT`` or ERA5's ``viwve``/``viwvn``; else the proxy TMQ x |V850|; else TMQ);
:func:`detect_rivers` thresholds it (a number, or per cell) and keeps the objects that pass
the shape conditions, trying those that fail again at higher thresholds;
:func:`poleward_transport` gives the field of the poleward condition.

The conditions (thresholds: :class:`~climseg.analytics.label_options.LabelOptions`; defaults
and sources in docs/labelling.md): cells at or above the threshold form 8-connected objects,
joined across the date line on global grids, never across the poles
(:func:`climseg.sphere.label_components`); an object is kept when it is long
(``ar_min_length_km``: the largest great-circle distance across it,
:func:`climseg.sphere.diameter_km`), narrow (length / width >= ``ar_min_aspect`` and width
<= ``ar_max_width_km``, width = area / length), carries vapour poleward (mean TMQ x V850 x
sign(lat) >= ``ar_min_poleward``) and reaches from the subtropics (a cell equatorward of
``ar_origin_lat``) poleward (a cell beyond ``ar_reach_lat``). Objects that fail are tried
again at the thresholds ``threshold x ar_levels``, which separates rivers from the moist
tropics they are joined to.
"""

import numpy as np

from climseg import sphere
from climseg.analytics.label_options import LabelOptions
from climseg.errors import DataError


def river_field(fields, which="auto"):
    """The field an atmospheric river is a threshold of.

    Parameters
    ----------
    fields : dict of (H, W) arrays
        CAM5 names and units: IVT (kg m-1 s-1), TMQ (kg m-2), U850 and V850 (m s-1).
    which : {"auto", "ivt", "proxy", "tmq"}
        ``auto``: IVT when present, else the proxy ``TMQ x |V850|`` (kg m-1 s-1), else TMQ;
        the others force one.

    Returns
    -------
    name : str
        ``ivt``, ``proxy`` or ``tmq``.
    field : numpy.ndarray (H, W) of float32

    Raises
    ------
    DataError
        When the fields asked for are missing.
    """
    if which in ("auto", "ivt") and "IVT" in fields:
        return "ivt", np.asarray(fields["IVT"], np.float32)
    if which in ("auto", "proxy") and all(k in fields for k in ("TMQ", "U850", "V850")):
        return "proxy", (fields["TMQ"] * np.hypot(fields["U850"], fields["V850"])).astype(np.float32)
    if which in ("auto", "tmq") and "TMQ" in fields:
        return "tmq", np.asarray(fields["TMQ"], np.float32)
    raise DataError(
        f"the atmospheric-river field {which} needs "
        + {"ivt": "IVT", "proxy": "TMQ, U850 and V850", "tmq": "TMQ", "auto": "IVT or TMQ"}[which]
    )


def poleward_transport(fields, lat):
    """Poleward vapour transport proxy ``TMQ x V850 x sign(lat)`` (kg m-1 s-1), float32 (H, W),
    rows in the order of ``lat``; None without TMQ or V850.

    References
    ----------
    Guan and Waliser (2015), J. Geophys. Res. Atmos. 120: the mean poleward IVT of an object.
    """
    if "TMQ" not in fields or "V850" not in fields:
        return None
    sign = np.where(np.asarray(lat) >= 0, 1.0, -1.0)[:, None]
    return (fields["TMQ"] * fields["V850"] * sign).astype(np.float32)


def detect_rivers(field, threshold, lat, lon, periodic=True, options=None, weights=None, poleward=None):
    """The river mask of one step: thresholded objects that pass the shape conditions.

    Parameters
    ----------
    field : numpy.ndarray (H, W)
        The river field (:func:`river_field`), rows in the order of ``lat``.
    threshold : float or numpy.ndarray (H, W)
        Cells with ``field >= threshold`` form the objects.
    lat, lon : array_like
        Cell-centre latitudes and longitudes, degrees.
    periodic : bool
        Global grid: objects join across the date line.
    options : LabelOptions, optional
        The ``ar_*`` conditions (default :class:`LabelOptions`).
    weights : numpy.ndarray (H * W,), optional
        Flat cell areas in km^2 (:func:`climseg.sphere.cell_areas`, computed when None).
    poleward : numpy.ndarray (H, W), optional
        The poleward transport (:func:`poleward_transport`); with it an object's mean must
        reach ``ar_min_poleward``.

    Returns
    -------
    mask : numpy.ndarray (H, W) of bool
    objects : list of dict
        The kept objects: ``length_km``, ``width_km``, ``aspect``, ``poleward_transport``,
        ``area_km2``, ``lat_min``, ``lat_max``.

    Notes
    -----
    The objects that fail at ``threshold`` are tried again at ``threshold x ar_levels``, each
    level on the cells not yet kept.

    References
    ----------
    Ralph, Neiman, Wick (2004), Mon. Wea. Rev. 132; Rutz, Steenburgh, Ralph (2014), Mon. Wea.
    Rev. 142; Guan and Waliser (2015), J. Geophys. Res. Atmos. 120, who raise the percentile
    from 85 to 95 for objects too large to be rivers.
    """
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
    cells = np.flatnonzero(labels)  # the labelled cells only
    comp = labels.reshape(-1)[cells]
    pixels = np.bincount(comp, minlength=n + 1)[1:]
    area = np.bincount(comp, weights=weights[cells], minlength=n + 1)[1:]
    order = cells[np.argsort(comp, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(pixels)])
    h, w = above.shape
    ns, ew = sphere.grid_spacings_km(lat, lon)
    diagonal = np.hypot(np.max(ns), np.max(ew))  # the longest step between 8-neighbours
    keep = np.zeros(n + 1, bool)
    objects = []
    for k in range(n):
        if pixels[k] * diagonal < o.ar_min_length_km:  # cannot be long enough: skip the geometry
            continue
        idx = order[starts[k] : starts[k + 1]]
        if poleward is not None:
            transport_k = float(np.asarray(poleward).reshape(-1)[idx].mean())
            if transport_k < o.ar_min_poleward:
                continue
        la, lo = lat[idx // w], lon[idx % w]
        alat = np.abs(la)
        if alat.min() > o.ar_origin_lat or alat.max() < o.ar_reach_lat:
            continue
        length = sphere.diameter_km(la, lo)
        width = area[k] / max(length, 1e-9)
        aspect = length / max(width, 1e-9)
        if length >= o.ar_min_length_km and aspect >= o.ar_min_aspect and width <= o.ar_max_width_km:
            keep[k + 1] = True
            objects.append(
                dict(
                    length_km=float(length),
                    width_km=float(width),
                    aspect=float(aspect),
                    poleward_transport=None if poleward is None else transport_k,
                    area_km2=float(area[k]),
                    lat_min=float(la.min()),
                    lat_max=float(la.max()),
                )
            )
    return keep[labels], objects
