"""Heuristic labels for data nobody labelled: tropical-cyclone and atmospheric-river masks
(0 background, 1 TC, 2 AR) from the physical fields, the way the SC18 training data were
made with TECA (Prabhat et al. 2012, 2015), written in ``climseg predict``'s mask format
(:mod:`climseg.data.masks`). This module runs the labeller over files and processes; the
physics is :mod:`climseg.analytics.cyclones` (storm centres, areas and tracks) and
:mod:`climseg.analytics.rivers` (river objects), with the thresholds of
:class:`~climseg.analytics.label_options.LabelOptions`.

Data flow: :func:`label` opens the netCDF inputs as one series (any variable-name
convention, :mod:`climseg.data.netcdf`), and when a percentile threshold is asked for,
computes the local climatology of the river field from a sample of steps
(:func:`river_climatology`). Worker processes (``workers``), or MPI ranks when started
by ``mpirun`` (each rank taking every size-th file, with its own worker processes), then
take one output file each (one per file of the series' time axis) and go through its
steps one at a time (bounded memory; :func:`label_step`): ``detect_cyclones`` finds the
storm centres and their areas, ``detect_rivers`` the river mask. Every process then links
all storm centres through time (``link_cyclones``; the table of centres is small and
shared by an allgather under MPI), drops short-lived ones, and the workers write
``NAME_mask.nc`` (``mask(time, lat, lon)``, CF ``flag_values``/``flag_meanings``, the
file's own coordinates and times), which ``climseg track`` reads; ``dataset`` also writes
the steps and labels as a DeepCAM training set for ``climseg train``
(:mod:`climseg.data.deepcam`). DeepCAM HDF5 samples get ``NAME_mask.h5`` (dataset
``mask``). ``summary.json`` lists every step's storms and rivers. Cyclone labels take
precedence where the two meet.
"""

import contextlib
import dataclasses
import json
import os
import time

import numpy as np

from climseg import sphere
from climseg.analytics.cyclones import detect_cyclones, link_cyclones
from climseg.analytics.label_options import DEFAULT_THRESHOLDS, LabelOptions
from climseg.analytics.rivers import detect_rivers, poleward_transport, river_field
from climseg.constants import ATMOSPHERIC_RIVER, CHANNELS, CLASS_NAMES, NUM_CLASSES, TROPICAL_CYCLONE
from climseg.data.deepcam import check_sample_file
from climseg.data.inputs import series_outputs
from climseg.data.masks import create_mask_hdf5, create_mask_netcdf
from climseg.errors import DataError, UserError
from climseg.output import OutputBatch, check_output_location, check_workers, worker_pool, write_json
from climseg.progress import progress_bar


def river_climatology(info, options, progress=False):
    """Local ``ar_percentile`` of the river field over the series (at most
    ``ar_climatology_steps`` steps, evenly spaced), on a grid coarsened to about 100 000
    cells and repeated back to full size: float32 (H, W)."""
    from climseg.data.netcdf import read_netcdf_step

    n = len(info.times)
    steps = np.unique(np.linspace(0, n - 1, min(n, options.ar_climatology_steps)).astype(np.int64))
    h, w = len(info.lat), len(info.lon)
    stride = max(1, int(np.ceil(np.sqrt(h * w / 100_000))))
    names = list(info.variables)
    sample = []
    with progress_bar(total=len(steps), desc="climatology", unit="step", disable=not progress) as bar:
        for t in steps:
            data = read_netcdf_step(info, int(t), names)
            fields = {c: data[..., i] for i, c in enumerate(names)}
            sample.append(_coarsen(river_field(fields, options.ar_field)[1], stride))
            bar.update()
    pct = np.percentile(np.stack(sample), options.ar_percentile, axis=0).astype(np.float32)
    return np.repeat(np.repeat(pct, stride, axis=0), stride, axis=1)[:h, :w]


