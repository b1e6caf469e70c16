"""Scale-out: launcher environments and process groups, hierarchical allreduce,
a DDP communication hook and a Horovod-style DistributedOptimizer with
gradient lag, batch-norm statistics across ranks.

The algorithms (:mod:`.collectives`) take process groups and buffers; the
hook (:mod:`.hooks`) and the optimizer wrapper (:mod:`.optimizer`) only
schedule them; :mod:`.environment` reads what the launcher says and :mod:`.launch`
finds ranks, nodes and devices (or adopts a trainer's process group). In other
trainers: :func:`sync_batchnorm_stats` before validating or saving,
:func:`check_replicas` at the end, and for PyTorch Lightning the callbacks of
:mod:`climseg.distributed.lightning` (imported on its own: Lightning is optional).
"""

from climseg.distributed.batchnorm import sync_batchnorm_stats
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
from climseg.distributed.replicas import check_replicas

__all__ = [
    "DistributedOptimizer",
    "HierarchicalHookState",
    "Topology",
    "abort",
    "all_reduce_tensors",
    "bucket_tensors",
    "check_replicas",
    "detect_launcher",
    "flat_all_reduce",
    "hierarchical_all_reduce",
    "hierarchical_allreduce_hook",
    "init",
    "is_launched",
    "mpi_all_reduce",
    "shutdown",
    "sync_batchnorm_stats",
    "topology",
]
