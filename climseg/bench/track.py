"""Event-tracking benchmark: one year of 3-hourly class masks at 768 x 1152 (2,920 steps)
tracked (``climseg track``) and analysed (``climseg analyze``), and, given
``--climatenet-module``, ClimateNet's ``track_events`` on the first steps of the same masks.

The masks: ``climseg generate --timesteps`` labels on a coarse grid (default 96 x 144,
cheap to generate), repeated to the full grid by nearest neighbour (each coarse cell
becomes an 8 x 8 block), written as ``climseg predict`` writes masks (one netCDF file per
model day, ``mask(time, lat, lon)``). They are made once and kept in the climseg cache
folder. The objects have their full-grid sizes (hundreds to tens of thousands of
pixels); their outlines are blockier than a network's.

Timed in one process after the imports (process start-up apart): ``track`` with
``--workers`` processes and ``analyze`` (maps included), with ClimateNet's rules and parameter
values (``--like climatenet``: 250-pixel thresholds, look-ahead 1, at least 5 steps).
The per-step time is the total over the number of steps; the year is 2,920 steps.

ClimateNet comparison (``--climatenet-module PATH``: a copy of ClimateNet's
``climatenet/track_events.py``, which is not part of climseg): its ``track_events`` runs on
the first ``--climatenet-steps`` steps (it visits every pixel in Python, so a year would
take hours), given as the xarray DataArray it expects; climseg's
:func:`~climseg.analytics.track.track_arrays` tracks the same masks in memory, in one
process (ClimateNet's own pool takes every core for its labelling). Both take masks in
memory and return event ids in memory, so the ratio per step compares the trackers,
not file formats. Wall and CPU seconds (the process and its reaped children) are both
reported: on a shared machine the CPU seconds say more. NumPy 2 removed ``np.int``, which that file uses;
the benchmark sets ``np.int = int`` while it runs (the code is not edited).

    python benchmarks/bench_track.py
    python benchmarks/bench_track.py --climatenet-module /tmp/climatenet/track_events.py
"""

import argparse
import concurrent.futures
import datetime
import glob
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from climseg.bench import command_line, result_path


