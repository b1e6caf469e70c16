"""Intra-node reduce-scatter and allgather through shared memory, for CPU tensors.

gloo builds every collective on point-to-point TCP messages, even between
processes of one machine, and its reduce-scatter and allgather are much slower
than its allreduce. Ranks on one node can instead share memory: each writes
its buffer into a shared array, sums its own shard of everybody's buffers,
and reads the whole result back — the intra-node steps of the hierarchical
allreduce without any message.

Layout of the shared file, viewed in the dtype of the call (float32 for 32- and
16-bit floating inputs, float64 for float64, the integer type itself for
integers, so every sum is exact in the input's own precision): ``L`` input
rows of ``S`` elements, then two output arrays of ``S`` used in turn by
successive calls (so a fast rank's next call never overwrites a result a slow
rank is still reading). Sizes are counted in bytes, so any dtype fits. The file
lives in ``/dev/shm`` (or the temporary folder), is created by local rank 0,
mapped by all, and unlinked at once, so nothing is left behind even if the job
is killed. It grows (a new file) when a larger message arrives.

One call: write own row -> barrier -> sum own shard over the L rows ->
``cross(shard)`` (the cross-node allreduce) -> write the shard to the output
-> barrier -> copy the output out. Two intra-node barriers per call.
"""

import os
import tempfile

import torch
import torch.distributed as dist


class NodeSharedBuffer:
    """Shared scratch memory of one node's ranks (all of ``topology.intra``)."""

    def __init__(self, topology):
        self.topo = topology
        self.capacity = 0  # bytes per row (a multiple of 8)
        self.memory = None  # uint8, viewed as each call's dtype
        self.calls = 0

    def _ensure(self, nbytes):
        nbytes += (-nbytes) % 8
        if nbytes <= self.capacity:
            return
        capacity = max(nbytes, 2 * self.capacity)
        L = self.topo.local_size
        total = (L + 2) * capacity
        path = [None]
        if self.topo.local_rank == 0:
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            fd, name = tempfile.mkstemp(prefix="climseg-allreduce-", dir=folder)
            os.ftruncate(fd, total)
            os.close(fd)
            path = [name]
        dist.broadcast_object_list(path, src=self.topo.node_ranks[0], group=self.topo.intra)
        self.memory = torch.from_file(path[0], shared=True, size=total, dtype=torch.uint8)
        dist.barrier(group=self.topo.intra)
        if self.topo.local_rank == 0:
            os.unlink(path[0])  # every rank has it mapped; the memory lives until the last unmaps it
        self.capacity = capacity

    def all_reduce(self, flat, cross, dest):
        """Sum the vector ``flat`` over the node in ``flat``'s own dtype, ``cross``-allreduce
        each shard (a function changing a shard of that dtype in place), write the result
        to ``dest`` (a vector of ``flat``'s length; may be ``flat`` itself). Every rank of
        the node must pass the same length and dtype."""
        L, lr = self.topo.local_size, self.topo.local_rank
        n = flat.numel()
        padded = n + (-n) % L
        item = flat.element_size()
        self._ensure(padded * item)
        cap = self.capacity // item  # elements of this dtype per row
        memory = self.memory.view(flat.dtype)
        rows = memory[: L * cap].view(L, cap)
        out = memory[(L + self.calls % 2) * cap : (L + self.calls % 2) * cap + padded]
        self.calls += 1
        rows[lr, :n].copy_(flat)
        if padded > n:
            rows[lr, n:padded].zero_()
        dist.barrier(group=self.topo.intra)
        size = padded // L
        shard = rows[:, lr * size : (lr + 1) * size].sum(dim=0)
        cross(shard)
        out[lr * size : (lr + 1) * size].copy_(shard)
        dist.barrier(group=self.topo.intra)
        dest.copy_(out[:n])
        return dest
