"""ClimateNet-layout training data: folders of CAM5 netCDF files with a ``LABELS`` variable.

Layout (Prabhat et al. 2021, the expert-labelled ClimateNet dataset; andregraubner/ClimateNet)::

    DIR/train/*.nc                  variables on (time, lat, lon) or (lat, lon), and LABELS
    DIR/validation/*.nc or DIR/test/*.nc
    DIR/config.json                 optional: ClimateNet's config, whose "fields" block gives
                                    each variable's mean and std (z-score normalisation)

Every time step of every file is one sample (a file without a time dimension is one sample).
Channels: any subset of climseg's 16 names (matched without regard to case); default the
``fields`` of ``config.json``, else ClimateNet's default four (TMQ, U850, V850, PSL).
Normalisation: the ``config.json`` mean/std when it lists every chosen channel, else statistics
computed from the training split (min, max, mean, mean of squares; at most
``STATS_SAMPLES`` steps evenly spread), with ``--normalization`` minmax or zscore. Class
frequencies for the loss weights always come from the training labels (same steps).

Data flow: :func:`index_folder` opens each file once (netCDF4: grid, orientation, time steps,
variable names) -> a list of (file, step) samples -> :func:`read_step` reads one step's
selected variables and labels with h5py (netCDF-4 is HDF5; netCDF-3 files fall back to netCDF4)
into (H, W, C) float32, rows south to north -> :class:`ClimateNetDataset` (torch Dataset:
normalises in NumPy) or :class:`~climseg.data.climatenet_loader.NetCDFLoader` (the
:class:`~climseg.data.loader.FastLoader` interface).
"""

import dataclasses
import glob
import json
import os

import h5py
import numpy as np
import torch

from climseg.constants import CHANNELS, CLASS_NAMES, NUM_CLASSES
from climseg.data.deepcam import channel_indices, check_labels
from climseg.data.netcdf import open_netcdf
from climseg.data.stats import ChannelStats
from climseg.errors import ConfigError, DataError

CLIMATENET_CHANNELS = ("TMQ", "U850", "V850", "PSL")
LABELS_VAR = "LABELS"
STATS_SAMPLES = 64
SUFFIXES = (".nc", ".nc4")


def find_layout(root):
    """``(train_dir, validation_dir)`` when ``root`` is a ClimateNet-layout folder (``train/`` holding
    netCDF files, and ``validation/`` or ``test/``), else None."""
    train = os.path.join(root, "train")
    if not os.path.isdir(train) or not _netcdf_files(train):
        return None
    for name in ("validation", "test"):
        if os.path.isdir(os.path.join(root, name)):
            return train, os.path.join(root, name)
    raise DataError(f"{root}: ClimateNet layout needs validation/ or test/ beside train/")


def _netcdf_files(folder):
    return sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(SUFFIXES))


@dataclasses.dataclass
class Sample:
    path: str
    step: int  # index on the time axis; -1: the file has no time dimension
    variables: tuple  # file variable names of the chosen channels, in channel order
    labels: str  # file variable name of the labels
    flipped: bool  # rows stored north to south
    shape: tuple

    @property
    def key(self):
        return f"{self.path}[{self.step}]" if self.step >= 0 else self.path


def index_folder(folder, channels):
    """Every (file, time step) sample of a folder of netCDF files, checked: the chosen variables and
    ``LABELS`` present, one grid across the folder."""
    files = _netcdf_files(folder)
    if not files:
        raise DataError(f"{folder}: no netCDF (.nc) files in this folder")
    samples, shape = [], None
    for path in files:
        info = open_netcdf(path, list(channels) + [LABELS_VAR])
        grid = (len(info.lat), len(info.lon))
        if shape is None:
            shape = grid
        elif grid != shape:
            raise DataError(f"{path}: grid is {grid[0]}x{grid[1]} but {files[0]} is {shape[0]}x{shape[1]}")
        variables = tuple(info.variables[c] for c in channels)
        steps = [-1] if info.time_dim is None else range(len(info.times))
        samples += [Sample(path, t, variables, info.variables[LABELS_VAR], info.flipped, grid) for t in steps]
    return samples


def read_step(sample, labels=True):
    """``(fields[H, W, C] float32, labels[H, W] int64 or None)`` of one sample, rows south to north.
    DataError naming the file and step for missing values, NaN/Inf or labels outside 0..2."""
    try:
        f = h5py.File(sample.path, "r")
    except OSError:
        return _read_step_netcdf4(sample, labels)
    with f:
        fields = np.empty(sample.shape + (len(sample.variables),), np.float32)
        for k, name in enumerate(sample.variables):
            fields[..., k] = _h5_field(f, sample, name)
        lab = _h5_field(f, sample, sample.labels) if labels else None
    return _finish(sample, fields, lab)


