"""CUDA-kernel benchmark (GPU): the kernels of csrc/cuda against the PyTorch sequences they replace.

Rows (every one: median ms with 20th/80th percentiles over CUDA-event-timed repeats after
warm-up; GB/s from the bytes counted below; that as a fraction of the measured copy
bandwidth; ``vs_torch`` = PyTorch time / kernel time, above 1 when the kernel is faster; and
``host_ms``, ``torch_host_ms``: how long the call takes to return to Python, which tells a
row bound by launches and Python overhead, host_ms close to ms, from one bound by memory):

* ``copy``: ``dst.copy_(src)`` of a 1 GiB buffer, bytes = read + write (2 GiB). The
  reference bandwidth: what a kernel that only streams its bytes through DRAM reaches.
* ``loss+counts``: ``weighted_cross_entropy_with_counts`` (reduction "mean", DeepCAM class
  weights, int64 labels, ``check_labels=False``) on logits (B, 3, 768, 1152), B = 1 and 4,
  bf16 and fp32, NCHW and channels_last, in three modes:
    forward           loss + counts; PyTorch: ``F.cross_entropy(logits.float(), labels, weight=w)``
                      + ``logits.argmax(1)`` + ``torch.bincount(labels * C + pred, minlength=C * C)``
    forward+backward  the same, then ``autograd.grad(loss, logits)`` (PyTorch: through its graph)
    fused grad        ``return_grad=True``: loss, counts and d loss / d logits from one pass,
                      against the PyTorch forward+backward sequence
  Labels follow the DeepCAM class frequencies (98.6 % background) and the logits favour the
  true class, so that most predictions are right, as for a trained network (the worst case
  for the kernel's shared-memory counters, which then mostly hit one address).
* ``larc_adam_step`` and ``lamb_step`` over fp32 parameters, gradients and moments shaped like
  every parameter of the ``kurth2018`` and ``deepcam`` networks (the shapes come from the
  model built on the meta device), against ``climseg.optim.LARC(torch.optim.Adam(params,
  foreach=True))`` and ``climseg.optim.LAMB``; the LARC row also times plain
  ``torch.optim.Adam(fused=True)`` (no LARC: a floor for PyTorch) as ``torch_fused_adam_ms``.
* ``flatten_gradients``: the same gradients, fp32, to one bf16 bucket times 1/8 (the
  1 / world size of an 8-GPU node); PyTorch: ``torch.cat([g.flatten() ...]).mul_(scale).to(bf16)``.
  ``unflatten_gradients``: that bucket back into the fp32 gradients with the Inf/NaN flag;
  PyTorch: ``torch.split`` + ``g.copy_(segment)`` per tensor + ``~torch.isfinite(bucket).all()``.
* ``normalize_input``: (4, 768, 1152, 16) fp32 to bf16 (4, 16, 768, 1152) in NHWC and NCHW
  memory, against ``climseg.ops.normalize_input_reference``.

Bytes are the least DRAM traffic the computation needs (each input read once per pass the
algorithm cannot avoid, each output written once), not what a kernel happens to move:

    copy               2 S
    loss forward       L + Y (+ the loss and the C x 3 counts)        L logits, Y int64 labels
    forward+backward   2 (L + Y) + L   the backward cannot start before the loss exists, so it
                                       reads logits and labels again and writes the gradient
    fused grad         L + Y + L       (the kernel reads the labels once more first, for the
                                       "mean" divisor; usually from L2, not counted)
    larc_adam_step     n (8 + 28)      per fp32 element: the norms pass reads p, g; the update
                                       reads p, g, m, v and writes p, m, v
    lamb_step          n (24 + 16)     pass 1 reads p, g, m, v, writes m, v (norm of the
                                       update); pass 2 reads p, m, v, writes p
    flatten_gradients  n (4 + 2)       fp32 in, bf16 out
    unflatten          n (2 + 4)       bf16 in, fp32 out
    normalize_input    pixels 16 (4 + 2)

Each repeat starts from a cold L2 (a 256 MiB buffer is zeroed before it, outside the timed
interval), so small inputs are not timed out of the cache. That zeroing (tens of microseconds)
also gives the host a head start: launch overhead shorter than it is hidden, as in a training
step where the GPU runs behind Python; ``host_ms`` shows what it was. The kernels run with
``backend="cuda"`` (an error, never a silent fallback, if they cannot), through
``climseg._cuda`` or else CuPy; ``meta.kernels`` says which. JSON and a markdown table go to
``benchmarks/results/`` (GPU, driver, CUDA, torch, CuPy versions, date, command).

This module holds the copy and ``normalize_input`` rows, the run (``main``) and the report; the
rows of the loss are :mod:`climseg.bench.cuda_loss_rows`, those of the optimizers and gradient
buckets :mod:`climseg.bench.cuda_parameter_rows`, the row format :mod:`climseg.bench.cuda_rows`.

    python benchmarks/bench_cuda_kernels.py            # on a CUDA machine
    python benchmarks/bench_cuda_kernels.py --quick    # B = 4 only, fewer repeats
    python benchmarks/bench_cuda_kernels.py --cpu-smoke   # this script's code paths on CPU,
                                                          # emulated kernels, tiny sizes, no numbers
"""

