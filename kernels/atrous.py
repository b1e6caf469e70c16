"""Triton kernels of the atrous (dilated) convolution: forward, input gradient,
weight gradient, for dense (groups = 1) and depthwise (groups = channels) convs.

Layout: activations NHWC (``torch.channels_last``), one row of C channels per pixel.

Dense convs are implicit GEMMs, computed tap by tap (no im2col buffer):

* forward   y[p, o]   = sum_{t, i} x[src(p, t), i] * w[t, i, o]     M = pixels out, N = Cout, K = taps x Cin
* dgrad     dx[q, i]  = sum_{t, o} g[dst(q, t), o] * w[t, o, i]     M = pixels in,  N = Cin,  K = taps x Cout
* wgrad     dw[t, i, o] = sum_p x[src(p, t), i] * g[p, o]           M = Cin, N = Cout, K = pixels (split)

with the epilogue of the forward fused: ``relu((acc + bias) * scale + shift + residual)``.
Several convolutions that read the same input and write channel slices of one
output (the branches of ASPP) run in ONE launch: a small int32 table gives each
branch its weight offset, kernel size, dilation, padding and output-channel
offset, and the grid's third axis picks the branch (forward, wgrad) or the
kernel loops over the branches (dgrad, whose output they share).

The weight gradient reduces over pixels in ``splits`` parts. Non-deterministic
mode adds the parts with atomics; deterministic mode writes each part to its
own slice of a workspace and sums the slices in a fixed order (no atomics), so
the same inputs give bitwise identical results. Forward and dgrad never use
atomics. Depthwise kernels are direct (no tensor cores: one multiply-add per
tap and channel) and always deterministic.

Accumulation is float32. fp16/bf16 operands go to the tensor cores as they are;
fp32 operands use TF32 when ``allow_tf32`` is passed (the launcher follows
``torch.backends.cudnn.allow_tf32``, as ``F.conv2d`` does), else full fp32.

This module holds the kernels and their launchers only. Each launcher computes the grid and
the arguments and hands them to the autotuner of :mod:`climseg.kernels.runtime`, which also
holds the candidate block shapes, the interpreter's compatibility and the launch recording;
the index arithmetic and the fused epilogue are in :mod:`climseg.kernels.nhwc`.

Every kernel and autotuning candidate is compiled for sm_80 and sm_90 and its SASS checked
(spills, tensor cores, asynchronous copies) by ``climseg bench static`` (:mod:`climseg.verify`),
which runs these launchers on meta tensors inside :func:`climseg.kernels.runtime.recording`.
Supported Triton: 3.6 to 3.9.
"""

import torch
import triton
import triton.language as tl

from climseg.kernels import runtime
from climseg.kernels.nhwc import epilogue_store, split_pixel, tap_destination, tap_source

TABLE_COLS = 8  # w_offset, KH, KW, dil_h, dil_w, pad_h, pad_w, out_channel_offset

if runtime.interpreting():  # before any of these kernels runs in Triton's interpreter
    runtime.install_interpreter_compatibility()


# Arguments the JIT must not specialize on (divisibility by 16, equality to 1): image sizes,
# window geometry and split counts change from layer to layer but only enter index arithmetic,
# so one compiled kernel serves them all (fewer compilations and autotuning runs per model).
# The channel counts and pointers stay specialized: their divisibility makes the channel loads
# 128-bit and asynchronous; so do the strides (stride 1 folds away).
_SPATIAL = ["NB", "H", "W", "OH", "OW"]
_WINDOW = ["KH", "KW", "dil_h", "dil_w", "pad_h", "pad_w"]


