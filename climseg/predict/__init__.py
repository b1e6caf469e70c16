"""Inference: climate files in, class masks, maps and a summary out, as a streaming pipeline.

Inputs are DeepCAM HDF5 samples (``climate/data``, H x W x 16) or netCDF files in any
variable-name convention (see :mod:`climseg.data.netcdf`), any number of time steps. For each
input ``NAME`` the output folder receives

* ``NAME_mask.h5`` (from HDF5: dataset ``mask``, uint8 H x W, class names in
  its attributes) or ``NAME_mask.nc`` (from netCDF: ``mask(time, lat, lon)``
  with CF ``flag_values``/``flag_meanings``, the file's own coordinates), the
  formats of :mod:`climseg.data.masks`;
* one PNG map per time step (``NAME.png``, or ``NAME_tNNNN.png``);

and ``summary.json`` covers every input and time step: pixel fraction of each class, number of
connected cyclones and rivers, and, when the input carries labels (``climate/labels_0``), the
IoU against them; its ``performance`` block says how fast the run went and where the time went.

How a run flows (one module each):

1. :mod:`climseg.predict.inputs`: the output folder, then every input (readable, the right
   channels, at least one time step) checked before the network is even loaded
   (:func:`~climseg.predict.inputs.open_inputs`);
2. :mod:`climseg.predict.network`: the network prepared once for inference (batch norms folded,
   ASPP fused, channels_last, the precision chosen by hardware, ``torch.compile`` on request;
   int8 through :mod:`climseg.predict.int8`);
3. :mod:`climseg.predict.pipeline`: reading and normalising the next batch, the network, and
   writing masks and maps of the previous one overlap, in bounded queues
   (:mod:`climseg.predict.outputs` writes);
4. every output is written under a temporary name and all are renamed into place together at
   the end (:class:`~climseg.output.OutputBatch`), so a failure, Ctrl-C or SIGTERM part-way
   leaves the folder exactly as it was (the masks, maps and ``summary.json`` there always
   belong to one run).

Inputs whose sizes are not multiples of the network's stride are padded (longitude wraps around
on global grids, edges repeat otherwise) and cropped back; objects are joined across the date
line only on global grids.

At scale: under ``mpirun``/``srun``/``torchrun`` (see :mod:`climseg.distributed.launch`) each
rank streams every world-size-th input (round robin, in the order given) through its own
pipeline, writes one mask per input, and rank 0 gathers the per-input entries and writes one
merged ``summary.json`` in the input order. Memory stays bounded: a few batches are in flight,
never a whole file (netCDF masks grow along time as steps are written).
``checkpoint`` may also be ``climatenet:WEIGHTS.pth`` (ClimateNet weights with the
``config.json`` beside them, imported on the fly by :mod:`climseg.data.checkpoints`).
"""

import os
import time

import numpy as np
import torch

from climseg.data.checkpoints import load_any_checkpoint
from climseg.errors import ConfigError
from climseg.output import OutputBatch, check_output_location, write_json
from climseg.perf.hardware import resolve_device
from climseg.predict.inputs import InputFile, open_inputs, pad_to_multiple
from climseg.predict.network import PRECISIONS, InferenceNetwork, prepare_network
from climseg.predict.outputs import MapPool, summary_lines
from climseg.predict.pipeline import FILE_LOCK, Pipeline
from climseg.progress import progress_bar

#: Steps read from the calibration files (``--calibrate``) for int8.
CALIBRATION_STEPS = 8
#: Batches each queue of the pipeline holds (between reader and network, network and writer).
PREFETCH = 2

__all__ = [
    "CALIBRATION_STEPS",
    "PRECISIONS",
    "InferenceNetwork",
    "calibration_batches",
    "InputFile",
    "auto_batch_size",
    "default_map_workers",
    "open_inputs",
    "predict",
    "prepare_network",
]


def default_map_workers():
    """Map worker processes when not given: half the cores (at least 1, at most 4)."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _ranks(device):
    """``(rank, world, topology or None, device)`` of this process (one rank without a launcher)."""
    from climseg.distributed import launch

    if not launch.is_launched():
        return 0, 1, None, resolve_device(device)
    topo = launch.init()
    if topo.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // topo.local_size))
    return topo.rank, topo.world_size, topo, (topo.device if device == "auto" else resolve_device(device))


def _gather(items, topo):
    """Every rank's ``items`` (a list) at every rank, as a list per rank (itself alone without a launcher)."""
    if topo is None or topo.world_size == 1:
        return [items]
    import torch.distributed as dist

    everyone = [None] * topo.world_size
    dist.all_gather_object(everyone, items, group=topo.comm_world)
    return everyone


