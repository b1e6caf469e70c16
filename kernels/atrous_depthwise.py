"""Triton kernels of the depthwise (groups = channels) atrous (dilated) convolution: forward,
input gradient, weight gradient, and their launchers.

Layout: activations NHWC (``torch.channels_last``), one row of C channels per pixel; the weight
as [KH*KW, C] (one row of channels per tap). The kernels are direct (no tensor cores: one
multiply-add per tap and channel):

* forward   y[p, c]  = relu((sum_t x[src(p, t), c] * w[t, c] + bias) * scale + shift + residual)
* dgrad     dx[q, c] = sum_t g[dst(q, t), c] * w[t, c]
* wgrad     dw[t, c] = sum_p x[src(p, t), c] * g[p, c]    (per-part sums in a workspace, then
                                                           a fixed-order sum)

Accumulation is float32, and every kernel is deterministic (no atomics in any mode).

Data flow: :mod:`climseg.ops.conv_branches` lays out the weight and calls a launcher here; the
launcher computes the grid and the arguments and hands them to the autotuner of
:mod:`climseg.kernels.runtime` (the weight gradient, untuned, launches its one block shape
itself); the index arithmetic and the fused epilogue are in :mod:`climseg.kernels.nhwc`. The
dense convolutions are :mod:`climseg.kernels.atrous_dense`. ``climseg bench static`` compiles
every kernel and candidate here for sm_80 and sm_90 and checks the SASS (:mod:`climseg.verify`).
"""

import torch
import triton
import triton.language as tl

from climseg.kernels import runtime
from climseg.kernels.nhwc import SPATIAL_ARGS, epilogue_store, split_pixel, tap_destination, tap_source

if runtime.interpreting():  # before any of these kernels runs in Triton's interpreter
    runtime.install_interpreter_compatibility()

# The window geometry changes from layer to layer and only enters index arithmetic: not
# specialized either (see SPATIAL_ARGS).
_WINDOW = ["KH", "KW", "dil_h", "dil_w", "pad_h", "pad_w"]


