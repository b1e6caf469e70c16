"""The MLPerf HPC DeepCAM layout, unchanged: its one reader and writer.

One HDF5 file per sample: ``climate/data`` float32 of shape (height, width, 16)
in H x W x C order, ``climate/labels_0`` integers of shape (height, width) with
0 background, 1 tropical cyclone, 2 atmospheric river. A ``stats.h5`` beside
the files (see :mod:`climseg.data.stats`) gives the normalisation.

``DeepCAMDataset[i]`` reads file i, checks it, selects channels, normalises
and returns ``(data, labels)``: float32 (C, H, W) and int64 (H, W).
:func:`check_sample_file` is the quick check of an input before any work (``climseg
predict``, ``climseg label``). Training sets are written by :func:`write_sample` (one
sample), :func:`sample_statistics` (each sample's partial sums, computed where the sample
is made) and :func:`dataset_statistics` (the partial sums reduced to the ``stats.h5``
contents): the generator and ``climseg label --dataset`` share them.
"""

import glob
import os

import h5py
import numpy as np
import torch

from climseg.constants import CHANNELS, NUM_CLASSES
from climseg.data.stats import ChannelStats, find_stats, read_stats
from climseg.errors import DataError, MissingFileError, UserError, first_line
from climseg.output import atomic_path

DATA_KEY = "climate/data"
LABELS_KEY = "climate/labels_0"


def channel_indices(channels):
    """Channel names or indices -> indices into the standard order (None = all 16)."""
    if channels is None:
        return list(range(len(CHANNELS)))
    if isinstance(channels, str):
        channels = [c for c in channels.replace(",", " ").split() if c]
    upper = [c.upper() for c in CHANNELS]
    out = []
    for c in channels:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= c < len(CHANNELS):
                raise UserError(f"channel index {c} is out of range 0..{len(CHANNELS) - 1}")
            out.append(int(c))
        elif isinstance(c, str) and c.upper() in upper:
            out.append(upper.index(c.upper()))
        else:
            raise UserError(f"unknown channel {c!r} (known: {', '.join(CHANNELS)})")
    if len(set(out)) != len(out):
        raise UserError(f"channel list {list(channels)} names a channel twice")
    if not out:
        raise UserError("the channel list is empty")
    return out


def grid(height, width):
    """Cell-centre latitudes (ascending, degrees N) and longitudes (0..360, degrees E) of the
    global regular grid of a sample: the grid the synthetic generator makes, and the one
    assumed for a DeepCAM sample, which carries no coordinates (rows south to north)."""
    lat = -90.0 + (np.arange(height) + 0.5) * 180.0 / height
    lon = np.arange(width) * 360.0 / width
    return lat, lon


def list_samples(root):
    """Sorted sample files of a DeepCAM folder (every ``*.h5`` but ``stats.h5``)."""
    if not os.path.exists(root):
        raise MissingFileError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder")
    try:
        os.listdir(root)  # glob hides an unreadable folder as an empty one
    except OSError as exc:
        raise DataError(f"{root}: cannot read this folder ({exc.strerror})") from None
    files = sorted(p for p in glob.glob(os.path.join(root, "*.h5")) if os.path.basename(p) != "stats.h5")
    if not files:
        raise DataError(f"{root}: no .h5 sample files in this folder")
    return files


