"""ClimateNet's linking rules for :mod:`climseg.analytics.track` (``climseg track --like climatenet``):
the events of ClimateNet's ``track_events`` on any series, computed the climseg way (labelled cells
only, sparse graphs), not by ClimateNet's per-pixel scan.

ClimateNet's ``track_events`` (``climatenet/track_events.py`` in andregraubner/ClimateNet, read
2026-11-30) labels each step's objects by a breadth-first search in row-major order and then walks the
steps in time order and each step's cells in row-major order. What that walk amounts to, and what
this module computes:

* **Objects** are 8-connected per class on a grid that wraps in both directions: across the date line
  on any grid (regional ones too) and from the first row to the last (across the poles).
  :func:`label_torus` labels them and numbers them 1..n in the order of their first cell in the
  file's row-major order (:func:`row_major_keys`; latitudes stored north to south count from the
  north). A step with more than :data:`MAX_OBJECTS` objects is refused: ClimateNet's event ids start
  at 1000, and its walk would take an object numbered 1000 for an event.
* **Size**: an object is kept when it has at least the threshold's pixels and at least 2 (its
  counting never reaches the threshold for a single cell); the threshold is applied by
  :func:`climseg.analytics.track_options.size_thresholds`.
* **Links** (:func:`parent_links`): an object of step t takes the event of one object it overlaps (same
  class, kept) at steps t - look_ahead .. t - 1: the earliest such step, and in it the object that
  holds the first overlapping cell in row-major order. Every other overlap is ignored, so where two
  events merge the later-found one ends, and where one splits both parts keep its event. An object
  numbered above :data:`MAX_CONTINUING` in its step never takes an earlier event: it starts a new
  one (ClimateNet looks only at numbers below 100 in the steps ahead).
* **Events** are the trees of these links; those seen on fewer than ``min_steps`` steps are dropped,
  and the rest are numbered in the order ClimateNet creates them (by first step, then by the first
  cell of their first object).
"""

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from climseg import sphere
from climseg.constants import NUM_CLASSES
from climseg.errors import DataError

MAX_OBJECTS = 999  # ClimateNet's event ids start at 1000
MAX_CONTINUING = 99  # ClimateNet links an object of a later step only while its number is below 100


def row_major_keys(index, shape, flipped):
    """Position in the file's row-major order of the cells at flat ``index`` (rows south to north) of a
    grid of ``shape`` (H, W) whose file stores its rows north to south when ``flipped``."""
    if not flipped:
        return index.astype(np.int64)
    h, w = shape
    row, col = np.divmod(index.astype(np.int64), w)
    return (h - 1 - row) * w + col


def _join_first_and_last_rows(index, comp, owner, shape):
    """Components joined across the seam between the first and the last row (8-connected, the
    columns wrapped), as ClimateNet's wrap-around joins them."""
    h, w = shape
    n = owner.size - 1
    if h < 3 or n < 2:  # one or two rows: the wrap adds no neighbour
        return comp, owner
    first, last = np.zeros(w, np.int64), np.zeros(w, np.int64)
    low, high = index < w, index >= (h - 1) * w
    first[index[low]] = comp[low]
    last[index[high] - (h - 1) * w] = comp[high]
    a = np.concatenate([first, first, first])
    b = np.concatenate([last, np.roll(last, 1), np.roll(last, -1)])  # columns j, j - 1, j + 1 of the last row
    keep = (a > 0) & (b > 0) & (a != b)
    keep[keep] = owner[a[keep]] == owner[b[keep]]
    if not keep.any():
        return comp, owner
    graph = sparse.coo_matrix((np.ones(int(keep.sum()), np.int8), (a[keep], b[keep])), shape=(n + 1, n + 1))
    count, group = csgraph.connected_components(graph, directed=False)
    # label 0 is in no pair, so its group holds it alone: that group becomes 0, the others 1..count-1
    g0 = group[0]
    group = np.where(group == g0, 0, np.where(group < g0, group + 1, group))
    merged = np.zeros(count, np.int64)
    merged[group] = owner
    return group[comp].astype(np.int32), merged


def label_torus(mask, flipped=False):
    """Objects of every class of the class mask ``mask`` (H, W), rows south to north, as ClimateNet
    finds them: ``(index, component, component_class)`` as
    :func:`climseg.sphere.label_classes_sparse` gives them, with the grid wrapped in both directions
    and the components numbered 1..n by their first cell in the file's row-major order (``flipped``:
    the file stores its rows north to south). DataError beyond :data:`MAX_OBJECTS` objects."""
    index, comp, owner = sphere.label_classes_sparse(mask, NUM_CLASSES, periodic=True)
    comp, owner = _join_first_and_last_rows(index, comp, owner, mask.shape)
    n = owner.size - 1
    if n > MAX_OBJECTS:
        raise DataError(
            f"{n} objects at one step: ClimateNet's track_events numbers a step's objects below 1000 "
            "(its event ids start there), so its rules (--like climatenet) are not defined here"
        )
    if n == 0:
        return index, comp, owner
    first = np.full(n + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, comp, row_major_keys(index, mask.shape, flipped))
    order = np.argsort(first[1:], kind="stable") + 1  # old numbers in row-major order of first cells
    renumber = np.zeros(n + 1, np.int32)
    renumber[order] = np.arange(1, n + 1, dtype=np.int32)
    return index, renumber[comp], np.concatenate([[0], owner[order]])


def first_overlap_keys(codes, keys):
    """Per distinct value of ``codes`` (ascending, as ``np.unique`` gives them), the smallest of the
    ``keys`` that share it: ``(codes, keys)``."""
    order = np.lexsort((keys, codes))
    codes, keys = codes[order], keys[order]
    first = np.concatenate([[True], codes[1:] != codes[:-1]])
    return codes[first], keys[first]


def parent_links(a, b, step_a, key, rank_b):
    """The links ClimateNet keeps among the overlaps (node ``a[i]`` of step ``step_a[i]`` with node
    ``b[i]``, first shared cell ``key[i]`` in row-major order; ``rank_b[i]``: the number of ``b[i]``
    in its step): per node ``b`` whose number is at most :data:`MAX_CONTINUING`, the overlap of the
    earliest step and, in it, of the first shared cell. Returns ``(a, b)`` of those links."""
    ok = rank_b <= MAX_CONTINUING
    a, b, step_a, key = a[ok], b[ok], step_a[ok], key[ok]
    if a.size == 0:
        return a, b
    order = np.lexsort((key, step_a, b))
    b_sorted = b[order]
    first = np.concatenate([[True], b_sorted[1:] != b_sorted[:-1]])
    return a[order][first], b_sorted[first]
