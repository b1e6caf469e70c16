"""Launchers of the CUDA atrous-convolution kernels (``csrc/cuda/atrous.cu``): the same three
functions and arguments as the Triton launchers of :mod:`climseg.kernels.atrous_dense`, so that
:mod:`climseg.ops.conv_branches` swaps one module for the other.

Data flow: conv_branches packs the weights and the branch table (NHWC tensors) -> a launcher
here picks the kernel (operation, dtype, tensor-core family), the grid and the argument list ->
:func:`climseg.ops.cuda.launcher` runs it (``climseg._cuda``, its CuPy build, or on CPU tensors the
emulation). Every kernel works on 128 x 64 tiles of the GEMM with 128 threads.

Tensor-core family (:func:`mma_family`): ``sm70`` (``mma.sync.m8n8k4``, fp16 only) on GPUs of
compute capability below 8.0 (Volta, Turing), ``sm80`` (``mma.sync.m16n8k16``, fp16 and bf16) from
8.0 on. fp32 inputs are multiplied as fp16 (converted as they are loaded: 10 mantissa bits like
TF32, fp16's range) with fp32 accumulation. The CPU emulation runs ``sm80`` unless a test asks for
the other (``EMULATED_FAMILY``).
"""

import contextlib

import torch

from climseg.ops import cuda

BLOCK_M, BLOCK_N, BLOCK_K, THREADS = 128, 64, 32, 128  # csrc/cuda/atrous.cu: AT_BM, AT_BN, AT_BK, AT_THREADS
FAMILIES = ("sm70", "sm80")
EMULATED_FAMILY = {"family": "sm80"}  # which family the CPU emulation runs (tests set "sm70" too)
_RECORDING = None  # inside recording(): {"launches": [...], "family": ..., "sm_count": ...}


@contextlib.contextmanager
def recording(family, sm_count):
    """Within this block the launchers compute every argument as for a real launch on a GPU of the
    tensor-core ``family`` with ``sm_count`` SMs (``torch.device("meta")`` tensors stand in for the
    data) and append ``(kernel name, grid, args)`` to the yielded list instead of launching: what
    :mod:`climseg.verify.cuda_kernels` checks the real layers with."""
    global _RECORDING
    _RECORDING = dict(launches=[], family=family, sm_count=sm_count)
    try:
        yield _RECORDING["launches"]
    finally:
        _RECORDING = None


def mma_family(device):
    """``"sm70"`` (m8n8k4) below compute capability 8.0, else ``"sm80"`` (m16n8k16); the emulation's
    choice for CPU tensors."""
    if _RECORDING is not None:
        return _RECORDING["family"]
    if device.type != "cuda":
        return EMULATED_FAMILY["family"]
    return "sm70" if torch.cuda.get_device_capability(device) < (8, 0) else "sm80"


def unsupported(dtype, device):
    """Why the CUDA kernels cannot take ``dtype`` on ``device``, or ''."""
    if dtype not in cuda.FLOAT_NAMES:
        return f"dtype {dtype} (fp16, bf16 and fp32 only)"
    if dtype == torch.bfloat16 and mma_family(device) == "sm70":
        return "bf16 below compute capability 8.0 (Volta and Turing tensor cores have no bf16)"
    return ""


def _name(op, dtype, device):
    return f"atrous_{op}_{cuda.FLOAT_NAMES[dtype]}_{mma_family(device)}"


def _vectorized(channels, tensors):
    """16-byte loads: every channel count a multiple of 8 and every pointer 16-byte aligned."""
    return int(all(c % 8 == 0 for c in channels) and all(t.data_ptr() % 16 == 0 for t in tensors if t is not None))


def _cdiv(a, b):
    return (a + b - 1) // b


