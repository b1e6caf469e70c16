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

from climseg.losses import WeightedCrossEntropy
from climseg.models import DeepLabV3Plus
from climseg.perf import count_flops
from climseg.perf.cpu import tune_cpu_allocator
from climseg.train.trainer import AUTOCAST_DTYPES, resolve_precision


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


def bench_one(config, device, shape, precision, warmup, repeats, channels_last=True):
    torch.manual_seed(0)
    model = DeepLabV3Plus(config).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 3, (shape[0], shape[2], shape[3]), device=device)
    loss_fn = WeightedCrossEntropy("deepcam").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.float32),
                              enabled=precision in AUTOCAST_DTYPES)

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
    q = lambda p: times[min(len(times) - 1, int(p * (len(times) - 1) + 0.5))]
    return dict(config=config, batch=shape[0], height=shape[2], width=shape[3], precision=precision,
                ms_median=1e3 * median, ms_p20=1e3 * q(0.2), ms_p80=1e3 * q(0.8),
                samples_per_s=shape[0] / median, tflop_per_step=flops / 1e12, tflops_per_s=flops / median / 1e12)


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
    parser.add_argument("--json", default=None, help="write results here (default benchmarks/results/...)")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    h = args.height or (768 if gpu else 128)
    w = args.width or (1152 if gpu else 192)
    n = args.batch_size or (2 if gpu else 8)
    precision = resolve_precision(args.precision, device)
    malloc_tuned = tune_cpu_allocator() if device.type == "cpu" else False  # as the trainer does
    rows = []
    for config in [c.strip() for c in args.configs.split(",") if c.strip()]:
        row = bench_one(config, device, (n, 16, h, w), precision, args.warmup, args.repeats)
        rows.append(row)
        print(f"{config:10s} {n}x16x{h}x{w} {precision}: {row['ms_median']:9.1f} ms/step "
              f"[{row['ms_p20']:.1f}, {row['ms_p80']:.1f}]  {row['samples_per_s']:8.2f} samples/s  "
              f"{row['tflops_per_s']:7.3f} TFLOP/s", flush=True)
    meta = dict(benchmark="train_step", device=device_name(device), device_type=device.type,
                torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                malloc_tuning=malloc_tuned,
                date=datetime.date.today().isoformat(), command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])))
    if gpu:
        meta["driver"] = torch.cuda.get_device_properties(device).name
    tag = "gpu" if gpu else "cpu"
    path = args.json or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                     f"train_step-{tag}-{meta['date']}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    md = os.path.splitext(path)[0] + ".md"
    with open(md, "w") as f:
        f.write(f"# Training step ({meta['device']})\n\n{meta['date']}, torch {meta['torch']}, "
                f"device type {device.type}\n\nCommand: `{meta['command']}`\n\n")
        f.write("| config | input | precision | ms/step (median) | p20-p80 | samples/s | TFLOP/step | TFLOP/s |\n")
        f.write("|---|---|---|---:|---:|---:|---:|---:|\n")
        for r in rows:
            f.write(f"| {r['config']} | {r['batch']}x16x{r['height']}x{r['width']} | {r['precision']} | "
                    f"{r['ms_median']:.1f} | {r['ms_p20']:.1f}-{r['ms_p80']:.1f} | {r['samples_per_s']:.2f} | "
                    f"{r['tflop_per_step']:.4f} | {r['tflops_per_s']:.3f} |\n")
    print(f"wrote {path} and {md}")
    return rows


if __name__ == "__main__":
    main()