def _h5_field(f, sample, name):
    d = f[name]
    try:
        return d[sample.step] if sample.step >= 0 else d[...]
    except OSError as exc:
        raise DataError(f"{sample.key}: cannot read {name} ({str(exc).splitlines()[0]})") from None


def _read_step_netcdf4(sample, labels):
    import netCDF4

    with netCDF4.Dataset(sample.path, "r") as ds:

        def get(name):
            v = ds.variables[name]
            x = v[sample.step] if sample.step >= 0 else v[...]
            if np.ma.is_masked(x):
                raise DataError(f"{sample.key}: variable {name} holds missing values")
            return np.asarray(x)

        fields = np.stack([get(n).astype(np.float32) for n in sample.variables], axis=-1)
        lab = get(sample.labels) if labels else None
    return _finish(sample, fields, lab)


def _finish(sample, fields, lab):
    if sample.flipped:
        fields = fields[::-1]
        lab = lab[::-1] if lab is not None else None
    fields = np.ascontiguousarray(fields)
    finite = np.isfinite(fields)
    if not finite.all():
        bad = [sample.variables[k] for k in range(fields.shape[-1]) if not finite[..., k].all()]
        raise DataError(f"{sample.key}: NaN/Inf value(s) in {', '.join(bad)}")
    if lab is not None:
        lab = check_labels(sample.key, np.ascontiguousarray(lab), NUM_CLASSES)
    return fields, lab


# ---------------------------------------------------------------------------------- statistics
def read_climatenet_config(path):
    """``(channels, mean, std, labels)`` from a ClimateNet ``config.json``."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ClimateNet config ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    fields = raw.get("fields") if isinstance(raw, dict) else None
    if not isinstance(fields, dict) or not fields:
        raise ConfigError(f"{path}: no 'fields' block of {{variable: {{mean, std}}}} (ClimateNet config.json)")
    channels, mean, std = [], [], []
    for name, stats in fields.items():
        if name not in CHANNELS:
            raise ConfigError(f"{path}: field {name!r} is not one of climseg's channels ({', '.join(CHANNELS)})")
        try:
            if any(isinstance(stats[k], bool) for k in ("mean", "std")):
                raise TypeError("a truth value is not a number")
            m, s = float(stats["mean"]), float(stats["std"])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"{path}: field {name!r} needs numeric 'mean' and 'std'") from None
        if not (np.isfinite(m) and np.isfinite(s) and s > 0):
            raise ConfigError(f"{path}: field {name!r} has mean {m} and std {s}; std must be positive and finite")
        channels.append(name)
        mean.append(m)
        std.append(s)
    labels = raw.get("labels", list(CLASS_NAMES))
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{path}: 'labels' is {labels!r}; expected a list of class names")
    return channels, np.array(mean, np.float32), np.array(std, np.float32), list(labels)


def read_fields_block(path):
    """ClimateNet ``config.json`` ``fields`` block as {channel: (mean, std)} (DataError if malformed)."""
    try:
        names, mean, std, _ = read_climatenet_config(path)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    return {n: (float(m), float(s)) for n, m, s in zip(names, mean, std)}


def compute_stats(samples, channel_index, limit=STATS_SAMPLES, where=None):
    """ChannelStats (16 entries; NaN for channels not chosen) from at most ``limit`` evenly spread
    samples: min, max, mean, mean of squares of each chosen channel, class frequencies of the labels."""
    picks = np.unique(np.linspace(0, len(samples) - 1, min(limit, len(samples))).round().astype(int))
    n = len(CHANNELS)
    lo, hi = np.full(n, np.nan), np.full(n, np.nan)
    total, squares = np.zeros(n), np.zeros(n)
    counts, pixels = np.zeros(NUM_CLASSES), 0
    for i in picks:
        fields, lab = read_step(samples[i])
        x = fields.reshape(-1, fields.shape[-1]).astype(np.float64)
        for k, c in enumerate(channel_index):
            lo[c] = np.nanmin([lo[c], x[:, k].min()])
            hi[c] = np.nanmax([hi[c], x[:, k].max()])
            total[c] += x[:, k].sum()
            squares[c] += (x[:, k] ** 2).sum()
        pixels += x.shape[0]
        counts += np.bincount(lab.reshape(-1), minlength=NUM_CLASSES)[:NUM_CLASSES]
    mean, sqmean = np.full(n, np.nan), np.full(n, np.nan)
    mean[channel_index] = total[channel_index] / pixels
    sqmean[channel_index] = squares[channel_index] / pixels
    return ChannelStats(
        minval=lo,
        maxval=hi,
        mean=mean,
        sqmean=sqmean,
        class_frequencies=counts / counts.sum(),
        path=where or f"statistics of {len(picks)} training steps",
    )


def stats_from_fields(fields, channel_index, class_frequencies, where):
    """ChannelStats whose mean and mean of squares reproduce a ``fields`` block's mean and std."""
    n = len(CHANNELS)
    mean, sqmean = np.full(n, np.nan), np.full(n, np.nan)
    for c in channel_index:
        m, s = fields[CHANNELS[c]]
        mean[c], sqmean[c] = m, s * s + m * m
    return ChannelStats(
        minval=np.full(n, np.nan),
        maxval=np.full(n, np.nan),
        mean=mean,
        sqmean=sqmean,
        class_frequencies=class_frequencies,
        path=where,
    )