def _coarsen(field, stride):
    if stride == 1:
        return field
    h, w = field.shape
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    padded = np.pad(field, ((0, hp - h), (0, wp - w)), mode="edge")
    return padded.reshape(hp // stride, stride, wp // stride, stride).mean(axis=(1, 3))


# ----------------------------------------------------------------------------- one step


def label_step(fields, lat, lon, periodic, options, threshold, weights=None):
    """``(rivers bool (H, W), storms list, river objects)`` of one step's fields (dict)."""
    rivers, objects, storms = None, [], []
    if options.method in ("tc+ar", "ar"):
        _, field = river_field(fields, options.ar_field)
        poleward = poleward_transport(fields, lat)
        if options.ar_percentile is not None and options.ar_climatology == "zonal":
            threshold = np.maximum(threshold, np.percentile(field, options.ar_percentile, axis=1)[:, None])
        rivers, objects = detect_rivers(field, threshold, lat, lon, periodic, options, weights, poleward)
    if options.method in ("tc+ar", "tc"):
        storms = detect_cyclones(fields, lat, lon, periodic, options)
    if rivers is None:
        rivers = np.zeros((len(lat), len(lon)), bool)
    return rivers, storms, objects


def _channels_for(options):
    """(required, optional) channels of a method."""
    required, optional = [], []
    if options.method in ("tc+ar", "tc"):
        required += ["PSL", "U850", "V850"]
        optional += ["T200", "T500", "UBOT", "VBOT"]
    if options.method in ("tc+ar", "ar"):
        if options.ar_field == "ivt":
            required.append("IVT")
        elif options.ar_field == "tmq":
            required.append("TMQ")
        elif options.ar_field == "proxy":
            required += [c for c in ("TMQ", "U850", "V850") if c not in required]
        else:
            optional += ["IVT", "TMQ"]
        optional += ["TMQ", "U850", "V850"]  # the proxy and the poleward-transport test, when there
    optional = list(dict.fromkeys(optional))
    return required, [c for c in optional if c not in required]


# ----------------------------------------------------------------------------- files


@dataclasses.dataclass
class _Job:
    """One output file: a run of the series' steps."""

    name: str  # output file name
    source: str  # file whose coordinates and times the mask copies
    steps: list  # global step indices
    time_var: str = None
    flipped: bool = False  # ``source`` stores latitudes north to south


def _jobs(info):
    """One job per output of the series (:func:`climseg.data.inputs.series_outputs`: one per file of
    its time axis)."""
    return [_Job(f"{o.stem}_mask.nc", o.source, o.steps, o.time_dim, o.flipped) for o in series_outputs(info)]


def _scan_job(args):
    """Worker: detect rivers and storms in every step of one job; the rivers (bit-packed, bounded
    memory) go to a work file in the run's staging folder, the storms come back. The work file is
    written, not memory-mapped: a full disk is an error to report, not a SIGBUS."""
    info, job, options, threshold, staging = args
    from climseg.data.netcdf import read_netcdf_step

    names = list(info.variables)
    weights = sphere.cell_areas(info.lat, info.lon).reshape(-1)
    h, w = len(info.lat), len(info.lon)
    packed = np.zeros((len(job.steps), -(-h * w // 8)), np.uint8)
    storms, objects = [], []
    for k, t in enumerate(job.steps):
        data = read_netcdf_step(info, t, names)
        fields = {c: data[..., i] for i, c in enumerate(names)}
        if options.method != "ar" and not ("T200" in fields or "T500" in fields):
            raise DataError(f"{info.path}: the warm-core test needs T200 or T500")
        rivers, s, o = label_step(fields, info.lat, info.lon, info.periodic, options, threshold, weights)
        packed[k] = np.packbits(rivers.reshape(-1))
        storms.append(s)
        objects.append(o)
    tmp = os.path.join(staging, f".{job.name}.rivers.npy")
    with open(tmp, "wb") as f:
        np.save(f, packed)
    return tmp, storms, objects


def _write_job(args):
    """Worker: paint the kept storms over the rivers and write the mask file into the staging folder."""
    info, job, tmp, storms, keep, staging, dataset = args
    h, w = len(info.lat), len(info.lon)
    packed = np.load(tmp)
    masks = np.zeros((len(job.steps), h, w), np.uint8)
    for k in range(len(job.steps)):
        masks[k][np.unpackbits(packed[k], count=h * w).reshape(h, w).astype(bool)] = ATMOSPHERIC_RIVER
        flat = masks[k].reshape(-1)
        for s, kept in zip(storms[k], keep[k]):
            if kept:
                flat[s["index"]] = TROPICAL_CYCLONE
    del packed
    os.unlink(tmp)
    dst, mask = create_mask_netcdf(
        os.path.join(staging, job.name), job.source, job.time_var, f"climseg label on {os.path.basename(job.source)}"
    )
    with dst:
        data = masks[:, ::-1] if job.flipped else masks
        mask[:] = data if job.time_var else data[0]
    counts = [np.bincount(m.reshape(-1), minlength=NUM_CLASSES) for m in masks]
    partials = _write_samples(dataset, job, masks) if dataset is not None else []
    return job.name, counts, partials


def _write_samples(dataset, job, masks):
    """Each step of a job as a DeepCAM sample (``climate/data`` H x W x 16 rows south to north,
    ``climate/labels_0``) in ``dataset['folder']/train`` or ``/validation``; returns the
    training samples' partial statistics."""
    from climseg.data.deepcam import sample_statistics, write_sample
    from climseg.data.netcdf import read_netcdf_step

    partials = []
    for k, t in enumerate(job.steps):
        data = read_netcdf_step(dataset["info"], t, list(CHANNELS))
        split = "validation" if t >= dataset["first_validation"] else "train"
        when = dataset["info"].times[t]
        stamp = when[:13].replace(" ", "-") if len(when) >= 13 and when[4] == "-" else f"step{t:06d}"
        labels = masks[k].astype(np.int32)
        write_sample(os.path.join(dataset["folder"], split, f"data-{stamp}-{t:06d}.h5"), data, labels)
        if split == "train":
            partials.append(sample_statistics(data, labels))
    return partials


def _hours(info):
    if info.dates is None:
        return np.zeros(len(info.times))
    try:
        import cftime

        return np.asarray(cftime.date2num(info.dates, "hours since 1900-01-01", info.calendar), np.float64)
    except Exception:  # noqa: BLE001 - no calendar: the step indices, 1 h apart
        return np.arange(len(info.times), dtype=np.float64)


def label(
    inputs,
    out,
    options=None,
    convention="auto",
    variables=None,
    workers=1,
    progress=True,
    log=print,
    dataset=None,
    validation_fraction=0.125,
):
    """Label ``inputs`` (netCDF files in any convention, merged into one series, and/or
    DeepCAM HDF5 samples): write ``NAME_mask.nc`` / ``NAME_mask.h5`` and ``summary.json``
    into ``out``, all of them as one batch that replaces an earlier ``label`` run there as a
    whole (:class:`~climseg.output.OutputBatch`). With ``dataset`` (a folder), the netCDF steps
    and their labels also become a DeepCAM training set there (``train/``, ``validation/``: the
    last ``validation_fraction`` of the steps, ``stats.h5``) for ``climseg train --data``; the
    input must then hold all 16 channels. Every option and the output location are checked
    before any input is read. Returns the summary dict."""
    from climseg.data.netcdf import is_netcdf, open_netcdf
    from climseg.data.variables import conventions_for

    options = (options or LabelOptions()).check()
    if not inputs:
        raise UserError("no input files given")
    check_workers(workers)
    conventions_for(convention, variables)  # a bad --convention or --variables file is refused before any work
    check_output_location(out, "folder")
    if dataset is not None:
        if not 0.0 < validation_fraction < 1.0:
            raise UserError(f"--validation-fraction {validation_fraction}: must lie between 0 and 1")
        check_output_location(dataset, "folder", must_be_new=True)
    inputs = [os.fspath(p) for p in inputs]
    hdf5 = [p for p in inputs if os.path.isfile(p) and not is_netcdf(p) and not os.path.isdir(p)]
    netcdf = [p for p in inputs if p not in hdf5]
    required, optional = _channels_for(options)
    info = open_netcdf(netcdf, required + optional, optional, convention, variables) if netcdf else None
    if info is not None:
        _check_series(info, options)
    for p in hdf5:
        check_sample_file(p)
    data_info = None
    if dataset is not None:
        if info is None:
            raise UserError("--dataset needs netCDF input (a series of the 16 channels)")
        if len(info.times) < 2:
            raise UserError(f"--dataset: the series needs at least 2 steps (it has {len(info.times)})")
        if _mpi_comm() is not None:
            raise UserError("--dataset is written by one process: run it without mpirun (--workers for processes)")
        data_info = open_netcdf(netcdf, CHANNELS, (), convention, variables)
    jobs = _jobs(info) if info is not None else []
    names = _output_names(jobs, hdf5)
    comm = _mpi_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    sources = hdf5 + ([s.path for segs in info.segments.values() for s in segs] if info is not None else [])
    batch = OutputBatch(out, command="label", inputs=sources, earlier=_earlier_run) if rank == 0 else None
    started = time.perf_counter()
    summary = dict(options=dataclasses.asdict(options), inputs=[], steps=0)
    with batch if batch is not None else contextlib.nullcontext():
        if batch is not None:
            batch.check(names)
        staging = comm.bcast(batch.staging if batch else None) if comm is not None else batch.staging
        if info is not None and data_info is not None:
            from climseg.output import atomic_directory

            with atomic_directory(dataset) as folder:
                os.makedirs(os.path.join(folder, "train"))
                os.makedirs(os.path.join(folder, "validation"))
                n = len(info.times)
                first_validation = n - min(n - 1, max(1, int(round(n * validation_fraction))))
                target = dict(info=data_info, folder=folder, first_validation=first_validation)
                entries, partials = _label_series(info, jobs, staging, options, workers, progress, target)
                _write_dataset_stats(folder, partials)
            summary["inputs"] += entries
            summary["dataset"] = dict(folder=dataset, train=first_validation, validation=n - first_validation)
        elif info is not None:
            summary["inputs"] += _label_series(info, jobs, staging, options, workers, progress)[0]
            summary["convention"] = info.convention
            summary["variables"] = {c: " + ".join(p.names) for c, p in info.plans.items()}
        samples = {i: _label_hdf5(p, staging, options) for i, p in enumerate(hdf5) if i % size == rank}
        if comm is not None:  # also the barrier: every rank's files are in the staging folder
            for part in comm.allgather(samples):
                samples.update(part)
        summary["inputs"] += [samples[i] for i in range(len(hdf5))]
        summary["steps"] = sum(len(i["time_steps"]) for i in summary["inputs"])
        summary["seconds"] = time.perf_counter() - started
        if rank != 0:
            return summary  # rank 0 writes the summary, renames every rank's files into place and reports
        write_json(batch.path("summary.json"), summary)
    storms = sum(e["cyclones"] for i in summary["inputs"] for e in i["time_steps"])
    rivers = sum(e["rivers"] for i in summary["inputs"] for e in i["time_steps"])
    log(
        f"climseg: labelled {summary['steps']} steps in {summary['seconds']:.1f} s ({storms} cyclone and "
        f"{rivers} river labels); masks and summary.json written to {out}"
    )
    return summary


def _check_series(info, options):
    """What the labeller needs of a series beyond its variables: a grid of at least 2 x 2 cells and
    the fields each method reads."""
    if len(info.lat) < 2 or len(info.lon) < 2:
        raise DataError(
            f"{info.path}: a grid of {len(info.lat)} x {len(info.lon)} cells; labelling needs at least 2 x 2"
        )
    if options.method != "ar" and not ("T200" in info.variables or "T500" in info.variables):
        raise DataError(f"{info.path}: the warm-core test needs T200 or T500 (neither found)")
    if (
        options.method != "tc"
        and options.ar_field == "auto"
        and not ("IVT" in info.variables or "TMQ" in info.variables)
    ):
        raise DataError(f"{info.path}: atmospheric rivers need IVT or TMQ (neither found)")


def _output_names(jobs, hdf5):
    """The files a run writes, checked for collisions before any work."""
    names = {}
    for job in jobs:
        names[job.name] = job.source
    for p in hdf5:
        name = f"{os.path.splitext(os.path.basename(p))[0]}_mask.h5"
        if name in names:
            raise UserError(f"{p}: has the same name as {names[name]}; their outputs would collide")
        names[name] = p
    return list(names) + ["summary.json"]


def _earlier_run(folder):
    """The files of a ``label`` run written into ``folder`` before runs kept a manifest (its summary.json)."""
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    if "method" not in summary.get("options", {}):
        return []  # another command's summary
    return [i["mask"] for i in summary["inputs"]] + ["summary.json"]


def _write_dataset_stats(folder, partials):
    from climseg.data.deepcam import dataset_statistics
    from climseg.data.stats import write_stats

    write_stats(os.path.join(folder, "stats.h5"), dataset_statistics(partials))


def _label_series(info, jobs, staging, options, workers, progress, dataset=None):
    threshold = options.ar_threshold
    if options.method != "tc":
        fields = {c: np.zeros(1, np.float32) for c in info.variables}
        name = river_field(fields, options.ar_field)[0]
        threshold = DEFAULT_THRESHOLDS[name] if threshold is None else threshold
        if options.ar_percentile is not None and options.ar_climatology == "series":
            threshold = np.maximum(river_climatology(info, options, progress), np.float32(threshold))
    comm = _mpi_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    mine = list(range(rank, len(jobs), size))  # under MPI: every size-th file from the rank's own
    # the pool ends its workers before the batch removes the staging folder, whatever stops the run
    with worker_pool(workers, len(mine)) as mapper:
        scanned = {}
        with progress_bar(total=len(info.times), desc="label", unit="step", disable=not progress or rank) as bar:
            for i, result in zip(mine, mapper(_scan_job, [(info, jobs[i], options, threshold, staging) for i in mine])):
                scanned[i] = result
                bar.update(len(result[1]) * size)
        if comm is not None:  # every rank links every storm (a small table)
            for part in comm.allgather({i: r for i, r in scanned.items()}):
                scanned.update(part)
        scanned = [scanned[i] for i in range(len(jobs))]
        all_storms = [s for _, storms, _ in scanned for s in storms]
        keep, tracks = link_cyclones(
            [[(s["lat"], s["lon"]) for s in step] for step in all_storms], _hours(info), options
        )
        offset, args = 0, []
        for i, (job, (tmp, storms, _)) in enumerate(zip(jobs, scanned)):
            if i in mine:
                args.append((info, job, tmp, storms, keep[offset : offset + len(storms)], staging, dataset))
            offset += len(storms)
        written = dict(zip(mine, mapper(_write_job, args)))
    if comm is not None:
        for part in comm.allgather(written):
            written.update(part)
    written = [written[i] for i in range(len(jobs))]
    entries = []
    offset = 0
    partials = [p for _, _, part in written for p in part]
    for job, (_, storms, objects), (name, counts, _) in zip(jobs, scanned, written):
        steps = []
        for k, t in enumerate(job.steps):
            kept = [
                dict(
                    {key: v for key, v in s.items() if key not in ("index", "row", "col")},
                    track=int(tracks[offset + k][i]),
                    pixels=int(s["index"].size),
                )
                for i, s in enumerate(storms[k])
                if keep[offset + k][i]
            ]
            frac = counts[k] / max(counts[k].sum(), 1)
            steps.append(
                dict(
                    index=t,
                    time=info.times[t],
                    cyclones=len(kept),
                    rivers=len(objects[k]),
                    fractions=dict(zip(CLASS_NAMES, np.round(frac, 6).tolist())),
                    storms=kept,
                    river_objects=objects[k],
                )
            )
        offset += len(job.steps)
        entries.append(dict(file=job.source, mask=name, time_steps=steps))
    return entries, partials


def _mpi_comm():
    """MPI.COMM_WORLD when an MPI launcher started several processes (and mpi4py is there)."""
    from climseg.distributed.launch import detect_launcher

    info = detect_launcher()
    if info.launcher != "mpi" or info.world_size < 2:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError("climseg label under mpirun needs mpi4py (pip install mpi4py)") from None
    return MPI.COMM_WORLD


def _label_hdf5(path, staging, options):
    """A DeepCAM sample (global, regular grid assumed, rows south to north): NAME_mask.h5."""
    from climseg.data.deepcam import grid, read_sample

    data, _ = read_sample(path, labels=False)
    lat, lon = grid(*data.shape[:2])
    fields = {c: data[..., i] for i, c in enumerate(CHANNELS)}
    threshold = options.ar_threshold
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[river_field(fields, options.ar_field)[0]]
    rivers, storms, objects = label_step(fields, lat, lon, True, options, threshold)
    mask = np.where(rivers, ATMOSPHERIC_RIVER, 0).astype(np.uint8)
    for s in storms:
        mask.reshape(-1)[s["index"]] = TROPICAL_CYCLONE
    name = f"{os.path.splitext(os.path.basename(path))[0]}_mask.h5"
    f, dataset = create_mask_hdf5(os.path.join(staging, name), mask.shape, path)
    with f:
        dataset[...] = mask
    frac = np.bincount(mask.reshape(-1), minlength=NUM_CLASSES) / mask.size
    return dict(
        file=path,
        mask=name,
        time_steps=[
            dict(
                index=0,
                time="",
                cyclones=len(storms),
                rivers=len(objects),
                fractions=dict(zip(CLASS_NAMES, np.round(frac, 6).tolist())),
                storms=[{k: v for k, v in s.items() if k not in ("index", "row", "col")} for s in storms],
                river_objects=objects,
            )
        ],
    )
