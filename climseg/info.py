"""``climseg info``: versions, devices, backends and the settings in force."""

import importlib
import os
import platform


def _version(module):
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # a broken optional install should not break info
        return "not installed" if isinstance(exc, ImportError) else f"broken ({type(exc).__name__})"


def info_lines():
    import torch

    import climseg
    from climseg.data.cache import CACHE_ENV, cache_dir
    from climseg.ops import backend
    from climseg.perf.cpu import ENV_VAR as MALLOC_ENV

    lines = [
        f"climseg {climseg.__version__}  (python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores)"
    ]
    lines.append("libraries:")
    for name in ("torch", "numpy", "h5py", "netCDF4", "triton", "mpi4py", "cupy"):
        lines.append(f"  {name:10s} {_version(name)}")
    lines.append("devices:")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"  cuda:{i}  {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, "
                f"CUDA {torch.version.cuda}"
            )
    else:
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        lines.append(f"  no CUDA device (torch is {build}); running on CPU, {torch.get_num_threads()} threads")
    from climseg.perf.hardware import choose_precision, cpu_int8_support

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, why = choose_precision("auto", device)
    lines.append(f"precision (auto, train and predict): {precision} on {device} ({why})")
    int8_fast, int8_why = cpu_int8_support()
    lines.append(
        f"  predict --precision int8: torchao {_version('torchao')}; "
        + (f"int8 dot products ({int8_why})" if int8_fast else int8_why)
    )
    lines.append("op backends (auto):")
    for op, cuda_choice, cpu_choice, why in backend.describe():
        lines.append(f"  {op:34s} CUDA tensors: {cuda_choice:7s} CPU tensors: {cpu_choice:7s} ({why})")
    from climseg.ops import cuda as cuda_kernels

    lines.append("CUDA kernels (csrc/cuda):")
    lines.append(f"  {cuda_kernels.describe()}")
    from climseg.data.loader import extension_available

    lines.append("data loading:")
    lines.append(
        "  FastLoader reader         "
        + (
            "C++ (climseg._C), threads with the GIL released"
            if extension_available()
            else "NumPy (climseg._C was not built: no C++ compiler at install?)"
        )
    )
    lines.append("settings:")
    lines.append(f"  {backend.ENV_VAR}={os.environ.get(backend.ENV_VAR, '')!s:10s} (backend choice; unset = auto)")
    lines.append(f"  {CACHE_ENV}={os.environ.get(CACHE_ENV, '')!s:10s} (synthetic dataset cache: {cache_dir()})")
    lines.append(
        f"  {MALLOC_ENV}={os.environ.get(MALLOC_ENV, '')!s:10s} "
        "(0: leave glibc malloc alone when training or loading on CPU)"
    )
    return lines