def read_sample(path, channels=None, labels=True, check_values=True, num_classes=NUM_CLASSES):
    """Read one DeepCAM sample as numpy arrays ``(data[H, W, C] float32, labels[H, W] int64)``.

    Raises DataError naming the file for anything that is not a well-formed
    sample: unreadable file, missing dataset, wrong rank or channel count,
    NaN/Inf values, labels outside ``0..num_classes-1``. ``labels=False`` skips
    the labels (returns None for them), as for inference.
    """
    idx = channel_indices(channels)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    with f:
        if DATA_KEY not in f:
            raise DataError(f"{path}: missing dataset {DATA_KEY}")
        dset = f[DATA_KEY]
        if dset.ndim != 3 or dset.shape[2] != len(CHANNELS):
            raise DataError(
                f"{path}: {DATA_KEY} has shape {tuple(dset.shape)}; expected (height, width, {len(CHANNELS)})"
            )
        if not np.issubdtype(dset.dtype, np.floating):
            raise DataError(f"{path}: {DATA_KEY} has dtype {dset.dtype}; expected floating point")
        try:
            data = dset[...]
        except OSError as exc:
            raise DataError(f"{path}: cannot read {DATA_KEY} ({str(exc).splitlines()[0]})") from None
        lab = None
        if labels:
            if LABELS_KEY not in f:
                raise DataError(f"{path}: missing dataset {LABELS_KEY}")
            ldset = f[LABELS_KEY]
            if tuple(ldset.shape) != tuple(dset.shape[:2]):
                raise DataError(
                    f"{path}: {LABELS_KEY} has shape {tuple(ldset.shape)}; expected {tuple(dset.shape[:2])}"
                )
            try:
                lab = ldset[...]
            except OSError as exc:
                raise DataError(f"{path}: cannot read {LABELS_KEY} ({str(exc).splitlines()[0]})") from None
    if len(idx) != len(CHANNELS) or idx != list(range(len(CHANNELS))):
        data = data[..., idx]
    data = np.ascontiguousarray(data, dtype=np.float32)
    if check_values:
        check_finite(path, data, [CHANNELS[i] for i in idx])
    if lab is not None:
        lab = check_labels(path, lab, num_classes)
    return data, lab


def check_sample_file(path):
    """Check that ``path`` is a readable DeepCAM sample (``climate/data`` of shape (H, W, 16))
    without reading its data; returns ``((H, W), has_labels)``. DataError naming the file
    otherwise (the message allows for a netCDF file given by mistake)."""
    try:
        with h5py.File(path, "r") as f:
            if DATA_KEY not in f:
                raise DataError(f"{path}: missing dataset {DATA_KEY}")
            shape = f[DATA_KEY].shape
            has_labels = LABELS_KEY in f
    except OSError as exc:
        raise DataError(f"{path}: neither a readable HDF5 nor a netCDF file ({first_line(exc)})") from None
    if len(shape) != 3 or shape[2] != len(CHANNELS):
        raise DataError(f"{path}: {DATA_KEY} has shape {tuple(shape)}; expected (height, width, {len(CHANNELS)})")
    return tuple(shape[:2]), has_labels


#: how :func:`write_sample` compresses when asked: gzip (zlib, which every HDF5 reader has) at level 1
#: after byte shuffling, one chunk per dataset. On the default set's 192 x 288 samples: 2.6 MB instead of
#: 3.8 MB; FastLoader then reads them with h5py instead of by offset (docs/data.md, "Compressed samples").
COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=True)


