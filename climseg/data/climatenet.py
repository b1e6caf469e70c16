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
normalises in NumPy) or :class:`NetCDFLoader` (the :class:`~climseg.data.loader.FastLoader`
interface).

NetCDFLoader's two paths: when every chosen variable and ``LABELS`` of a file is stored
contiguously (no chunking, no compression, little-endian; netCDF-4 files with fixed-size
dimensions are), rows south to north, the C++ reader ``climseg._C.load_batch`` reads each step of
each variable straight from the file by offset (h5py finds the dataset offsets once per file;
step t of a (time, lat, lon) variable starts t * H * W elements further), one call per variable,
normalising and casting into that channel's slice; the slices are interleaved into the batch
layout. Otherwise (chunked, compressed, or north-to-south files) a thread pool reads the steps
with h5py and the same C++ call converts them from memory, as FastLoader does for chunked
DeepCAM files. :attr:`NetCDFLoader.paths_used` counts the samples each path read.
"""
import concurrent.futures
import dataclasses
import glob
import json
import os

import h5py
import numpy as np
import torch

from climseg.constants import CHANNELS, CLASS_NAMES, NUM_CLASSES
from climseg.data.deepcam import channel_indices, check_labels
from climseg.data.loader import DTYPES, LABEL_CODES, FastLoader, resolve_convert_on
from climseg.data.netcdf import open_netcdf
from climseg.data.stats import ChannelStats
from climseg.errors import ConfigError, DataError
from climseg.perf.cpu import tune_cpu_allocator

try:
    from climseg import _C
except ImportError:
    _C = None

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
    step: int                   # index on the time axis; -1: the file has no time dimension
    variables: tuple            # file variable names of the chosen channels, in channel order
    labels: str                 # file variable name of the labels
    flipped: bool               # rows stored north to south
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
            m, s = float(stats["mean"]), float(stats["std"])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"{path}: field {name!r} needs numeric 'mean' and 'std'") from None
        if not (np.isfinite(m) and np.isfinite(s) and s > 0):
            raise ConfigError(f"{path}: field {name!r} has mean {m} and std {s}; std must be positive and finite")
        channels.append(name)
        mean.append(m)
        std.append(s)
    labels = raw.get("labels", list(CLASS_NAMES))
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
    return ChannelStats(minval=lo, maxval=hi, mean=mean, sqmean=sqmean, class_frequencies=counts / counts.sum(),
                        path=where or f"statistics of {len(picks)} training steps")


def stats_from_fields(fields, channel_index, class_frequencies, where):
    """ChannelStats whose mean and mean of squares reproduce a ``fields`` block's mean and std."""
    n = len(CHANNELS)
    mean, sqmean = np.full(n, np.nan), np.full(n, np.nan)
    for c in channel_index:
        m, s = fields[CHANNELS[c]]
        mean[c], sqmean[c] = m, s * s + m * m
    return ChannelStats(minval=np.full(n, np.nan), maxval=np.full(n, np.nan), mean=mean, sqmean=sqmean,
                        class_frequencies=class_frequencies, path=where)


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
        raise DataError(f"{val_dir}: grid is {val[0].shape[0]}x{val[0].shape[1]} but training data is "
                        f"{train[0].shape[0]}x{train[0].shape[1]}")
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


