"""``climseg bench NAME``: one of the benchmarks of :mod:`climseg.bench`, or all of them in turn.
Options after the name that are not listed here go to the benchmark itself
(``python -m climseg.bench.NAME --help``)."""

import os
import shlex
import warnings

#: The benchmarks, as ``climseg bench`` names them (modules of climseg.bench with '-' for '_').
BENCHMARKS = ("step", "atrous", "cuda-kernels", "allreduce", "io", "scaling", "static", "track", "label", "predict")
GPU_ONLY = ("cuda-kernels",)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "bench",
        help="benchmarks with one output format (JSON + markdown)",
        description="Run a benchmark: step (training step; on CUDA ours against the same "
        "model on plain PyTorch), atrous (Triton and CUDA convolutions against cuDNN; GPU), "
        "cuda-kernels (the CUDA kernels against copy bandwidth and unfused PyTorch; GPU), "
        "allreduce (flat against hierarchical), io (FastLoader against a reference-style "
        "reader), scaling (the weak-scaling model; model output), static (every GPU kernel "
        "compiled for sm_80/sm_90, also sm_70/sm_75, and its machine code checked; no GPU needed), track "
        "(event tracking and analysis of a year of masks), label (the heuristic "
        "labeller scored against a generated series' truth, and its speed), predict (climseg "
        "predict end to end against plain PyTorch loops and the network alone, and each "
        "precision's agreement with fp32), or all. "
        "Options after the name that are not listed here go to the benchmark itself (see "
        "python -m climseg.bench.NAME --help).",
    )
    parser.add_argument(
        "what",
        choices=BENCHMARKS + ("all",),
        metavar="NAME",
        help="a benchmark named above, or all (each in turn; those that need a GPU only where there is one)",
    )
    parser.add_argument(
        "--device", default="auto", metavar="{auto,cpu,cuda}", help="step: where it runs (default: auto)"
    )
    parser.add_argument(
        "--network",
        default=None,
        metavar="NAMES",
        help="step: comma-separated networks (default: tiny on CPU, kurth2018,deepcam on CUDA)",
    )
    parser.add_argument(
        "--config", dest="old_network", default=None, metavar="NAMES", help="deprecated: the old name of --network"
    )
    parser.add_argument(
        "--preset",
        default="summit-kurth2018",
        metavar="NAME",
        help="scaling: summit-kurth2018 or h100-kurth2018 (default: summit-kurth2018)",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="OUT",
        help="result file (a folder for all) (default: "
        "benchmarks/results/ in a source tree, else ./climseg-bench-results/)",
    )
    parser.set_defaults(run=run, passes_extra_arguments=True)
    return parser


def run(args):
    import importlib

    import torch

    network = _network(args)
    gpu_only = () if torch.cuda.is_available() else GPU_ONLY  # all: the GPU-only ones where they can run
    names = [b for b in BENCHMARKS if b not in gpu_only] if args.what == "all" else [args.what]
    status = 0
    for name in names:
        out = args.json
        if args.what == "all" and out is not None:
            os.makedirs(out, exist_ok=True)
            out = os.path.join(out, f"{name}.json")
        argv = [a for a in args.extra if a != "--"]
        if name == "step":
            gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
            argv = ["--device", args.device, "--configs", network or ("kurth2018,deepcam" if gpu else "tiny")] + argv
        elif name == "scaling":
            argv = ["--preset", args.preset] + argv
        elif name == "allreduce" and not any(a.startswith("--procs") for a in argv):
            argv = ["--procs", "4", "--local-size", "2"] + argv  # two simulated nodes of two ranks
        if out is not None:
            argv += ["--json", out]
        os.environ["CLIMSEG_BENCH_COMMAND"] = "climseg " + " ".join(shlex.quote(a) for a in args.argv)
        try:
            status = importlib.import_module(f"climseg.bench.{name.replace('-', '_')}").main(argv) or status
        finally:
            os.environ.pop("CLIMSEG_BENCH_COMMAND", None)
    return status


def _network(args):
    """--network, or the deprecated --config (with a warning)."""
    from climseg.errors import UserError

    if args.old_network is None:
        return args.network
    if args.network is not None:
        raise UserError("give the networks once, with --network")
    warnings.warn("--config is now --network; the old name goes in a later release", FutureWarning, stacklevel=2)
    return args.old_network
