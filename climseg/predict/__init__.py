"""Inference: climate files in, class masks, maps and a summary out.

Inputs are DeepCAM HDF5 samples (``climate/data``, H x W x 16) or CAM5-style
netCDF files (see :mod:`climseg.data.netcdf`), any number of time steps. For
each input ``NAME`` the output folder receives

* ``NAME_mask.h5`` (from HDF5: dataset ``mask``, uint8 H x W, class names in
  its attributes) or ``NAME_mask.nc`` (from netCDF: ``mask(time, lat, lon)``
  with CF ``flag_values``/``flag_meanings``, the file's own coordinates), the
  formats of :mod:`climseg.data.masks`;
* one PNG map per time step (``NAME.png``, or ``NAME_tNNNN.png``);

and ``summary.json`` covers every input and time step: pixel fraction of each
class, number of connected cyclones and rivers, and, when the input carries
labels (``climate/labels_0``), the IoU against them.

The output folder and every input (readable, the right channels, at least one
time step) are checked before the model runs; every output is written under a
temporary name and all are renamed into place together at the end, so a
failure part-way leaves the folder exactly as it was (the masks, maps and
``summary.json`` there always belong to one run).
Inputs whose sizes are not multiples of the network's stride are padded
(longitude wraps around on global grids, edges repeat otherwise) and cropped
back; objects are joined across the date line only on global grids.

At scale: under ``mpirun``/``srun``/``torchrun`` (see :mod:`climseg.distributed.launch`) each
rank takes every world-size-th input (round robin, in the order given), writes one mask per
input, and rank 0 gathers the per-input entries and writes one merged ``summary.json`` in the
input order. Memory stays bounded: one time step is read, segmented and appended to the open
mask file at a time (netCDF; the mask variable grows along time), whatever the series length.
``checkpoint`` may also be ``climatenet:WEIGHTS.pth`` (ClimateNet weights with the
``config.json`` beside them, imported on the fly by :mod:`climseg.data.checkpoints`).
"""

import os

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from climseg.constants import CHANNEL_UNITS, CHANNELS, CLASS_NAMES, NUM_CLASSES
from climseg.data.checkpoints import load_any_checkpoint
from climseg.data.deepcam import LABELS_KEY, check_labels, check_sample_file, grid, read_sample
from climseg.data.masks import create_mask_hdf5, create_mask_netcdf
from climseg.data.netcdf import is_netcdf, open_netcdf, read_netcdf_step
from climseg.errors import DataError, UserError
from climseg.metrics import ConfusionMatrix, count_objects
from climseg.models.checkpoint import build_model
from climseg.output import OutputBatch, check_output_location, write_json
from climseg.perf.hardware import resolve_device
from climseg.plotting import plot_map
from climseg.progress import progress_bar


class InputFile:
    """One input of ``climseg predict``, checked when made: its kind (``netcdf`` or ``hdf5``),
    grid, time steps, and :meth:`read` of each step. ``channels`` are the ones the network
    reads; TMQ is read too, for the map, when there. A DeepCAM sample's grid is assumed
    (global, regular, rows south to north)."""

    def __init__(self, path, channels, convention="auto", variables=None):
        self.path, self.channels = path, list(channels)
        self.stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder; give the .h5 or .nc files in it")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        if is_netcdf(path):
            self.kind = "netcdf"
            wanted = self.channels + ([] if "TMQ" in self.channels else ["TMQ"])
            self.info = open_netcdf(
                path,
                wanted,
                optional=() if "TMQ" in self.channels else ("TMQ",),
                convention=convention,
                variables=variables,
            )
            self.lat, self.lon, self.assumed_grid = self.info.lat, self.info.lon, False
            self.periodic = self.info.periodic
            self.times = self.info.times
            self.shape = (len(self.lat), len(self.lon))
        else:
            self.kind = "hdf5"
            self.shape, self.has_labels = check_sample_file(path)
            self.lat, self.lon = grid(*self.shape)
            self.assumed_grid = True
            self.periodic = True
            self.times = [""]
        if not self.times:
            raise DataError(f"{path}: its time axis has length 0 (no time steps to segment)")
        if min(self.shape) < 1:
            raise DataError(f"{path}: empty grid {self.shape[0]}x{self.shape[1]}")

    def read(self, index):
        """``(fields[H, W, C] float32 of the network's channels, map background[H, W]
        and its name, labels or None)`` of time step ``index``."""
        if self.kind == "netcdf":
            names = list(self.info.variables)
            data = read_netcdf_step(self.info, index, names)
            fields = data[..., [names.index(c) for c in self.channels]]
            back = "TMQ" if "TMQ" in names else self.channels[0]
            return fields, data[..., names.index(back)], back, None
        data, _ = read_sample(self.path, labels=False)
        fields = data[..., [CHANNELS.index(c) for c in self.channels]]
        labels = None
        if self.has_labels:
            with h5py.File(self.path, "r") as f:
                raw = f[LABELS_KEY][...]
            if raw.shape == self.shape:
                labels = check_labels(self.path, raw, NUM_CLASSES)
        return fields, data[..., CHANNELS.index("TMQ")], "TMQ", labels


