"""Input pipeline benchmark: FastLoader against a reader in the MLPerf reference's
style, and the raw read rate of the same files for scale.

* reference style: a torch DataLoader with W worker processes over a Dataset
  that reads ``climate/data`` and ``climate/labels_0`` with h5py, transposes
  to CHW and normalises with NumPy (``scale * (x - shift)``), as the MLPerf
  HPC DeepCAM reference does; float32 out.
* FastLoader with W reader threads: float32 NCHW (what the reference gives)
  and bfloat16 NHWC (what the trainer feeds a bf16 network).
* raw: ``dd bs=4M`` of every file to /dev/null, one file after another.
* staging: ``climseg stage`` of the files to a local folder (thread pool).

Warm page cache: every file is read once before timing. Cold: each file's
pages are dropped with posix_fadvise(DONTNEED) before each pass (no root
needed). Samples/s and GB/s (of float32 payload, 768 x 1152 x 16 x 4 bytes per
sample) are medians over ``--repeats`` passes over all files, after one untimed pass.

    python benchmarks/bench_io.py                      # `climseg generate`s 24 training samples of 768 x 1152 first
    python benchmarks/bench_io.py --data /path/train --workers 8
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import torch

from climseg.bench import command_line, result_path


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """What the MLPerf reference's CamDataset does per sample."""

    def __init__(self, files, shift, scale):
        self.files = files
        self.data_shift = shift.reshape(-1, 1, 1).astype(np.float32)
        self.data_scale = scale.reshape(-1, 1, 1).astype(np.float32)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with h5py.File(self.files[i], "r") as f:
            data = f["climate/data"][...]
            label = f["climate/labels_0"][...]
        data = np.transpose(data, (2, 0, 1))
        data = self.data_scale * (data - self.data_shift)
        return torch.as_tensor(data), torch.as_tensor(label.astype(np.int64))


def drop_cache(files):
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files):
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def timed_passes(run, files, repeats, cold):
    warm(files)
    run()  # untimed: first touch of the buffers (page faults in a fresh VM's memory cost more than the work)
    times = []
    for _ in range(repeats):
        if cold:
            drop_cache(files)
        else:
            warm(files)
        t = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - t)
        assert count == len(files), (count, len(files))
    return statistics.median(times)


