"""The inference pipeline: reading, the network and writing overlapped, in bounded memory.

Three stages joined by bounded queues, so that the network never waits on I/O when I/O is
faster than compute, and memory holds a few batches, never a whole file::

    reader thread  --(at most `prefetch` batches)-->  main thread  --(at most `prefetch`)-->  writer thread
    read a step, normalise,                           the network on a batch                   masks into the mask
    batch, pad, channels_last                         (segment: argmax, uint8),                files, summary entries,
                                                      cropped back to the grid                 maps to the MapPool

* reader (:func:`Pipeline._read`): steps of this rank's inputs in order, ``(x - shift) * scale``,
  grouped ``batch_size`` at a time (steps of the next file join the batch when the grid is the
  same, so many one-step DeepCAM files still fill a batch), padded to the network's multiple,
  in the network's input dtype and channels_last (pinned memory for a GPU);
* main thread (:meth:`Pipeline.run`): the network, in order; signals (Ctrl-C, SIGTERM) arrive
  here, so every stage stops within a fraction of a second and the output batch removes every
  temporary file;
* writer (:func:`Pipeline._write`): each step's mask appended to its input's file as soon as it
  is computed (one file open at a time), its summary entry, and its map handed to the
  :class:`~climseg.predict.outputs.MapPool` (worker processes, bounded).

netCDF and HDF5 libraries are not thread-safe: every call into them holds :data:`FILE_LOCK`.
An error in any stage stops the others and is raised in the main thread as it was raised.
:class:`StageTimes` records where the time went (the ``performance`` block of ``summary.json``
and ``climseg bench predict``).
"""

import dataclasses
import queue
import threading
import time

import numpy as np
import torch

from climseg.predict.inputs import pad_to_multiple
from climseg.predict.outputs import MaskWriter, describe, map_arguments

#: Held around every call into netCDF4 or h5py from the pipeline's threads.
FILE_LOCK = threading.Lock()
_POLL = 0.1  # seconds between checks of the stop flag while a queue is full or empty


@dataclasses.dataclass
class StageTimes:
    """Seconds spent in each stage (busy time, summed over its calls), and the time the network
    waited for the reader (``compute_waited``: zero when reading is hidden)."""

    read: float = 0.0
    compute: float = 0.0
    compute_waited: float = 0.0
    write: float = 0.0
    maps: float = 0.0
    steps: int = 0
    batches: int = 0

    def as_dict(self):
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class Step:
    """One time step on its way through the pipeline."""

    position: int  # the input's position on the command line
    source: object  # its InputFile
    index: int  # the time step in the input
    background: np.ndarray = None  # the map's field (None without maps)
    background_name: str = None
    labels: np.ndarray = None


class Stopped(Exception):
    """Another stage failed or the run was interrupted: this stage ends quietly."""