def _pad(x, multiple, periodic=True):
    """Pad (N, C, H, W) up to multiples: longitude wraps on a global grid (else
    repeats its edge columns), latitude repeats its edge rows."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, 0, 0), mode="circular" if periodic else "replicate")
    if ph:
        x = F.pad(x, (0, 0, ph // 2, ph - ph // 2), mode="replicate")
    return x, (ph // 2, pw // 2)


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


def predict(
    checkpoint, inputs, out, device="auto", maps=True, log=print, progress=True, convention="auto", variables=None
):
    """Segment ``inputs`` with the model in ``checkpoint``; write masks, maps and
    ``summary.json`` into ``out``. Returns the summary dict (under a launcher: the merged
    summary on every rank; each rank segments its share of the inputs). netCDF variable names
    follow ``convention`` (auto, CAM5, ERA5, CMIP6) or the ``variables`` mapping file
    (:mod:`climseg.data.variables`)."""
    if not inputs:
        raise UserError("no input files given")
    from climseg.data.variables import conventions_for

    conventions_for(convention, variables)  # a bad --convention or --variables file is refused before any work
    check_output_location(out, "folder")
    ckpt = load_any_checkpoint(checkpoint)
    rank, world, topo, dev = _ranks(device)
    if rank != 0:
        log, progress = (lambda *a, **k: None), False
    model = build_model(ckpt, dev).eval()
    data_spec = ckpt["data"]
    channels = list(data_spec["channels"])
    shift = torch.as_tensor(data_spec["shift"], dtype=torch.float32).view(1, -1, 1, 1).to(dev)
    scale = torch.as_tensor(data_spec["scale"], dtype=torch.float32).view(1, -1, 1, 1).to(dev)

    stems = {}
    for p in map(os.fspath, inputs):
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise UserError(f"{p}: has the same name as {stems[stem]}; their outputs would collide")
        stems[stem] = p
    mine = list(range(rank, len(inputs), world))  # this rank's share, round robin
    # every input of this rank checked before anything is written
    sources = [InputFile(os.fspath(inputs[i]), channels, convention, variables) for i in mine]

    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    total = sum(len(s.times) for s in sources)
    summary = dict(checkpoint=ckpt["path"], model=ckpt["model"]["config"], channels=channels, inputs=[])
    done = []
    with OutputBatch(out) as batch, progress_bar(total=total, desc="predict", unit="map", disable=not progress) as bar:
        for i, s in zip(mine, sources):
            done.append((i, _predict_source(s, model, shift, scale, autocast, batch, maps, dev, bar)))
        summary["inputs"] = [entry for _, entry in sorted(e for part in _gather(done, topo) for e in part)]
        if world > 1:
            summary["ranks"] = world
        if rank == 0:
            write_json(batch.path("summary.json"), summary)
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
            log(line)
    log(f"climseg: masks{', maps' if maps else ''} and summary.json written to {out}")
    return summary


def _predict_source(s, model, shift, scale, autocast, batch, maps, dev, bar):
    """Masks, maps and summary entries of one input file (written into the :class:`~climseg.output.OutputBatch`);
    each step's mask goes to the file at once."""
    entries = []
    with _MaskWriter(s, batch) as writer:
        for t, when in enumerate(s.times):
            entries.append(_predict_step(s, t, when, model, shift, scale, autocast, batch, maps, dev, writer))
            bar.update()
    return dict(file=s.path, mask=writer.name, time_steps=entries)