def write_sample(path, data, labels, compress=False):
    """Write one sample in the DeepCAM layout, atomically: contiguous datasets (which FastLoader's
    C++ reader reads by offset), or with ``compress`` both datasets compressed (:data:`COMPRESSION`)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in ((DATA_KEY, np.asarray(data)), (LABELS_KEY, np.asarray(labels))):
            f.create_dataset(key, data=value, **(dict(COMPRESSION, chunks=value.shape) if compress else {}))


def sample_statistics(data, labels, num_classes=NUM_CLASSES):
    """Partial statistics of one sample (``data`` (H, W, C), ``labels`` (H, W)) for
    :func:`dataset_statistics`: per-channel ``min``, ``max``, ``sum``, ``sumsq`` (float64),
    the cell ``count`` and the ``classes`` histogram."""
    d64 = data.reshape(-1, data.shape[-1]).astype(np.float64)
    return dict(
        min=d64.min(axis=0),
        max=d64.max(axis=0),
        sum=d64.sum(axis=0),
        sumsq=(d64 * d64).sum(axis=0),
        count=d64.shape[0],
        classes=np.bincount(labels.reshape(-1), minlength=num_classes),
    )


def dataset_statistics(partials):
    """The :class:`~climseg.data.stats.ChannelStats` of a training set from its samples'
    :func:`sample_statistics` (in a fixed order, so the sums are reproducible): minimum,
    maximum, mean, mean of squares and class frequencies."""
    count = sum(p["count"] for p in partials)
    classes = sum(p["classes"] for p in partials).astype(np.float64)
    return ChannelStats(
        minval=np.min([p["min"] for p in partials], axis=0),
        maxval=np.max([p["max"] for p in partials], axis=0),
        mean=sum(p["sum"] for p in partials) / count,
        sqmean=sum(p["sumsq"] for p in partials) / count,
        class_frequencies=classes / classes.sum(),
    )


def check_finite(path, data, names):
    """DataError naming the file and the channels if ``data[..., c]`` holds NaN or Inf."""
    finite = np.isfinite(data)
    if finite.all():
        return
    bad = np.flatnonzero(~finite.reshape(-1, data.shape[-1]).all(axis=0))
    count = int((~finite).sum())
    raise DataError(f"{path}: {count} NaN/Inf value(s) in channel(s) {', '.join(names[i] for i in bad)}")


def check_labels(path, lab, num_classes=NUM_CLASSES):
    """Labels as int64, or DataError if they are not whole numbers in ``0..num_classes-1``."""
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise DataError(f"{path}: {LABELS_KEY} holds values that are not class indices")
    elif not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"{path}: {LABELS_KEY} has dtype {lab.dtype}; expected integers")
    out = lab.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        found = sorted(set(np.unique(out[(out < 0) | (out >= num_classes)]).tolist()))[:5]
        raise DataError(f"{path}: {LABELS_KEY} holds values outside 0..{num_classes - 1} (found {found})")
    return out


class DeepCAMDataset(torch.utils.data.Dataset):
    """A folder of DeepCAM HDF5 samples as a map-style torch Dataset.

    Args:
        root: folder of ``*.h5`` samples (``stats.h5`` excluded), or a list of sample files.
        stats: a ``stats.h5`` path or :class:`ChannelStats`; default: the
            ``stats.h5`` in ``root`` or in its parent folder.
        channels: channel names (``["TMQ", "U850", ...]``) or indices; default all 16.
        normalization: ``"minmax"`` (MLPerf: ``(x - min) / (max - min)``) or
            ``"zscore"`` (``(x - mean) / sqrt(sqmean - mean**2)``).
        check_values: reject samples holding NaN/Inf or labels outside 0..2.

    Items are ``(data, labels)``: float32 tensor (C, H, W), int64 tensor (H, W).
    Every sample must have the shape of the first one.
    """

    def __init__(self, root, stats=None, channels=None, normalization="minmax", check_values=True):
        if isinstance(root, (list, tuple)):
            self.files = [os.fspath(p) for p in root]
            if not self.files:
                raise DataError("empty list of sample files")
            folder = os.path.dirname(os.path.abspath(self.files[0]))
        else:
            root = os.fspath(root)
            self.files = list_samples(root)
            folder = root
        self.root = folder
        if stats is None:
            stats = find_stats(folder)
        self.stats = stats if isinstance(stats, ChannelStats) else read_stats(os.fspath(stats))
        if len(self.stats.minval) != len(CHANNELS):
            raise DataError(
                f"{self.stats.path}: holds statistics for {len(self.stats.minval)} channels; expected {len(CHANNELS)}"
            )
        self.channel_index = channel_indices(channels)
        self.channels = [CHANNELS[i] for i in self.channel_index]
        self.normalization = normalization
        shift, scale = self.stats.normalization(normalization, self.channel_index)
        self.shift = shift.reshape(-1, 1, 1)
        self.scale = scale.reshape(-1, 1, 1)
        self.check_values = check_values
        self.shape = self._peek_shape(self.files[0])

    @staticmethod
    def _peek_shape(path):
        data, _ = read_sample(path, labels=True, check_values=False)
        return tuple(data.shape[:2])

    def __len__(self):
        return len(self.files)

    def read_raw(self, index):
        """Raw (un-normalised) ``(data[H, W, C], labels[H, W])`` numpy arrays of sample ``index``."""
        path = self.files[index]
        data, lab = read_sample(path, self.channel_index, check_values=self.check_values)
        if tuple(data.shape[:2]) != self.shape:
            raise DataError(
                f"{path}: {DATA_KEY} is {data.shape[0]}x{data.shape[1]} but the first sample is "
                f"{self.shape[0]}x{self.shape[1]}"
            )
        return data, lab

    def __getitem__(self, index):
        data, lab = self.read_raw(index)
        chw = np.ascontiguousarray(data.transpose(2, 0, 1))
        chw -= self.shift
        chw *= self.scale
        return torch.from_numpy(chw), torch.from_numpy(lab)
