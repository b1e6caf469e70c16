"""The fast loader of ClimateNet-layout data: :class:`NetCDFLoader`, the
:class:`~climseg.data.loader.FastLoader` interface over a
:class:`~climseg.data.climatenet.ClimateNetDataset` (same batches, order, rank shares, prefetching
and bad-sample policy).

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
import os

import h5py
import numpy as np
import torch

from climseg.constants import NUM_CLASSES
from climseg.data.climatenet import LABELS_VAR, read_step
from climseg.data.loader import DTYPES, FastLoader, resolve_convert_on
from climseg.data.payload import LABEL_CODES
from climseg.errors import ConfigError, DataError
from climseg.perf.cpu import tune_cpu_allocator

try:  # the C++ reader (climseg._C); without it every step is read with h5py and converted in NumPy
    from climseg import _C
except ImportError:
    _C = None


class NetCDFLoader(FastLoader):
    """:class:`~climseg.data.loader.FastLoader` over a :class:`ClimateNetDataset`: the same batches,
    order, rank shares, prefetching and bad-sample policy; steps are read with h5py by a thread pool
    and converted by ``climseg._C.load_batch`` from memory (NumPy without the extension)."""

    def __init__(
        self,
        dataset,
        batch_size,
        *,
        dtype=torch.bfloat16,
        layout="nhwc",
        threads=None,
        prefetch=2,
        shuffle=True,
        seed=0,
        rank=0,
        world_size=1,
        drop_last=True,
        on_bad_sample="error",
        device=None,
        log=print,
        convert_on="auto",
    ):
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
            self._read_dtype, self._read_layout, self._read_shift, self._read_scale = (
                dtype,
                layout,
                self.shift,
                self.scale,
            )
        self.bad, self.skipped = {}, 0
        self.shape = dataset.shape
        self.epoch, self.start_batch = 0, 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="climseg-nc")
        self._contiguous = {}  # path -> layout found by _contiguous_layout (None: not contiguous)
        self.use_offsets = _C is not None  # False: always read with h5py
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
                    sub_paths,
                    [layouts[j][0][k][0] for j in members],
                    [layouts[j][1][0] if with_labels else -2 for j in members],
                    [0] * len(members),
                    [0] * len(members),
                    H,
                    W,
                    1,
                    codes[k],
                    lcode,
                    [0],
                    [self._read_shift[k]],
                    [self._read_scale[k]],
                    plane.data_ptr(),
                    DTYPES[self._read_dtype],
                    False,
                    sub_labels.data_ptr() if with_labels else 0,
                    NUM_CLASSES,
                    min(self.threads, max(1, len(members) * H)),
                    False,
                    True,
                )
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
                x = (results[j][0] - np.asarray(self._read_shift, np.float32)) * np.asarray(
                    self._read_scale, np.float32
                )
                x = torch.from_numpy(x).to(self._read_dtype)
                data[i] = x.permute(2, 0, 1) if self._read_layout == "nchw" else x
                labels[i] = torch.from_numpy(results[j][1])
            return
        sub_data = torch.empty((len(ok),) + tuple(data.shape[1:]), dtype=self._read_dtype)
        sub_labels = torch.empty((len(ok), H, W), dtype=torch.int64)
        fields = [results[j][0] for j in ok]
        labs = [results[j][1] for j in ok]
        out = _C.load_batch(
            [keys[j] for j in ok],
            [-1] * len(ok),
            [-1] * len(ok),
            [a.ctypes.data for a in fields],
            [a.ctypes.data for a in labs],
            H,
            W,
            K,
            0,
            LABEL_CODES[np.dtype("int64")],
            list(range(K)),
            self._read_shift,
            self._read_scale,
            sub_data.data_ptr(),
            DTYPES[self._read_dtype],
            self._read_layout == "nchw",
            sub_labels.data_ptr(),
            NUM_CLASSES,
            min(self.threads, max(1, len(ok) * H)),
            False,
            True,
        )
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