def _predict_step(s, t, when, model, shift, scale, autocast, batch, maps, dev, writer):
    """Segment time step ``t`` of ``s``, append its mask to ``writer``; its summary entry."""
    fields, background, background_name, labels = s.read(t)
    x = torch.from_numpy(np.ascontiguousarray(fields.transpose(2, 0, 1)))[None].to(dev)
    x = (x - shift) * scale
    x, (top, left) = _pad(x, model.input_multiple, s.periodic)
    with torch.inference_mode(), autocast:
        logits = model(x)
    pred = logits.argmax(1)[0, top : top + s.shape[0], left : left + s.shape[1]].to(torch.uint8).cpu().numpy()
    writer.write(t, pred)
    entry = _describe(pred, t, when, s.periodic)
    if labels is not None:
        cm = ConfusionMatrix(NUM_CLASSES).update(torch.from_numpy(pred), torch.from_numpy(labels))
        entry["iou_vs_labels"] = {k: _json_float(v) for k, v in cm.as_dict().items()}
    if maps:
        name = f"{s.stem}.png" if len(s.times) == 1 else f"{s.stem}_t{t:04d}.png"
        title = f"{os.path.basename(s.path)}" + (f"  {when}" if when else "")
        note = "grid assumed: global, regular, south to north" if s.assumed_grid else None
        label = (
            "TMQ (kg m$^{-2}$)" if background_name == "TMQ" else f"{background_name} ({CHANNEL_UNITS[background_name]})"
        )
        plot_map(batch.path(name), background, pred, s.lat, s.lon, title, background_label=label, note=note)
        entry["map"] = name
    return entry


def _describe(pred, index, when, periodic):
    counts = np.bincount(pred.reshape(-1), minlength=NUM_CLASSES).astype(np.float64)
    objects = count_objects(pred, periodic=periodic)
    return dict(
        index=index,
        time=when,
        fractions=dict(zip(CLASS_NAMES, (counts / counts.sum()).round(6).tolist())),
        cyclones=int(objects[1]),
        rivers=int(objects[2]),
    )


class _MaskWriter:
    """The mask file of one input (:mod:`climseg.data.masks`), written a time step at a time into
    the output batch's temporary file (renamed with the others when the whole run is complete):
    ``NAME_mask.nc`` (netCDF input: ``mask(time, lat, lon)`` or ``mask(lat, lon)`` with the
    input's coordinates) or ``NAME_mask.h5`` (a DeepCAM sample: one step)."""

    def __init__(self, source, batch):
        self.source, self.batch = source, batch
        self.name = f"{source.stem}_mask.nc" if source.kind == "netcdf" else f"{source.stem}_mask.h5"

    def __enter__(self):
        tmp = self.batch.path(self.name)
        self._file, self._mask = self._open_netcdf(tmp) if self.source.kind == "netcdf" else self._open_hdf5(tmp)
        return self

    def _open_netcdf(self, tmp):
        info = self.source.info
        return create_mask_netcdf(tmp, info.path, info.time_dim, f"climseg predict on {os.path.basename(info.path)}")

    def _open_hdf5(self, tmp):
        return create_mask_hdf5(tmp, self.source.shape, self.source.path)

    def write(self, t, pred):
        """Append time step ``t``'s (H, W) uint8 mask (rows south to north)."""
        if self.source.kind == "netcdf":
            data = pred[::-1] if self.source.info.flipped else pred
            if self.source.info.time_dim:
                self._mask[t] = data
            else:
                self._mask[:] = data
            return
        self._mask[...] = pred  # a DeepCAM sample holds one step

    def __exit__(self, *exc):
        self._file.close()
        return False


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _json_float(v):
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)


def _fmt(v):
    return "n/a" if v is None else f"{v:.3f}"
