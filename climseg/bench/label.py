"""``climseg bench label``: the heuristic labeller scored against a synthetic series' truth,
and its throughput.

1. Scores: ``climseg generate --timesteps`` writes a CAM5-like series whose ``LABELS``
   mark the planted cyclones and rivers; :func:`climseg.analytics.label.label` labels the
   fields alone, and :func:`score` compares: per-class IoU over all steps, detection rate
   (the share of true objects, per step, that a labelled object of the same class
   overlaps) and false alarms per step (labelled objects that overlap no true object).
2. Throughput: steps per second of the labeller at full size (768 x 1152 by default) on
   a few steps, with the worker count given (one process per file).

Results go to ``benchmarks/results/label-cpu-<date>.{json,md}`` (or ``--json``).
"""

import argparse
import datetime
import glob
import json
import os
import platform
import tempfile
import time

import numpy as np

from climseg import sphere
from climseg.constants import ATMOSPHERIC_RIVER, TROPICAL_CYCLONE


def score(mask_files, truth_files, periodic=True, long_km=2000.0):
    """Compare labelled masks (``mask`` in each file) with the truth (``LABELS``), step by
    step in file order. Returns a dict per class: IoU, detection rate, false alarms per step,
    true and labelled object counts; for rivers also the detection rate of the true rivers at
    least ``long_km`` long (the labeller's own length condition; the generator also labels
    rivers while they grow and fade, and fragments of them)."""
    from climseg.data.masks import MaskReader, open_mask_series

    stats = {
        c: dict(inter=0, union=0, true=0, detected=0, labelled=0, false=0, long=0, long_detected=0) for c in (1, 2)
    }
    labelled, truth = open_mask_series(mask_files, "mask"), open_mask_series(truth_files, "LABELS")
    lat, lon = truth.lat, truth.lon
    steps = int(truth.hours.size)
    with MaskReader(labelled) as masks, MaskReader(truth) as true_masks:
        for k in range(steps):
            pred, true = masks.read(k), true_masks.read(k)
            for c, s in stats.items():
                p, q = pred == c, true == c
                s["inter"] += int(np.count_nonzero(p & q))
                s["union"] += int(np.count_nonzero(p | q))
                tl, tn = sphere.label_components(q, periodic)
                pl, pn = sphere.label_components(p, periodic)
                hit_true = np.unique(tl[p & q])
                hit_pred = np.unique(pl[p & q])
                s["true"] += tn
                s["detected"] += int(np.count_nonzero(hit_true))
                s["labelled"] += pn
                s["false"] += pn - int(np.count_nonzero(hit_pred))
                if c == ATMOSPHERIC_RIVER:
                    long = _long_objects(tl, tn, lat, lon, long_km)
                    s["long"] += int(long.sum())
                    s["long_detected"] += int(long[hit_true[hit_true > 0] - 1].sum())
    out = {}
    for c, s in stats.items():
        name = "tropical_cyclone" if c == TROPICAL_CYCLONE else "atmospheric_river"
        out[name] = dict(
            iou=s["inter"] / s["union"] if s["union"] else None,
            detection_rate=s["detected"] / s["true"] if s["true"] else None,
            false_alarms_per_step=s["false"] / max(steps, 1),
            true_objects=s["true"],
            labelled_objects=s["labelled"],
        )
        if c == ATMOSPHERIC_RIVER:
            out[name]["detection_rate_long"] = s["long_detected"] / s["long"] if s["long"] else None
            out[name]["true_objects_long"] = s["long"]
    out["steps"] = steps
    return out


