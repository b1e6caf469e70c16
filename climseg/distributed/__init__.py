"""Scale-out: launcher environments and process groups, hierarchical allreduce,
a DDP communication hook and a Horovod-style DistributedOptimizer with
gradient lag.

The algorithms (:mod:`.collectives`) take process groups and buffers; the
hook (:mod:`.hooks`) and the optimizer wrapper (:mod:`.optimizer`) only
schedule them; :mod:`.launch` finds ranks, nodes and devices.
"""

from climseg.distributed.collectives import (
    all_reduce_tensors,
    bucket_tensors,
    flat_all_reduce,
    hierarchical_all_reduce,
    mpi_all_reduce,
)
from climseg.distributed.hooks import HierarchicalHookState, hierarchical_allreduce_hook
from climseg.distributed.launch import Topology, abort, detect_launcher, init, is_launched, shutdown, topology
from climseg.distributed.optimizer import DistributedOptimizer

__all__ = [
    "DistributedOptimizer",
    "HierarchicalHookState",
    "Topology",
    "abort",
    "all_reduce_tensors",
    "bucket_tensors",
    "detect_launcher",
    "flat_all_reduce",
    "hierarchical_all_reduce",
    "hierarchical_allreduce_hook",
    "init",
    "is_launched",
    "mpi_all_reduce",
    "shutdown",
    "topology",
]