def _upsample_file(job):
    src, dst, factor_h, factor_w, lat, lon = job
    import netCDF4

    from climseg.data.masks import create_mask_variable
    from climseg.output import atomic_path

    with netCDF4.Dataset(src) as ds:
        labels = np.asarray(ds.variables["LABELS"][:], np.uint8)
        t = ds.variables["time"]
        hours, units, calendar = np.asarray(t[:]), t.units, t.calendar
    masks = np.repeat(np.repeat(labels, factor_h, axis=1), factor_w, axis=2)
    with atomic_path(dst) as tmp, netCDF4.Dataset(tmp, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", lat.size)
        ds.createDimension("lon", lon.size)
        tv = ds.createVariable("time", "f8", ("time",))
        tv.units, tv.calendar, tv.standard_name = units, calendar, "time"
        tv[:] = hours
        for name, values, std, u in (
            ("lat", lat, "latitude", "degrees_north"),
            ("lon", lon, "longitude", "degrees_east"),
        ):
            v = ds.createVariable(name, "f8", (name,))
            v.standard_name, v.units = std, u
            v[:] = values
        create_mask_variable(ds, ("time", "lat", "lon"))[:] = masks
    return dst


def make_masks(folder, steps, height, width, source_height, source_width, seed, workers, log=print):
    """The benchmark's masks (see the module docstring) in ``folder``; reused when complete."""
    from climseg.data.synthetic import grid
    from climseg.data.timeseries import generate_timeseries

    done = os.path.join(folder, "complete.json")
    params = dict(
        steps=steps,
        height=height,
        width=width,
        source_height=source_height,
        source_width=source_width,
        seed=seed,
        version=1,
    )
    if os.path.isfile(done):
        with open(done) as f:
            if json.load(f) == params:
                return sorted(glob.glob(os.path.join(folder, "*_mask.nc")))
    if height % source_height or width % source_width:
        raise SystemExit(
            f"--height {height} and --width {width} must be multiples of the source grid "
            f"{source_height} x {source_width}"
        )
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    log(f"making {steps} masks of {height}x{width} (from {source_height}x{source_width} labels) in {folder} ...")
    source = tempfile.mkdtemp(prefix="climseg-bench-track-")
    try:
        series = os.path.join(source, "series")
        generate_timeseries(series, steps, 3.0, source_height, source_width, seed, workers=workers, progress=True)
        lat, lon = grid(height, width)
        jobs = [
            (
                p,
                os.path.join(folder, os.path.basename(p)[:-3] + "_mask.nc"),
                height // source_height,
                width // source_width,
                lat,
                lon,
            )
            for p in sorted(glob.glob(os.path.join(series, "*.nc")))
        ]
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            files = list(pool.map(_upsample_file, jobs))
        shutil.copy(os.path.join(series, "true_events.csv"), folder)
    finally:
        shutil.rmtree(source, ignore_errors=True)
    with open(done, "w") as f:
        json.dump(params, f)
    return files


def _cpu_seconds():
    """CPU seconds (user + system) of this process and its finished children so far."""
    import gc
    import multiprocessing
    import resource

    gc.collect()  # finalise unreferenced process pools ...
    multiprocessing.active_children()  # ... and reap their workers
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _load_climatenet(path):
    spec = importlib.util.spec_from_file_location("climatenet_track_events", path)
    if spec is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its Pool pickles functions by module name
    spec.loader.exec_module(module)
    if not hasattr(module, "track_events"):
        raise SystemExit(f"{path}: has no track_events")
    return module


def _read_steps(files, n):
    import netCDF4

    out = []
    for p in files:
        with netCDF4.Dataset(p) as ds:
            ds.set_auto_mask(False)
            out.append(np.asarray(ds.variables["mask"][:]))
        if sum(len(x) for x in out) >= n:
            break
    return np.concatenate(out)[:n]


def _files_for_steps(files, n):
    """The fewest leading files holding ``n`` steps (and the steps they hold)."""
    import netCDF4

    chosen, total = [], 0
    for p in files:
        with netCDF4.Dataset(p) as ds:
            total += len(ds.dimensions["time"])
        chosen.append(p)
        if total >= n:
            break
    return chosen, total


def _year(args, files, options, work):
    """climseg track + analyze of every mask file: one row."""
    from climseg.analytics.analyze import analyze
    from climseg.analytics.track import track

    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    s = track(files, os.path.join(work, "events"), options(), workers=args.workers, progress=False, log=lambda *_: None)
    tracked = time.perf_counter()
    analyze(os.path.join(work, "events"), os.path.join(work, "analysis"), log=lambda *_: None)
    done = time.perf_counter()
    cpu = _cpu_seconds() - cpu0
    steps = s["steps"]
    row = dict(
        tracker="climseg track",
        steps=steps,
        workers=args.workers,
        track_s=tracked - start,
        analyze_s=done - tracked,
        total_s=done - start,
        ms_per_step=1e3 * (done - start) / steps,
        cpu_s=cpu,
        cpu_ms_per_step=1e3 * cpu / steps,
        year_s=(done - start) / steps * 2920,
        tropical_cyclones=s["events"]["tropical_cyclone"],
        atmospheric_rivers=s["events"]["atmospheric_river"],
    )
    print(
        f"climseg track + analyze: {steps} steps of {args.height}x{args.width} in {done - start:.1f} s "
        f"(track {tracked - start:.1f} s, analyze {done - tracked:.1f} s; {row['ms_per_step']:.2f} ms/step, "
        f"{row['year_s']:.1f} s per year of 2,920 steps) on {args.workers} processes; {cpu:.1f} CPU s "
        f"({1e3 * cpu / steps:.2f} CPU ms/step)"
    )
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(prog="climseg bench track", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2920, help="3-hourly steps (default 2920: one year)")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--source-height", type=int, default=96, help="grid the labels are generated on")
    parser.add_argument("--source-width", type=int, default=144)
    parser.add_argument("--workers", type=int, default=2, help="processes of climseg track (default 2)")
    parser.add_argument("--seed", type=int, default=2106)
    parser.add_argument("--masks", default=None, help="folder for the masks (default: in the climseg cache)")
    parser.add_argument(
        "--climatenet-module", default=None, help="a copy of ClimateNet's track_events.py to time beside"
    )
    parser.add_argument("--climatenet-steps", type=int, default=16, help="steps ClimateNet tracks (default 16)")
    parser.add_argument("--skip-year", action="store_true", help="only the ClimateNet comparison")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from climseg.analytics.analyze import land_mask
    from climseg.analytics.track_options import climatenet_options
    from climseg.data.cache import cache_dir

    folder = args.masks or os.path.join(cache_dir(), f"bench-track-{args.steps}x{args.height}x{args.width}-{args.seed}")
    files = make_masks(
        folder, args.steps, args.height, args.width, args.source_height, args.source_width, args.seed, args.workers
    )

    def options():
        return climatenet_options()

    land_mask()  # the coastline cache, made once per machine
    rows = []
    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="climseg-bench-track-out-")
    try:
        if not args.skip_year:
            rows.append(_year(args, files, options, work))
        if args.climatenet_module:
            rows += _compare(args, files, options, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = dict(
        benchmark="track",
        date=datetime.date.today().isoformat(),
        machine=platform.node(),
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        scipy=__import__("scipy").__version__,
        command=command_line(argv),
        masks=dict(
            steps=args.steps,
            height=args.height,
            width=args.width,
            source=f"climseg generate --timesteps labels at {args.source_height}x{args.source_width}, "
            f"nearest-neighbour to {args.height}x{args.width}",
        ),
        options="--like climatenet (250 px, look-ahead 1, >= 5 steps)",
        load_average=dict(before=round(load_before, 2), after=round(os.getloadavg()[0], 2)),
    )
    path = result_path(f"track-cpu-{meta['date']}.json", args.json)
    with open(path, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(_markdown(meta, rows))
    print(f"results: {path}")
    return 0


def _compare(args, files, options, work):
    """ClimateNet's track_events (its own process pool over the cores for the labelling) and
    climseg's track_arrays (one process) on the same first steps, in memory."""
    import xarray

    from climseg.analytics.track import track_arrays

    chosen, total = _files_for_steps(files, args.climatenet_steps)
    n = args.climatenet_steps
    if total != n:
        raise SystemExit(
            f"--climatenet-steps {n}: give a whole number of daily files ({total} steps in the first {len(chosen)})"
        )
    masks = _read_steps(chosen, n).astype(np.int64)
    module = _load_climatenet(args.climatenet_module)
    np_int = getattr(np, "int", None)
    np.int = int  # NumPy 2 removed np.int, which ClimateNet's code uses
    try:
        array = xarray.DataArray(masks.copy(), dims=("time", "lat", "lon"))
        cpu0 = _cpu_seconds()
        start = time.perf_counter()
        result = module.track_events(array)
        climatenet_s = time.perf_counter() - start
        climatenet_cpu = _cpu_seconds() - cpu0
    finally:
        if np_int is None:
            del np.int
        else:
            np.int = np_int
    ids = np.unique(np.asarray(result.values))
    climatenet_events = int((ids != 0).sum())
    # climseg on the same in-memory masks, in one process (ClimateNet's input and output are in memory too)
    import netCDF4

    with netCDF4.Dataset(chosen[0]) as ds:
        lat, lon = np.asarray(ds.variables["lat"][:]), np.asarray(ds.variables["lon"][:])
    hours = 3.0 * np.arange(n)
    cpu0 = time.process_time()  # one process, no children
    start = time.perf_counter()
    ids, events, _ = track_arrays(masks, lat, lon, hours, options())
    climseg_s = time.perf_counter() - start
    climseg_cpu = time.process_time() - cpu0
    ours = len(events)
    print(
        f"same {n} steps: ClimateNet track_events {climatenet_s:.1f} s ({climatenet_s / n:.3f} s/step, "
        f"{climatenet_events} events), climseg track_arrays {climseg_s:.2f} s ({climseg_s / n * 1e3:.1f} ms/step, "
        f"{ours} events): {climatenet_s / climseg_s:.0f}x per step; CPU {climatenet_cpu:.1f} s against "
        f"{climseg_cpu:.2f} s: {climatenet_cpu / climseg_cpu:.0f}x"
    )
    return [
        dict(
            tracker="ClimateNet track_events",
            steps=n,
            workers=os.cpu_count(),
            total_s=climatenet_s,
            ms_per_step=1e3 * climatenet_s / n,
            year_s=climatenet_s / n * 2920,
            events=climatenet_events,
            cpu_s=climatenet_cpu,
            cpu_ms_per_step=1e3 * climatenet_cpu / n,
        ),
        dict(
            tracker="climseg track_arrays (same masks in memory)",
            steps=n,
            workers=1,
            total_s=climseg_s,
            ms_per_step=1e3 * climseg_s / n,
            year_s=climseg_s / n * 2920,
            events=ours,
            cpu_s=climseg_cpu,
            cpu_ms_per_step=1e3 * climseg_cpu / n,
            speedup_per_step=climatenet_s / climseg_s,
            cpu_speedup_per_step=climatenet_cpu / climseg_cpu,
        ),
    ]


def _markdown(meta, rows):
    m = meta["masks"]
    lines = [
        f"# Event tracking, {m['steps']} steps of {m['height']}x{m['width']} (2-core CPU, no GPU)",
        "",
        f"{meta['date']}, {meta['cores']} cores, Python {meta['python']}, NumPy {meta['numpy']}, "
        f"SciPy {meta['scipy']}; masks: {m['source']}; options {meta['options']}; load average "
        f"{meta['load_average']['before']} before, {meta['load_average']['after']} after "
        "(other users shared the cores)",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| tracker | steps | processes | seconds | ms per step | s per year (2,920 steps) | CPU ms per step | "
        "speed-up per step (wall) | speed-up per step (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        extra = f" (track {r['track_s']:.1f} + analyze {r['analyze_s']:.1f})" if "track_s" in r else ""
        speed = f"{r['speedup_per_step']:.0f}x" if "speedup_per_step" in r else "–"
        cpu_speed = f"{r['cpu_speedup_per_step']:.0f}x" if "cpu_speedup_per_step" in r else "–"
        lines.append(
            f"| {r['tracker']} | {r['steps']} | {r['workers']} | {r['total_s']:.2f}{extra} | "
            f"{r['ms_per_step']:.2f} | {r['year_s']:.1f} | {r['cpu_ms_per_step']:.2f} | {speed} | {cpu_speed} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
