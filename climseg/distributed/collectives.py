"""Allreduce algorithms: flat, and hierarchical (Kurth et al. 2018; Horovod's
HOROVOD_HIERARCHICAL_ALLREDUCE).

Hierarchical allreduce of a tensor of S elements over N nodes of L ranks:

1. intra-node reduce-scatter: each rank ends with the node's sum of one
   shard of S/L elements (the tensor is padded to a multiple of L);
2. cross-node allreduce of that shard among the N ranks that hold the same
   shard (one per node), over torch.distributed (NCCL/gloo) or MPI;
3. intra-node allgather of the reduced shards.

Each rank sends (L-1)/L S elements in steps 1 and 3 over the fast intra-node
links and 2 (N-1)/N S/L in step 2 over the network: the network carries 1/L of
what a flat ring would put on it. For CPU tensors of ranks on one host, steps 1
and 3 go through shared memory (:mod:`.shm`) instead of messages.

Precision: tensors of 16-bit types, and any tensor sent with
``compression="bf16"|"fp16"``, are summed in float32: the reduce-scatter steps
are all-to-all exchanges of 16-bit chunks followed by a float32 sum on the
receiving rank, and the allgather sends the result. float32 and float64
tensors without compression are summed in their own type (the transport's
reduce-scatter and allreduce; the shared-memory path too), so a float64 sum is
a float64 sum. Integer tensors are summed exactly in their own type (``"sum"``
only: an average of integers, or compressing them, is refused); bool and
complex tensors are refused.
``prescale`` divides by the world size before sending (fp16 safety).

These functions are the algorithms only: they take process groups (or a
:class:`Topology`) and buffers, and are scheduled by the DDP hook and the
DistributedOptimizer.
"""

import os

import torch
import torch.distributed as dist

from climseg.errors import ConfigError
from climseg.ops.buckets import flatten_gradients, unflatten_gradients

COMPRESSIONS = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRANSPORTS = ("torch", "mpi")
TRANSPORT_ENV = "CLIMSEG_CROSS_TRANSPORT"
MPI_CHUNK_ENV = "CLIMSEG_MPI_CHUNK_BYTES"
MPI_CUDA_AWARE_ENV = "CLIMSEG_MPI_CUDA_AWARE"


def _check_tensor(tensor, op, compression):
    """Refuse, with one line, what cannot be summed exactly: bool, complex, integer averages
    or integers squeezed into 16-bit floats."""
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ConfigError(f"allreduce: {tensor.dtype} tensors cannot be summed; convert them to a numeric type first")
    if not tensor.is_floating_point():
        if op == "avg":
            raise ConfigError(
                f"allreduce: the average of a {tensor.dtype} tensor is not an integer; use op='sum' "
                f"or a floating-point tensor"
            )
        if COMPRESSIONS.get(compression) is not None:
            raise ConfigError(
                f"allreduce: {tensor.dtype} tensors are summed exactly; compression {compression!r} would round them"
            )


def _wire_dtype(tensor, compression):
    """The 16-bit type chunks travel as (then summed in float32), or None for the
    transport's own reduction: the compression asked for, else a 16-bit tensor's own type."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression must be one of none, bf16, fp16, not {compression!r}")
    if COMPRESSIONS[compression] is not None:
        return COMPRESSIONS[compression]
    return tensor.dtype if tensor.dtype in (torch.float16, torch.bfloat16) else None


def _group_size(group):
    return dist.get_world_size(group)


def _reduce_scatter_fp32(flat, wire, group):
    """Sum ``flat`` (padded to a multiple of the group size) over ``group``; return
    this rank's shard in float32. Chunks travel as ``wire``."""
    n = _group_size(group)
    send = flat.to(wire)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.view(n, -1).float().sum(dim=0)


