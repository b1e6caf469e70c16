"""Per-channel normalisation statistics in the DeepCAM ``stats.h5`` layout.

``stats.h5`` holds float arrays of length 16 (one per channel, standard order):
``climate/minval``, ``climate/maxval`` and, when present, ``climate/mean`` and
``climate/sqmean`` (mean of squares). climseg's generator also writes
``climate/class_frequencies`` (pixel fraction of each class in the training
split); other readers ignore it.

Normalisation maps a raw field x to ``(x - shift) * scale``:
``"minmax"`` (MLPerf DeepCAM): shift = min, scale = 1 / (max - min);
``"zscore"``: shift = mean, scale = 1 / sqrt(sqmean - mean**2).
"""

import dataclasses
import os

import h5py
import numpy as np

from climseg.constants import CHANNELS
from climseg.errors import DataError, UserError
from climseg.output import atomic_path

NORMALIZATIONS = ("minmax", "zscore")


@dataclasses.dataclass
class ChannelStats:
    """Per-channel statistics of a dataset, in the standard channel order."""

    minval: np.ndarray
    maxval: np.ndarray
    mean: np.ndarray = None
    sqmean: np.ndarray = None
    class_frequencies: np.ndarray = None
    path: str = None

    def normalization(self, method="minmax", channels=None):
        """Return ``(shift, scale)`` float32 arrays for the given channel indices."""
        idx = list(range(len(self.minval))) if channels is None else list(channels)
        where = self.path or "statistics"
        if method == "minmax":
            lo = self.minval[idx].astype(np.float64)
            span = self.maxval[idx].astype(np.float64) - lo
            bad = [CHANNELS[i] if i < len(CHANNELS) else str(i) for i, s in zip(idx, span) if not s > 0]
            if bad:
                raise DataError(f"{where}: maxval is not above minval for channel(s) {', '.join(bad)}")
            return lo.astype(np.float32), (1.0 / span).astype(np.float32)
        if method == "zscore":
            if self.mean is None or self.sqmean is None:
                raise DataError(f"{where}: zscore normalization needs climate/mean and climate/sqmean")
            mean = self.mean[idx].astype(np.float64)
            var = self.sqmean[idx].astype(np.float64) - mean**2
            bad = [CHANNELS[i] if i < len(CHANNELS) else str(i) for i, v in zip(idx, var) if not v > 0]
            if bad:
                raise DataError(f"{where}: sqmean - mean**2 is not positive for channel(s) {', '.join(bad)}")
            return mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32)
        raise UserError(f"unknown normalization {method!r} (choose from {', '.join(NORMALIZATIONS)})")


def read_stats(path):
    """Read a DeepCAM ``stats.h5``; raise DataError naming the file on any problem."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: statistics file not found")
    try:
        with h5py.File(path, "r") as f:

            def get(name, required):
                key = f"climate/{name}"
                if key not in f:
                    if required:
                        raise DataError(f"{path}: missing dataset {key}")
                    return None
                arr = np.asarray(f[key][...], dtype=np.float64).reshape(-1)
                if not np.all(np.isfinite(arr)):
                    raise DataError(f"{path}: {key} holds NaN or Inf")
                return arr

            stats = ChannelStats(
                minval=get("minval", True),
                maxval=get("maxval", True),
                mean=get("mean", False),
                sqmean=get("sqmean", False),
                class_frequencies=get("class_frequencies", False),
                path=path,
            )
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({_short(exc)})") from None
    n = len(stats.minval)
    for name in ("maxval", "mean", "sqmean"):
        arr = getattr(stats, name)
        if arr is not None and len(arr) != n:
            raise DataError(f"{path}: climate/{name} has {len(arr)} values, climate/minval has {n}")
    return stats


def write_stats(path, stats):
    """Write ``stats`` to ``path`` in the DeepCAM layout, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name in ("minval", "maxval", "mean", "sqmean", "class_frequencies"):
            arr = getattr(stats, name)
            if arr is not None:
                f.create_dataset(f"climate/{name}", data=np.asarray(arr, dtype=np.float32))


def find_stats(root):
    """The ``stats.h5`` beside a folder of samples: in it, or in its parent."""
    for candidate in (os.path.join(root, "stats.h5"), os.path.join(os.path.dirname(os.path.abspath(root)), "stats.h5")):
        if os.path.isfile(candidate):
            return candidate
    raise DataError(f"{root}: no stats.h5 in this folder or its parent; pass the statistics file explicitly")


def _short(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