# ---------------------------------------------------------------------------------------------
# depthwise (groups = channels): direct
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=SPATIAL_ARGS + _WINDOW)
def _dw_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    res_ptr,
    y_ptr,
    NB,
    H,
    W,
    C,
    OH,
    OW,
    KH,
    KW,
    stride_h,
    stride_w,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_RES: tl.constexpr,
    RELU: tl.constexpr,
    C_DIV: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y[p, c] = relu((sum_t x[src(p, t), c] w[t, c] + bias) * scale + shift + res)."""
    C = (C // C_DIV) * C_DIV  # C is a multiple of C_DIV: see _channel_divisor
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < NB * OH * OW
    c_mask = offs_c < C
    n_img, oh, ow = split_pixel(offs_p, OH, OW)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in range(0, KH * KW):
        valid, base = tap_source(
            n_img, oh, ow, tap // KW, tap % KW, p_mask, H, W, C, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
        )
        xv = tl.load(x_ptr + base[:, None] + offs_c[None, :], mask=valid[:, None] & c_mask[None, :], other=0.0)
        wv = tl.load(w_ptr + tap * C + offs_c, mask=c_mask, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    epilogue_store(
        acc,
        y_ptr,
        offs_p.to(tl.int64)[:, None] * C + offs_c[None, :],
        p_mask[:, None] & c_mask[None, :],
        offs_c,
        c_mask,
        bias_ptr,
        scale_ptr,
        shift_ptr,
        res_ptr,
        HAS_BIAS,
        HAS_SCALE,
        HAS_SHIFT,
        HAS_RES,
        RELU,
    )


@triton.jit(do_not_specialize=SPATIAL_ARGS + _WINDOW)
def _dw_dgrad_kernel(
    g_ptr,
    w_ptr,
    dx_ptr,
    NB,
    H,
    W,
    C,
    OH,
    OW,
    KH,
    KW,
    stride_h,
    stride_w,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    C_DIV: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dx[q, c] = sum_t g[dst(q, t), c] w[t, c]."""
    C = (C // C_DIV) * C_DIV  # C is a multiple of C_DIV: see _channel_divisor
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < NB * H * W
    c_mask = offs_c < C
    n_img, ih, iw = split_pixel(offs_p, H, W)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for tap in range(0, KH * KW):
        valid, base = tap_destination(
            n_img, ih, iw, tap // KW, tap % KW, p_mask, OH, OW, C, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
        )
        gv = tl.load(g_ptr + base[:, None] + offs_c[None, :], mask=valid[:, None] & c_mask[None, :], other=0.0)
        wv = tl.load(w_ptr + tap * C + offs_c, mask=c_mask, other=0.0)
        acc += gv.to(tl.float32) * wv.to(tl.float32)[None, :]
    out = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


@triton.jit(do_not_specialize=SPATIAL_ARGS + _WINDOW[1:] + ["TAPS", "P_PER_SPLIT"])
def _dw_wgrad_kernel(
    x_ptr,
    g_ptr,
    ws_ptr,
    NB,
    H,
    W,
    C,
    OH,
    OW,
    KW,
    stride_h,
    stride_w,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    TAPS,
    P_PER_SPLIT,
    C_DIV: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """ws[split, t, c] = sum over this split's pixels p of x[src(p, t), c] g[p, c]."""
    C = (C // C_DIV) * C_DIV  # C is a multiple of C_DIV: see _channel_divisor
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    split = tl.program_id(2)
    kh = tap // KW
    kw = tap % KW
    c_mask = offs_c < C
    P = NB * OH * OW
    p_start = split * P_PER_SPLIT
    p_end = tl.minimum(P, p_start + P_PER_SPLIT)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_mask = p < p_end
        n_img, oh, ow = split_pixel(p, OH, OW)
        valid, base = tap_source(n_img, oh, ow, kh, kw, p_mask, H, W, C, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
        xv = tl.load(x_ptr + base[:, None] + offs_c[None, :], mask=valid[:, None] & c_mask[None, :], other=0.0)
        gv = tl.load(
            g_ptr + p.to(tl.int64)[:, None] * C + offs_c[None, :], mask=p_mask[:, None] & c_mask[None, :], other=0.0
        )
        acc += xv.to(tl.float32) * gv.to(tl.float32)
    total = tl.sum(acc, axis=0)
    tl.store(ws_ptr + (split.to(tl.int64) * TAPS + tap) * C + offs_c, total, mask=c_mask)


_JIT = {"dw_fwd": _dw_fwd_kernel, "dw_dgrad": _dw_dgrad_kernel}


def _tuned(name, device, itemsize):
    """Kernel ``name`` wrapped in the autotuner for ``device`` and operands of ``itemsize`` bytes."""
    return runtime.tuned(name, _JIT[name], runtime.architecture(device), itemsize)


def _channel_divisor(c):
    """The largest power of two (at most 16) that divides the channel count ``c``. The JIT marks
    only multiples of 16; depthwise layers have e.g. 728 = 8 x 91 channels, and telling the
    kernel so makes its channel loads 8 wide (16 bytes in 16-bit types) instead of one by one."""
    return min(16, c & -c)


# ---------------------------------------------------------------------------------------------
# launchers (NHWC tensors; shapes checked by climseg.ops; ``out``: an NHWC-contiguous view to fill,
# e.g. ``y.permute(0, 2, 3, 1)`` of a channels_last tensor)
# ---------------------------------------------------------------------------------------------
def depthwise_forward(
    x,
    w_taps,
    kernel_size,
    stride,
    padding,
    dilation,
    out_hw,
    *,
    bias=None,
    scale=None,
    shift=None,
    residual=None,
    relu=False,
    deterministic=False,
    out=None,
):
    """Depthwise conv of NHWC ``x``; ``w_taps`` is the weight as [KH*KW, C]."""
    NB, H, W, C = x.shape
    OH, OW = out_hw
    if out is None:
        out = runtime.empty((NB, OH, OW, C), x.device, x.dtype)
    M = NB * OH * OW
    KH, KW = kernel_size
    _tuned("dw_fwd", x.device, x.element_size())(
        lambda meta: (runtime.cdiv(M, meta["BLOCK_P"]), runtime.cdiv(C, meta["BLOCK_C"])),
        x,
        w_taps,
        bias if bias is not None else out,
        scale if scale is not None else out,
        shift if shift is not None else out,
        residual if residual is not None else out,
        out,
        NB,
        H,
        W,
        C,
        OH,
        OW,
        KH,
        KW,
        stride[0],
        stride[1],
        dilation[0],
        dilation[1],
        padding[0],
        padding[1],
        HAS_BIAS=bias is not None,
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        HAS_RES=residual is not None,
        RELU=relu,
        C_DIV=_channel_divisor(C),
        M_KEY=runtime.pixel_key(M),
        TAPS_KEY=KH * KW,
        FIXED=deterministic,
    )
    return out


def depthwise_dgrad(g, w_taps, in_shape, kernel_size, stride, padding, dilation, deterministic=False, out=None):
    """Input gradient (NHWC, shape ``in_shape``) of a depthwise conv from the NHWC output gradient ``g``."""
    NB, H, W, C = in_shape
    _, OH, OW, _ = g.shape
    dx = runtime.empty((NB, H, W, C), g.device, g.dtype) if out is None else out
    M = NB * H * W
    KH, KW = kernel_size
    _tuned("dw_dgrad", g.device, g.element_size())(
        lambda meta: (runtime.cdiv(M, meta["BLOCK_P"]), runtime.cdiv(C, meta["BLOCK_C"])),
        g,
        w_taps,
        dx,
        NB,
        H,
        W,
        C,
        OH,
        OW,
        KH,
        KW,
        stride[0],
        stride[1],
        dilation[0],
        dilation[1],
        padding[0],
        padding[1],
        C_DIV=_channel_divisor(C),
        M_KEY=runtime.pixel_key(M),
        TAPS_KEY=KH * KW,
        FIXED=deterministic,
    )
    return dx


def depthwise_wgrad(x, g, kernel_size, stride, padding, dilation):
    """Weight gradient of a depthwise conv as float32 [KH*KW, C]: per-part sums in a
    workspace, then a fixed-order sum (deterministic in every mode)."""
    NB, H, W, C = x.shape
    _, OH, OW, _ = g.shape
    KH, KW = kernel_size
    P = NB * OH * OW
    config = runtime.launch_configs("dw_wgrad", runtime.architecture(x.device), x.element_size())[0]
    block_p, block_c = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
    c_tiles = runtime.cdiv(C, block_c)
    splits = runtime.reduction_splits(c_tiles * KH * KW, P, x.device, block_p)
    per = runtime.cdiv(runtime.cdiv(P, splits), block_p) * block_p
    splits = runtime.cdiv(P, per)
    ws = runtime.empty((splits, KH * KW, C), x.device, torch.float32)
    args = (
        x,
        g,
        ws,
        NB,
        H,
        W,
        C,
        OH,
        OW,
        KW,
        stride[0],
        stride[1],
        dilation[0],
        dilation[1],
        padding[0],
        padding[1],
        KH * KW,
        per,
    )
    kwargs = dict(C_DIV=_channel_divisor(C))
    if not runtime.record("dw_wgrad", _dw_wgrad_kernel, args, kwargs, True):
        _dw_wgrad_kernel[(c_tiles, KH * KW, splits)](*args, **kwargs, **config.kwargs, num_warps=config.num_warps)
    return ws.sum(0)