def _all_gather(out_flat, shard, group):
    """Fill ``out_flat`` with every rank's ``shard`` in rank order."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out_flat, shard.contiguous(), group=group)


def flat_all_reduce(tensor, op="sum", compression=None, group=None, prescale=False):
    """Allreduce ``tensor`` in place over ``group`` (default: the world)."""
    if op not in ("sum", "avg"):
        raise ConfigError(f"op must be 'sum' or 'avg', not {op!r}")
    _check_tensor(tensor, op, compression)
    if not tensor.is_floating_point() and tensor.element_size() < 4:
        # gloo sums no 8- or 16-bit integers: sum in int64; the cast back wraps as a sum in the type would
        wide = tensor.to(torch.int64)
        flat_all_reduce(wide, op, None, group, prescale)
        return tensor.copy_(wide)
    n = _group_size(group)
    wire = _wire_dtype(tensor, compression)
    scale = 1.0 / n if op == "avg" else 1.0
    flat = tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    if wire is not None:
        work = _padded(flat.float() * scale if prescale else flat.float(), n)
        shard = _reduce_scatter_fp32(work, wire, group)
        if not prescale and scale != 1.0:
            shard.mul_(scale)
        gathered = torch.empty(work.numel(), dtype=wire, device=tensor.device)
        _all_gather(gathered, shard.to(wire), group)
        flat.copy_(gathered[: flat.numel()])
    else:
        if prescale and op == "avg":
            flat.mul_(scale)
        dist.all_reduce(flat, group=group)
        if not prescale and op == "avg":
            flat.mul_(scale)
    if not tensor.is_contiguous():
        tensor.copy_(flat.view_as(tensor))
    return tensor


def _padded(flat, multiple):
    """``flat`` followed by zeros up to a multiple of ``multiple`` (``flat`` itself if none are needed)."""
    pad = (-flat.numel()) % multiple
    return torch.cat([flat, flat.new_zeros(pad)]) if pad else flat


def hierarchical_all_reduce(tensor, op="sum", compression=None, topology=None, transport=None, prescale=False):
    """Allreduce ``tensor`` in place: intra-node reduce-scatter -> cross-node
    allreduce of each shard -> intra-node allgather.

    Args:
        tensor: any shape; floating dtypes (16-bit ones summed in float32, float32
            and float64 in their own type) or integers (``"sum"``, exact); reduced in
            place and returned.
        op: ``"sum"`` or ``"avg"`` (divide by the world size).
        compression: ``None``, ``"bf16"`` or ``"fp16"`` on the wire; sums are float32.
        topology: groups from :func:`climseg.distributed.init` (default: the current ones).
        transport: cross-node step over ``"torch"`` (NCCL/gloo) or ``"mpi"`` (mpi4py);
            default ``CLIMSEG_CROSS_TRANSPORT`` or ``"torch"``.
        prescale: divide by the world size before sending instead of after.

    Falls back to :func:`flat_all_reduce` when the job is one node, one rank
    per node, or nodes of unequal size. A topology whose size differs from the running
    job's (``torch.distributed``) is refused with a ``ConfigError`` naming both.
    """
    from climseg.distributed.launch import HOW_TO_INIT, check_world
    from climseg.distributed.launch import topology as current

    topo = check_world(topology or current(), "hierarchical_all_reduce")
    if topo is None:
        raise ConfigError(f"hierarchical_all_reduce: no climseg topology; {HOW_TO_INIT}")
    if op not in ("sum", "avg"):
        raise ConfigError(f"op must be 'sum' or 'avg', not {op!r}")
    _check_tensor(tensor, op, compression)
    if topo.world_size == 1:
        return tensor
    transport = (transport or os.environ.get(TRANSPORT_ENV) or "torch").lower()
    if transport not in TRANSPORTS:
        raise ConfigError(f"cross-node transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if not topo.hierarchical:
        return flat_all_reduce(tensor, op, compression, topo.comm_world, prescale)
    wire = _wire_dtype(tensor, compression)
    scale = 1.0 / topo.world_size if op == "avg" else 1.0
    flat = tensor.reshape(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
    if tensor.device.type == "cpu" and topo.intra_shm:
        _hierarchical_shm(flat, scale, prescale, wire, topo, transport)
        if not tensor.is_contiguous():
            tensor.copy_(flat.view_as(tensor))
        return tensor
    L = topo.local_size
    fp32 = wire is not None
    work = flat.float() if fp32 else flat
    work = _padded(work * scale if prescale else work, L)
    # 1. intra-node reduce-scatter
    if fp32:
        shard = _reduce_scatter_fp32(work, wire, topo.intra)
    else:
        shard = torch.empty(work.numel() // L, dtype=work.dtype, device=work.device)
        _reduce_scatter(shard, work, topo.intra)
    # 2. cross-node allreduce of this rank's shard
    if transport == "mpi":
        if topo.mpi_cross is None:
            raise ConfigError("cross-node transport 'mpi' needs a job started by an MPI launcher with mpi4py installed")
        mpi_all_reduce(shard, topo.mpi_cross, wire)
    elif fp32:
        summed = _reduce_scatter_fp32(_padded(shard, topo.num_nodes), wire, topo.cross)
        full = torch.empty(summed.numel() * topo.num_nodes, dtype=wire, device=shard.device)
        _all_gather(full, summed.to(wire), topo.cross)
        shard = full[: shard.numel()].float()
    else:
        dist.all_reduce(shard, group=topo.cross)
    if not prescale and scale != 1.0:
        shard.mul_(scale)
    # 3. intra-node allgather
    out_dtype = wire if fp32 else tensor.dtype
    gathered = torch.empty(work.numel(), dtype=out_dtype, device=tensor.device)
    _all_gather(gathered, shard.to(out_dtype), topo.intra)
    flat.copy_(gathered[: flat.numel()])
    if not tensor.is_contiguous():
        tensor.copy_(flat.view_as(tensor))
    return tensor


def _hierarchical_shm(flat, scale, prescale, wire, topo, transport):
    """CPU tensors of ranks on one host: intra-node steps through shared memory, the
    cross-node step over the network (``wire`` compression there). Sums are float32
    for 16-bit inputs (and with compression), else in the tensor's own type."""
    from climseg.distributed.shm import NodeSharedBuffer

    buffer = getattr(topo, "_shared_buffer", None)
    if buffer is None:
        buffer = topo._shared_buffer = NodeSharedBuffer(topo)
    exact = wire is None and flat.dtype not in (torch.float16, torch.bfloat16)
    work = flat if exact else flat.float()
    if prescale and scale != 1.0:
        work = work * scale

    def cross(shard):
        if transport == "mpi":
            mpi_all_reduce(shard, topo.mpi_cross, wire)
        elif wire is not None:
            summed = _reduce_scatter_fp32(_padded(shard, topo.num_nodes), wire, topo.cross)
            full = torch.empty(summed.numel() * topo.num_nodes, dtype=wire)
            _all_gather(full, summed.to(wire), topo.cross)
            shard.copy_(full[: shard.numel()])
        else:
            dist.all_reduce(shard, group=topo.cross)
        if not prescale and scale != 1.0:
            shard.mul_(scale)

    buffer.all_reduce(work, cross, flat)


