"""Class-weighted cross-entropy with the IoU counts, in one pass (CUDA kernel in
csrc/cuda/cross_entropy.cu; reference: ``F.cross_entropy`` + argmax + comparisons).

    loss   = F.cross_entropy(logits, labels, weight=class_weights, reduction=reduction,
                             ignore_index=ignore_index)
    counts = (TP, FP, FN) per class of argmax(logits, 1) against labels, pixels whose label is
             ignore_index left out: int64 (num_classes, 3), or (N, num_classes, 3) per sample

Logits (N, C, *spatial) in fp32/fp16/bf16, NCHW or channels-last; labels (N, *spatial) in
int64/int32/uint8. The kernel accumulates in fp32 and adds its partial sums in a fixed
order (the loss is bitwise reproducible), writes no per-pixel intermediate, and its
backward recomputes the softmax from the logits. ``return_grad=True`` writes d loss /
d logits in the forward pass as well, for a caller that wants loss and gradient at once
(``logits.backward(grad)``): one pass over the logits instead of two.
"""

import math
import typing

import torch
import torch.nn.functional as F
from torch import Tensor

from climseg.errors import ConfigError
from climseg.ops import backend as _backend
from climseg.ops import cuda as _cuda
from climseg.ops.counts import prediction_counts
from climseg.ops.multi_tensor import is_dense

OP = "weighted_cross_entropy_with_counts"
REDUCTIONS = ("mean", "sum", "none")
MAX_CLASSES = 64  # CE_MAX_CLASSES of the kernel: its per-block counters live in shared memory
BLOCK = 256
MAX_GRID_Y = 65535  # samples beyond it: blocks take samples y, y + 65535, ...

_backend.register(OP, "cuda", _cuda.probe)


def counts_reference(logits, labels, ignore_index=-100):
    """(N, C, 3) int64 TP, FP, FN of argmax(logits, 1) against labels, ignored pixels left out."""
    return prediction_counts(logits.argmax(1), labels, logits.shape[1], ignore_index)


def weighted_cross_entropy_with_counts_reference(
    logits, labels, class_weights=None, reduction="mean", *, ignore_index=-100, per_sample=False, loss_dtype=None
):
    """The specification: ``F.cross_entropy`` in fp32 and the counts of :func:`counts_reference`."""
    weight = None if class_weights is None else class_weights.to(device=logits.device, dtype=torch.float32)
    loss = F.cross_entropy(logits.float(), labels.long(), weight=weight, reduction=reduction, ignore_index=ignore_index)
    counts = counts_reference(logits.detach(), labels, ignore_index)
    return loss.to(loss_dtype or logits.dtype), counts if per_sample else counts.sum(0)


