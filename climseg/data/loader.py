"""``FastLoader``: DeepCAM batches at the rate the storage delivers them.

Data flow: the epoch's order (seeded permutation, shared over ranks) ->
batches of file indices -> a producer thread finds each file's payload
offsets once with h5py -> ``climseg._C.load_batch`` (C++, GIL released) reads
the contiguous ``climate/data`` and ``climate/labels_0`` payloads of the whole
batch with a pool of threads, normalises each selected channel, casts to the
requested dtype and writes NHWC or NCHW -> a queue ``prefetch`` batches deep
-> the consumer (uploaded to the device with ``non_blocking`` from pinned
buffers on CUDA).

Chunked, compressed or big-endian datasets cannot be read by offset: those
samples are read by h5py and handed to the same C++ conversion from memory.
Without the compiled extension the same work is done by a NumPy reference
(:func:`reference_batch`), which is also the specification the tests hold
the extension to, bit for bit.
"""

import logging
import os
import queue
import threading

import h5py
import numpy as np
import torch

from climseg.constants import CHANNELS, NUM_CLASSES
from climseg.data.deepcam import DATA_KEY, LABELS_KEY, channel_indices, read_sample
from climseg.data.manifest import resolve_source
from climseg.data.payload import LABEL_CODES, PayloadLayout
from climseg.data.sampling import EpochControl, epoch_order, resolve_ranks
from climseg.data.stats import ChannelStats, find_stats, read_stats
from climseg.errors import ConfigError, DataError
from climseg.perf.cpu import tune_cpu_allocator

try:
    from climseg import _C
except ImportError:  # a source tree without the extension built: the NumPy path does the work
    _C = None

logger = logging.getLogger(__name__)

DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
POLICIES = ("error", "skip")


def extension_available():
    """True when the compiled ``climseg._C`` reader is importable."""
    return _C is not None


def reference_batch(paths, channels, shift, scale, dtype=torch.float32, layout="nhwc", labels=True):
    """The specification of one batch, in NumPy: ``(x - shift) * scale`` in float32 per
    selected channel, cast by PyTorch (round to nearest even), laid out as asked;
    labels as int64. Raises DataError naming the first bad file."""
    data, labs = [], []
    for p in paths:
        x, y = read_sample(p, channels, labels=labels)
        data.append((x - np.asarray(shift, np.float32)) * np.asarray(scale, np.float32))
        labs.append(y)
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(data))).to(dtype)  # (B, H, W, C)
    if layout == "nchw":
        batch = batch.permute(0, 3, 1, 2).contiguous()
    else:
        batch = batch.permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels_last)
    return batch, (torch.from_numpy(np.stack(labs)) if labels else None)


