"""Index arithmetic and the fused epilogue shared by the convolution kernels (``@triton.jit``
functions, inlined into the kernels that call them).

Activations are NHWC: one row of C channels per pixel, pixel ``p`` of an (N, H, W) image at row
offset ``p * C``. A convolution tap (kh, kw) links output pixel (oh, ow) to input pixel
``(oh * stride - pad + kh * dilation, ow * stride - pad + kw * dilation)``:
:func:`tap_source` follows it forward (where an output pixel reads), :func:`tap_destination`
backward (which output pixel reads an input pixel, if any). :func:`epilogue_store` finishes a
forward accumulator: ``relu((acc + bias) * scale + shift + residual)``, each term optional.
:data:`SPATIAL_ARGS` names the kernels' image-size arguments, which they do not specialize on.
"""

import triton
import triton.language as tl

#: Arguments the JIT must not specialize on (divisibility by 16, equality to 1): the image sizes
#: change from layer to layer but only enter index arithmetic, so one compiled kernel serves them
#: all (fewer compilations and autotuning runs per model). The channel counts and pointers stay
#: specialized: their divisibility makes the channel loads 128-bit and asynchronous; so do the
#: strides (stride 1 folds away). Each kernel adds its own window geometry and split counts.
SPATIAL_ARGS = ["NB", "H", "W", "OH", "OW"]


# ---------------------------------------------------------------------------------------------
# index helpers shared by every kernel (NHWC rows of C channels)
# ---------------------------------------------------------------------------------------------
@triton.jit
def split_pixel(p, H, W):
    """Image, row and column of flat pixel indices p of (N, H, W)."""
    n_img = p // (H * W)
    rem = p % (H * W)
    return n_img, rem // W, rem % W


@triton.jit
def tap_source(n_img, oh, ow, kh, kw, mask, H, W, C, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """Where output pixel (oh, ow) reads input through tap (kh, kw): (in bounds, row offset of C channels)."""
    ih = oh * stride_h - pad_h + kh * dil_h
    iw = ow * stride_w - pad_w + kw * dil_w
    valid = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return valid, ((n_img * H + ih) * W + iw).to(tl.int64) * C


@triton.jit
def tap_destination(n_img, ih, iw, kh, kw, mask, OH, OW, C, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w):
    """The output pixel that reads input pixel (ih, iw) through tap (kh, kw), if any:
    (exists, row offset of C channels). Stride > 1 leaves most taps without one."""
    th = ih + pad_h - kh * dil_h
    tw = iw + pad_w - kw * dil_w
    th_c = tl.maximum(th, 0)  # keep // and % on non-negative numbers
    tw_c = tl.maximum(tw, 0)
    oh = th_c // stride_h
    ow = tw_c // stride_w
    valid = mask & (th >= 0) & (tw >= 0) & (th_c % stride_h == 0) & (tw_c % stride_w == 0) & (oh < OH) & (ow < OW)
    return valid, ((n_img * OH + oh) * OW + ow).to(tl.int64) * C


# ---------------------------------------------------------------------------------------------
# the forward epilogue, shared by the dense and depthwise kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def epilogue_store(
    acc,
    y_ptr,
    out,
    mask,
    ch,
    ch_mask,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    res_ptr,
    HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_RES: tl.constexpr,
    RELU: tl.constexpr,
):
    """y[out] = relu((acc + bias[ch]) * scale[ch] + shift[ch] + res[out]), each term optional, in y's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        acc += tl.load(shift_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=mask)