def _long_objects(labels, n, lat, lon, long_km):
    """Boolean (n,): component k + 1 spans at least ``long_km``."""
    out = np.zeros(n, bool)
    if n == 0:
        return out
    flat = labels.reshape(-1)
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(1, n + 2))
    w = labels.shape[1]
    for k in range(n):
        idx = order[starts[k] : starts[k + 1]]
        out[k] = sphere.diameter_km(lat[idx // w], lon[idx % w]) >= long_km
    return out


def run_scores(steps, height, width, seed, workers, options, folder):
    from climseg.analytics.label import label
    from climseg.data.timeseries import generate_timeseries

    data = os.path.join(folder, "series")
    generate_timeseries(data, steps, 3.0, height, width, seed, workers=workers, progress=False)
    files = sorted(glob.glob(os.path.join(data, "*.nc")))
    out = os.path.join(folder, f"labels-{seed}")
    label(files, out, options, workers=workers, progress=False, log=lambda *a: None)
    masks = [os.path.join(out, os.path.basename(f)[:-3] + "_mask.nc") for f in files]
    return score(masks, files)


def run_throughput(steps, height, width, workers, options, folder):
    from climseg.analytics.label import label
    from climseg.data.timeseries import generate_timeseries

    data = os.path.join(folder, "throughput")
    generate_timeseries(
        data, steps, 24.0 / max(1, -(-steps // workers)), height, width, 1, workers=workers, progress=False
    )
    files = sorted(glob.glob(os.path.join(data, "*.nc")))
    out = os.path.join(folder, "throughput-labels")
    started = time.perf_counter()
    label(files, out, options, workers=workers, progress=False, log=lambda *a: None)
    seconds = time.perf_counter() - started
    scores = score([os.path.join(out, os.path.basename(f)[:-3] + "_mask.nc") for f in files], files)
    return dict(
        steps=steps,
        files=len(files),
        height=height,
        width=width,
        workers=workers,
        seconds=seconds,
        steps_per_second=steps / seconds,
        scores=scores,
    )


def main(argv=None):
    from climseg.analytics.label import LabelOptions

    p = argparse.ArgumentParser(prog="climseg bench label", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=48, help="steps of the scored series (default 48: 6 days at 3 h)")
    p.add_argument("--height", type=int, default=384, help="scored series rows (default 384)")
    p.add_argument("--width", type=int, default=576, help="scored series columns (default 576)")
    p.add_argument("--seeds", default="3", help="comma-separated seeds of the scored series (default 3)")
    p.add_argument(
        "--ar-percentile",
        type=float,
        default=0.0,
        help="river threshold percentile over the series (default 0: the absolute threshold alone)",
    )
    p.add_argument(
        "--throughput-steps", type=int, default=8, help="steps timed (and scored) at full size (default 8; 0: skip)"
    )
    p.add_argument("--throughput-height", type=int, default=768)
    p.add_argument("--throughput-width", type=int, default=1152)
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/label-cpu-<date>.json)")
    args = p.parse_args(argv)
    options = LabelOptions(ar_percentile=args.ar_percentile or None)
    result = dict(
        benchmark="label",
        date=datetime.date.today().isoformat(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        command=os.environ.get("CLIMSEG_BENCH_COMMAND", "python -m climseg.bench.label"),
        options={k: v for k, v in vars(options).items()},
        scores={},
    )
    with tempfile.TemporaryDirectory() as folder:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            result["scores"][f"seed {seed}"] = run_scores(
                args.steps, args.height, args.width, seed, args.workers, options, folder
            )
            print(f"seed {seed}: {json.dumps(result['scores'][f'seed {seed}'])}", flush=True)
        if args.throughput_steps:
            result["throughput"] = run_throughput(
                args.throughput_steps, args.throughput_height, args.throughput_width, args.workers, options, folder
            )
            print(f"throughput: {json.dumps(result['throughput'])}", flush=True)
    path = args.json or _default_path(result["date"])
    _write(path, result, args)
    print(f"climseg: results in {path} and {os.path.splitext(path)[0]}.md")
    return 0


def _default_path(date):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = os.path.join(root, "benchmarks", "results")
    if not os.path.isdir(folder):
        folder = os.path.join(os.getcwd(), "climseg-bench-results")
    return os.path.join(folder, f"label-cpu-{date}.json")


def _write(path, result, args):
    from climseg.output import atomic_path, write_json

    write_json(path, result)
    lines = [
        f"# climseg label: scores against the generator's truth, and throughput ({result['date']})",
        "",
        f"Machine: {result['machine']}, {result['cpus']} CPUs visible, {args.workers} worker processes. "
        f"Command: `{result['command']}`.",
        "",
        f"Scored series: {args.steps} steps every 3 h of {args.height}x{args.width} from `climseg generate "
        f"--timesteps`; river threshold: "
        + (
            f"max(250, {args.ar_percentile:g}th percentile of the series)"
            if args.ar_percentile
            else "250 kg m-1 s-1 (TMQ x |V850|)"
        )
        + "; every other option at its default.",
        "",
        "| series | class | IoU | detection rate | false alarms / step | true objects | labelled objects |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in result["scores"].items():
        for cls in ("tropical_cyclone", "atmospheric_river"):
            c = s[cls]
            lines.append(
                f"| {name} | {cls} | {_f(c['iou'])} | {_f(c['detection_rate'])} | "
                f"{c['false_alarms_per_step']:.2f} | {c['true_objects']} | {c['labelled_objects']} |"
            )
        c = s["atmospheric_river"]
        lines.append(
            f"| {name} | atmospheric_river >= 2000 km | | {_f(c['detection_rate_long'])} | | "
            f"{c['true_objects_long']} | |"
        )
    if "throughput" in result:
        t = result["throughput"]
        lines += [
            "",
            f"Full size ({t['height']}x{t['width']}, {t['steps']} steps, generated with seed 1):",
            "",
            "| class | IoU | detection rate | false alarms / step | true objects | labelled objects |",
            "|---|---|---|---|---|---|",
        ]
        for cls in ("tropical_cyclone", "atmospheric_river"):
            c = t["scores"][cls]
            lines.append(
                f"| {cls} | {_f(c['iou'])} | {_f(c['detection_rate'])} | {c['false_alarms_per_step']:.2f} | "
                f"{c['true_objects']} | {c['labelled_objects']} |"
            )
        c = t["scores"]["atmospheric_river"]
        lines.append(
            f"| atmospheric_river >= 2000 km | | {_f(c['detection_rate_long'])} | | {c['true_objects_long']} | |"
        )
        lines += [
            "",
            f"Throughput: {t['steps']} steps of {t['height']}x{t['width']} in {t['files']} files, "
            f"{t['workers']} processes: {t['seconds']:.1f} s, **{t['steps_per_second']:.2f} steps/s** "
            f"(reading, detection and writing included).",
        ]
    with atomic_path(os.path.splitext(path)[0] + ".md") as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")


def _f(x):
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
