"""What the machine offers: the device to train on and the precision it computes fast.

``resolve_device("auto")`` is the first CUDA device, else the CPU. ``resolve_precision("auto",
device)`` is bf16 on CUDA (fp16 before Ampere), and on CPUs bf16 only where the cores compute
it natively (AVX512-BF16 or AMX, read from /proc/cpuinfo), else fp32. The trainer, ``predict``,
the benchmarks and the MFU peaks (:mod:`climseg.perf.peaks`) all ask here.
"""

import torch

from climseg.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; CUDA must exist if named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"option device: {name!r} requested but no CUDA device is available")
    return device


def resolve_precision(name, device):
    """``auto``: bf16 (or fp16 before Ampere) on CUDA; on CPU bf16 where the cores
    compute it natively (AVX512-BF16 or AMX), else fp32. Other names pass through."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return name


def cpu_has_native_bf16():
    """True if /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