def _reduce_scatter(out, inp, group):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, inp, group=group)


# ----------------------------------------------------------------------------- MPI transport


def _mpi_cuda_aware():
    """``CLIMSEG_MPI_CUDA_AWARE=1|0``; unset: ask the MPI library (MPIX_Query_cuda_support)."""
    value = os.environ.get(MPI_CUDA_AWARE_ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    try:
        import ctypes

        fn = ctypes.CDLL(None).MPIX_Query_cuda_support
        return bool(fn())
    except (OSError, AttributeError):
        return False


def mpi_all_reduce(shard, comm, wire=None):
    """Sum a float32 ``shard`` in place over the mpi4py communicator ``comm``.

    Host tensors go straight to MPI. CUDA tensors go straight too when the MPI is
    CUDA-aware; otherwise they are staged through pinned host buffers in chunks
    of ``CLIMSEG_MPI_CHUNK_BYTES`` (default 16 MiB), the copy of the next chunk
    overlapping the reduction of the current one. With ``wire`` set, chunks
    travel as 16-bit values and are summed in float32 on arrival.
    """
    from mpi4py import MPI

    if comm.Get_size() == 1:
        return shard
    chunk = max(1, int(os.environ.get(MPI_CHUNK_ENV, 16 << 20)) // 4)
    if shard.device.type == "cpu" or _mpi_cuda_aware():
        _mpi_reduce_host(shard, comm, wire, MPI)
        return shard
    host = [torch.empty(min(chunk, shard.numel()), dtype=torch.float32, pin_memory=True) for _ in range(2)]
    copy_stream = torch.cuda.Stream(device=shard.device)
    starts = list(range(0, shard.numel(), chunk))
    events = [None, None]

    def stage(i):
        buf = host[i % 2]
        part = shard[starts[i] : starts[i] + chunk]
        with torch.cuda.stream(copy_stream):
            buf[: part.numel()].copy_(part, non_blocking=True)
            events[i % 2] = torch.cuda.Event()
            events[i % 2].record(copy_stream)

    stage(0)
    for i, start in enumerate(starts):
        if i + 1 < len(starts):
            stage(i + 1)
        events[i % 2].synchronize()
        part = shard[start : start + chunk]
        buf = host[i % 2][: part.numel()]
        _mpi_reduce_host(buf, comm, wire, MPI)
        part.copy_(buf, non_blocking=False)
    return shard


def _mpi_reduce_host(buf, comm, wire, MPI):
    array = buf.numpy() if buf.device.type == "cpu" else buf
    if wire is None:
        comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        return
    # 16-bit on the wire, float32 sums: reduce-scatter by all-to-all, then allgather
    n = comm.Get_size()
    pad = (-buf.numel()) % n
    work = torch.cat([buf, buf.new_zeros(pad)]) if pad else buf
    send = work.to(wire).view(torch.int16).contiguous()
    recv = torch.empty_like(send)
    comm.Alltoall(send.numpy(), recv.numpy())
    shard = recv.view(wire).view(n, -1).float().sum(dim=0).to(wire).view(torch.int16).contiguous()
    gathered = torch.empty(work.numel(), dtype=torch.int16)
    comm.Allgather(shard.numpy(), gathered.numpy())
    buf.copy_(gathered.view(wire)[: buf.numel()].float())


# ----------------------------------------------------------------------------- bucketing


def bucket_tensors(tensors, bucket_bytes):
    """Split ``tensors`` into consecutive groups of at most ``bucket_bytes`` (at least
    one tensor each), never mixing dtypes or devices."""
    buckets, current, size, key = [], [], 0, None
    for t in tensors:
        k = (t.dtype, t.device)
        nbytes = t.numel() * t.element_size()
        if current and (k != key or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
        key = k
    if current:
        buckets.append(current)
    return buckets


def all_reduce_tensors(
    tensors,
    op="sum",
    compression=None,
    bucket_bytes=25 << 20,
    hierarchical=True,
    topology=None,
    transport=None,
    prescale=False,
):
    """Allreduce a list of tensors in place, fused into buckets of ``bucket_bytes``
    (tensor fusion): one flat buffer per bucket, one collective per buffer."""
    from climseg.distributed.launch import check_world
    from climseg.distributed.launch import topology as current

    topo = check_world(topology or current(), "all_reduce_tensors")
    for bucket in bucket_tensors(list(tensors), bucket_bytes):
        flat = flatten_gradients(bucket)
        if hierarchical:
            hierarchical_all_reduce(flat, op, compression, topo, transport, prescale)
        else:
            flat_all_reduce(flat, op, compression, topo.comm_world if topo else None, prescale)
        unflatten_gradients(flat, bucket)
    return tensors
