"""Geometry on the sphere for latitude-longitude grids: the one module that
prediction, labelling, tracking and analysis share.

* Cell bounds are the midpoints between cell centres; the outer bounds extend by
  half the neighbouring spacing, or reach the pole when the outer row lies within one
  spacing of it (global grids), so regular and non-regular (Gaussian) latitudes are
  handled alike. A cell's area is
  ``R^2 * (sin(lat_north) - sin(lat_south)) * (lon_east - lon_west)`` (radians),
  with R = 6371 km; the areas of a global grid sum to ``4 pi R^2``.
* Distances are great-circle distances by the haversine formula (:func:`haversine_km`);
  the synthetic generators keep the spherical law of cosines (:func:`central_angle`) and a
  local step in metres (:func:`degrees_of_latitude`, :func:`degrees_of_longitude`), the
  operations their samples were made with.
* Centroids are the area-weighted mean of the cells' unit vectors in 3-D,
  projected back onto the sphere: correct across the date line and near the poles.
* Connected components are 8-connected (``scipy.ndimage.label``); on a global grid
  (longitudes going all the way round) components touching the first and last
  columns are joined across the date line, including diagonally, with one sparse
  graph of the seam pairs. Rows are never joined across the poles.
* Longitudes are kept in the convention the input gives them: a grid from -180 stays
  -180..180, one from 0 stays 0..360 (:func:`monotonic_longitudes` only unwraps a grid
  stored with a jump of a turn); positions on a grid are given in its range
  (:func:`longitude_range`, :func:`wrap_longitudes`), so outputs are monotonic CF coordinates.
  :func:`coordinate_problem` says why values are not a grid's coordinates (out of range,
  not monotonic, more than 360 degrees of longitude).

Arrays are (H, W) with rows in the order of ``lat`` (ascending in climseg) and
columns in the order of ``lon``.
"""

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

EARTH_RADIUS_KM = 6371.0
EARTH_RADIUS_M = EARTH_RADIUS_KM * 1000.0  # 6.371e6 exactly, for code that works in metres
EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


# ----------------------------------------------------------------------------- grid geometry


def cell_bounds(centres, low=None, high=None):
    """Bounds (N + 1,) of cells with the given centres (monotonic, degrees): midpoints
    between neighbours, the ends extended by half a neighbouring spacing and clipped
    to [low, high] when given."""
    c = np.asarray(centres, dtype=np.float64).reshape(-1)
    if c.size == 1:
        half = 0.5 * (high - low) if low is not None and high is not None else 0.5
        b = np.array([c[0] - half, c[0] + half])
    else:
        mid = 0.5 * (c[1:] + c[:-1])
        b = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    if low is not None or high is not None:
        b = np.clip(b, low, high)
    return b


def is_global(lon):
    """True when the longitudes (degrees, increasing) go all the way round the sphere."""
    lon = np.rad2deg(np.unwrap(np.deg2rad(np.asarray(lon, dtype=np.float64).reshape(-1))))
    if lon.size < 2:
        return False
    step = (lon[-1] - lon[0]) / (lon.size - 1)
    return bool(abs(lon[-1] - lon[0] + step - 360.0) < 0.5 * abs(step))


def monotonic_longitudes(lon):
    """Longitudes (degrees) as one increasing coordinate: unwrapped where they jump by a turn
    (``0..175, -180..-5`` becomes ``0..355``), then shifted by whole turns only when they leave
    [-180, 360] (``180..535`` becomes ``-180..175``). Longitudes that already increase within
    [-180, 360] come back as they are: a grid from -180 keeps -180..180, one from 0 keeps 0..360."""
    lon = np.rad2deg(np.unwrap(np.deg2rad(np.asarray(lon, dtype=np.float64).reshape(-1))))
    if lon.size and (lon.min() < -180.0 or lon.max() > 360.0):
        lon = lon - 360.0 * np.floor((lon[0] + 180.0) / 360.0)
    return lon


def longitude_range(lon):
    """``(west, east)`` of the 360 degrees that positions on the grid ``lon`` are given in:
    (-180, 180) when the grid has negative longitudes, else (0, 360)."""
    west = -180.0 if np.size(lon) and float(np.min(lon)) < 0.0 else 0.0
    return west, west + 360.0


def wrap_longitudes(values, lon):
    """``values`` (degrees) folded into :func:`longitude_range` of the grid ``lon``, so that event
    positions are given in the same convention as the grid they were found on."""
    west, _ = longitude_range(lon)
    return (np.asarray(values, dtype=np.float64) - west) % 360.0 + west


