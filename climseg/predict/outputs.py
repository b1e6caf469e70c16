"""What ``climseg predict`` writes for each time step: the mask (into its input's mask file), the
summary entry, and the PNG map (rendered in a pool of worker processes).

:class:`MaskWriter` appends steps to one input's mask file (:mod:`climseg.data.masks` owns the
format) inside the run's :class:`~climseg.output.OutputBatch`; :func:`describe` makes a step's
summary entry (class fractions, connected objects, IoU against labels when the input has them);
:class:`MapPool` renders maps in worker processes (:func:`climseg.plotting.plot_map`), a bounded
number in flight, and on shutdown stops its workers so that none leaves a temporary file behind
(a worker that gets SIGTERM or SIGINT while drawing unwinds, so that the atomic writer removes
its file, and exits).
"""

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import torch

from climseg.constants import CHANNEL_UNITS, CLASS_NAMES, NUM_CLASSES
from climseg.data.masks import create_mask_hdf5, create_mask_netcdf
from climseg.metrics import ConfusionMatrix, count_objects
from climseg.plotting import plot_map


class MaskWriter:
    """The mask file of one input, written a time step at a time into the output batch's
    temporary file (renamed with the others when the whole run is complete): ``NAME_mask.nc``
    (netCDF input: ``mask(time, lat, lon)`` or ``mask(lat, lon)`` with the input's coordinates)
    or ``NAME_mask.h5`` (a DeepCAM sample: one step)."""

    def __init__(self, source, batch):
        self.source, self.name = source, source.mask_name
        tmp = batch.path(self.name)
        if source.kind == "netcdf":
            out = source.output  # one file of a merged series: its name, time axis and latitude order
            self.file, self.mask = create_mask_netcdf(
                tmp, out.source, out.time_dim, f"climseg predict on {os.path.basename(out.source)}"
            )
        else:
            self.file, self.mask = create_mask_hdf5(tmp, source.shape, source.path)

    def write(self, t, pred):
        """Write time step ``t``'s (H, W) uint8 mask (rows south to north)."""
        if self.source.kind == "netcdf":
            data = pred[::-1] if self.source.output.flipped else pred
            if self.source.output.time_dim:
                self.mask[t] = data
            else:
                self.mask[:] = data
            return
        self.mask[...] = pred  # a DeepCAM sample holds one step

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def describe(pred, index, when, periodic, labels=None):
    """The summary entry of one step's mask: class fractions, numbers of cyclones and rivers
    (connected objects, joined across the date line on global grids), IoU against ``labels``."""
    counts = np.bincount(pred.reshape(-1), minlength=NUM_CLASSES).astype(np.float64)
    objects = count_objects(pred, periodic=periodic)
    entry = dict(
        index=index,
        time=when,
        fractions=dict(zip(CLASS_NAMES, (counts / counts.sum()).round(6).tolist())),
        cyclones=int(objects[1]),
        rivers=int(objects[2]),
    )
    if labels is not None:
        cm = ConfusionMatrix(NUM_CLASSES).update(torch.from_numpy(pred), torch.from_numpy(labels))
        entry["iou_vs_labels"] = {k: json_float(v) for k, v in cm.as_dict().items()}
    return entry


def map_arguments(source, index, when, background, background_name, pred):
    """The arguments of :func:`render_map` for one step (everything a worker needs, picklable)."""
    title = f"{os.path.basename(source.path)}" + (f"  {when}" if when else "")
    note = "grid assumed: global, regular, south to north" if source.assumed_grid else None
    label = "TMQ (kg m$^{-2}$)" if background_name == "TMQ" else f"{background_name} ({CHANNEL_UNITS[background_name]})"
    return background, pred, source.lat, source.lon, title, label, note


_drawing = False  # a map worker is inside plot_map


class _Stopped(BaseException):
    """SIGTERM or SIGINT reached a map worker while it drew."""


def render_map(path, background, pred, lat, lon, title, label, note):
    """Write one map (in a worker process or in place); returns the seconds it took."""
    global _drawing
    start = time.perf_counter()
    _drawing = True
    try:
        plot_map(path, background, pred, lat, lon, title, background_label=label, note=note)
    except _Stopped:  # the atomic writer has removed the unfinished file on the way out
        os._exit(1)
    finally:
        _drawing = False
    return time.perf_counter() - start


def _worker_init():
    """A map worker: SIGTERM and SIGINT while it draws unwind plot_map (the atomic writer removes
    the half-written map) and end the worker; while it waits for work they end it at once. Either
    way quietly: no traceback. matplotlib is imported once, before the first map."""

    def stop(signum, frame):
        if _drawing:
            raise _Stopped()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    torch.set_num_threads(1)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot  # noqa: F401


class MapPool:
    """Maps rendered by ``workers`` processes (0: in the calling thread), at most ``2 * workers``
    in flight (each holds a step's background field and mask). :meth:`submit` blocks while the
    pool is full; :meth:`finish` waits for every map and raises the first failure; :meth:`stop`
    ends the workers at once (each removes its unfinished file)."""

    def __init__(self, workers):
        self.workers = workers
        self.pending = []
        self.seconds = 0.0
        self.pool = None
        if workers > 0:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self.pool = context.Pool(workers, initializer=_worker_init)
            self.room = threading.BoundedSemaphore(2 * workers)

    def submit(self, path, *args):
        if self.pool is None:
            self.seconds += render_map(path, *args)
            return
        self._collect(block=False)
        while not self.room.acquire(timeout=0.1):
            self._collect(block=False)
        self.pending.append(
            self.pool.apply_async(render_map, (path, *args), callback=self._release, error_callback=self._release)
        )

    def _release(self, _):
        self.room.release()

    def _collect(self, block):
        still = []
        for result in self.pending:
            while block and not result.ready():
                result.wait(0.1)  # in short waits, so that Ctrl-C and SIGTERM are acted on at once
            if result.ready():
                self.seconds += result.get()  # raises the worker's exception
            else:
                still.append(result)
        self.pending = still

    def finish(self):
        """Wait for every map; the first failure is raised."""
        self._collect(block=True)

    def stop(self):
        if self.pool is not None:
            self.pool.terminate()  # SIGTERM: each worker's atomic writer removes its file
            self.pool.join()
            self.pool = None

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None


def json_float(v):
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)


def summary_lines(summary):
    """One log line per input and time step: class fractions, objects, IoU against labels."""
    lines = []
    for item in summary["inputs"]:
        for e in item["time_steps"]:
            f = e["fractions"]
            line = (
                f"{os.path.basename(item['file'])}{(' ' + e['time']) if e['time'] else ''}: "
                f"TC {100 * f['tropical_cyclone']:.2f}% of pixels ({_count(e['cyclones'], 'cyclone')}), "
                f"AR {100 * f['atmospheric_river']:.2f}% ({_count(e['rivers'], 'river')})"
            )
            if "iou_vs_labels" in e:
                i = e["iou_vs_labels"]
                line += f"; IoU vs labels: TC {_fmt(i['iou_tc'])}, AR {_fmt(i['iou_ar'])}"
            lines.append(line)
    return lines


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"