def empty(shape, device, dtype):
    """Every buffer the launchers allocate (tests replace this to poison them with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def _launch(name, grid, args, device):
    if _RECORDING is not None:
        _RECORDING["launches"].append((name, tuple(grid), list(args)))
        return
    cuda.launcher(device).launch(name, grid, THREADS, args, device)


def dense_forward(
    x,
    w_packed,
    table,
    out_channels,
    total_channels,
    out_hw,
    stride,
    *,
    bias=None,
    scale=None,
    shift=None,
    residual=None,
    relu=False,
    deterministic=False,
    out=None,
):
    """Dense convs (one per row of ``table``) of NHWC ``x`` into channel slices of one NHWC output,
    with the epilogue; see :func:`climseg.kernels.atrous_dense.dense_forward`. No atomics: always
    deterministic."""
    NB, H, W, Cin = x.shape
    OH, OW = out_hw
    if out is None:
        out = empty((NB, OH, OW, total_channels), x.device, x.dtype)
    M = NB * OH * OW
    n_blocks = _cdiv(out_channels, BLOCK_N)
    vec = _vectorized((Cin, out_channels, total_channels), (x, w_packed, residual, out))
    p = cuda.pointer
    _launch(
        _name("fwd", x.dtype, x.device),
        (_cdiv(M, BLOCK_M), n_blocks * table.shape[0]),
        [p(x), p(w_packed), p(table), p(bias), p(scale), p(shift), p(residual), p(out)]
        + [NB, H, W, Cin, OH, OW, out_channels, total_channels, stride[0], stride[1], int(relu), vec, n_blocks],
        x.device,
    )
    return out


def dense_dgrad(g, w_packed_t, table, in_shape, out_channels, stride, deterministic=False, out=None):
    """Input gradient of the dense convs of ``table`` (weights packed [KH, KW, Cout, Cin]); ``g`` is
    the NHWC gradient of the whole output. No atomics."""
    NB, H, W, Cin = in_shape
    _, OH, OW, Ctot = g.shape
    dx = empty((NB, H, W, Cin), g.device, g.dtype) if out is None else out
    vec = _vectorized((Cin, out_channels, Ctot), (g, w_packed_t, dx))
    p = cuda.pointer
    _launch(
        _name("dgrad", g.dtype, g.device),
        (_cdiv(NB * H * W, BLOCK_M), _cdiv(Cin, BLOCK_N)),
        [p(g), p(w_packed_t), p(table), p(dx), NB, H, W, Cin, OH, OW, out_channels, Ctot, stride[0], stride[1]]
        + [table.shape[0], vec],
        g.device,
    )
    return dx


def reduction_splits(tiles, pixels, device):
    """Parts of the weight gradient's reduction over ``pixels``: about four waves of blocks on the
    GPU (two parts on CPU, so that the tests see the split paths), each part at least four K steps."""
    if _RECORDING is not None:
        target = 4 * _RECORDING["sm_count"]
    elif device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2 * max(1, tiles)
    return max(1, min(_cdiv(target, max(1, tiles)), _cdiv(pixels, 4 * BLOCK_K)))


def dense_wgrad(x, g, jobs, weight_numel, out_channels, stride, deterministic):
    """Weight gradients of the dense convs, float32, in the packed [KH, KW, Cin, Cout] layout; one
    row of ``jobs`` per (branch, tap). Split parts are added with atomics, or (deterministic) each
    written to its own workspace slice and summed in a fixed order."""
    NB, H, W, Cin = x.shape
    _, OH, OW, Ctot = g.shape
    P = NB * OH * OW
    n_blocks = _cdiv(out_channels, BLOCK_N)
    tiles = _cdiv(Cin, BLOCK_M) * n_blocks * jobs.shape[0]
    splits = reduction_splits(tiles, P, x.device)
    per = _cdiv(_cdiv(P, splits), BLOCK_K) * BLOCK_K
    splits = _cdiv(P, per)
    atomic = not deterministic and splits > 1
    if atomic or splits == 1:
        dw = torch.zeros(weight_numel, device=x.device, dtype=torch.float32)
    else:
        dw = empty((splits, weight_numel), x.device, torch.float32)
    vec = _vectorized((Cin, out_channels, Ctot), (x, g))
    p = cuda.pointer
    _launch(
        _name("wgrad", x.dtype, x.device),
        (_cdiv(Cin, BLOCK_M), n_blocks * jobs.shape[0] * splits),
        [p(x), p(g), p(jobs), p(dw), NB, H, W, Cin, OH, OW, out_channels, Ctot, stride[0], stride[1]]
        + [splits, per, weight_numel, int(atomic), vec, n_blocks],
        x.device,
    )
    if dw.dim() == 2:
        dw = dw.sum(0)  # a fixed-order reduction: deterministic
    return dw
