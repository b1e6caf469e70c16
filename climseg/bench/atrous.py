"""Atrous-convolution benchmark (GPU): climseg's Triton and CUDA kernels against cuDNN.

Rows: the real dilated layers of both configurations at a 768 x 1152 input,
batch 2, in bf16 and fp16, forward / backward / forward+backward, per backend
(``--backend triton``, ``cuda`` or both: the implicit-GEMM kernels of csrc/cuda/atrous.cu,
the only tensor-core path climseg has below sm_80; the depthwise layers are Triton's only):

* kurth2018 ASPP 3x3 2048->256 at 96x144 (output stride 8), dilations 12, 24, 36
* deepcam ASPP 3x3 2048->256 at 48x72 (output stride 16), dilations 6, 12, 18
* deepcam Xception middle flow: depthwise 3x3, 728 channels at 48x72, dilation 1 and 2
* the kurth2018 full-resolution decoder 3x3 384->256 at 768x1152 (dilation 1)
* the ASPP block (four conv branches + pooling + projection) fused vs unfused, both configs

Each row: median ms (20th/80th percentiles) over CUDA-event-timed repeats
after warm-up, TFLOP/s from the explicit formula 2 * N * OH * OW * Cout * Cin/groups
* KH * KW (x3 for forward+backward), and the ratio to ``F.conv2d`` on
channels_last tensors with ``torch.backends.cudnn.benchmark = True`` (what a user
would otherwise run), and, for the deterministic rows, to PyTorch's deterministic
mode (``torch.use_deterministic_algorithms(True)``) and to our own
non-deterministic speed. JSON and a markdown table go to ``benchmarks/results/``
(GPU, driver, torch and triton versions, date, command). With both backends the CUDA rows
also carry ``vs_triton`` (Triton's time over the CUDA kernels').

    python benchmarks/bench_atrous.py                 # on a CUDA machine
    python benchmarks/bench_atrous.py --quick         # fewer repeats, bf16 only
    climseg bench atrous -- --backend triton,cuda --dtype fp16    # both backends, fp16 (Volta: cuda only)
"""

import argparse
import datetime
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F

from climseg.bench import command_line, gpu_environment, result_path
from climseg.verify.layers import atrous_layers


