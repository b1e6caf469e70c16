"""Gradient buckets for the allreduce (CUDA kernels in csrc/cuda/buckets.cu; references below).

    flatten_gradients(tensors, dtype, scale)  -> bucket = cat(t.flatten() * scale).to(dtype)
    unflatten_gradients(bucket, tensors, scale) : t <- (segment * scale).to(t.dtype), in place;
                                                  returns a bool tensor: was any value Inf/NaN

One pass each way over all the tensors. The scale before the sum (1 / world size) keeps
fp16 sums finite; the flag after it is the overflow check a loss scaler needs, for free.
"""

import torch

from climseg.ops import backend as _backend
from climseg.ops import cuda as _cuda
from climseg.ops import multi_tensor as _mt

_backend.register("flatten_gradients", "cuda", _cuda.probe)
_backend.register("unflatten_gradients", "cuda", _cuda.probe)


def flatten_gradients_reference(tensors, dtype=None, scale=1.0, out=None):
    dtype = dtype or tensors[0].dtype
    if scale == 1.0:  # no arithmetic: the cast alone (the same rounding as through float32)
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(dtype)
    else:
        flat = torch.cat([t.reshape(-1).float() * scale for t in tensors]).to(dtype)
    if out is not None:
        out.copy_(flat)
        return out
    return flat


def unflatten_gradients_reference(bucket, tensors, scale=1.0):
    found = torch.zeros((), dtype=torch.bool, device=bucket.device)
    offset = 0
    for t in tensors:
        n = t.numel()
        segment = bucket[offset : offset + n]
        t.copy_((segment if scale == 1.0 else (segment.float() * scale).to(t.dtype)).view_as(t))
        found |= ~torch.isfinite(t).all()
        offset += n
    return found


def _choose(op, backend, tensors, extra=()):
    if not tensors:
        return "torch"

    def why_not():
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) > 1:
            return f"tensors of several dtypes ({sorted(map(str, dtypes))})"
        if any(d not in _cuda.FLOAT_NAMES for d in dtypes | set(extra)):
            return f"dtypes {sorted(map(str, dtypes | set(extra)))} (fp32, fp16 and bf16 only)"
        return "non-contiguous tensors" if any(not t.is_contiguous() for t in tensors) else ""

    return _backend.choose(op, backend, tensors[0], why_not)


def _tables(tensors):
    device = tensors[0].device
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += t.numel()
    table = _mt.pointer_table([tensors, [_Offset(o) for o in offsets]], device)
    sizes = _mt.sizes_table(tensors, device)
    chunks, _, count = _mt.chunk_table([t.numel() for t in tensors], device)
    return device, table, sizes, chunks, count, total


class _Offset:
    """An integer in the pointer table's shape (the table stores data_ptr() of each entry)."""

    def __init__(self, value):
        self.value = value

    def data_ptr(self):
        return self.value


def flatten_gradients(tensors, dtype=None, scale=1.0, out=None, backend="auto"):
    """One 1-D bucket of all ``tensors`` (one dtype), times ``scale``, cast to ``dtype``."""
    tensors = list(tensors)
    dtype = dtype or (tensors[0].dtype if tensors else torch.float32)
    total = sum(t.numel() for t in tensors)
    if out is not None and (out.numel() != total or out.dtype != dtype or not out.is_contiguous()):
        raise ValueError(f"flatten_gradients: out must be a contiguous {dtype} tensor of {total} elements")
    if tensors:
        _mt.check_devices("flatten_gradients", tensors[0].device, tensors, out)
    if _choose("flatten_gradients", backend, tensors, (dtype,)) == "torch":
        return flatten_gradients_reference(tensors, dtype, scale, out) if tensors else torch.empty(0, dtype=dtype)
    device, table, sizes, chunks, count, total = _tables(tensors)
    bucket = out if out is not None else torch.empty(total, device=device, dtype=dtype)
    _cuda.launcher(device).launch(
        f"bucket_flatten_{_cuda.FLOAT_NAMES[tensors[0].dtype]}_{_cuda.FLOAT_NAMES[dtype]}",
        (count,),
        _mt.BLOCK,
        (table.data_ptr(), sizes.data_ptr(), chunks.data_ptr(), bucket.data_ptr(), float(scale)),
        device,
    )
    return bucket


def unflatten_gradients(bucket, tensors, scale=1.0, backend="auto"):
    """Copy ``bucket * scale`` back into ``tensors`` (cast to their dtype), in place; returns a
    0-d bool tensor on the bucket's device: True if any value written is Inf or NaN."""
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    if bucket.dim() != 1 or bucket.numel() != total:
        raise ValueError(f"unflatten_gradients: bucket of shape {tuple(bucket.shape)} for tensors of {total} elements")
    _mt.check_devices("unflatten_gradients", bucket.device, tensors)
    if _choose("unflatten_gradients", backend, tensors, (bucket.dtype,)) == "torch" or not bucket.is_contiguous():
        return unflatten_gradients_reference(bucket, tensors, scale)
    device, table, sizes, chunks, count, _ = _tables(tensors)
    flag = torch.zeros((), device=device, dtype=torch.int32)
    _cuda.launcher(device).launch(
        f"bucket_unflatten_{_cuda.FLOAT_NAMES[bucket.dtype]}_{_cuda.FLOAT_NAMES[tensors[0].dtype]}",
        (count,),
        _mt.BLOCK,
        (bucket.data_ptr(), table.data_ptr(), sizes.data_ptr(), chunks.data_ptr(), float(scale), flag.data_ptr()),
        device,
    )
    return flag.bool()
