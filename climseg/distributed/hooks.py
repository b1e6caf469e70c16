"""DDP communication hook running the hierarchical allreduce.

``hierarchical_allreduce_hook(state, bucket) -> torch.futures.Future[Tensor]``
has the standard signature: pass it to ``DistributedDataParallel.register_comm_hook``.
It averages the bucket over all ranks, like DDP's default hook. ``state`` is
``None`` (the topology made by ``climseg.distributed.init()``), a
:class:`Topology`, or a :class:`HierarchicalHookState` with compression and
transport settings. Without any topology (``init()`` not called, or called before
a trainer started its process group), or with one whose size differs from the
running job's, the hook raises a ``ConfigError`` saying so and what to call under
torchrun, PyTorch Lightning and Accelerate, at once, on the calling thread, in the
first ``backward()``: never a message mangled by DDP's future, never a silent
average over fewer ranks.

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
from climseg.errors import ConfigError


@dataclasses.dataclass
class HierarchicalHookState:
    topology: object = None  # None: climseg.distributed.topology()
    compression: str = None  # None, "bf16" or "fp16"
    transport: str = None  # "torch" or "mpi" for the cross-node step
    prescale: bool = False
    hierarchical: bool = True  # False: a flat allreduce over the world (with the same compression)


_EXECUTORS = {}
_LOCK = threading.Lock()


def comm_executor(key="default"):
    """One background thread per key: collectives issued from it keep their order."""
    with _LOCK:
        if key not in _EXECUTORS:
            _EXECUTORS[key] = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"climseg-comm-{key}")
        return _EXECUTORS[key]


def resolve_topology(topology, who, initialise=True):
    """The :class:`Topology` to reduce over: ``topology``, else the one ``init()`` made, checked
    against the running job (:func:`~climseg.distributed.launch.check_world`: a topology whose size
    differs from ``torch.distributed``'s is refused). Without either: with ``initialise``, when
    ``torch.distributed`` already runs several processes (torchrun, a trainer's process group),
    ``init()`` is called now and adopts that default group; when the launcher describes several
    processes but none is running, or ``initialise`` is False, a ``ConfigError`` -- never a silent
    world of one. A single process gets None."""
    from climseg.distributed.launch import HOW_TO_INIT, check_world, detect_launcher, init, running_world_size
    from climseg.distributed.launch import topology as current

    topo = topology or current()
    running = running_world_size()
    if topo is not None and (topology is not None or topo.world_size == running):
        return check_world(topo, who)
    launched = detect_launcher().world_size
    if launched <= 1 and running <= 1:
        return check_world(topo, who)
    if running > 1 and initialise:
        return init()
    if running > 1:
        made = "" if topo is None else f" (its topology of {topo.world_size} rank(s) was made before)"
        raise ConfigError(
            f"{who}: torch.distributed runs {running} processes but climseg.distributed.init() has not "
            f"adopted its process group{made}; {HOW_TO_INIT}"
        )
    raise ConfigError(
        f"{who}: this job has {launched} processes but torch.distributed is not initialised; {HOW_TO_INIT}"
    )


def hierarchical_allreduce_hook(state, bucket):
    """DDP comm hook: average ``bucket.buffer()`` over all ranks, hierarchically."""
    if state is None or not isinstance(state, HierarchicalHookState):
        state = HierarchicalHookState(topology=state)
    if state.topology is None:
        # inside backward no groups can be made (that is a collective of its own): refuse clearly
        state.topology = resolve_topology(None, "hierarchical_allreduce_hook", initialise=False)
        if state.topology is None:
            from climseg.distributed.launch import HOW_TO_INIT

            raise ConfigError(f"hierarchical_allreduce_hook: no process group; {HOW_TO_INIT}")
    else:
        from climseg.distributed.launch import check_world

        check_world(state.topology, "hierarchical_allreduce_hook")
    topo = state.topology
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
