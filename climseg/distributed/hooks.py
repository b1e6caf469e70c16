"""DDP communication hook running the hierarchical allreduce.

``hierarchical_allreduce_hook(state, bucket) -> torch.futures.Future[Tensor]``
has the standard signature: pass it to ``DistributedDataParallel.register_comm_hook``.
It averages the bucket over all ranks, like DDP's default hook. ``state`` is
``None`` (the topology made by ``climseg.distributed.init()``), a
:class:`Topology`, or a :class:`HierarchicalHookState` with compression and
transport settings.

On CPU (gloo) the reduction runs on a background thread, so it overlaps the
rest of the backward pass; the returned future completes when it is done. The
thread uses process groups of its own (intra-node, cross-node, ``comm_world``),
so it never interleaves with collectives the main thread issues on the world.
On CUDA the collectives are queued on the device streams and the future is
returned completed, as NCCL work is asynchronous to the host already.
"""
import concurrent.futures
import dataclasses
import threading

import torch

from climseg.distributed.collectives import flat_all_reduce, hierarchical_all_reduce


@dataclasses.dataclass
class HierarchicalHookState:
    topology: object = None      # None: climseg.distributed.topology()
    compression: str = None      # None, "bf16" or "fp16"
    transport: str = None        # "torch" or "mpi" for the cross-node step
    prescale: bool = False
    hierarchical: bool = True    # False: a flat allreduce over the world (with the same compression)


_EXECUTORS = {}
_LOCK = threading.Lock()


def comm_executor(key="default"):
    """One background thread per key: collectives issued from it keep their order."""
    with _LOCK:
        if key not in _EXECUTORS:
            _EXECUTORS[key] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"climseg-comm-{key}")
        return _EXECUTORS[key]


def hierarchical_allreduce_hook(state, bucket):
    """DDP comm hook: average ``bucket.buffer()`` over all ranks, hierarchically."""
    from climseg.distributed.launch import topology

    if state is None or not isinstance(state, HierarchicalHookState):
        state = HierarchicalHookState(topology=state)
    topo = state.topology or topology()
    buffer = bucket.buffer()

    def reduce():
        if not state.hierarchical:
            return flat_all_reduce(buffer, "avg", state.compression, topo.comm_world, state.prescale)
        return hierarchical_all_reduce(buffer, "avg", state.compression, topo, state.transport, state.prescale)

    future = torch.futures.Future()
    if buffer.device.type == "cuda":
        future.set_result(reduce())
        return future

    def run():
        try:
            future.set_result(reduce())
        except BaseException as exc:  # hand the failure to DDP, which re-raises it in backward
            future.set_exception(exc)

    comm_executor().submit(run)
    return future