#: ``batch_size="auto"`` on a CPU: as many steps per forward as keep a batch within this many grid
#: points, from 1 to 4. A batch buys a CPU nothing the cores do not already get from one step of a
#: large grid, and its larger activations leave the caches: on the 2-core AVX2 VM (2026-12-04, fp32,
#: deepcam, the prepared network alone) batch 4 ran 0.129 steps/s at 768x1152 against 0.211 for
#: batch 1, and 8% slower per step at 384x576; on the small grids (192x288) batches of 4 keep the
#: per-call overheads down.
CPU_BATCH_POINTS = 2**18
#: ``batch_size="auto"`` on a GPU
GPU_BATCH_SIZE = 4


def auto_batch_size(device, shapes):
    """The batch size ``"auto"`` means for inputs of grid ``shapes`` ((H, W) each) on ``device``:
    :data:`GPU_BATCH_SIZE` on a GPU; on a CPU, from 1 to 4 steps within :data:`CPU_BATCH_POINTS`
    grid points of the largest grid."""
    if torch.device(device).type != "cpu":
        return GPU_BATCH_SIZE
    points = max((int(h) * int(w) for h, w in shapes), default=1)
    return max(1, min(4, CPU_BATCH_POINTS // max(points, 1)))


def _check_options(batch_size, map_workers, precision):
    if batch_size != "auto" and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1024
    ):
        raise ConfigError(f"option batch-size: {batch_size!r} is not auto or a whole number from 1 to 1024")
    if map_workers is not None and (not isinstance(map_workers, int) or not 0 <= map_workers <= 256):
        raise ConfigError(f"option map-workers: {map_workers!r} is not a whole number from 0 to 256")
    if precision not in PRECISIONS:
        raise ConfigError(f"option precision: {precision!r} is not one of {', '.join(PRECISIONS)}")


def calibration_batches(sources, shift, scale, steps=CALIBRATION_STEPS):
    """A function ``(shape, multiple) -> [batches]`` for int8 calibration: the first ``steps``
    time steps of ``sources`` (:class:`InputFile`), normalised and padded to ``multiple`` as the
    inputs are, in batches of the shape's batch size; a grid that pads to another shape than the
    inputs' is refused."""
    shift = np.asarray(shift, np.float32).reshape(-1)
    scale = np.asarray(scale, np.float32).reshape(-1)

    def batches(shape, multiple):
        xs = []
        for source in sources:
            for t in range(len(source.times)):
                if len(xs) == steps:
                    break
                with FILE_LOCK:
                    fields = source.read(t)[0]
                x = torch.from_numpy((fields - shift) * scale).permute(2, 0, 1)[None]
                x, _ = pad_to_multiple(x, multiple, source.periodic)
                if tuple(x.shape[-2:]) != tuple(shape[-2:]):
                    raise ConfigError(
                        f"{source.path}: calibration grid {source.shape[0]}x{source.shape[1]} differs from the "
                        f"inputs' (padded {shape[-2]}x{shape[-1]}); calibrate on files of the same grid"
                    )
                xs.append(x)
        n = shape[0]
        xs += xs[: (-len(xs)) % n]  # whole batches
        return [torch.cat(xs[i : i + n]) for i in range(0, len(xs), n)]

    return batches


def predict(
    checkpoint,
    inputs,
    out,
    device="auto",
    maps=True,
    log=print,
    progress=True,
    convention="auto",
    variables=None,
    precision="auto",
    batch_size="auto",
    compile=False,
    calibrate=None,
    map_workers=None,
):
    """Segment ``inputs`` with the model in ``checkpoint``; write masks, maps and
    ``summary.json`` into ``out``. Returns the summary dict (under a launcher: the merged
    summary on every rank; each rank segments its share of the inputs).

    netCDF variable names follow ``convention`` (auto, CAM5, ERA5, CMIP6) or the ``variables``
    mapping file (:mod:`climseg.data.variables`). ``precision``: auto, fp32, bf16, fp16 or int8
    (:data:`climseg.perf.hardware.PRECISION_RULE`); ``batch_size``: time steps per forward, or
    ``"auto"`` (:func:`auto_batch_size`: by device and grid);
    ``compile``: ``torch.compile`` the network; ``calibrate``: files whose first
    :data:`CALIBRATION_STEPS` steps calibrate int8 (default: the inputs');
    ``map_workers``: processes that render maps (default :func:`default_map_workers`; 0: in the
    writer thread)."""
    if not inputs:
        raise ConfigError("no input files given")
    _check_options(batch_size, map_workers, precision)
    from climseg.data.variables import conventions_for

    conventions_for(convention, variables)  # a bad --convention or --variables file is refused before any work
    check_output_location(out, "folder")
    ckpt = load_any_checkpoint(checkpoint)
    rank, world, topo, dev = _ranks(device)
    if rank != 0:
        log, progress = (lambda *a, **k: None), False
    data_spec = ckpt["data"]
    channels = list(data_spec["channels"])
    # every input of this rank checked before anything is written
    sources = open_inputs(inputs, channels, convention, variables, rank, world)
    if batch_size == "auto":
        batch_size = auto_batch_size(dev, [s.shape for _, s in sources])
    calibration = None
    if precision == "int8":
        named = calibrate or [inputs[0]]
        files = [s for _, s in open_inputs(named, channels, convention, variables)]
        calibration = calibration_batches(files, data_spec["shift"], data_spec["scale"])
    pool = MapPool(default_map_workers() if map_workers is None else map_workers) if maps else None
    try:
        return _run(ckpt, sources, out, dev, pool, log, progress, precision, batch_size, compile, calibration, topo)
    finally:
        if pool is not None:
            pool.stop()


def _run(ckpt, sources, out, dev, pool, log, progress, precision, batch_size, compile, calibration, topo):
    data_spec = ckpt["data"]
    network = prepare_network(ckpt, dev, precision, compile, calibration, log)
    total = sum(len(s.times) for _, s in sources)
    log(
        f"climseg predict: {network.describe()}; batch {batch_size}, {total} steps of "
        f"{len(sources)} input{'s' if len(sources) != 1 else ''}"
        + (f" on this rank of {topo.world_size}" if topo is not None and topo.world_size > 1 else "")
    )
    summary = dict(checkpoint=ckpt["path"], model=ckpt["model"]["config"], channels=list(data_spec["channels"]))
    start = time.perf_counter()
    with OutputBatch(out) as batch, progress_bar(total=total, desc="predict", unit="step", disable=not progress) as bar:
        pipeline = Pipeline(
            sources, network, data_spec["shift"], data_spec["scale"], batch, pool, bar, batch_size, PREFETCH
        )
        done = pipeline.run()
        seconds = time.perf_counter() - start
        mine = [
            (position, dict(file=source.path, mask=done[position][0], time_steps=done[position][1]))
            for position, source in sources
        ]
        summary["inputs"] = [entry for _, entry in sorted(e for part in _gather(mine, topo) for e in part)]
        if topo is not None and topo.world_size > 1:
            summary["ranks"] = topo.world_size
        summary["performance"] = _performance(network, pipeline, batch_size, seconds)
        if topo is None or topo.rank == 0:
            write_json(batch.path("summary.json"), summary)
    for line in summary_lines(summary):
        log(line)
    perf = summary["performance"]
    log(
        f"climseg: {perf['steps']} steps in {perf['seconds']:.1f} s ({perf['steps_per_second']:.2f} steps/s, "
        f"network busy {100 * perf['network_busy']:.0f}% of the time)"
    )
    log(f"climseg: masks{', maps' if pool is not None else ''} and summary.json written to {out}")
    return summary


def _performance(network, pipeline, batch_size, seconds):
    t = pipeline.times
    return dict(
        device=str(network.device),
        precision=network.precision,
        why=network.why,
        batch_size=batch_size,
        compiled=network.compiled,
        compile_seconds=None if network.compile_seconds is None else round(network.compile_seconds, 3),
        steps=t.steps,
        seconds=round(seconds, 3),
        steps_per_second=round(t.steps / seconds, 4) if seconds > 0 else None,
        network_busy=round(t.compute / seconds, 4) if seconds > 0 else None,
        stages=t.as_dict(),
    )