class FastLoader:
    """Batches of ``(data, labels)`` from DeepCAM files: data (B, C, H, W) in ``dtype``
    (memory in NHWC — channels_last — or NCHW order as ``layout`` says), labels (B, H, W) int64.

    Args:
        source: a folder of samples (its ``climseg-manifest.json`` if staged), a manifest, or a list of files.
        batch_size: samples per batch.
        stats, channels, normalization: as :class:`climseg.data.DeepCAMDataset`.
        dtype: ``torch.float32`` (default), ``torch.bfloat16`` or ``torch.float16`` (the trainer
            asks for its input precision, bf16 by default).
        layout: ``"nhwc"`` (default) or ``"nchw"``.
        threads: reader threads (default: the CPU cores).
        prefetch: batches prepared ahead (default 2).
        shuffle, seed: a permutation of the files drawn from ``(seed, epoch)``; without
            shuffling, sorted file order. The same seed on every rank gives every rank the same
            permutation, so the shares never overlap.
        rank, world_size: this rank reads every ``world_size``-th file of the epoch's
            order (equal shares with ``drop_last``; every file exactly once without). Default
            (None): ``torch.distributed``'s rank and world size when it runs (a trainer's process
            group: torchrun, Lightning, Accelerate), else 0 and 1. Given values win; give both.
        drop_last: drop a last, smaller batch.
        on_bad_sample: ``"error"`` (raise DataError naming the file and the problem) or
            ``"skip"`` (leave the file out from then on, log it once, count it in :attr:`skipped`).
        device: upload batches there (``non_blocking`` from pinned memory on CUDA).
        labels: read labels too (default True; False yields ``(data, None)``).
        direct_io: read with O_DIRECT where the file system allows (cold data that
            should not fill the page cache); default False.
        log: receives one-line messages (skipped files); default: the ``climseg.data.loader``
            logger at WARNING level.
        tune_allocator: tune glibc's allocator for the whole process
            (:func:`climseg.perf.cpu.tune_cpu_allocator`: batches allocated on the reader thread
            and freed on another stay in one retained heap; 78 -> 190 samples/s at 768 x 1152
            measured). Default False: a library does not change process-wide settings unasked;
            ``climseg train`` opts in.
        convert_on: where samples are normalised, cast and laid out: ``"host"`` (the
            reader threads), ``"device"`` (the reader hands over raw float32 NHWC and one
            CUDA kernel, climseg.ops.normalize_input, converts after the upload: less CPU
            work, twice the upload bytes for 16-bit output) or ``"auto"`` (default:
            ``"device"`` when ``device`` is CUDA and the CUDA kernels are there).

    In a trainer: ``len(loader)`` is this rank's batches per epoch; :attr:`sampler` is where
    trainers that call ``loader.sampler.set_epoch(epoch)`` (PyTorch Lightning) set the epoch;
    elsewhere call :meth:`set_epoch` at each epoch's start (the order is the same otherwise).
    """

    batch_sampler = None  # as a DataLoader without one: trainers that look for it find the sampler instead

    def __init__(
        self,
        source,
        batch_size,
        *,
        stats=None,
        channels=None,
        normalization="minmax",
        dtype=torch.float32,
        layout="nhwc",
        threads=None,
        prefetch=2,
        shuffle=True,
        seed=0,
        rank=None,
        world_size=None,
        drop_last=True,
        on_bad_sample="error",
        device=None,
        labels=True,
        direct_io=False,
        log=None,
        convert_on="auto",
        tune_allocator=False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of torch.float32, torch.bfloat16, torch.float16, not {dtype}")
        if layout not in ("nhwc", "nchw"):
            raise ConfigError(f"layout must be 'nhwc' or 'nchw', not {layout!r}")
        if on_bad_sample not in POLICIES:
            raise ConfigError(f"on_bad_sample must be 'error' or 'skip', not {on_bad_sample!r}")
        rank, world_size = resolve_ranks(rank, world_size)
        self.files, folder, self.rank, self.world_size = resolve_source(source, rank, world_size)
        if not self.files:
            raise DataError(f"{folder}: no sample files for rank {rank}")
        self.batch_size, self.dtype, self.layout = batch_size, dtype, layout
        self.threads = threads or os.cpu_count() or 1
        self.prefetch = max(1, prefetch)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.policy, self.labels, self.direct_io = on_bad_sample, labels, direct_io
        self.log = log if log is not None else logger.warning
        self.device = torch.device(device) if device is not None else None
        if tune_allocator and (self.device is None or self.device.type == "cpu"):
            tune_cpu_allocator()  # batches are allocated on this thread and freed on another
        if stats is None:
            stats = find_stats(folder)
        self.stats = stats if isinstance(stats, ChannelStats) else read_stats(os.fspath(stats))
        self.channel_index = channel_indices(channels)
        self.channels = [CHANNELS[i] for i in self.channel_index]
        shift, scale = self.stats.normalization(normalization, self.channel_index)
        self.shift, self.scale = shift.tolist(), scale.tolist()
        self.convert_on = resolve_convert_on(convert_on, self.device)
        if self.convert_on == "device":  # the reader only selects channels; the GPU does the rest
            self._read_dtype, self._read_layout = torch.float32, "nhwc"
            self._read_shift, self._read_scale = [0.0] * len(self.shift), [1.0] * len(self.scale)
        else:
            self._read_dtype, self._read_layout, self._read_shift, self._read_scale = (
                dtype,
                layout,
                self.shift,
                self.scale,
            )
        self._info = {}
        self.bad = {}  # path -> problem, for files left out
        self.skipped = 0  # samples skipped (counted once per file)
        missing = [p for p in self.files if not os.path.isfile(p)]
        if missing:
            message = f"{len(missing)} file(s) listed but missing, e.g. {missing[0]}"
            if self.policy == "error":
                raise DataError(f"{folder}: {message}")
            for p in missing:
                self._mark_bad(p, "missing")
        good = [p for p in self.files if p not in self.bad]
        if not good:
            raise DataError(f"{folder}: no readable sample files")
        first = self._file_info(good[0])
        if first.error:
            if self.policy == "error":
                raise DataError(f"{good[0]}: {first.error}")
            self._mark_bad(good[0], first.error)
            first = next((i for i in map(self._file_info, good[1:]) if not i.error), None)
            if first is None:
                raise DataError(f"{folder}: no readable sample files")
        self.shape = first.shape
        self.epoch, self.start_batch = 0, 0

    # ------------------------------------------------------------------ order
    def set_epoch(self, epoch, start_batch=0):
        """Use epoch ``epoch``'s order from batch ``start_batch`` on (to resume mid-epoch)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def epoch_indices(self):
        """This rank's sample indices (into :attr:`files`) of the current epoch, from the resume
        position on."""
        return self._my_indices()

    @property
    def sampler(self):
        """Where trainers look for ``set_epoch`` (PyTorch Lightning and others call
        ``loader.sampler.set_epoch(epoch)`` at each epoch's start): an :class:`EpochControl` that
        sets this loader's epoch, so that every epoch reshuffles, identically on all ranks."""
        return EpochControl(self)

    def _my_indices(self):
        order = epoch_order(len(self.files), self.seed, self.epoch, self.shuffle).tolist()
        if self.drop_last:
            per_rank = len(order) // self.world_size
            mine = order[self.rank : per_rank * self.world_size : self.world_size]
        else:
            mine = order[self.rank :: self.world_size]
        return mine[self.start_batch * self.batch_size :]

    def __len__(self):
        """This rank's batches in an epoch (the same on every rank with ``drop_last``)."""
        n = (
            len(self.files) // self.world_size
            if self.drop_last
            else len(range(self.rank, len(self.files), self.world_size))
        )
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # ------------------------------------------------------------------ reading
    def _file_info(self, path):
        info = self._info.get(path)
        if info is None:
            info = self._info[path] = PayloadLayout(path, self.labels)
        return info

    def _mark_bad(self, path, problem):
        if path not in self.bad:
            self.bad[path] = problem
            self.skipped += 1
            self.log(f"climseg: skipping {path}: {problem}")

    def _read(self, paths):
        """Load ``paths`` into fresh tensors; returns ``(data, labels, errors)`` (errors by position)."""
        B = len(paths)
        H, W = self.shape
        K = len(self.channel_index)
        pin = self.device is not None and self.device.type == "cuda"
        shape = (B, K, H, W) if self._read_layout == "nchw" else (B, H, W, K)
        data = torch.empty(shape, dtype=self._read_dtype, pin_memory=pin)
        labels = torch.empty((B, H, W), dtype=torch.int64, pin_memory=pin) if self.labels else None
        infos = [self._file_info(p) for p in paths]
        errors = [info.error for info in infos]
        errors = [
            e
            if e is not None or info.shape == self.shape
            else f"{DATA_KEY} is {info.shape[0]}x{info.shape[1]} but the first sample is {H}x{W}"
            for e, info in zip(errors, infos)
        ]
        if _C is None:
            return self._read_reference(paths, errors, data, labels)
        keep = []  # h5py-read payloads must live until the C++ call returns
        data_ptrs, label_ptrs, data_offsets, label_offsets, codes = [], [], [], [], []
        for p, info, err in zip(paths, infos, errors):
            d_off, l_off, d_ptr, l_ptr = info.data_offset, info.label_offset, 0, 0
            if err is None and d_off < 0:
                arr = np.ascontiguousarray(
                    _h5_read(p, DATA_KEY), dtype=np.float32 if info.data_code == 0 else np.float64
                )
                keep.append(arr)
                d_ptr = arr.ctypes.data
            if err is None and self.labels and l_off < 0:
                lab = np.ascontiguousarray(_h5_read(p, LABELS_KEY)).astype(np.dtype(list(LABEL_CODES)[info.label_code]))
                keep.append(lab)
                l_ptr = lab.ctypes.data
            if err is not None:  # an empty task list for this sample: reported, never read
                d_off, d_ptr = -1, 0
            data_offsets.append(d_off)
            label_offsets.append(l_off if self.labels else -2)
            data_ptrs.append(d_ptr)
            label_ptrs.append(l_ptr)
            codes.append((info.data_code, info.label_code))
        ok = [i for i, e in enumerate(errors) if e is None]
        if ok:
            # one call per (data type, label type) group; DeepCAM files are all float32/int32
            groups = {}
            for i in ok:
                groups.setdefault(codes[i], []).append(i)
            for (d_code, l_code), idx in groups.items():
                sub_data = (
                    data if len(idx) == B else torch.empty((len(idx),) + tuple(data.shape[1:]), dtype=self._read_dtype)
                )
                sub_labels = (
                    labels if (labels is None or len(idx) == B) else torch.empty((len(idx), H, W), dtype=torch.int64)
                )
                result = _C.load_batch(
                    [paths[i] for i in idx],
                    [data_offsets[i] for i in idx],
                    [label_offsets[i] for i in idx],
                    [data_ptrs[i] for i in idx],
                    [label_ptrs[i] for i in idx],
                    H,
                    W,
                    len(CHANNELS),
                    d_code,
                    l_code,
                    self.channel_index,
                    self._read_shift,
                    self._read_scale,
                    sub_data.data_ptr(),
                    DTYPES[self._read_dtype],
                    self._read_layout == "nchw",
                    sub_labels.data_ptr() if sub_labels is not None else 0,
                    NUM_CLASSES,
                    min(self.threads, max(1, len(idx) * H)),
                    self.direct_io,
                    True,
                )
                for j, i in enumerate(idx):
                    if result[j]:
                        errors[i] = _name_channel(result[j])
                if sub_data is not data:
                    data[idx] = sub_data
                    if labels is not None:
                        labels[idx] = sub_labels
        del keep
        return data, labels, errors

    def _read_reference(self, paths, errors, data, labels):
        for i, p in enumerate(paths):
            if errors[i] is not None:
                continue
            try:
                x, y = reference_batch(
                    [p],
                    self.channel_index,
                    self._read_shift,
                    self._read_scale,
                    self._read_dtype,
                    self._read_layout,
                    self.labels,
                )
            except DataError as exc:
                errors[i] = str(exc).split(": ", 1)[-1]
                continue
            data[i] = x[0] if self._read_layout == "nchw" else x[0].permute(1, 2, 0)
            if labels is not None:
                labels[i] = y[0]
        return data, labels, errors

    # ------------------------------------------------------------------ batches
    def _batches(self):
        """Yield ``(data, labels)`` host batches of this rank's share of the epoch."""
        indices = self._my_indices()
        cursor = 0
        while True:
            want, parts = self.batch_size, []
            while want > 0 and cursor < len(indices):
                picked = []
                while len(picked) < want and cursor < len(indices):
                    path = self.files[indices[cursor]]
                    cursor += 1
                    if path not in self.bad:
                        picked.append(path)
                if not picked:
                    break
                data, labels, errors = self._read(picked)
                good = [i for i, e in enumerate(errors) if e is None]
                for i, e in enumerate(errors):
                    if e is not None:
                        if self.policy == "error":
                            raise DataError(f"{picked[i]}: {e}")
                        self._mark_bad(picked[i], e)
                if len(good) < len(picked):
                    data = data[good]
                    labels = labels[good] if labels is not None else None
                parts.append((data, labels))
                want -= len(good)
            if not parts or (want > 0 and (self.drop_last or not any(p[0].shape[0] for p in parts))):
                return
            if len(parts) == 1:
                yield parts[0]
            else:
                data = torch.cat([p[0] for p in parts])
                labels = torch.cat([p[1] for p in parts]) if self.labels else None
                yield data, labels

    def __iter__(self):
        """Batches in order, prepared ``prefetch`` ahead on a background thread."""
        q = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        END = object()

        def produce():
            try:
                for batch in self._batches():
                    while not stop.is_set():
                        try:
                            q.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(END)
            except BaseException as exc:  # delivered to the consumer, never lost in the thread
                q.put(exc)

        worker = threading.Thread(target=produce, name="climseg-fastloader", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield self._to_device(*item)
        finally:
            stop.set()
            worker.join(timeout=10)

    def _to_device(self, data, labels):
        if self.convert_on == "device":
            from climseg.ops.normalize import normalize_input

            if self.device is not None:
                data = data.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True) if labels is not None else None
            return normalize_input(data, self.shift, self.scale, dtype=self.dtype, layout=self.layout), labels
        if self.layout == "nhwc":
            data = data.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last memory
        if self.device is not None and self.device.type != "cpu":
            data = data.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True) if labels is not None else None
        return data, labels


def resolve_convert_on(convert_on, device):
    """Where a loader normalises and casts its batches: ``"host"`` (the reader threads) or ``"device"``
    (the CUDA kernel :func:`climseg.ops.normalize_input` after the upload); ``"auto"`` takes the
    device where that kernel runs."""
    if convert_on not in ("auto", "host", "device"):
        raise ConfigError(f"convert_on must be 'auto', 'host' or 'device', not {convert_on!r}")
    if convert_on != "auto":
        return convert_on
    if device is None or device.type != "cuda":
        return "host"
    from climseg.ops.backend import resolve

    return "device" if resolve("normalize_input", "auto", torch.empty(0, device=device)) == "cuda" else "host"


def _h5_read(path, key):
    with h5py.File(path, "r") as f:
        return f[key][...]


def _name_channel(message):
    """'... in channel 7' -> '... in channel PSL'."""
    head, sep, tail = message.rpartition("in channel ")
    if sep and tail.isdigit() and int(tail) < len(CHANNELS):
        return f"{head}in channel {CHANNELS[int(tail)]}"
    return message