def write_markdown(path, meta, rows, staging):
    h, w, c = meta["shape"]

    def ratio(r, key):
        return f"{r[key]:.2f}" if key in r else "–"

    with open(path, "w") as f:
        f.write(
            f"# Input pipeline, {meta['files']} samples of {h}x{w}x{c} ({meta['cores']}-core CPU, no GPU)\n\n"
            f"{meta['date']}, torch {meta['torch']}, h5py {meta['h5py']}, {meta['workers']} workers/threads, "
            f"batch {meta['batch']}\n\nCommand: `{meta['command']}`\n\n"
        )
        f.write(
            "| cache | reader | samples/s | GB/s | vs reference style | vs raw read |\n|---|---|---:|---:|---:|---:|\n"
        )
        for r in rows:
            f.write(
                f"| {r['cache']} | {r['reader']} | {r['samples_per_s']:.1f} | {r['gbs']:.2f} | "
                f"{ratio(r, 'vs_reference')} | {ratio(r, 'vs_raw')} |\n"
            )
        f.write(f"\nStaging (local thread pool, read-back verification): {staging['gbs']:.2f} GB/s\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="folder of DeepCAM samples (default: generate 24 of 768x1152)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="threads / worker processes (both sides)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from climseg.data import FastLoader, find_stats, list_samples, read_stats
    from climseg.data.staging import stage
    from climseg.perf.cpu import tune_cpu_allocator

    tmp = tempfile.mkdtemp(prefix="climseg-bench-io-")
    try:
        if args.data is None:
            root = os.path.join(tmp, "data")
            # `climseg generate` in its own process: 28 samples = 24 training + 4 validation. (Generated in
            # this process, the generator's freed heap makes every later reader here 2-3x slower.)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "climseg",
                    "generate",
                    root,
                    "--samples",
                    "28",
                    "--height",
                    "768",
                    "--width",
                    "1152",
                    "--seed",
                    "1",
                    "--no-progress",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            os.sync()  # dirty pages neither drop from the cache nor leave the disk idle
            args.data = os.path.join(root, "train")
        files = list_samples(args.data)
        stats = read_stats(find_stats(args.data))
        shift, scale = stats.normalization("minmax")
        with h5py.File(files[0], "r") as f:
            h, w, c = f["climate/data"].shape
        sample_bytes = h * w * c * 4
        total_bytes = sum(os.path.getsize(p) for p in files)
        tune_cpu_allocator()
        W, B = args.workers, args.batch_size
        rows = []

        def reference():
            loader = torch.utils.data.DataLoader(
                ReferenceStyleDataset(files, shift, scale), batch_size=B, num_workers=W, shuffle=False, drop_last=False
            )
            return sum(d.shape[0] for d, _ in loader)

        def fast(dtype, layout):
            loader = FastLoader(
                files, B, stats=stats, dtype=dtype, layout=layout, threads=W, shuffle=False, drop_last=False
            )
            return lambda: sum(d.shape[0] for d, _ in loader)

        def raw():
            for p in files:
                subprocess.run(["dd", f"if={p}", "of=/dev/null", "bs=4M", "status=none"], check=True)
            return len(files)

        cases = [
            ("raw read (dd bs=4M)", raw),
            ("reference style (DataLoader + h5py + NumPy), fp32 NCHW", reference),
            ("FastLoader, fp32 NCHW", fast(torch.float32, "nchw")),
            ("FastLoader, bf16 NHWC", fast(torch.bfloat16, "nhwc")),
        ]
        for cold in (False, True):
            for name, run in cases:
                seconds = timed_passes(run, files, args.repeats, cold)
                rows.append(
                    dict(
                        reader=name,
                        cache="cold" if cold else "warm",
                        samples=len(files),
                        seconds=seconds,
                        samples_per_s=len(files) / seconds,
                        gbs=(total_bytes if name.startswith("raw") else len(files) * sample_bytes) / seconds / 1e9,
                    )
                )
                print(
                    f"{rows[-1]['cache']:4s} {name:58s} {rows[-1]['samples_per_s']:8.1f} samples/s "
                    f"{rows[-1]['gbs']:6.2f} GB/s",
                    flush=True,
                )
        warm(files)
        t = time.perf_counter()
        summary = stage(
            os.path.dirname(os.path.abspath(files[0])),
            os.path.join(tmp, "staged"),
            threads=W,
            progress=False,
            log=lambda *a: None,
        )
        staging = dict(
            seconds=time.perf_counter() - t,
            bytes=summary["written_bytes"],
            gbs=summary["written_bytes"] / (time.perf_counter() - t) / 1e9,
        )
        print(f"staging (local, {W} threads, with read-back verification): {staging['gbs']:.2f} GB/s", flush=True)
        for cache in ("warm", "cold"):
            by = {r["reader"]: r for r in rows if r["cache"] == cache}
            ref = by["reference style (DataLoader + h5py + NumPy), fp32 NCHW"]["samples_per_s"]
            rawrate = by["raw read (dd bs=4M)"]["samples_per_s"]
            for name in ("FastLoader, fp32 NCHW", "FastLoader, bf16 NHWC"):
                r = by[name]
                r["vs_reference"] = r["samples_per_s"] / ref
                r["vs_raw"] = r["samples_per_s"] / rawrate
                print(
                    f"{cache}: {name}: {r['vs_reference']:.1f}x the reference style, "
                    f"{100 * r['vs_raw']:.0f}% of the raw read rate"
                )
        meta = dict(
            benchmark="io",
            files=len(files),
            shape=[h, w, c],
            file_bytes=total_bytes,
            workers=W,
            batch=B,
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            device="cpu",
            torch=torch.__version__,
            h5py=h5py.__version__,
            date=datetime.date.today().isoformat(),
            command=command_line(argv),
        )
        path = result_path(f"io-cpu-{meta['date']}.json", args.json)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(dict(meta=meta, rows=rows, staging=staging), f, indent=2)
        write_markdown(os.path.splitext(path)[0] + ".md", meta, rows, staging)
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