class NetCDFLoader(FastLoader):
    """:class:`~climseg.data.loader.FastLoader` over a :class:`ClimateNetDataset`: the same batches,
    order, rank shares, prefetching and bad-sample policy; steps are read with h5py by a thread pool
    and converted by ``climseg._C.load_batch`` from memory (NumPy without the extension)."""

    def __init__(self, dataset, batch_size, *, dtype=torch.bfloat16, layout="nhwc", threads=None, prefetch=2,
                 shuffle=True, seed=0, rank=0, world_size=1, drop_last=True, on_bad_sample="error", device=None,
                 log=print, convert_on="auto"):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of torch.float32, torch.bfloat16, torch.float16, not {dtype}")
        if layout not in ("nhwc", "nchw"):
            raise ConfigError(f"layout must be 'nhwc' or 'nchw', not {layout!r}")
        if on_bad_sample not in ("error", "skip"):
            raise ConfigError(f"on_bad_sample must be 'error' or 'skip', not {on_bad_sample!r}")
        self.dataset = dataset
        self._by_key = {s.key: s for s in dataset.samples}
        self.files = list(dataset.files)
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.dtype, self.layout = batch_size, dtype, layout
        self.threads = threads or os.cpu_count() or 1
        self.prefetch = max(1, prefetch)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.policy, self.labels, self.direct_io, self.log = on_bad_sample, True, False, log
        self.device = torch.device(device) if device is not None else None
        if self.device is None or self.device.type == "cpu":
            tune_cpu_allocator()
        self.stats, self.channel_index, self.channels = dataset.stats, dataset.channel_index, dataset.channels
        self.shift, self.scale = dataset.shift.reshape(-1).tolist(), dataset.scale.reshape(-1).tolist()
        self.convert_on = resolve_convert_on(convert_on, self.device)
        if self.convert_on == "device":
            self._read_dtype, self._read_layout = torch.float32, "nhwc"
            self._read_shift, self._read_scale = [0.0] * len(self.shift), [1.0] * len(self.scale)
        else:
            self._read_dtype, self._read_layout, self._read_shift, self._read_scale = dtype, layout, self.shift, self.scale
        self.bad, self.skipped = {}, 0
        self.shape = dataset.shape
        self.epoch, self.start_batch = 0, 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="climseg-nc")
        self._contiguous = {}                    # path -> layout found by _contiguous_layout (None: not contiguous)
        self.use_offsets = _C is not None        # False: always read with h5py
        self.paths_used = {"offset": 0, "h5py": 0}

    def _offsets(self, sample):
        """Per-variable ``[(offset, data code)]`` and ``(label offset, label code)`` of ``sample``'s step
        when its file stores them contiguously (and rows south to north), else None."""
        found = self._contiguous.get(sample.path, False)
        if found is False:
            found = self._contiguous[sample.path] = _contiguous_layout(sample)
        if found is None:
            return None
        step = max(sample.step, 0)
        plane = sample.shape[0] * sample.shape[1]
        fields = [(off + step * plane * size, code) for off, size, code in found[0]]
        off, size, code = found[1]
        return fields, (off + step * plane * size, code)

    def _read_one(self, key):
        try:
            return read_step(self._by_key[key]) + (None,)
        except DataError as exc:
            return None, None, str(exc).split(": ", 1)[-1]

    def _read(self, keys):
        """``(data, labels, errors)`` of the samples ``keys``, as :meth:`FastLoader._read`."""
        B, (H, W), K = len(keys), self.shape, len(self.channel_index)
        pin = self.device is not None and self.device.type == "cuda"
        shape = (B, K, H, W) if self._read_layout == "nchw" else (B, H, W, K)
        data = torch.empty(shape, dtype=self._read_dtype, pin_memory=pin)
        labels = torch.empty((B, H, W), dtype=torch.int64, pin_memory=pin)
        errors = [None] * B
        layouts = [self._offsets(self._by_key[k]) if self.use_offsets else None for k in keys]
        direct = [i for i in range(B) if layouts[i] is not None]
        if direct:
            self._read_by_offset([keys[i] for i in direct], [layouts[i] for i in direct], direct, data, labels, errors)
        rest = [i for i in range(B) if layouts[i] is None]
        if rest:
            self._read_h5py([keys[i] for i in rest], rest, data, labels, errors)
        self.paths_used["offset"] += len(direct)
        self.paths_used["h5py"] += len(rest)
        return data, labels, errors

    def _read_by_offset(self, keys, layouts, where, data, labels, errors):
        """One ``load_batch`` per chosen variable, reading each step's plane by offset into a
        (n, H, W) buffer, then placed in channel k of the batch; the labels come with the first."""
        H, W = self.shape
        paths = [self._by_key[k].path for k in keys]
        groups = {}
        for j, (fields, (_, lcode)) in enumerate(layouts):
            groups.setdefault((tuple(code for _, code in fields), lcode), []).append(j)
        for (codes, lcode), members in groups.items():
            sub_paths = [paths[j] for j in members]
            sub_labels = torch.empty((len(members), H, W), dtype=torch.int64)
            for k in range(len(self.channel_index)):
                plane = torch.empty((len(members), H, W), dtype=self._read_dtype)
                with_labels = k == 0
                out = _C.load_batch(
                    sub_paths, [layouts[j][0][k][0] for j in members],
                    [layouts[j][1][0] if with_labels else -2 for j in members], [0] * len(members),
                    [0] * len(members), H, W, 1, codes[k], lcode, [0], [self._read_shift[k]], [self._read_scale[k]],
                    plane.data_ptr(), DTYPES[self._read_dtype], False, sub_labels.data_ptr() if with_labels else 0,
                    NUM_CLASSES, min(self.threads, max(1, len(members) * H)), False, True)
                for m, j in enumerate(members):
                    if out[m] and errors[where[j]] is None:
                        errors[where[j]] = self._explain(out[m], self.channels[k])
                rows = [where[j] for j in members]
                if self._read_layout == "nchw":
                    data[rows, k] = plane
                else:
                    data[rows, :, :, k] = plane
            labels[[where[j] for j in members]] = sub_labels

    def _read_h5py(self, keys, where, data, labels, errors):
        """The steps read by h5py in the thread pool, converted by ``load_batch`` from memory."""
        (H, W), K = self.shape, len(self.channel_index)
        results = list(self._pool.map(self._read_one, keys))
        for j, r in enumerate(results):
            errors[where[j]] = r[2]
        ok = [j for j, r in enumerate(results) if r[2] is None]
        if not ok:
            return
        rows = [where[j] for j in ok]
        if _C is None:
            for j, i in zip(ok, rows):
                x = (results[j][0] - np.asarray(self._read_shift, np.float32)) * np.asarray(self._read_scale, np.float32)
                x = torch.from_numpy(x).to(self._read_dtype)
                data[i] = x.permute(2, 0, 1) if self._read_layout == "nchw" else x
                labels[i] = torch.from_numpy(results[j][1])
            return
        sub_data = torch.empty((len(ok),) + tuple(data.shape[1:]), dtype=self._read_dtype)
        sub_labels = torch.empty((len(ok), H, W), dtype=torch.int64)
        fields = [results[j][0] for j in ok]
        labs = [results[j][1] for j in ok]
        out = _C.load_batch(
            [keys[j] for j in ok], [-1] * len(ok), [-1] * len(ok), [a.ctypes.data for a in fields],
            [a.ctypes.data for a in labs], H, W, K, 0, LABEL_CODES[np.dtype("int64")], list(range(K)),
            self._read_shift, self._read_scale, sub_data.data_ptr(), DTYPES[self._read_dtype],
            self._read_layout == "nchw", sub_labels.data_ptr(), NUM_CLASSES, min(self.threads, max(1, len(ok) * H)),
            False, True)
        for m, i in enumerate(rows):
            if out[m]:
                errors[i] = self._name_channel(out[m])
        data[rows] = sub_data
        labels[rows] = sub_labels
        del fields, labs

    def _explain(self, message, channel):
        """A C++ reader message about a one-variable read, in terms of the netCDF variables."""
        message = message.replace("climate/labels_0", LABELS_VAR).replace("climate/data", channel)
        head, sep, _ = message.rpartition(" in channel ")
        return f"{head}(s) in {channel}" if sep else message

    def _name_channel(self, message):
        head, sep, tail = message.rpartition("in channel ")
        if sep and tail.isdigit() and int(tail) < len(self.channels):
            return f"{head}in channel {self.channels[int(tail)]}"
        return message


def _contiguous_layout(sample):
    """``([(offset, itemsize, code)] per chosen variable, (offset, itemsize, code) of LABELS)`` of a
    file whose variables are contiguous, little-endian and stored south to north; None otherwise."""
    if sample.flipped:
        return None
    try:
        with h5py.File(sample.path, "r") as f:
            def where(name, floating):
                d = f[name]
                if d.chunks is not None or d.compression is not None or d.dtype.byteorder == ">":
                    return None
                off = d.id.get_offset()
                if off is None:
                    return None
                if floating:
                    if d.dtype not in (np.dtype("<f4"), np.dtype("<f8")):
                        return None
                    return int(off), d.dtype.itemsize, 1 if d.dtype.itemsize == 8 else 0
                native = d.dtype.newbyteorder("=")
                if native not in LABEL_CODES:
                    return None
                return int(off), d.dtype.itemsize, LABEL_CODES[native]

            fields = [where(n, True) for n in sample.variables]
            labels = where(sample.labels, False)
    except (OSError, KeyError):
        return None
    if labels is None or any(x is None for x in fields):
        return None
    return fields, labels


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