class Pipeline:
    """One run of the stages over ``sources`` (``[(position, InputFile)]``, this rank's share).

    ``network``: an :class:`~climseg.predict.network.InferenceNetwork`; ``shift``, ``scale``:
    the checkpoint's normalisation (per channel); ``batch``: the run's
    :class:`~climseg.output.OutputBatch`; ``maps``: a :class:`~climseg.predict.outputs.MapPool`
    or None; ``bar``: a progress bar (one tick per step written)."""

    def __init__(self, sources, network, shift, scale, batch, maps, bar, batch_size=4, prefetch=2):
        self.sources, self.network, self.batch, self.maps, self.bar = sources, network, batch, maps, bar
        self.shift = np.asarray(shift, np.float32).reshape(-1)
        self.scale = np.asarray(scale, np.float32).reshape(-1)
        self.batch_size = max(1, int(batch_size))
        self.to_compute = queue.Queue(maxsize=max(1, prefetch))
        self.to_write = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.errors = []
        self.entries = []  # (position, index, entry)
        self.mask_files = {}  # position -> mask file name
        self.times = StageTimes()
        self.pad_batches = network.compiled  # a compiled network keeps one batch shape

    # ----------------------------------------------------------------------------- the main thread

    def run(self):
        """Run every stage to the end; returns ``{position: (mask name, [entries in step order])}``."""
        threads = [
            threading.Thread(target=self._guard, args=(self._read,), name="climseg-predict-read", daemon=True),
            threading.Thread(target=self._guard, args=(self._write,), name="climseg-predict-write", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                item = self._get(self.to_compute, waited="compute_waited")
                if item is None:
                    break
                steps, x, (top, left), (h, w) = item
                start = time.perf_counter()
                classes = self.network.segment(x.to(self.network.device, non_blocking=True))
                masks = classes[: len(steps), top : top + h, left : left + w].cpu().numpy()
                self.times.compute += time.perf_counter() - start
                self.times.batches += 1
                self._put(self.to_write, (steps, masks))
            self._put(self.to_write, None)
            for t in threads:
                while t.is_alive():
                    t.join(_POLL)
                    self._raise_errors()
            self._raise_errors()
            if self.maps is not None:
                self.maps.finish()
                self.times.maps = self.maps.seconds
        except BaseException:
            self.stop.set()
            for t in threads:
                t.join(5.0)
            if self.maps is not None:
                self.maps.stop()
            self._raise_errors()
            raise
        result = {}
        for position, _index, entry in sorted(self.entries, key=lambda e: (e[0], e[1])):
            result.setdefault(position, (self.mask_files[position], []))[1].append(entry)
        return result

    def _raise_errors(self):
        if self.errors:
            raise self.errors[0]

    def _guard(self, stage):
        try:
            stage()
        except Stopped:
            pass
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()

    def _get(self, q, waited=None):
        start = time.perf_counter()
        while True:
            if self.stop.is_set():
                self._raise_errors()
                raise Stopped()
            try:
                item = q.get(timeout=_POLL)
                break
            except queue.Empty:
                continue
        if waited:
            setattr(self.times, waited, getattr(self.times, waited) + time.perf_counter() - start)
        return item

    def _put(self, q, item):
        while True:
            if self.stop.is_set():
                self._raise_errors()
                raise Stopped()
            try:
                q.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    # ----------------------------------------------------------------------------- the reader

    def _read(self):
        pending, key = [], None
        for position, source in self.sources:
            for t in range(len(source.times)):
                start = time.perf_counter()
                with FILE_LOCK:
                    fields, background, background_name, labels = source.read(t)
                x = (fields - self.shift) * self.scale  # (H, W, C) float32
                step = Step(position, source, t, labels=labels)
                if self.maps is not None:
                    step.background, step.background_name = background, background_name
                self.times.read += time.perf_counter() - start
                if pending and (key != (source.shape, source.periodic) or len(pending) == self.batch_size):
                    self._emit(pending)
                    pending = []
                key = (source.shape, source.periodic)
                pending.append((step, x))
        if pending:
            self._emit(pending)
        self._put(self.to_compute, None)

    def _emit(self, pending):
        start = time.perf_counter()
        steps = [s for s, _ in pending]
        data = np.stack([x for _, x in pending])  # (N, H, W, C)
        if self.pad_batches and len(steps) < self.batch_size:  # the compiled shape: repeat the last step
            data = np.concatenate([data, np.repeat(data[-1:], self.batch_size - len(steps), axis=0)])
        x = torch.from_numpy(data).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        source = steps[0].source
        x, offset = pad_to_multiple(x, self.network.input_multiple, source.periodic)
        x = x.to(self.network.input_dtype).contiguous(memory_format=torch.channels_last)
        if self.network.device.type == "cuda":
            x = x.pin_memory()
        self.times.read += time.perf_counter() - start
        self._put(self.to_compute, (steps, x, offset, source.shape))

    # ----------------------------------------------------------------------------- the writer

    def _write(self):
        writer = None
        try:
            while True:
                item = self._get(self.to_write)
                if item is None:
                    break
                for step, mask in zip(*item):
                    start = time.perf_counter()
                    source = step.source
                    if writer is None or writer.source is not source:
                        self._close(writer)
                        with FILE_LOCK:
                            writer = MaskWriter(source, self.batch)
                        self.mask_files[step.position] = writer.name
                    with FILE_LOCK:
                        writer.write(step.index, mask)
                    when = source.times[step.index]
                    entry = describe(mask, step.index, when, source.periodic, step.labels)
                    if step.index == len(source.times) - 1:
                        self._close(writer)
                        writer = None
                    if self.maps is not None:
                        name = source.map_name(step.index)
                        args = map_arguments(source, step.index, when, step.background, step.background_name, mask)
                        self.maps.submit(self.batch.path(name), *args)
                        entry["map"] = name
                    self.entries.append((step.position, step.index, entry))
                    self.times.steps += 1
                    self.times.write += time.perf_counter() - start
                    self.bar.update()
        finally:
            self._close(writer)

    @staticmethod
    def _close(writer):
        if writer is not None:
            with FILE_LOCK:
                writer.close()