import argparse
import datetime
import os
import platform
import sys

import torch

from climseg.bench import command_line, gpu_environment, result_path
from climseg.bench.cuda_loss_rows import loss_rows
from climseg.bench.cuda_parameter_rows import bucket_rows, optimizer_rows
from climseg.bench.cuda_rows import make_row, say, size_name
from climseg.bench.timing import FLUSH_BYTES, Timer

PROG = "bench cuda-kernels"
HEIGHT, WIDTH, IN_CHANNELS = 768, 1152, 16
COPY_BYTES = 1 << 30


# ------------------------------------------------------------------------------------ copy
def copy_row(timer, device, size):
    src = torch.empty(size, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src))
    row = make_row("copy", f"{size_name(size)} uint8", "dst.copy_(src)", t, 2 * size, "read S + write S", 0.0)
    row["copy_fraction"] = 1.0
    return row


# -------------------------------------------------------------------------------- convert
def convert_rows(timer, device, shape, copy_gbps):
    from climseg.ops import normalize_input, normalize_input_reference

    generator = torch.Generator(device=device).manual_seed(3)
    x = torch.randn(shape, device=device, generator=generator) * 50 + 10
    cin = shape[-1]
    shift = torch.randn(cin, device=device, generator=generator)
    scale = torch.rand(cin, device=device, generator=generator) + 0.5
    pixels = shape[0] * shape[1] * shape[2]
    rows = []
    for layout in ("nhwc", "nchw"):

        def ours(layout=layout):
            return normalize_input(x, shift, scale, dtype=torch.bfloat16, layout=layout, backend="cuda")

        def reference(layout=layout):
            return normalize_input_reference(x, shift, scale, None, torch.bfloat16, layout)

        row = make_row(
            "normalize_input",
            "x".join(map(str, shape)) + " fp32 -> bf16",
            layout.upper(),
            timer(ours),
            pixels * cin * (4 + 2),
            "pixels C (read fp32 + write bf16)",
            copy_gbps,
            timer(reference),
            "normalize_input_reference: ((x - shift) * scale).to(bf16).permute(0, 3, 1, 2).contiguous()",
        )
        rows.append(row)
        say(row)
    return rows


# ------------------------------------------------------------------------------- reports
def environment(device, argv, kernels, quick, warmup, repeats):
    meta = dict(
        benchmark="cuda_kernels",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        date=datetime.date.today().isoformat(),
        command=command_line(argv),
        kernels=kernels,
        quick=quick,
        warmup=warmup,
        repeats=repeats,
        l2_flush_bytes=FLUSH_BYTES if device.type == "cuda" else 0,
    )
    try:
        import cupy

        meta["cupy"] = cupy.__version__
    except Exception:
        meta["cupy"] = None
    if device.type == "cuda":
        meta.update(gpu_environment(device))
    else:
        meta.update(gpu="CPU (emulated CUDA kernels: smoke check, timings meaningless)", sm="-", driver="-")
    return meta