def flops(n, cin, cout, h, w, k, groups):
    return 2 * n * h * w * cout * (cin // groups) * k * k


def timeit(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return q(0.5), q(0.2), q(0.8)


def conv_case(name, n, cin, cout, h, w, k, d, groups, dtype, mode, repeats, deterministic=False, backend="triton"):
    from climseg.ops import atrous_conv2d

    x = torch.randn(n, cin, h, w, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cout, cin // groups, k, k, device="cuda") / (cin // groups * k * k) ** 0.5).to(dtype)
    x.requires_grad_(mode != "forward")
    wt.requires_grad_(mode != "forward")
    pad = d * (k - 1) // 2
    grad = torch.randn(n, cout, h, w, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)

    def make(fn):
        if mode == "forward":
            return lambda: fn()
        if mode == "backward":
            y = fn()
            return lambda: torch.autograd.grad(y, [x, wt], grad, retain_graph=True)
        return lambda: torch.autograd.grad(fn(), [x, wt], grad)

    ours = make(lambda: atrous_conv2d(x, wt, None, 1, pad, d, groups, deterministic=deterministic, backend=backend))
    cudnn = make(lambda: F.conv2d(x, wt, None, 1, pad, d, groups))
    f = flops(n, cin, cout, h, w, k, groups) * (1 if mode == "forward" else 2 if mode == "backward" else 3)
    t_ours = timeit(ours, repeats)
    t_ref = timeit(cudnn, repeats)
    row = dict(
        layer=name,
        backend=backend,
        dtype=str(dtype).replace("torch.", ""),
        mode=mode,
        deterministic=deterministic,
        ms=t_ours[0],
        ms_p20=t_ours[1],
        ms_p80=t_ours[2],
        tflops=f / t_ours[0] / 1e9,
        cudnn_ms=t_ref[0],
        vs_cudnn=t_ref[0] / t_ours[0],
    )
    if deterministic:
        torch.use_deterministic_algorithms(True)
        try:
            t_det = timeit(cudnn, max(3, repeats // 4), warmup=1)
        finally:
            torch.use_deterministic_algorithms(False)
        row.update(torch_deterministic_ms=t_det[0], vs_torch_deterministic=t_det[0] / t_ours[0])
    return row


def aspp_case(config, dtype, mode, repeats, backend="triton"):
    from climseg.nn import ASPP

    cin, h, w, rates = (2048, 96, 144, (12, 24, 36)) if config == "kurth2018" else (2048, 48, 72, (6, 12, 18))
    fused = ASPP(cin, 256, rates, backend=backend).cuda().to(memory_format=torch.channels_last)
    unfused = ASPP(cin, 256, rates, fused=False).cuda().to(memory_format=torch.channels_last)
    unfused.load_state_dict(fused.state_dict())
    for b in unfused.branches():
        b.conv.backend = "torch"
    unfused.project.conv.backend = "torch"
    x = torch.randn(2, cin, h, w, device="cuda").contiguous(memory_format=torch.channels_last)
    times = {}
    for label, module in (("fused", fused), ("unfused", unfused)):
        module.train(mode != "forward")

        def step(module=module):
            with torch.autocast("cuda", dtype=dtype):
                y = module(x)
            if mode != "forward":
                y.float().square().mean().backward()

        times[label] = timeit(step, repeats)
    return dict(
        layer=f"{config} ASPP block",
        backend=backend,
        dtype=str(dtype).replace("torch.", ""),
        mode=mode,
        deterministic=False,
        ms=times["fused"][0],
        ms_p20=times["fused"][1],
        ms_p80=times["fused"][2],
        unfused_ms=times["unfused"][0],
        vs_unfused=times["unfused"][0] / times["fused"][0],
    )


def environment(argv=None):
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(
        gpu_environment(0),
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=triton_version,
        python=platform.python_version(),
        date=datetime.date.today().isoformat(),
        command=command_line(argv),
    )


def write(rows, env, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(meta=env, rows=rows), f, indent=2)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(
            f"# Atrous convolution on {env['gpu']} ({env['date']})\n\n"
            f"driver {env['driver']}, CUDA {env['cuda']}, torch {env['torch']}, triton {env['triton']}\n\n"
            f"Command: `{env['command']}`\n\n"
        )
        f.write(
            "| layer | backend | dtype | mode | det. | ms (p20-p80) | TFLOP/s | vs cuDNN | vs torch det. |"
            " det. vs ours | vs unfused | vs Triton |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for r in rows:
            f.write(
                f"| {r['layer']} | {r['backend']} | {r['dtype']} | {r['mode']} | "
                f"{'yes' if r['deterministic'] else ''} | "
                f"{r['ms']:.3f} ({r['ms_p20']:.3f}-{r['ms_p80']:.3f}) | {r.get('tflops', float('nan')):.1f} | "
                f"{r.get('vs_cudnn', float('nan')):.2f} | {r.get('vs_torch_deterministic', float('nan')):.2f} | "
                f"{r.get('vs_ours_nondeterministic', float('nan')):.2f} | {r.get('vs_unfused', float('nan')):.2f} | "
                f"{r.get('vs_triton', float('nan')):.2f} |\n"
            )


def _say(r):
    ratio = f"{r['vs_cudnn']:5.2f}x cuDNN" if "vs_cudnn" in r else f"{r['vs_unfused']:5.2f}x unfused"
    extra = f" {r['vs_triton']:5.2f}x Triton" if "vs_triton" in r else ""
    det = f" {r['vs_torch_deterministic']:6.1f}x torch det." if "vs_torch_deterministic" in r else ""
    print(f"{r['layer']:42s} {r['backend']:6s} {r['dtype']:8s} {r['mode']:17s} {r['ms']:8.3f} ms {ratio}{det}{extra}")


def _runs(backend, dtype):
    """Whether ``backend`` runs ``dtype`` on this GPU (the CUDA kernels: no bf16 below sm_80)."""
    return not (backend == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0))


def main(argv=None):
    from climseg.errors import ConfigError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="forward+backward only, fewer repeats (bf16 by default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backend", default="triton", help="triton, cuda or both (comma-separated)")
    parser.add_argument("--dtype", default=None, help="bf16, fp16 or both (default both; --quick: bf16)")
    parser.add_argument(
        "--json", default=None, help="output file (default benchmarks/results/atrous-<gpu>-<date>.json)"
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    names = {"bf16": torch.bfloat16, "fp16": torch.float16}
    dtype_names = [d.strip() for d in (args.dtype or ("bf16" if args.quick else "bf16,fp16")).split(",") if d.strip()]
    if not backends or any(b not in ("triton", "cuda") for b in backends):
        raise ConfigError(f"--backend {args.backend!r}: give triton, cuda or both, comma-separated")
    if not dtype_names or any(d not in names for d in dtype_names):
        raise ConfigError(f"--dtype {args.dtype!r}: give bf16, fp16 or both, comma-separated")
    if not torch.cuda.is_available():
        print("bench_atrous: no CUDA device here; this benchmark measures GPU kernels only (nothing run)")
        return 0
    torch.backends.cudnn.benchmark = True
    env = environment(argv)
    modes = ["forward+backward"] if args.quick else ["forward", "backward", "forward+backward"]
    repeats = max(3, args.repeats // (4 if args.quick else 1))
    rows = []
    for dtype in [names[d] for d in dtype_names]:
        for backend in backends:
            if not _runs(backend, dtype):
                print(f"bench_atrous: {backend} kernels have no {dtype} on this GPU: skipped")
                continue
            for spec in atrous_layers():
                if backend == "cuda" and spec[-1] != 1:
                    continue  # depthwise: Triton only
                for mode in modes:
                    rows.append(conv_case(*spec, dtype, mode, repeats, backend=backend))
                    _say(rows[-1])
            dense = atrous_layers()[:1] + ([] if backend == "cuda" else atrous_layers()[6:7])
            for spec in dense:  # deterministic: one dense layer (and one depthwise on Triton)
                rows.append(conv_case(*spec, dtype, "forward+backward", repeats, deterministic=True, backend=backend))
                r = rows[-1]
                base = [
                    b
                    for b in rows
                    if (b["layer"], b["dtype"], b["backend"], b["mode"]) == (r["layer"], r["dtype"], backend, r["mode"])
                    and not b["deterministic"]
                ]
                if base:
                    r["vs_ours_nondeterministic"] = base[0]["ms"] / r["ms"]
                _say(r)
            for config in ("kurth2018", "deepcam"):
                rows.append(aspp_case(config, dtype, "forward+backward", repeats, backend=backend))
                _say(rows[-1])
    by_key = {(r["layer"], r["dtype"], r["mode"], r["deterministic"]): r for r in rows if r["backend"] == "triton"}
    for r in rows:
        other = by_key.get((r["layer"], r["dtype"], r["mode"], r["deterministic"]))
        if r["backend"] == "cuda" and other is not None:
            r["vs_triton"] = other["ms"] / r["ms"]
    path = result_path(f"atrous-{env['gpu'].replace(' ', '_')}-{env['date']}.json", args.json)
    write(rows, env, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
