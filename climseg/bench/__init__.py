"""Benchmarks behind ``climseg bench`` (and the scripts in ``benchmarks/``).

Each module measures one thing and writes JSON (``meta`` + ``rows``) and a
markdown table: ``step`` (training step, ours against the plain-PyTorch model),
``atrous`` (the Triton convolution kernels against cuDNN; GPU), ``cuda_kernels``
(the CUDA kernels of csrc/cuda against copy bandwidth and unfused PyTorch; GPU), ``allreduce``
(flat against hierarchical), ``io`` (FastLoader against an MLPerf-reference-style
reader and dd), ``scaling`` (the weak-scaling model of :mod:`climseg.perf.scaling`).
Medians over repeats after warm-up; CUDA events on GPUs. Beside them, parts they share or
split off: ``timing``, and the rows of ``cuda_kernels`` by kernel family (``cuda_loss_rows``,
``cuda_parameter_rows``) with their common format (``cuda_rows``).
"""

import os
import shlex
import sys


def results_dir():
    """``benchmarks/results`` when run from a source tree, else ``./climseg-bench-results``."""
    here = os.path.join(os.getcwd(), "benchmarks", "results")
    return here if os.path.isdir(here) else os.path.join(os.getcwd(), "climseg-bench-results")


def result_path(name, given=None):
    path = given or os.path.join(results_dir(), name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def command_line(argv=None):
    """The command as typed (``CLIMSEG_BENCH_COMMAND`` when a launcher re-ran it)."""
    if os.environ.get("CLIMSEG_BENCH_COMMAND"):
        return os.environ["CLIMSEG_BENCH_COMMAND"]
    args = sys.argv[1:] if argv is None else argv
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0])] + list(args))


def gpu_environment(device=0):
    """``gpu``, ``sm``, ``driver`` and ``memory_gib`` of a CUDA device, for a benchmark's meta."""
    import subprocess

    import torch

    props = torch.cuda.get_device_properties(device)
    try:
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()[0]
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown"
    return dict(
        gpu=props.name, sm=f"{props.major}{props.minor}", driver=driver, memory_gib=round(props.total_memory / 2**30, 1)
    )