def write(rows, meta, path):
    """JSON (meta + rows) at ``path`` and the markdown table beside it (``.md``, returned), written
    atomically (climseg.output)."""
    from climseg.output import atomic_path, write_json

    write_json(path, dict(meta=meta, rows=rows))
    md = os.path.splitext(path)[0] + ".md"

    def num(r, key, fmt):
        return format(r[key], fmt) if key in r else "–"

    with atomic_path(md) as tmp, open(tmp, "w") as f:
        f.write(
            f"# CUDA kernels on {meta['gpu']} ({meta['date']})\n\n"
            f"driver {meta['driver']}, CUDA {meta['cuda']}, torch {meta['torch']}, CuPy {meta['cupy']}; "
            f"kernels: {meta['kernels']}\n\nCommand: `{meta['command']}`\n\n"
            f"Median of {meta['repeats']} repeats after {meta['warmup']} warm-up runs"
            f"{', L2 flushed before each' if meta['l2_flush_bytes'] else ''}. GB/s from the least bytes the "
            f"computation must move (column MB); % copy against `dst.copy_(src)` of "
            f"{size_name(meta['copy_bytes'] // 2)} ({meta['copy_gbps']:.1f} GB/s); vs torch = PyTorch ms / kernel "
            f"ms (above 1: the kernel is faster); host ms: the time the call takes to return to Python (near "
            f"ms: the row is bound by launches and Python, not by memory).\n\n"
        )
        f.write(
            "| kernel | case | mode | ms (p20-p80) | host ms | MB | GB/s | % copy | torch ms | torch host ms "
            "| vs torch |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for r in rows:
            f.write(
                f"| {r['kernel']} | {r['case']} | {r['mode']} | {r['ms']:.3f} ({r['ms_p20']:.3f}-{r['ms_p80']:.3f}) | "
                f"{r['host_ms']:.3f} | {r['bytes'] / 1e6:.1f} | {r['gbps']:.1f} | {100 * r['copy_fraction']:.1f} | "
                f"{num(r, 'torch_ms', '.3f')} | {num(r, 'torch_host_ms', '.3f')} | {num(r, 'vs_torch', '.2f')} |\n"
            )
        f.write("\nBytes counted per row:\n\n")
        for formula in dict.fromkeys(f"{r['kernel']}: {r['bytes_formula']}" for r in rows):
            f.write(f"* {formula}\n")
        extra = [r for r in rows if "torch_fused_adam_ms" in r]
        if extra:
            f.write(
                "\nPlain `torch.optim.Adam(fused=True)` (no LARC), for scale: "
                + "; ".join(
                    f"{r['case'].split(':')[0]} {r['torch_fused_adam_ms']:.3f} ms ({r['vs_torch_fused_adam']:.2f}x)"
                    for r in extra
                )
                + "\n"
            )
        fused = [r for r in rows if "vs_ours_forward_backward" in r]
        if fused:
            f.write(
                "\nFused grad against the kernel's own forward+backward: "
                + "; ".join(f"{r['case']} {r['vs_ours_forward_backward']:.2f}x" for r in fused)
                + "\n"
            )
    return md


def fail(message):
    print(f"climseg: error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_cuda_kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 only, fewer repeats and warm-up runs")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repeats per measurement (default 30, 10 with --quick)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3, 2 with --quick)")
    parser.add_argument(
        "--out",
        "--json",
        dest="out",
        default=None,
        help="JSON result file, or an existing folder for it (default "
        "benchmarks/results/cuda_kernels-<gpu>-<date>.json); the markdown table goes next to it",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="check this script on CPU: tiny sizes, kernels through climseg._cuda_emulated; timings "
        "meaningless; writes results only with --out",
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        return fail(f"{PROG}: --reps must be at least 1, got {args.reps}")
    from climseg.ops import cuda as _cuda

    if args.cpu_smoke:
        device = torch.device("cpu")
        ok, why = _cuda.probe(torch.empty(0))
        if not ok:
            return fail(f"{PROG} --cpu-smoke: no CPU emulation of the CUDA kernels ({why})")
        kernels = "climseg._cuda_emulated"
    else:
        if not torch.cuda.is_available():
            return fail(
                f"{PROG}: no CUDA device here; this benchmark times the CUDA kernels of csrc/cuda on a GPU "
                "(nothing run)"
            )
        device = torch.device("cuda", torch.cuda.current_device())
        ok, why = _cuda.probe(torch.empty(0, device=device))
        if not ok:
            return fail(f"{PROG}: no CUDA kernels to time: {why}")
        kernels = _cuda.launcher(device).name
    repeats = args.reps or (1 if args.cpu_smoke else 10 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (0 if args.cpu_smoke else 2 if args.quick else 3)
    timer = Timer(device, warmup, repeats)
    meta = environment(device, argv, kernels, args.quick, warmup, repeats)
    print(f"{PROG}: {meta['gpu']}, kernels from {kernels}, {repeats} repeats after {warmup} warm-up runs", flush=True)

    if args.cpu_smoke:  # the emulation runs a CUDA thread per OS thread: tiny sizes, 12 tensors of tiny
        copy_size, height, width, batches, configs, convert_shape = 4 << 20, 32, 48, (1, 2), ("tiny",), (2, 32, 48, 16)
        max_tensors = 12
    else:
        copy_size, height, width, convert_shape = COPY_BYTES, HEIGHT, WIDTH, (4, HEIGHT, WIDTH, IN_CHANNELS)
        batches, configs, max_tensors = ((4,) if args.quick else (1, 4)), ("kurth2018", "deepcam"), None
    rows = [copy_row(timer, device, copy_size)]
    say(rows[0])
    copy_gbps = rows[0]["gbps"]
    meta.update(copy_gbps=copy_gbps, copy_bytes=rows[0]["bytes"])
    rows += loss_rows(
        timer, device, batches, (torch.bfloat16, torch.float32), ("NCHW", "NHWC"), height, width, copy_gbps
    )
    for config in configs:
        rows += optimizer_rows(timer, device, config, copy_gbps, max_tensors)
        rows += bucket_rows(timer, device, config, copy_gbps, max_tensors)
    rows += convert_rows(timer, device, convert_shape, copy_gbps)

    if args.cpu_smoke and args.out is None:
        print(f"{PROG} --cpu-smoke: {len(rows)} rows, every code path ran (no file written without --out)")
        return 0
    name = f"cuda_kernels-{'cpu-smoke' if args.cpu_smoke else meta['gpu'].replace(' ', '_')}-{meta['date']}.json"
    out = args.out
    if out is not None and (os.path.isdir(out) or out.endswith(os.sep)):
        out = os.path.join(out, name)
    path = result_path(name, out)
    md = write(rows, meta, path)
    print(f"wrote {path} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