def coordinate_problem(lat, lon):
    """Why ``lat``/``lon`` (degrees, 1-D) are not the coordinates of a latitude-longitude grid, or
    None: values must be finite, latitudes within [-90, 90] and monotonic, longitudes increasing
    (after unwrapping, :func:`monotonic_longitudes`) and spanning at most 360 degrees."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat.size == 0 or lon.size == 0:
        return f"empty grid ({lat.size} latitudes, {lon.size} longitudes)"
    if not (np.all(np.isfinite(lat)) and np.all(np.isfinite(lon))):
        return "latitudes or longitudes hold NaN or Inf"
    if lat.min() < -90.0 - 1e-6 or lat.max() > 90.0 + 1e-6:
        return f"latitudes run from {lat.min():g} to {lat.max():g}; they must lie within [-90, 90]"
    if lat.size > 1 and not (np.all(np.diff(lat) > 0) or np.all(np.diff(lat) < 0)):
        return "latitudes are not monotonic"
    unwrapped = monotonic_longitudes(lon)
    if lon.size > 1 and np.all(np.diff(unwrapped) < 0):
        return f"longitudes decrease (from {lon[0]:g} to {lon[-1]:g}); they must increase from west to east"
    if lon.size > 1 and not np.all(np.diff(unwrapped) > 0):
        return "longitudes are not monotonic"
    span = float(unwrapped[-1] - unwrapped[0])
    if span > 360.0 + 1e-6:
        return f"longitudes span {span:g} degrees (from {lon[0]:g} to {lon[-1]:g}); at most 360 go round the sphere"
    return None


def _bands(lat):
    """``sin(north bound) - sin(south bound)`` of each row (H,)."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lat_b = cell_bounds(lat, -90.0, 90.0)
    if lat.size > 1:  # an outer row within one spacing of a pole reaches it (global grids)
        for end, inner, k in ((lat[0], lat[1], 0), (lat[-1], lat[-2], -1)):
            if abs(end) + abs(end - inner) >= 90.0 - 1e-9:
                lat_b[k] = np.sign(end) * 90.0
    lat_b = np.deg2rad(lat_b)
    return np.abs(np.sin(lat_b[1:]) - np.sin(lat_b[:-1]))


def _widths(lon):
    """Longitude width of each column in radians (W,)."""
    lon = np.rad2deg(np.unwrap(np.deg2rad(np.asarray(lon, dtype=np.float64).reshape(-1))))
    return np.abs(np.diff(np.deg2rad(cell_bounds(lon))))


def cell_areas(lat, lon):
    """Area of every grid cell in km^2, float64 (H, W), from cell-centre ``lat`` and ``lon``
    (degrees; any monotonic spacing)."""
    return EARTH_RADIUS_KM**2 * _bands(lat)[:, None] * _widths(lon)[None, :]


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between points given in degrees (broadcasts)."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dp = p2 - p1
    dl = np.deg2rad(np.asarray(lon2, dtype=np.float64) - lon1)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def central_angle(lat1, lon1, lat2, lon2):
    """Great-circle angle (radians) between points given in degrees (broadcasts), by the
    spherical law of cosines ``arccos(sin p1 sin p2 + cos p1 cos p2 cos(l2 - l1))`` (the cosine
    clipped to [-1, 1]). Times :data:`EARTH_RADIUS_M` it is the distance the synthetic
    generators space their features by; :func:`haversine_km` is better conditioned for
    short distances."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(lon2 - lon1)
    cos = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return np.arccos(np.clip(cos, -1.0, 1.0))


def degrees_of_latitude(north_m):
    """Degrees of latitude spanned by ``north_m`` metres along a meridian: ``north / R`` in degrees."""
    return np.rad2deg(north_m / EARTH_RADIUS_M)


def degrees_of_longitude(east_m, lat, min_cos=0.0):
    """Degrees of longitude spanned by ``east_m`` metres along the latitude circle ``lat``
    (degrees): ``east / (R max(cos lat, min_cos))`` in degrees; ``min_cos`` keeps a step near
    the poles finite."""
    return np.rad2deg(east_m / (EARTH_RADIUS_M * np.maximum(np.cos(np.deg2rad(lat)), min_cos)))


def diameter_km(lat, lon, samples=4000):
    """Largest great-circle distance (km) between two of the points ``(lat, lon)`` (degrees,
    1-D): two farthest-point sweeps from the first point, over at most ``samples`` points
    evenly picked. The length of an object on the sphere (e.g. an atmospheric river's)."""
    if lat.size > samples:
        pick = np.linspace(0, lat.size - 1, samples).astype(np.int64)
        lat, lon = lat[pick], lon[pick]
    a = np.argmax(haversine_km(lat[0], lon[0], lat, lon))
    b = np.argmax(haversine_km(lat[a], lon[a], lat, lon))
    return float(haversine_km(lat[b], lon[b], lat, lon).max())


def unit_vectors(lat, lon):
    """(x, y, z) of points on the unit sphere, each shaped like ``lat`` and ``lon`` broadcast."""
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi) * np.ones_like(lam)


