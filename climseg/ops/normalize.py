"""Input normalisation on the device (CUDA kernel in csrc/cuda/normalize.cu; reference below):

    out[n, c, h, w] = dtype((x[n, h, w, channels[c]] - shift[c]) * scale[c])

from a batch of raw (N, H, W, C_in) float32 samples, in one pass, to the network's input
(N, C, H, W) in NHWC (channels_last) or NCHW memory: the formula of climseg._C's CPU
reader, so a loader can upload raw samples and normalise on the GPU instead.
"""

import warnings

import torch

from climseg.errors import ConfigError
from climseg.ops import backend as _backend
from climseg.ops import cuda as _cuda

_backend.register("normalize_input", "cuda", _cuda.probe)
BLOCK = 256


def normalize_input_reference(x, shift, scale, channels=None, dtype=torch.bfloat16, layout="nhwc"):
    if channels is not None:
        x = x[..., torch.as_tensor(channels, device=x.device, dtype=torch.long)]
    shift = torch.as_tensor(shift, device=x.device, dtype=torch.float32)
    scale = torch.as_tensor(scale, device=x.device, dtype=torch.float32)
    y = ((x.float() - shift) * scale).to(dtype).permute(0, 3, 1, 2)
    return y.contiguous() if layout == "nchw" else y.contiguous(memory_format=torch.channels_last)


def normalize_input(x, shift, scale, channels=None, dtype=torch.bfloat16, layout="nhwc", backend="auto"):
    """Normalise, select channels, cast and lay out a (N, H, W, C_in) float32 batch in one pass.

    Args:
        x: (N, H, W, C_in) float32, contiguous.
        shift, scale: per output channel (sequences or tensors of C values).
        channels: input channel of each output channel (default: all, in order).
        dtype: torch.bfloat16, torch.float16 or torch.float32.
        layout: ``"nhwc"`` (channels_last memory) or ``"nchw"``.
    Returns (N, C, H, W) in ``dtype``.
    """
    if layout not in ("nhwc", "nchw"):
        raise ConfigError(f"normalize_input: layout must be 'nhwc' or 'nchw', not {layout!r}")
    if x.dim() != 4:
        raise ValueError(f"normalize_input: x must be (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w, cin = x.shape
    channels = list(range(cin)) if channels is None else [int(c) for c in channels]
    if any(not 0 <= c < cin for c in channels):
        raise ValueError(f"normalize_input: channels {channels} outside [0, {cin})")
    shift = torch.as_tensor(shift, dtype=torch.float32).flatten()
    scale = torch.as_tensor(scale, dtype=torch.float32).flatten()
    if shift.numel() != len(channels) or scale.numel() != len(channels):
        raise ValueError(f"normalize_input: {len(channels)} channels need as many shift and scale values")

    def why_not():
        if x.dtype != torch.float32 or dtype not in _cuda.FLOAT_NAMES:
            return f"it takes float32 input and writes fp32/fp16/bf16, not {x.dtype} -> {dtype}"
        return ""

    if _backend.choose("normalize_input", backend, x, why_not) == "torch" or n * h * w == 0:
        return normalize_input_reference(x, shift, scale, channels, dtype, layout)
    x = x.contiguous()
    c = len(channels)
    device = x.device
    params = torch.cat([shift, scale]).to(device, non_blocking=True)
    index = torch.tensor(channels, dtype=torch.int32).to(device, non_blocking=True)
    out = torch.empty(
        (n, c, h, w),
        device=device,
        dtype=dtype,
        memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format,
    )
    pixels, plane = n * h * w, h * w
    sn, sp, sc = (plane * c, c, 1) if layout == "nhwc" else (c * plane, 1, plane)
    grid = _cuda.grid_blocks(pixels, BLOCK, _cuda.resident_blocks(device))
    _cuda.launcher(device).launch(
        f"normalize_input_{_cuda.FLOAT_NAMES[dtype]}",
        (grid,),
        BLOCK,
        (
            x.data_ptr(),
            pixels,
            plane,
            cin,
            c,
            index.data_ptr(),
            params.data_ptr(),
            params[c:].data_ptr(),
            out.data_ptr(),
            sn,
            sp,
            sc,
        ),
        device,
    )
    return out


def convert_input(*args, **kwargs):
    """The old name of :func:`normalize_input` (goes in the next release)."""
    warnings.warn(
        "climseg.ops.convert_input is now climseg.ops.normalize_input; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return normalize_input(*args, **kwargs)


def convert_input_reference(*args, **kwargs):
    """The old name of :func:`normalize_input_reference` (goes in the next release)."""
    warnings.warn(
        "climseg.ops.convert_input_reference is now climseg.ops.normalize_input_reference; the old name "
        "goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return normalize_input_reference(*args, **kwargs)
