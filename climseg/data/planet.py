"""The synthetic generator's planet: the Earth's land and sea on the fixed 1-degree grid of the
generator's random fields, and what the weather makes of them.

Data flow: :func:`climseg.data.land.land_fraction_1deg` (the ``global-land-mask`` package's data, the
land mask of ``climseg analyze``'s maps) gives the land fraction of every 1-degree cell; from it,
once per process:

* :func:`orography`: the surface height, over land only;
* :func:`ocean_surface_temperature`: a zonal sea-surface temperature whose tropics are warm
  (26.5 C, the usual threshold of tropical-cyclone genesis, reached equatorward of about 19.5
  degrees), cooled by up to 5 K off the west coasts of the continents in the subtropics, where cold
  currents and upwelling keep cyclones from forming (Peru, Namibia, California, the Canaries);
* :func:`cyclone_genesis_ok`: a cyclone may form at a point 5 to 20 degrees from the equator, over
  the sea and where that water is at least 26.5 C;
* :func:`west_coasts`: the landfall points of atmospheric rivers, land cells 30 to 60 degrees from
  the equator with at least 20 degrees of sea to their west;
* :func:`kaplan_demaria_decay`: a cyclone over land loses its wind as Kaplan and DeMaria (1995)
  measured on US landfalls, ``V(t) = V_b + (R V_0 - V_b) exp(-alpha t)``, with ``V_b`` = 26.7 kt,
  ``R`` = 0.9 and ``alpha`` = 0.095 per hour.

:class:`NoiseGrid` is the 1-degree grid itself and its bilinear interpolation to an output grid, so
that one seed gives the same planet and weather at any output resolution; :func:`is_land` looks a
point up on it.
"""

import numpy as np
from scipy import ndimage

from climseg.data.land import land_fraction_1deg
from climseg.sphere import EARTH_RADIUS_M

GENESIS_SST_K = 299.65  # 26.5 C
GENESIS_LAT = (5.0, 20.0)  # degrees from the equator
COAST_LAT = (30.0, 60.0)  # landfalls of atmospheric rivers, degrees from the equator
COAST_OPEN_SEA_DEG = 20  # degrees of longitude of sea west of a landfall point (no bays, no Baltic)
DECAY_BACKGROUND = 13.74  # m/s, Kaplan and DeMaria's V_b (26.7 kt)
DECAY_LANDFALL = 0.9  # their R: the wind keeps 90 % at landfall
DECAY_RATE = 0.095  # their alpha, per hour


class NoiseGrid:
    """The fixed 1-degree grid (180 x 360) on which the random fields of every sample are
    drawn (:meth:`noise`), and their bilinear interpolation to one output grid (:meth:`resample`),
    so that one seed gives the same planet at any output resolution."""

    lat = np.arange(-89.5, 90.0, 1.0)
    lon = np.arange(0.5, 360.0, 1.0)

    def __init__(self, out_lat, out_lon):
        fi = np.clip(out_lat + 89.5, 0.0, 179.0)
        self.i0 = np.minimum(np.floor(fi).astype(int), 178)
        self.wi = (fi - self.i0).astype(np.float32)[:, None]
        fj = (out_lon - 0.5) % 360.0
        self.j0 = np.floor(fj).astype(int) % 360
        self.j1 = (self.j0 + 1) % 360
        self.wj = (fj - np.floor(fj)).astype(np.float32)[None, :]

    def noise(self, rng, sigma_deg):
        """Unit-variance Gaussian random field with correlation length ``sigma_deg``."""
        white = rng.standard_normal((180, 360)).astype(np.float32)
        field = ndimage.gaussian_filter(white, sigma=sigma_deg, mode=("reflect", "wrap"))
        field -= field.mean()
        field /= field.std() + 1e-12
        return field

    def resample(self, field):
        """``field`` (180, 360) interpolated bilinearly to the output grid (H, W)."""
        rows = field[self.i0] * (1.0 - self.wi) + field[self.i0 + 1] * self.wi
        return rows[:, self.j0] * (1.0 - self.wj) + rows[:, self.j1] * self.wj


_PLANET = {}


def land_fraction():
    """Land fraction of the 1-degree cells of :class:`NoiseGrid`: float32 (180, 360)."""
    if "land" not in _PLANET:
        _PLANET["land"] = land_fraction_1deg()
    return _PLANET["land"]


def is_land(lat, lon):
    """True where the 1-degree cell holding the point (``lat``, ``lon`` in degrees; arrays or
    scalars) is at least half land."""
    i = np.clip(np.floor(np.asarray(lat) + 90.0).astype(int), 0, 179)
    j = np.floor(np.asarray(lon) % 360.0).astype(int) % 360
    return land_fraction()[i, j] >= 0.5


