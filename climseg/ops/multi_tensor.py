"""Work lists for the multi-tensor kernels of csrc/cuda (optimizer steps, gradient buckets):
one launch walks many tensors in chunks of CHUNK elements, as apex's multi_tensor_apply.

* ``chunk_table(sizes)``: (K, 2) int64 rows (tensor, first element) and, per tensor, the
  index of its first chunk (T + 1 entries): chunks of one tensor are consecutive, so its
  partial sums are added in a fixed order.
* ``pointer_table(columns)``: (T, len(columns)) int64 device addresses (0 for None).

Both are small host-built tensors copied to the device; recent ones are cached, since an
optimizer or a bucket sees the same tensors step after step.
"""

import collections

import torch

CHUNK = 32768  # CS_CHUNK in csrc/cuda/common.cuh
BLOCK = 256  # CS_MT_BLOCK
_CACHE_SIZE = 8
_cache = collections.OrderedDict()


def _cached(key, build):
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = build()
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return found


def _to_device(rows, device):
    table = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table


def chunk_table(sizes, device):
    """(chunks (K, 2) int64, first (T + 1,) int64, K) for tensors of ``sizes`` elements."""
    sizes = tuple(int(s) for s in sizes)

    def build():
        rows, first = [], [0]
        for t, size in enumerate(sizes):
            rows.extend((t, start) for start in range(0, size, CHUNK))
            first.append(len(rows))
        return _to_device(rows or [(0, 0)], device), _to_device(first, device), len(rows)

    return _cached(("chunks", sizes, str(device)), build)


def pointer_table(columns, device):
    """(T, len(columns)) int64 addresses, row t = (column[t].data_ptr() ...); None gives 0."""
    rows = [tuple(0 if t is None else t.data_ptr() for t in row) for row in zip(*columns)]
    return _cached(("pointers", tuple(rows), str(device)), lambda: _to_device(rows or [(0,) * len(columns)], device))


def check_devices(op, device, *groups):
    """ValueError unless every tensor of ``groups`` (lists, or single tensors; None skipped) is on
    ``device``: a kernel handed a pointer of another device would read the wrong memory."""
    for group in groups:
        for t in [group] if isinstance(group, torch.Tensor) else group or ():
            if t is not None and t.device != device:
                raise ValueError(f"{op}: all tensors must be on {device}, one is on {t.device}")


def is_dense(t):
    """True when ``t``'s elements fill their storage span exactly once, in some dimension order
    (contiguous, channels-last, any permutation): elementwise kernels may then walk raw memory."""
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_layout(tensors, like):
    """Every tensor dense with the strides of ``like`` (so that element i of raw memory is the
    same logical element in each): what the multi-tensor optimizer kernels need."""
    return is_dense(like) and all(t.stride() == like.stride() and t.shape == like.shape for t in tensors)


def in_layout_of(t, like):
    """``t`` with the strides of ``like`` (a copy only when they differ; zeros of ``like`` for None):
    kernels that pair elements by memory position need it."""
    if t is None:
        return torch.zeros_like(like)
    if same_layout([t], like):
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def memory_view(t):
    """A 1-D view of a dense tensor's elements in memory order, whatever its strides."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def sizes_table(tensors, device):
    sizes = tuple(t.numel() for t in tensors)
    return _cached(("sizes", sizes, str(device)), lambda: _to_device(list(sizes) or [0], device))