# ---------------------------------------------------------------------------------------------
# dense: forward
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SPATIAL)
def _dense_fwd_kernel(
    x_ptr,
    w_ptr,
    table_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    res_ptr,
    y_ptr,
    NB,
    H,
    W,
    Cin,
    OH,
    OW,
    Cout,
    Ctot,
    stride_h,
    stride_w,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_RES: tl.constexpr,
    RELU: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[p, off + o] = relu((sum_{t,i} x[src(p,t), i] w[t, i, o] + bias) * scale + shift + res)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    br = tl.program_id(2)
    row = table_ptr + br * 8
    # a branch's weights start at a multiple of Cout (taps x Cin x Cout before them): saying so
    # lets the compiler carry Cout's divisibility to the weight loads (vector and async copies)
    w_off = (tl.load(row).to(tl.int64) // Cout) * Cout
    KH = tl.load(row + 1)
    KW = tl.load(row + 2)
    dil_h = tl.load(row + 3)
    dil_w = tl.load(row + 4)
    pad_h = tl.load(row + 5)
    pad_w = tl.load(row + 6)
    out_off = (tl.load(row + 7) // Cout) * Cout  # the channel slice: a multiple of Cout too

    M = NB * OH * OW
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < Cout
    n_img, oh, ow = split_pixel(offs_m, OH, OW)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in range(0, KH * KW):
        valid, base = tap_source(
            n_img, oh, ow, tap // KW, tap % KW, m_mask, H, W, Cin, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
        )
        w_tap = w_ptr + w_off + tap * Cin * Cout
        for c0 in range(0, Cin, BLOCK_K):
            ck = c0 + offs_k
            k_mask = ck < Cin
            a = tl.load(x_ptr + base[:, None] + ck[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(w_tap + ck[:, None] * Cout + offs_n[None, :], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            if UPCAST:  # the interpreter's dot is wrong for bf16 operands: multiply in fp32 there
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)

    ch = out_off + offs_n
    epilogue_store(
        acc,
        y_ptr,
        offs_m.to(tl.int64)[:, None] * Ctot + ch[None, :],
        m_mask[:, None] & n_mask[None, :],
        ch,
        n_mask,
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


# ---------------------------------------------------------------------------------------------
# dense: input gradient
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SPATIAL + ["NUM_BRANCHES"])
def _dense_dgrad_kernel(
    g_ptr,
    w_ptr,
    table_ptr,
    dx_ptr,
    NB,
    H,
    W,
    Cin,
    OH,
    OW,
    Cout,
    Ctot,
    stride_h,
    stride_w,
    NUM_BRANCHES,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dx[q, i] = sum_{branch, t, o} g[dst(q, t), off + o] * w[t, o, i] (w here laid out [t, Cout, Cin]).

    Per branch ONE loop over (tap, block of output channels), so that Triton's software
    pipeliner sees a single innermost loop of loads feeding the dot (asynchronous copies,
    ``num_stages`` deep); the tap's index arithmetic is recomputed each step (cheap integer
    work beside the MMA)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    M = NB * H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < Cin
    n_img, ih, iw = split_pixel(offs_m, H, W)
    k_blocks = tl.cdiv(Cout, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for br in range(0, NUM_BRANCHES):
        row = table_ptr + br * 8
        # offsets that are multiples of Cin (weights) and Cout (channel slice) in fact: saying so
        # carries the arguments' divisibility to the loads (vector and async copies)
        w_off = (tl.load(row).to(tl.int64) // Cin) * Cin
        KH = tl.load(row + 1)
        KW = tl.load(row + 2)
        dil_h = tl.load(row + 3)
        dil_w = tl.load(row + 4)
        pad_h = tl.load(row + 5)
        pad_w = tl.load(row + 6)
        out_off = (tl.load(row + 7) // Cout) * Cout
        for step in range(0, KH * KW * k_blocks):
            tap = step // k_blocks
            c0 = (step - tap * k_blocks) * BLOCK_K
            valid, base = tap_destination(
                n_img, ih, iw, tap // KW, tap % KW, m_mask, OH, OW, Ctot, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
            )
            ck = c0 + offs_k
            k_mask = ck < Cout
            a = tl.load(
                g_ptr + (base + out_off)[:, None] + ck[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0
            )
            b = tl.load(
                w_ptr + w_off + tap * Cout * Cin + ck[:, None] * Cin + offs_n[None, :],
                mask=k_mask[:, None] & n_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    out = offs_m.to(tl.int64)[:, None] * Cin + offs_n[None, :]
    tl.store(dx_ptr + out, acc.to(dx_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


# ---------------------------------------------------------------------------------------------
# dense: weight gradient
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SPATIAL + ["SPLITS", "P_PER_SPLIT"])
def _dense_wgrad_kernel(
    x_ptr,
    g_ptr,
    jobs_ptr,
    dw_ptr,
    NB,
    H,
    W,
    Cin,
    OH,
    OW,
    Cout,
    Ctot,
    stride_h,
    stride_w,
    SPLITS,
    P_PER_SPLIT,
    WS_STRIDE,
    ATOMIC: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dw[t, i, o] = sum_p x[src(p, t), i] g[p, off + o], over this program's part of the pixels.

    One job per (branch, tap): its row of ``jobs`` holds the dw offset, (kh, kw), dilation,
    padding and output-channel offset. ATOMIC: add into dw; else write part ``split`` of a
    workspace (``WS_STRIDE`` elements per part), summed later in a fixed order."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    job = pid_z // SPLITS
    split = pid_z % SPLITS
    row = jobs_ptr + job * 8
    dw_off = (tl.load(row).to(tl.int64) // Cout) * Cout  # a multiple of Cout: see the forward
    kh = tl.load(row + 1)
    kw = tl.load(row + 2)
    dil_h = tl.load(row + 3)
    dil_w = tl.load(row + 4)
    pad_h = tl.load(row + 5)
    pad_w = tl.load(row + 6)
    out_off = (tl.load(row + 7) // Cout) * Cout

    P = NB * OH * OW
    p_start = split * P_PER_SPLIT
    p_end = tl.minimum(P, p_start + P_PER_SPLIT)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < Cin
    n_mask = offs_n < Cout

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_K):
        p = p0 + offs_k
        p_mask = p < p_end
        n_img, oh, ow = split_pixel(p, OH, OW)
        valid, base = tap_source(
            n_img, oh, ow, kh, kw, p_mask, H, W, Cin, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w
        )
        a = tl.load(x_ptr + base[None, :] + offs_m[:, None], mask=m_mask[:, None] & valid[None, :], other=0.0)
        b = tl.load(
            g_ptr + p.to(tl.int64)[:, None] * Ctot + out_off + offs_n[None, :],
            mask=p_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    out = dw_off + offs_m[:, None] * Cout + offs_n[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(dw_ptr + out, acc, mask=mask)
    else:
        tl.store(dw_ptr + split.to(tl.int64) * WS_STRIDE + out, acc, mask=mask)


# ---------------------------------------------------------------------------------------------
# depthwise (groups = channels): direct
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SPATIAL + _WINDOW)
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


@triton.jit(do_not_specialize=_SPATIAL + _WINDOW)
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


@triton.jit(do_not_specialize=_SPATIAL + _WINDOW[1:] + ["TAPS", "P_PER_SPLIT"])
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


# ---------------------------------------------------------------------------------------------
# launch helpers (block shapes, autotuning and recording: climseg.kernels.runtime)
# ---------------------------------------------------------------------------------------------
_JIT = {
    "dense_fwd": _dense_fwd_kernel,
    "dense_dgrad": _dense_dgrad_kernel,
    "dense_wgrad": _dense_wgrad_kernel,
    "dw_fwd": _dw_fwd_kernel,
    "dw_dgrad": _dw_dgrad_kernel,
}


def _tuned(name, device, itemsize):
    """Kernel ``name`` wrapped in the autotuner for ``device`` and operands of ``itemsize`` bytes."""
    return runtime.tuned(name, _JIT[name], runtime.architecture(device), itemsize)


def _mkey(m):
    """Pixel counts bucketed to powers of two for the autotuning cache."""
    return 1 << max(0, int(m) - 1).bit_length()


def _precision(dtype):
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not runtime.interpreting()
    return "tf32" if tf32 else "ieee"


def _empty(shape, device, dtype):
    """Every buffer the launchers allocate (tests replace this to poison them with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def _upcast(dtype):
    return dtype == torch.bfloat16 and runtime.interpreting()


def _channel_divisor(c):
    """The largest power of two (at most 16) that divides the channel count ``c``. The JIT marks
    only multiples of 16; depthwise layers have e.g. 728 = 8 x 91 channels, and telling the
    kernel so makes its channel loads 8 wide (16 bytes in 16-bit types) instead of one by one."""
    return min(16, c & -c)


def _cdiv(a, b):
    return (a + b - 1) // b


# ---------------------------------------------------------------------------------------------
# launchers (NHWC tensors; shapes checked by climseg.ops; ``out``: an NHWC-contiguous view to fill,
# e.g. ``y.permute(0, 2, 3, 1)`` of a channels_last tensor)
# ---------------------------------------------------------------------------------------------
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
    """Dense convs (one per table row) of NHWC ``x`` into channel slices of one NHWC output.

    ``w_packed``: every branch's weight as [KH, KW, Cin, Cout], flattened one after another.
    ``table``: int32 (branches, 8) on the device. bias/scale/shift: per output channel of the
    whole output (``total_channels``); residual: NHWC like the output."""
    NB, H, W, Cin = x.shape
    OH, OW = out_hw
    if out is None:
        out = _empty((NB, OH, OW, total_channels), x.device, x.dtype)
    M = NB * OH * OW
    branches = table.shape[0]
    dummy = out
    taps = int(w_packed.numel() // (Cin * out_channels))
    _tuned("dense_fwd", x.device, x.element_size())(
        lambda meta: (_cdiv(M, meta["BLOCK_M"]), _cdiv(out_channels, meta["BLOCK_N"]), branches),
        x,
        w_packed,
        table,
        bias if bias is not None else dummy,
        scale if scale is not None else dummy,
        shift if shift is not None else dummy,
        residual if residual is not None else dummy,
        out,
        NB,
        H,
        W,
        Cin,
        OH,
        OW,
        out_channels,
        total_channels,
        stride[0],
        stride[1],
        HAS_BIAS=bias is not None,
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        HAS_RES=residual is not None,
        RELU=relu,
        PRECISION=_precision(x.dtype),
        UPCAST=_upcast(x.dtype),
        M_KEY=_mkey(M),
        TAPS_KEY=taps,
        FIXED=deterministic,
    )
    return out


def dense_dgrad(g, w_packed_t, table, in_shape, out_channels, stride, deterministic=False, out=None):
    """Input gradient of the dense convs of ``table``: ``w_packed_t`` holds each branch's
    weight as [KH, KW, Cout, Cin]; ``g`` is the NHWC gradient of the whole output."""
    NB, H, W, Cin = in_shape
    _, OH, OW, Ctot = g.shape
    dx = _empty((NB, H, W, Cin), g.device, g.dtype) if out is None else out
    M = NB * H * W
    taps = int(w_packed_t.numel() // (Cin * out_channels))
    _tuned("dense_dgrad", g.device, g.element_size())(
        lambda meta: (_cdiv(M, meta["BLOCK_M"]), _cdiv(Cin, meta["BLOCK_N"])),
        g,
        w_packed_t,
        table,
        dx,
        NB,
        H,
        W,
        Cin,
        OH,
        OW,
        out_channels,
        Ctot,
        stride[0],
        stride[1],
        table.shape[0],
        PRECISION=_precision(g.dtype),
        UPCAST=_upcast(g.dtype),
        M_KEY=_mkey(M),
        TAPS_KEY=taps,
        FIXED=deterministic,
    )
    return dx


def _splits(tiles, pixels, device, block):
    """How many parts the pixel reduction of the weight gradient is cut into: enough
    programs to fill the GPU (about four waves), each part at least a few blocks long."""
    sms = runtime.sm_count(device)
    target = 4 * sms if sms else 64  # the interpreter: split too, so that tests see the split paths
    return max(1, min(_cdiv(target, max(1, tiles)), _cdiv(pixels, 4 * block)))


def dense_wgrad(x, g, jobs, weight_numel, out_channels, stride, deterministic):
    """Weight gradients of the dense convs, float32, in the packed [KH, KW, Cin, Cout] layout.
    ``jobs``: int32 (jobs, 8), one row per (branch, tap)."""
    NB, H, W, Cin = x.shape
    _, OH, OW, Ctot = g.shape
    P = NB * OH * OW
    kernel = _tuned("dense_wgrad", x.device, x.element_size())
    block = 64 if not runtime.interpreting() else 32
    tiles = _cdiv(Cin, 64) * _cdiv(out_channels, 64) * jobs.shape[0]
    splits = _splits(tiles, P, x.device, block)
    per = _cdiv(_cdiv(P, splits), block) * block  # whole blocks per part
    splits = _cdiv(P, per)
    atomic = not deterministic and splits > 1
    if atomic or splits == 1:
        dw = torch.zeros(weight_numel, device=x.device, dtype=torch.float32)
    else:
        dw = _empty((splits, weight_numel), x.device, torch.float32)
    kernel(
        lambda meta: (_cdiv(Cin, meta["BLOCK_M"]), _cdiv(out_channels, meta["BLOCK_N"]), jobs.shape[0] * splits),
        x,
        g,
        jobs,
        dw,
        NB,
        H,
        W,
        Cin,
        OH,
        OW,
        out_channels,
        Ctot,
        stride[0],
        stride[1],
        splits,
        per,
        weight_numel,
        ATOMIC=atomic,
        PRECISION=_precision(x.dtype),
        UPCAST=_upcast(x.dtype),
        M_KEY=_mkey(P),
        TAPS_KEY=jobs.shape[0],
        FIXED=deterministic,
    )
    if dw.dim() == 2:
        dw = dw.sum(0)  # a fixed-order reduction: deterministic
    return dw


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
        out = _empty((NB, OH, OW, C), x.device, x.dtype)
    M = NB * OH * OW
    KH, KW = kernel_size
    _tuned("dw_fwd", x.device, x.element_size())(
        lambda meta: (_cdiv(M, meta["BLOCK_P"]), _cdiv(C, meta["BLOCK_C"])),
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
        M_KEY=_mkey(M),
        TAPS_KEY=KH * KW,
        FIXED=deterministic,
    )
    return out


def depthwise_dgrad(g, w_taps, in_shape, kernel_size, stride, padding, dilation, deterministic=False, out=None):
    """Input gradient (NHWC, shape ``in_shape``) of a depthwise conv from the NHWC output gradient ``g``."""
    NB, H, W, C = in_shape
    _, OH, OW, _ = g.shape
    dx = _empty((NB, H, W, C), g.device, g.dtype) if out is None else out
    M = NB * H * W
    KH, KW = kernel_size
    _tuned("dw_dgrad", g.device, g.element_size())(
        lambda meta: (_cdiv(M, meta["BLOCK_P"]), _cdiv(C, meta["BLOCK_C"])),
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
        M_KEY=_mkey(M),
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
    c_tiles = _cdiv(C, block_c)
    splits = _splits(c_tiles * KH * KW, P, x.device, block_p)
    per = _cdiv(_cdiv(P, splits), block_p) * block_p
    splits = _cdiv(P, per)
    ws = _empty((splits, KH * KW, C), x.device, torch.float32)
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
