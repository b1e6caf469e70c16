"""The land mask: which points of the Earth are land, from the data the ``global-land-mask`` package
ships (GLOBE 1-km land/sea data; nothing is downloaded). climseg's one reader of it: the maps of
``climseg analyze`` draw its coastlines, and the synthetic generator puts its cyclones and rivers on
this planet (:mod:`climseg.data.planet`).

Data flow: the package's 1-km mask is sampled once at the centres of a 0.5-degree grid
(:func:`land_mask`; importing the package alone takes seconds, so the result is kept as
``land-mask-0.5deg.npz`` in the climseg cache folder, :mod:`climseg.data.cache_folder`, and in
memory); :func:`land_fraction_1deg` averages it to the 1-degree grid of the generator's random
fields.
"""

import os

import numpy as np

from climseg.data.cache_folder import cache_dir
from climseg.output import atomic_path

STEP_DEG = 0.5
_MEMORY = {}


def land_mask():
    """``(lat, lon, land)``: cell centres of a 0.5-degree global grid (latitudes ascending, longitudes
    from -180) and a bool (360, 720) array, True on land; from the ``global-land-mask`` package's
    data, cached in the climseg cache folder."""
    if "mask" in _MEMORY:
        return _MEMORY["mask"]
    path = os.path.join(cache_dir(), f"land-mask-{STEP_DEG:g}deg.npz")
    lat = np.arange(-90 + STEP_DEG / 2, 90, STEP_DEG)
    lon = np.arange(-180 + STEP_DEG / 2, 180, STEP_DEG)
    land = None
    if os.path.isfile(path):
        try:
            with np.load(path) as f:
                land = f["land"]
            if land.shape != (lat.size, lon.size) or land.dtype != bool:
                land = None
        except (OSError, ValueError, KeyError):
            land = None
    if land is None:
        from global_land_mask import globe

        la, lo = np.meshgrid(lat, lon, indexing="ij")
        land = np.asarray(globe.is_land(la, lo), bool)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, land=land)
        except OSError:
            pass  # a read-only cache only costs the next process the same time
    _MEMORY["mask"] = (lat, lon, land)
    return _MEMORY["mask"]


def land_fraction_1deg():
    """Fraction of land (0, 0.25, ... 1) of each cell of the 1-degree grid with centres at latitudes
    -89.5 .. 89.5 and longitudes 0.5 .. 359.5: float32 (180, 360), the mean of the four 0.5-degree
    points of :func:`land_mask` inside it."""
    _, _, land = land_mask()
    east = np.roll(land, -land.shape[1] // 2, axis=1)  # longitudes from 0 instead of -180
    h, w = east.shape
    return east.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.float32)