def from_unit_vectors(x, y, z):
    """(lat, lon) in degrees of the directions (x, y, z) (need not be normalised);
    longitudes in [0, 360)."""
    lat = np.rad2deg(np.arctan2(z, np.hypot(x, y)))
    lon = np.rad2deg(np.arctan2(y, x)) % 360.0
    return lat, lon


def centroid(lat, lon, weights=None):
    """Centroid on the sphere (lat, lon degrees) of points with optional weights (e.g. areas)."""
    x, y, z = unit_vectors(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64))
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    return from_unit_vectors((w * x).sum(), (w * y).sum(), (w * z).sum())


# ----------------------------------------------------------------------------- connected components


def label_components(mask, periodic=True):
    """Connected regions of a boolean (H, W) mask, 8-connected, joined across the date
    line when ``periodic`` (global longitude), never across the poles. Returns
    ``(labels int32, count)`` with labels ``1..count`` (0 outside), numbered in the order
    ``scipy.ndimage.label`` first meets them."""
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED, output=np.int32)
    if not periodic or n < 2 or labels.shape[1] < 2:
        return labels, n
    west, east = labels[:, 0], labels[:, -1]
    pairs_a, pairs_b = [west], [east]
    pairs_a += [west[1:], west[:-1]]  # west row i with east rows i-1 and i+1
    pairs_b += [east[:-1], east[1:]]
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    keep = (a > 0) & (b > 0) & (a != b)
    if not keep.any():
        return labels, n
    return _merge_labels(labels, n, a[keep], b[keep])


def _merge_labels(labels, n, a, b):
    """Join label pairs (a[i], b[i]); renumber 1..count by each group's smallest label."""
    relabel, count = _merge_map(n, a, b)
    return relabel[labels], count


def _merge_map(n, a, b):
    """Lookup (n + 1,) int32 from labels 0..n to merged labels 1..count (0 stays 0) when
    the pairs (a[i], b[i]) are joined; groups numbered by their smallest label."""
    graph = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n + 1, n + 1))
    _, group = csgraph.connected_components(graph, directed=False)
    smallest = np.full(group.max() + 1, n + 1, dtype=np.int64)
    np.minimum.at(smallest, group, np.arange(n + 1))
    root = smallest[group]  # each label's group representative
    unique = np.unique(root[1:])
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[1:] = np.searchsorted(unique, root[1:]) + 1
    return relabel, int(unique.size)


