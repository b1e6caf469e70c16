"""The static check as a command: options -> compile drivers -> checks -> report.

    climseg bench static [--arch 70,75,80,90] [--dtype bf16,fp16,fp32] [--kernels triton,cuda] [--layer ...]
                         [--workers 2] [--no-progress] [--json OUT]

:func:`run` parses the options (a bad one is a :class:`climseg.errors.ConfigError`: one line,
exit status 2), compiles the Triton kernels (:mod:`climseg.verify.triton_kernels`) and the CUDA
kernels (:mod:`climseg.verify.cuda_kernels`), lists the violations
(:mod:`climseg.verify.checks`), writes the report (:mod:`climseg.verify.report`) and returns
the exit status: 1 when a check fails, else 0. ``climseg.bench.static.main`` runs it with the
command line and the results folder of ``climseg bench``.
"""

import argparse
import time

from climseg.errors import ConfigError
from climseg.verify.checks import violations
from climseg.verify.cuda_kernels import ARCHS as CUDA_ARCHS
from climseg.verify.cuda_kernels import cuda_rows, layer_rows, layer_violations
from climseg.verify.layers import layer_cases, parse_layer
from climseg.verify.report import environment, write
from climseg.verify.triton_kernels import ALL_ARCHS as TRITON_ARCHS
from climseg.verify.triton_kernels import DTYPES, triton_rows

DESCRIPTION = "Static check of the GPU kernels, without a GPU: compile every kernel for sm_70 to sm_90 and"


def _list(text, allowed, what, convert=str):
    items = [v.strip() for v in text.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            raise ConfigError(f"--{what} {text!r}: {v!r} is not one of {', '.join(allowed)}")
    return [convert(v) for v in items]


def _parser():
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--arch",
        default="80,90",
        help="architectures, comma-separated: 80, 90, and 75, 70 (Volta: CUDA 12's NVRTC and ptxas, climseg[volta])",
    )
    parser.add_argument("--dtype", default="bf16,fp16,fp32", help="dtypes of the Triton kernels (fp32 runs as TF32)")
    parser.add_argument("--kernels", default="triton,cuda", help="which kernels: triton, cuda or both")
    parser.add_argument(
        "--layer",
        action="append",
        default=None,
        help="a layer name:N,Cin,Cout,H,W,k,dilation,groups instead of the built-in list (repeatable)",
    )
    parser.add_argument("--workers", type=int, default=2, help="compiling processes")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/static-<date>.json)")
    return parser


def _require_triton():
    try:
        import triton  # noqa: F401
    except ImportError:
        raise ConfigError(
            "climseg bench static: Triton is not installed (pip install 'climseg[triton]'), "
            "or check only the CUDA kernels with --kernels cuda"
        ) from None


def run(argv, command, results_path):
    """The static check with options ``argv``; ``command`` (the command line) goes into the
    report, ``results_path(name, given)`` says where it is written (``given``: ``--json``)."""
    args = _parser().parse_args(argv)
    which = _list(args.kernels, ("triton", "cuda"), "kernels")
    allowed = sorted(set(CUDA_ARCHS if "cuda" in which else ()) | set(TRITON_ARCHS if "triton" in which else ()))
    archs = _list(args.arch, [str(a) for a in allowed], "arch", int)
    dtypes = _list(args.dtype, DTYPES, "dtype")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cases = [parse_layer(t) for t in args.layer] if args.layer else None
    if "triton" in which:
        _require_triton()
    start = time.perf_counter()
    triton_archs = [a for a in archs if a in TRITON_ARCHS]
    cuda_archs = [a for a in archs if a in CUDA_ARCHS]
    triton = (
        triton_rows(triton_archs, dtypes, cases, args.workers, not args.no_progress)
        if "triton" in which and triton_archs
        else []
    )
    cuda, notes = cuda_rows(cuda_archs, args.workers) if "cuda" in which and cuda_archs else ([], [])
    meta = environment(command, archs)
    layers = layer_rows(cases or layer_cases(), cuda) if cuda else []
    meta.update(
        seconds=round(time.perf_counter() - start, 1),
        triton_rows=len(triton),
        cuda_rows=len(cuda),
        violations=violations(triton, cuda) + layer_violations(layers),
        cuda_layers=layers,
    )
    if "cuda" in which and notes:
        meta["cuda_note"] = "; ".join(notes)
    path = results_path(f"static-{meta['date']}.json", args.json)
    write(triton, cuda, meta, path)
    print(
        f"{len(triton)} Triton and {len(cuda)} CUDA kernel builds in {meta['seconds']:.0f} s; "
        f"{len(meta['violations'])} violations"
    )
    for v in meta["violations"]:
        print(f"  {v}")
    print(f"wrote {path}")
    return 1 if meta["violations"] else 0