def open_climatenet(root, channels=None, normalization="minmax", log=print):
    """``(train_samples, val_samples, stats, channel_index, normalization)`` of a ClimateNet folder
    (see the module docstring for how channels and normalisation are chosen)."""
    train_dir, val_dir = find_layout(root)
    config = os.path.join(root, "config.json")
    fields = read_fields_block(config) if os.path.isfile(config) else None
    if channels is None:
        channels = list(fields) if fields else list(CLIMATENET_CHANNELS)
    channel_index = channel_indices(channels)
    names = [CHANNELS[i] for i in channel_index]
    train = index_folder(train_dir, names)
    val = index_folder(val_dir, names)
    if val[0].shape != train[0].shape:
        raise DataError(
            f"{val_dir}: grid is {val[0].shape[0]}x{val[0].shape[1]} but training data is "
            f"{train[0].shape[0]}x{train[0].shape[1]}"
        )
    computed = compute_stats(train, channel_index)
    if fields and all(n in fields for n in names):
        stats = stats_from_fields(fields, channel_index, computed.class_frequencies, config)
        if normalization != "zscore":
            log(f"climseg: normalising with the mean/std of {config} (z-score)")
        normalization = "zscore"
    else:
        if fields:
            missing = [n for n in names if n not in fields]
            log(f"climseg: {config} lists no mean/std for {', '.join(missing)}; computing statistics from train/")
        stats = computed
    return train, val, stats, channel_index, normalization


class ClimateNetDataset(torch.utils.data.Dataset):
    """(file, time step) samples as a map-style Dataset of ``(data (C, H, W) float32, labels (H, W) int64)``,
    with the attributes the trainer reads (``channels``, ``shape``, ``shift``, ``scale``, ``normalization``)."""

    def __init__(self, samples, stats, channel_index, normalization):
        self.samples = samples
        self.files = [s.key for s in samples]
        self.stats, self.channel_index = stats, list(channel_index)
        self.channels = [CHANNELS[i] for i in self.channel_index]
        self.normalization = normalization
        shift, scale = stats.normalization(normalization, self.channel_index)
        self.shift, self.scale = shift.reshape(-1, 1, 1), scale.reshape(-1, 1, 1)
        self.shape = samples[0].shape

    def __len__(self):
        return len(self.samples)

    def read_raw(self, index):
        return read_step(self.samples[index])

    def __getitem__(self, index):
        data, lab = self.read_raw(index)
        chw = np.ascontiguousarray(data.transpose(2, 0, 1))
        chw -= self.shift
        chw *= self.scale
        return torch.from_numpy(chw), torch.from_numpy(lab)


def write_climatenet_file(path, fields, labels, lat, lon, channels=CLIMATENET_CHANNELS, times=None, zlib=False):
    """Write a ClimateNet-style netCDF-4 file: ``fields`` (T, H, W, C) or (H, W, C) float32 as one
    variable per channel, ``labels`` (T, H, W) or (H, W) as ``LABELS``; rows in ``lat`` order.
    Fixed-size dimensions: the variables are stored contiguously unless ``zlib`` compresses them."""
    import netCDF4

    from climseg.data.netcdf import create_cam5_grid
    from climseg.output import atomic_path

    fields = np.asarray(fields, np.float32)
    labels = np.asarray(labels)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        dims = create_cam5_grid(ds, lat, lon, fields.shape[0] if fields.ndim == 4 else None, times, unlimited=False)
        for k, c in enumerate(channels):
            ds.createVariable(c, "f4", dims, zlib=zlib)[:] = fields[..., k]
        v = ds.createVariable(LABELS_VAR, "i8", dims, zlib=zlib)
        v.flag_values = np.arange(NUM_CLASSES, dtype=np.int64)
        v[:] = labels