def weighted_cross_entropy_with_counts(
    logits,
    labels,
    class_weights=None,
    reduction="mean",
    *,
    ignore_index=-100,
    per_sample=False,
    return_grad=False,
    loss_dtype=None,
    check_labels=True,
    backend="auto",
):
    """Loss and IoU counts in one pass; ``(loss, counts)``, or ``(loss, counts, grad)`` with ``return_grad``.

    Args:
        logits: (N, C, *spatial) float tensor; differentiable.
        labels: (N, *spatial) integer class indices.
        class_weights: (C,) weights, or None for 1.
        reduction: ``"mean"`` (sum(w[y] loss) / sum(w[y])), ``"sum"`` or ``"none"``, as F.cross_entropy.
        ignore_index: label of pixels that count nowhere.
        per_sample: counts per sample, (N, C, 3), instead of (C, 3).
        return_grad: also return d loss / d logits, computed in the same pass (no autograd graph).
        loss_dtype: dtype of the loss (default: the logits', as F.cross_entropy).
        check_labels: raise ValueError for labels outside [0, C) other than ignore_index (a
            device sync on CUDA; skipped inside torch.compile; the reference raises in
            F.cross_entropy either way). Unchecked, such pixels count nowhere.
        backend: ``"auto" | "cuda" | "torch"`` (see :mod:`climseg.ops.backend`).
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"{OP}: reduction must be one of {', '.join(REDUCTIONS)}, not {reduction!r}")
    if logits.dim() < 2 or labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"{OP}: logits {tuple(logits.shape)} need labels of shape (N, *spatial) = "
            f"{tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(labels.shape)}"
        )
    if labels.device != logits.device:
        raise ValueError(f"{OP}: logits are on {logits.device}, labels on {labels.device}")
    loss_dtype = loss_dtype or logits.dtype
    if _choose(backend, logits, labels) == "torch":
        if return_grad:
            with torch.enable_grad():
                leaf = logits.detach().requires_grad_(True)
                loss, counts = weighted_cross_entropy_with_counts_reference(
                    leaf,
                    labels,
                    class_weights,
                    reduction,
                    ignore_index=ignore_index,
                    per_sample=per_sample,
                    loss_dtype=loss_dtype,
                )
                (grad,) = torch.autograd.grad(loss, leaf, torch.ones_like(loss))
            return loss.detach(), counts, grad
        return weighted_cross_entropy_with_counts_reference(
            logits,
            labels,
            class_weights,
            reduction,
            ignore_index=ignore_index,
            per_sample=per_sample,
            loss_dtype=loss_dtype,
        )
    weight = _weights(class_weights, logits)
    labels = _labels(labels)
    rows = logits.dim() == 2 and not per_sample and reduction != "none"
    if rows:  # (N, C): one "sample" of N pixels (a transposed view, no copy), not N one-pixel samples
        logits, labels = logits.t().unsqueeze(0), labels.unsqueeze(0)
    if return_grad:
        loss, counts, _, bad, grad = _wce_with_grad(
            logits.detach(), labels, weight, reduction, ignore_index, loss_dtype
        )
    else:
        loss, counts, _, bad = _wce(logits, labels, weight, reduction, ignore_index, loss_dtype)
    if check_labels and not torch.compiler.is_compiling() and int(bad) > 0:
        raise ValueError(
            f"{OP}: {int(bad)} labels lie outside [0, {logits.shape[1]}) and are not ignore_index ({ignore_index})"
        )
    counts = counts if per_sample else counts.sum(0)
    if return_grad and rows:
        grad = grad.squeeze(0).t()
    return (loss, counts, grad) if return_grad else (loss, counts)


def _choose(backend, logits, labels):
    def why_not():
        if logits.dtype not in _cuda.FLOAT_NAMES:
            return f"logits of dtype {logits.dtype} (fp32, fp16 and bf16 only)"
        if logits.shape[1] > MAX_CLASSES:
            return f"{logits.shape[1]} classes (at most {MAX_CLASSES})"
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            return f"labels of dtype {labels.dtype}"
        return "empty input" if logits.numel() == 0 else ""

    return _backend.choose(OP, backend, logits, why_not)


def _weights(class_weights, logits):
    c = logits.shape[1]
    if class_weights is None:
        return torch.ones(c, device=logits.device, dtype=torch.float32)
    weight = class_weights.to(device=logits.device, dtype=torch.float32).contiguous()
    if weight.shape != (c,):
        raise ValueError(f"{OP}: {tuple(weight.shape)} class weights for {c} classes")
    return weight


def _labels(labels):
    if labels.dtype not in _cuda.LABEL_NAMES:
        labels = labels.long()
    return labels.contiguous()


def _layout(logits):
    """(tensor, (sn, sp, sc)): the strides of sample, pixel and class. Any dense layout whose
    spatial dimensions collapse into one pixel stride (NCHW, channels-last, ...) is used as it
    is; others are copied to contiguous first."""
    n, c = logits.shape[:2]
    spatial = [(size, stride) for size, stride in zip(logits.shape[2:], logits.stride()[2:]) if size != 1]
    collapses = all(spatial[k][1] == spatial[k + 1][1] * spatial[k + 1][0] for k in range(len(spatial) - 1))
    if is_dense(logits) and collapses:
        return logits, (logits.stride(0), spatial[-1][1] if spatial else 0, logits.stride(1))
    logits = logits.contiguous()
    return logits, (c * math.prod(logits.shape[2:]), 1, math.prod(logits.shape[2:]))


def _run_forward(
    logits,
    labels,
    weight,
    reduction,
    ignore_index,
    loss_dtype,
    *,
    want_grad=False,
    gnum=None,
    gnum_per_pixel=False,
    gden=None,
    want_loss=True,
):
    """Launch the kernels; returns (loss or None, counts (N, C, 3), weight sum, bad labels, grad or None)."""
    device = logits.device
    launch = _cuda.launcher(device).launch
    n, c = logits.shape[:2]
    spatial = logits.shape[2:]
    pixels = math.prod(spatial)
    x, (sn, sp, sc) = _layout(logits)
    tname, lname = _cuda.FLOAT_NAMES[x.dtype], _cuda.LABEL_NAMES[labels.dtype]
    gx = _cuda.grid_blocks(pixels, BLOCK, max(1, _cuda.resident_blocks(device) // n))
    gy = min(n, MAX_GRID_Y)
    f32 = dict(device=device, dtype=torch.float32)
    partials = torch.empty(2 * gy * gx, **f32)
    counts = torch.zeros(n * c * 3, device=device, dtype=torch.int64)
    bad = torch.zeros((), device=device, dtype=torch.int64)
    grad = torch.empty_like(x) if want_grad else None
    if want_grad and reduction == "mean" and gden is None:
        # the gradient is w[y] / sum(w[y]): its divisor first, from the labels alone
        gden = torch.empty(1, **f32)
        launch(
            f"wce_weight_sum_{lname}",
            (gx, gy),
            BLOCK,
            (labels.data_ptr(), weight.data_ptr(), n, c, pixels, ignore_index, partials.data_ptr()),
            device,
        )
        launch("wce_finalize_f32", (1,), BLOCK, (partials.data_ptr(), gy * gx, 0, 0, gden.data_ptr()), device)
    loss_none = torch.empty((n,) + tuple(spatial), **f32) if want_loss and reduction == "none" else None
    launch(
        f"wce_forward_{tname}_{lname}",
        (gx, gy),
        BLOCK,
        (
            x.data_ptr(),
            labels.data_ptr(),
            weight.data_ptr(),
            n,
            c,
            pixels,
            sn,
            sp,
            sc,
            ignore_index,
            partials.data_ptr() if want_loss else 0,
            counts.data_ptr() if want_loss else 0,
            bad.data_ptr(),
            _cuda.pointer(loss_none),
            _cuda.pointer(grad),
            _cuda.pointer(gnum),
            int(gnum_per_pixel),
            _cuda.pointer(gden),
        ),
        device,
    )
    weight_sum = torch.zeros((), **f32)
    loss = None
    if want_loss:
        total = None
        if reduction != "none":
            total = torch.empty(
                (), device=device, dtype=loss_dtype if loss_dtype in _cuda.FLOAT_NAMES else torch.float32
            )
        launch(
            f"wce_finalize_{_cuda.FLOAT_NAMES[total.dtype if total is not None else torch.float32]}",
            (1,),
            BLOCK,
            (partials.data_ptr(), gy * gx, int(reduction == "mean"), _cuda.pointer(total), weight_sum.data_ptr()),
            device,
        )
        loss = (total if total is not None else loss_none).to(loss_dtype)
    return loss, counts.view(n, c, 3), weight_sum, bad, grad


@torch.library.custom_op("climseg::weighted_cross_entropy_with_counts", mutates_args=())
def _wce(
    logits: Tensor, labels: Tensor, weight: Tensor, reduction: str, ignore_index: int, loss_dtype: torch.dtype
) -> typing.Tuple[Tensor, Tensor, Tensor, Tensor]:
    loss, counts, weight_sum, bad, _ = _run_forward(logits, labels, weight, reduction, ignore_index, loss_dtype)
    return loss, counts, weight_sum, bad


def _loss_shape(logits, reduction):
    return (logits.shape[0],) + tuple(logits.shape[2:]) if reduction == "none" else ()


@_wce.register_fake
def _wce_fake(logits, labels, weight, reduction, ignore_index, loss_dtype):
    n, c = logits.shape[:2]
    return (
        logits.new_empty(_loss_shape(logits, reduction), dtype=loss_dtype),
        logits.new_empty((n, c, 3), dtype=torch.int64),
        logits.new_empty((), dtype=torch.float32),
        logits.new_empty((), dtype=torch.int64),
    )


@torch.library.custom_op("climseg::weighted_cross_entropy_with_counts_backward", mutates_args=())
def _wce_backward(
    grad_loss: Tensor,
    logits: Tensor,
    labels: Tensor,
    weight: Tensor,
    weight_sum: Tensor,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    gnum = grad_loss.to(torch.float32).contiguous()
    gden = weight_sum.reshape(1) if reduction == "mean" else None
    _, _, _, _, grad = _run_forward(
        logits,
        labels,
        weight,
        reduction,
        ignore_index,
        None,
        want_grad=True,
        gnum=gnum,
        gnum_per_pixel=reduction == "none",
        gden=gden,
        want_loss=False,
    )
    return grad


@_wce_backward.register_fake
def _wce_backward_fake(grad_loss, logits, labels, weight, weight_sum, reduction, ignore_index):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, labels, weight, reduction, ignore_index, _ = inputs
    ctx.save_for_backward(logits, labels, weight, output[2])
    ctx.reduction, ctx.ignore_index = reduction, ignore_index
    ctx.mark_non_differentiable(output[1], output[2], output[3])


def _backward(ctx, grad_loss, grad_counts, grad_weight_sum, grad_bad):
    logits, labels, weight, weight_sum = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    grad = _wce_backward(grad_loss, logits, labels, weight, weight_sum, ctx.reduction, ctx.ignore_index)
    return grad, None, None, None, None, None


_wce.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("climseg::weighted_cross_entropy_with_grad", mutates_args=())
def _wce_with_grad(
    logits: Tensor, labels: Tensor, weight: Tensor, reduction: str, ignore_index: int, loss_dtype: torch.dtype
) -> typing.Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _run_forward(logits, labels, weight, reduction, ignore_index, loss_dtype, want_grad=True)


@_wce_with_grad.register_fake
def _wce_with_grad_fake(logits, labels, weight, reduction, ignore_index, loss_dtype):
    return _wce_fake(logits, labels, weight, reduction, ignore_index, loss_dtype) + (torch.empty_like(logits),)