def label_classes_sparse(classes, num_classes=3, periodic=True):
    """Components of every class > 0 of an integer (H, W) class map, numbered together,
    in sparse form: ``(index, component, component_class)`` where ``index`` (K,) are the
    flat indices of the labelled cells (ascending), ``component`` (K,) int32 their component
    (1..n) and ``component_class`` (n + 1,) each component's class (entry 0 is 0).

    One ``scipy.ndimage.label`` of all labelled cells serves every class when no component
    mixes classes (touching objects of different classes); otherwise each class is labelled
    on its own. Everything after the labelling works on the labelled cells only."""
    classes = np.asarray(classes)
    h, w = classes.shape
    nonzero = classes != 0
    index = np.flatnonzero(nonzero)
    if index.size == 0:
        return index, np.zeros(0, np.int32), np.zeros(1, np.int64)
    first, last = index[0] // w, index[-1] // w
    if first > 0 or last < h - 1:  # label only the band of rows that holds objects
        index, comp, owner = label_classes_sparse(classes[first : last + 1], num_classes, periodic)
        return index + first * w, comp, owner
    cls = classes.reshape(-1)[index].astype(np.int64)
    labels, n = ndimage.label(nonzero, structure=EIGHT_CONNECTED, output=np.int32)
    comp = labels.reshape(-1)[index]
    key = np.unique(comp.astype(np.int64) * num_classes + cls)
    owner = np.zeros(n + 1, np.int64)
    owner[key // num_classes] = key % num_classes
    if key.size != n:  # a component mixes classes: label each class apart
        comp = np.zeros(index.size, np.int32)
        owners, offset = [np.zeros(1, np.int64)], 0
        for c in range(1, num_classes):
            lab, m = label_components(classes == c, periodic)
            if m:
                sel = cls == c
                comp[sel] = lab.reshape(-1)[index[sel]] + offset
                owners.append(np.full(m, c, np.int64))
                offset += m
        return index, comp, np.concatenate(owners)
    if periodic and n > 1 and w > 1:
        west, east = labels[:, 0], labels[:, -1]
        cw, ce = classes[:, 0], classes[:, -1]
        a = np.concatenate([west, west[1:], west[:-1]])
        b = np.concatenate([east, east[:-1], east[1:]])
        same = np.concatenate([cw == ce, cw[1:] == ce[:-1], cw[:-1] == ce[1:]])
        keep = (a > 0) & (b > 0) & (a != b) & same
        if keep.any():
            relabel, count = _merge_map(n, a[keep], b[keep])
            merged = np.zeros(count + 1, np.int64)
            merged[relabel] = owner
            return index, relabel[comp], merged
    return index, comp, owner


def label_classes(classes, num_classes=3, periodic=True):
    """Dense form of :func:`label_classes_sparse`: ``(labels int32 (H, W), component_class)``."""
    index, comp, owner = label_classes_sparse(classes, num_classes, periodic)
    labels = np.zeros(np.asarray(classes).size, np.int32)
    labels[index] = comp
    return labels.reshape(np.shape(classes)), owner


def grid_weights(lat, lon):
    """Per-row and per-column factors of a grid for :func:`cell_weights` (a cell's area is
    ``R^2 * band[row] * width[col]``, its unit vector from cos/sin of its lat and lon)."""
    lat = np.asarray(lat, np.float64).reshape(-1)
    lon = np.asarray(lon, np.float64).reshape(-1)
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return dict(
        width_cells=lon.size,
        band=EARTH_RADIUS_KM**2 * _bands(lat),
        lon_width=_widths(lon),
        cos_lat=np.cos(phi),
        sin_lat=np.sin(phi),
        cos_lon=np.cos(lam),
        sin_lon=np.sin(lam),
    )


def cell_weights(weights, index):
    """Areas (km^2) and area-weighted unit vectors (x, y, z) of the cells at flat ``index``."""
    row, col = np.divmod(index, weights["width_cells"])
    area = weights["band"][row] * weights["lon_width"][col]
    horizontal = area * weights["cos_lat"][row]
    return (
        area,
        horizontal * weights["cos_lon"][col],
        horizontal * weights["sin_lon"][col],
        area * weights["sin_lat"][row],
    )


def component_stats(labels, count, weights):
    """Per-component pixel count, area (km^2) and area-weighted unit-vector sums
    ``(pixels (count,), area (count,), vectors (count, 3))`` of ``labels`` (1..count),
    with ``weights`` from :func:`grid_weights`; :func:`from_unit_vectors` of the vectors
    gives the centroids."""
    flat = np.asarray(labels).reshape(-1)
    index = np.flatnonzero(flat)
    comp = flat[index]
    size = count + 1
    pixels = np.bincount(comp, minlength=size)[1:]
    sums = [np.bincount(comp, weights=v, minlength=size)[1:] for v in cell_weights(weights, index)]
    return pixels, sums[0], np.stack(sums[1:], axis=-1)


# ----------------------------------------------------------------------------- grid spacings


def grid_spacings_km(lat, lon):
    """Spacing of a latitude-longitude grid in km: ``(north_south (H,), east_west (H,))``, the
    distance between neighbouring rows (centred differences of the latitudes, one-sided at
    the ends) and between neighbouring columns along each latitude circle (``R cos(lat) dlon``
    with the mean longitude step). Any monotonic latitudes (e.g. Gaussian)."""
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.rad2deg(np.unwrap(np.deg2rad(np.asarray(lon, dtype=np.float64).reshape(-1))))
    km_per_degree = np.deg2rad(1.0) * EARTH_RADIUS_KM
    north_south = np.abs(np.gradient(lat)) * km_per_degree if lat.size > 1 else np.full(lat.size, np.nan)
    step = abs(lon[-1] - lon[0]) / (lon.size - 1) if lon.size > 1 else np.nan
    east_west = km_per_degree * step * np.cos(np.deg2rad(lat))
    return north_south, east_west
