"""Training-step benchmark: forward + backward + optimizer step of each network
configuration at a chosen size on the current device.

Reports the median step time (with 20th/80th percentiles) over repeats after
warm-up, samples/s, and TFLOP/s from ``climseg.perf.count_flops`` (multiply-add
= 2 FLOPs, training = 3x forward). CUDA steps are timed with CUDA events;
CPU steps with a monotonic clock. Writes JSON and a markdown table.

    python benchmarks/bench_train_step.py --configs tiny --device cpu --height 128 --width 192
    python benchmarks/bench_train_step.py --configs kurth2018,deepcam --device cuda --batch-size 2
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

from climseg.bench import command_line, result_path
from climseg.losses import WeightedCrossEntropy
from climseg.models import DeepLabV3Plus
from climseg.perf import count_flops
from climseg.perf.cpu import tune_cpu_allocator
from climseg.perf.hardware import AUTOCAST_DTYPES, resolve_precision


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} threads"


def bench_one(config, device, shape, precision, warmup, repeats, channels_last=True, backend="auto"):
    """One configuration; ``backend="torch"`` is the same model on plain PyTorch ops (cuDNN,
    unfused ASPP), ``"auto"`` climseg's fused path where the device has one."""
    previous = os.environ.get("CLIMSEG_BACKEND")
    os.environ["CLIMSEG_BACKEND"] = backend
    try:
        return _bench_one(config, device, shape, precision, warmup, repeats, channels_last) | dict(backend=backend)
    finally:
        if previous is None:
            os.environ.pop("CLIMSEG_BACKEND", None)
        else:
            os.environ["CLIMSEG_BACKEND"] = previous


def _bench_one(config, device, shape, precision, warmup, repeats, channels_last):
    torch.manual_seed(0)
    model = DeepLabV3Plus(config).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (shape[0], shape[2], shape[3]), device=device)
    loss_fn = WeightedCrossEntropy("deepcam").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(
        device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.float32), enabled=precision in AUTOCAST_DTYPES
    )

    def step():
        with autocast:
            logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    times.sort()
    median = statistics.median(times)
    flops = count_flops(model, shape)

    def q(p):
        return times[min(len(times) - 1, int(p * (len(times) - 1) + 0.5))]

    return dict(
        config=config,
        batch=shape[0],
        height=shape[2],
        width=shape[3],
        precision=precision,
        ms_median=1e3 * median,
        ms_p20=1e3 * q(0.2),
        ms_p80=1e3 * q(0.8),
        samples_per_s=shape[0] / median,
        tflop_per_step=flops / 1e12,
        tflops_per_s=flops / median / 1e12,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,deepcam,kurth2018", help="comma-separated configurations")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--height", type=int, default=None, help="default: 768 on CUDA, 128 on CPU")
    parser.add_argument("--width", type=int, default=None, help="default: 1152 on CUDA, 192 on CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 on CUDA, 8 on CPU")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated: auto (climseg's kernels where the device has them) and/or torch (the "
        "same model on plain PyTorch ops); default auto,torch on CUDA, auto on CPU",
    )
    parser.add_argument("--json", default=None, help="write results here (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    h = args.height or (768 if gpu else 128)
    w = args.width or (1152 if gpu else 192)
    n = args.batch_size or (2 if gpu else 8)
    precision = resolve_precision(args.precision, device)
    malloc_tuned = tune_cpu_allocator() if device.type == "cpu" else False  # as the trainer does
    backends = [b.strip() for b in (args.backends or ("auto,torch" if gpu else "auto")).split(",") if b.strip()]
    from climseg.perf.peaks import device_peak

    peak, peak_source = device_peak(device, AUTOCAST_DTYPES.get(precision, torch.float32))
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        for backend in backends:
            row = bench_one(config, device, (n, 16, h, w), precision, args.warmup, args.repeats, backend=backend)
            row["mfu"] = row["tflops_per_s"] / peak
            plain = [r for r in rows if r["config"] == config and r["backend"] == "torch"]
            if backend != "torch" and plain:
                row["vs_plain"] = plain[0]["ms_median"] / row["ms_median"]
            rows.append(row)
            if backend == "torch":
                for r in rows:
                    if r["config"] == config and r["backend"] != "torch":
                        r["vs_plain"] = row["ms_median"] / r["ms_median"]
            label = "climseg" if backend == "auto" else "plain PyTorch" if backend == "torch" else backend
            print(
                f"{config:10s} {n}x16x{h}x{w} {precision} {label:14s}: {row['ms_median']:9.1f} ms/step "
                f"[{row['ms_p20']:.1f}, {row['ms_p80']:.1f}]  {row['samples_per_s']:8.2f} samples/s  "
                f"{row['tflops_per_s']:7.3f} TFLOP/s  MFU {100 * row['mfu']:.1f}%",
                flush=True,
            )
    meta = dict(
        benchmark="train_step",
        device=device_name(device),
        device_type=device.type,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        malloc_tuning=malloc_tuned,
        peak_tflops=peak,
        peak_source=peak_source,
        date=datetime.date.today().isoformat(),
        command=command_line(argv),
    )
    if gpu:
        meta["driver"] = torch.cuda.get_device_properties(device).name
    tag = "gpu" if gpu else "cpu"
    path = result_path(f"train_step-{tag}-{meta['date']}.json", args.json)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    md = os.path.splitext(path)[0] + ".md"
    with open(md, "w") as f:
        f.write(
            f"# Training step ({meta['device']})\n\n{meta['date']}, torch {meta['torch']}, "
            f"device type {device.type}\n\nCommand: `{meta['command']}`\n\n"
        )
        f.write(f"MFU against {peak:.1f} TFLOP/s ({peak_source})\n\n")
        f.write(
            "| config | path | input | precision | ms/step (median) | p20-p80 | samples/s | TFLOP/step | TFLOP/s "
            "| MFU | vs plain PyTorch |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for r in rows:
            vs = f"{r['vs_plain']:.2f}" if "vs_plain" in r else "–"
            f.write(
                f"| {r['config']} | {'plain PyTorch' if r['backend'] == 'torch' else 'climseg'} | "
                f"{r['batch']}x16x{r['height']}x{r['width']} | {r['precision']} | "
                f"{r['ms_median']:.1f} | {r['ms_p20']:.1f}-{r['ms_p80']:.1f} | {r['samples_per_s']:.2f} | "
                f"{r['tflop_per_step']:.4f} | {r['tflops_per_s']:.3f} | {100 * r['mfu']:.1f}% | {vs} |\n"
            )
    print(f"wrote {path} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
