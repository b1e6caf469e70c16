"""Peak throughput of the device, for model FLOP utilisation (MFU).

MFU = achieved model FLOP/s (``count_flops`` x samples/s) / peak. The peak is the
dense (no sparsity) tensor-core rate of the GPU for 16-bit inputs with fp32
accumulation, from the vendors' datasheets, looked up by device name; for any
other device (a CPU, an unknown GPU) :func:`measured_peak` times large matmuls
in the training dtype and uses the best rate seen as the ceiling.
"""

import time

import torch

from climseg.perf.hardware import cpu_has_native_bf16

# device-name fragment -> dense bf16/fp16 tensor TFLOP/s (fp32 accumulate), datasheet figures
GPU_PEAKS_TFLOPS = [
    ("H200", 989.0),
    ("H100 SXM", 989.0),
    ("H100 80GB HBM3", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 756.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A30", 165.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),
    ("T4", 65.0),
]


def table_peak(name):
    """Datasheet peak in TFLOP/s for a GPU name (``torch.cuda.get_device_name``), or None."""
    for fragment, peak in GPU_PEAKS_TFLOPS:
        if fragment.lower() in name.lower():
            return peak
    return None


def measured_peak(device, dtype=torch.float32, size=None, repeats=3):
    """Best TFLOP/s of ``size`` x ``size`` matmuls on ``device`` in ``dtype`` (the measured ceiling)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e12


def device_peak(device, dtype=torch.bfloat16):
    """``(TFLOP/s, source)``: the datasheet figure for known GPUs, else a measured matmul ceiling."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name)
        if peak is not None:
            return peak, f"datasheet dense 16-bit tensor peak of {name}"
    # CPUs without native bf16 emulate it: the fp32 ceiling is the honest one there
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        if not cpu_has_native_bf16():
            dtype = torch.float32
    return measured_peak(device, dtype), f"measured {str(dtype).replace('torch.', '')} matmul ceiling"


def mfu(tflops_per_s, peak_tflops):
    return tflops_per_s / peak_tflops if peak_tflops else None
