"""What the machine offers: the device to run on and the precision it computes fast.

``resolve_device("auto")`` is the first CUDA device, else the CPU. ``choose_precision("auto",
device)`` applies :data:`PRECISION_RULE` and says why; training (``climseg train``), inference
(``climseg predict``), the benchmarks, ``climseg info`` and the MFU peaks
(:mod:`climseg.perf.peaks`) all ask here, so the rule is written once:

* CUDA: bf16 on GPUs with bf16 tensor cores (compute capability 8.0 and later: A100, H100...),
  fp16 on Volta and Turing (7.x: tensor cores for fp16 only), fp32 on older GPUs;
* CPU: bf16 where the cores compute it natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo),
  else fp32 (bf16 emulated on AVX2 is slower than fp32).

``int8`` (``climseg predict --precision int8``) is never chosen by ``auto``: it needs calibration
data; :func:`cpu_int8_support` says whether the cores have the instructions that make it fast
(AVX512-VNNI, AVX-VNNI or AMX-INT8).
"""

import torch

from climseg.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: What ``--precision auto`` means, for ``climseg train`` and ``climseg predict`` alike.
PRECISION_RULE = (
    "auto: bf16 on GPUs with bf16 tensor cores (Ampere and later), fp16 on Volta and Turing, else "
    "fp32; on a CPU bf16 where the cores compute it natively (AVX512-BF16 or AMX), else fp32"
)


def resolve_device(name):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``; CUDA must exist if named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"option device: {name!r} requested but no CUDA device is available")
    return device


def choose_precision(name, device):
    """``(precision, why)``: ``name`` itself unless it is ``auto``, which follows
    :data:`PRECISION_RULE` on ``device``; ``why`` is one short phrase for a log line."""
    device = torch.device(device)
    if name != "auto":
        return name, "as requested"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        gpu = f"{torch.cuda.get_device_name(device)}, sm_{major}{minor}"
        if major >= 8:
            return "bf16", f"auto: {gpu} has bf16 tensor cores"
        if major == 7:
            return "fp16", f"auto: {gpu} has fp16 tensor cores only (Volta/Turing)"
        return "fp32", f"auto: {gpu} has no tensor cores"
    flags = cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if native:
        return "bf16", f"auto: the CPU computes bf16 natively ({', '.join(native)})"
    return "fp32", f"auto: the CPU has no native bf16 (no avx512_bf16/amx_bf16; {cpu_isa(flags)})"


def resolve_precision(name, device):
    """The precision :func:`choose_precision` picks, without the reason."""
    return choose_precision(name, device)[0]


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (Linux; an empty set elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa(flags=None):
    """The widest vector instruction set of the CPU, as a short name (``AVX512``, ``AVX2``...)."""
    flags = cpu_flags() if flags is None else flags
    for name, flag in (("AMX", "amx_tile"), ("AVX512", "avx512f"), ("AVX2", "avx2"), ("SSE4.2", "sse4_2")):
        if flag in flags:
            return name
    return "unknown ISA"


def cpu_has_native_bf16():
    """True if /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_int8_support():
    """``(fast, why)``: whether the cores have int8 dot-product instructions (AVX512-VNNI,
    AVX-VNNI, AMX-INT8), which int8 inference needs to beat bf16/fp32."""
    found = sorted(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if found:
        return True, ", ".join(found)
    return False, f"no VNNI or AMX-INT8 ({cpu_isa()}): int8 runs, but slower than it would there"
