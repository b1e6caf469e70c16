"""Triton kernels of the dense (groups = 1) atrous (dilated) convolution: forward, input
gradient, weight gradient, as implicit GEMMs, and their launchers.

Layout: activations NHWC (``torch.channels_last``), one row of C channels per pixel. The
convolution is computed tap by tap (no im2col buffer):

* forward   y[p, o]   = sum_{t, i} x[src(p, t), i] * w[t, i, o]     M = pixels out, N = Cout, K = taps x Cin
* dgrad     dx[q, i]  = sum_{t, o} g[dst(q, t), o] * w[t, o, i]     M = pixels in,  N = Cin,  K = taps x Cout
* wgrad     dw[t, i, o] = sum_p x[src(p, t), i] * g[p, o]           M = Cin, N = Cout, K = pixels (split)

with the epilogue of the forward fused: ``relu((acc + bias) * scale + shift + residual)``.
Several convolutions that read the same input and write channel slices of one
output (the branches of ASPP) run in ONE launch: a small int32 table (:data:`TABLE_COLS`
columns) gives each branch its weight offset, kernel size, dilation, padding and output-channel
offset, and the grid's third axis picks the branch (forward, wgrad) or the
kernel loops over the branches (dgrad, whose output they share).

The weight gradient reduces over pixels in ``splits`` parts. Non-deterministic
mode adds the parts with atomics; deterministic mode writes each part to its
own slice of a workspace and sums the slices in a fixed order (no atomics), so
the same inputs give bitwise identical results. Forward and dgrad never use
atomics.

Accumulation is float32. fp16/bf16 operands go to the tensor cores as they are;
fp32 operands use TF32 when ``allow_tf32`` is passed (the launcher follows
``torch.backends.cudnn.allow_tf32``, as ``F.conv2d`` does), else full fp32.

Data flow: :mod:`climseg.ops.conv_branches` packs the weights and the table and calls a
launcher here; the launcher computes the grid and the arguments and hands them to the
autotuner of :mod:`climseg.kernels.runtime` (which also holds the candidate block shapes, the
interpreter's compatibility, the launch recording and the launch arithmetic the launchers
share); the index arithmetic and the fused epilogue are in :mod:`climseg.kernels.nhwc`. The
depthwise convolutions are :mod:`climseg.kernels.atrous_depthwise`.

Every kernel and autotuning candidate is compiled for sm_80 and sm_90 and its SASS checked
(spills, tensor cores, asynchronous copies) by ``climseg bench static`` (:mod:`climseg.verify`),
which runs these launchers on meta tensors inside :func:`climseg.kernels.runtime.recording`.
Supported Triton: 3.6 to 3.9.
"""

import torch
import triton
import triton.language as tl

from climseg.kernels import runtime
from climseg.kernels.nhwc import SPATIAL_ARGS, epilogue_store, split_pixel, tap_destination, tap_source

TABLE_COLS = 8  # w_offset, KH, KW, dil_h, dil_w, pad_h, pad_w, out_channel_offset

if runtime.interpreting():  # before any of these kernels runs in Triton's interpreter
    runtime.install_interpreter_compatibility()


# ---------------------------------------------------------------------------------------------
# dense: forward
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=SPATIAL_ARGS)
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
@triton.jit(do_not_specialize=SPATIAL_ARGS + ["NUM_BRANCHES"])
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
@triton.jit(do_not_specialize=SPATIAL_ARGS + ["SPLITS", "P_PER_SPLIT"])
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


_JIT = {"dense_fwd": _dense_fwd_kernel, "dense_dgrad": _dense_dgrad_kernel, "dense_wgrad": _dense_wgrad_kernel}


def _tuned(name, device, itemsize):
    """Kernel ``name`` wrapped in the autotuner for ``device`` and operands of ``itemsize`` bytes."""
    return runtime.tuned(name, _JIT[name], runtime.architecture(device), itemsize)


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
        out = runtime.empty((NB, OH, OW, total_channels), x.device, x.dtype)
    M = NB * OH * OW
    branches = table.shape[0]
    dummy = out
    taps = int(w_packed.numel() // (Cin * out_channels))
    _tuned("dense_fwd", x.device, x.element_size())(
        lambda meta: (runtime.cdiv(M, meta["BLOCK_M"]), runtime.cdiv(out_channels, meta["BLOCK_N"]), branches),
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
        PRECISION=runtime.dot_precision(x.dtype),
        UPCAST=runtime.upcast_operands(x.dtype),
        M_KEY=runtime.pixel_key(M),
        TAPS_KEY=taps,
        FIXED=deterministic,
    )
    return out


def dense_dgrad(g, w_packed_t, table, in_shape, out_channels, stride, deterministic=False, out=None):
    """Input gradient of the dense convs of ``table``: ``w_packed_t`` holds each branch's
    weight as [KH, KW, Cout, Cin]; ``g`` is the NHWC gradient of the whole output."""
    NB, H, W, Cin = in_shape
    _, OH, OW, Ctot = g.shape
    dx = runtime.empty((NB, H, W, Cin), g.device, g.dtype) if out is None else out
    M = NB * H * W
    taps = int(w_packed_t.numel() // (Cin * out_channels))
    _tuned("dense_dgrad", g.device, g.element_size())(
        lambda meta: (runtime.cdiv(M, meta["BLOCK_M"]), runtime.cdiv(Cin, meta["BLOCK_N"])),
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
        PRECISION=runtime.dot_precision(g.dtype),
        UPCAST=runtime.upcast_operands(g.dtype),
        M_KEY=runtime.pixel_key(M),
        TAPS_KEY=taps,
        FIXED=deterministic,
    )
    return dx


def dense_wgrad(x, g, jobs, weight_numel, out_channels, stride, deterministic):
    """Weight gradients of the dense convs, float32, in the packed [KH, KW, Cin, Cout] layout.
    ``jobs``: int32 (jobs, 8), one row per (branch, tap)."""
    NB, H, W, Cin = x.shape
    _, OH, OW, Ctot = g.shape
    P = NB * OH * OW
    kernel = _tuned("dense_wgrad", x.device, x.element_size())
    block = 64 if not runtime.interpreting() else 32
    tiles = runtime.cdiv(Cin, 64) * runtime.cdiv(out_channels, 64) * jobs.shape[0]
    splits = runtime.reduction_splits(tiles, P, x.device, block)
    per = runtime.cdiv(runtime.cdiv(P, splits), block) * block  # whole blocks per part
    splits = runtime.cdiv(P, per)
    atomic = not deterministic and splits > 1
    if atomic or splits == 1:
        dw = torch.zeros(weight_numel, device=x.device, dtype=torch.float32)
    else:
        dw = runtime.empty((splits, weight_numel), x.device, torch.float32)
    kernel(
        lambda meta: (
            runtime.cdiv(Cin, meta["BLOCK_M"]),
            runtime.cdiv(out_channels, meta["BLOCK_N"]),
            jobs.shape[0] * splits,
        ),
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
        PRECISION=runtime.dot_precision(x.dtype),
        UPCAST=runtime.upcast_operands(x.dtype),
        M_KEY=runtime.pixel_key(P),
        TAPS_KEY=jobs.shape[0],
        FIXED=deterministic,
    )
    if dw.dim() == 2:
        dw = dw.sum(0)  # a fixed-order reduction: deterministic
    return dw