def orography():
    """The surface height (m) of the 1-degree cells: zero over the sea; over land 200 m plus hills
    and ranges from a fixed random field (the same for every sample and seed), at most 4500 m."""
    if "z" not in _PLANET:
        rng = np.random.default_rng(20180611)
        base = NoiseGrid(NoiseGrid.lat, NoiseGrid.lon)
        hills, ranges = base.noise(rng, 6.0), base.noise(rng, 2.0)
        z = 200.0 + 600.0 * np.maximum(0.0, hills + 0.5) + 900.0 * np.maximum(0.0, hills - 0.6) * np.maximum(0, ranges)
        _PLANET["z"] = np.minimum(land_fraction() * z, 4500.0).astype(np.float32)
    return _PLANET["z"]


def zonal_land_temperature(lat):
    """Surface temperature (K) of land at latitude ``lat``: 300 K at the equator, 242 K at the poles."""
    return 242.0 + 58.0 * np.cos(np.deg2rad(lat)) ** 1.5


def zonal_sea_temperature(lat):
    """Sea-surface temperature (K) at latitude ``lat`` away from the coasts: the land's zonal profile
    with warm tropical water (up to 4.5 K warmer 10 to 25 degrees from the equator), so that 26.5 C
    reaches about 19.5 degrees."""
    return zonal_land_temperature(lat) + 4.5 * np.exp(-(((np.abs(lat) - 18.0) / 9.0) ** 2))


def _sea_west_of_coast_km():
    """Distance (km) east from every 1-degree cell to the next land cell along its latitude."""
    land = land_fraction() >= 0.5
    cells = np.full(land.shape, 360, np.int64)
    for i in range(land.shape[0]):
        coast = np.flatnonzero(land[i])
        if coast.size:
            j = np.arange(360)
            k = np.searchsorted(coast, j) % coast.size
            cells[i] = (coast[k] - j) % 360
    km_per_deg = EARTH_RADIUS_M / 1e3 * np.deg2rad(1.0) * np.cos(np.deg2rad(NoiseGrid.lat))[:, None]
    return cells * km_per_deg


def ocean_surface_temperature():
    """Sea-surface temperature (K) of the 1-degree cells (defined over land too): the zonal profile
    (:func:`zonal_sea_temperature`) less up to 5 K within about 1200 km west of a coast in the
    subtropics (the eastern-boundary currents)."""
    if "sst" not in _PLANET:
        lat = NoiseGrid.lat[:, None]
        subtropics = np.exp(-(((np.abs(lat) - 22.0) / 10.0) ** 2))
        upwelling = 5.0 * subtropics * np.exp(-_sea_west_of_coast_km() / 1200.0)
        _PLANET["sst"] = (zonal_sea_temperature(lat) - upwelling).astype(np.float32)
    return _PLANET["sst"]


def surface_temperature(base, lat):
    """Surface temperature (K) on the output grid of ``base`` (a :class:`NoiseGrid`; ``lat``: its
    latitudes) before the weather: the sea's where there is sea, the land's zonal profile on land."""
    land = base.resample(land_fraction())
    sea = base.resample(ocean_surface_temperature())
    return (land * zonal_land_temperature(np.asarray(lat)[:, None]) + (1.0 - land) * sea).astype(np.float32)


def cyclone_genesis_ok(lat, lon):
    """Whether a tropical cyclone may form at (``lat``, ``lon``): 5 to 20 degrees from the equator,
    over the sea, where the sea is at least 26.5 C."""
    if not GENESIS_LAT[0] <= abs(lat) <= GENESIS_LAT[1] or is_land(lat, lon):
        return False
    i, j = int(np.clip(np.floor(lat + 90.0), 0, 179)), int(np.floor(lon % 360.0)) % 360
    return bool(ocean_surface_temperature()[i, j] >= GENESIS_SST_K)


def west_coasts():
    """Landfall points of atmospheric rivers: ``(lat, lon)`` arrays of the centres of the land cells
    30 to 60 degrees from the equator with :data:`COAST_OPEN_SEA_DEG` sea cells west of them."""
    if "coasts" not in _PLANET:
        land = land_fraction() >= 0.5
        sea_west = np.ones(land.shape, bool)
        for k in range(1, COAST_OPEN_SEA_DEG + 1):
            sea_west &= ~np.roll(land, k, axis=1)
        lat = np.abs(NoiseGrid.lat)[:, None]
        i, j = np.nonzero(land & sea_west & (lat >= COAST_LAT[0]) & (lat <= COAST_LAT[1]))
        _PLANET["coasts"] = (NoiseGrid.lat[i], NoiseGrid.lon[j])
    return _PLANET["coasts"]


def kaplan_demaria_decay(wind, hours_over_land, landfall):
    """Maximum wind (m/s) after ``hours_over_land`` more hours over land of a cyclone whose wind is
    ``wind``; ``landfall``: the first of those hours is the one of landfall (the wind keeps 90 %)."""
    start = DECAY_LANDFALL * wind if landfall else wind
    return DECAY_BACKGROUND + (start - DECAY_BACKGROUND) * np.exp(-DECAY_RATE * hours_over_land)
