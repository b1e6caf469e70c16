"""The data-parallel wiring of a training run: which processes there are, how they agree, and
how gradients travel between them.

The trainer asks :class:`Ranks` for the collective decisions every rank must take together (the
number of steps per epoch, whether to end an epoch or stop) and :func:`parallelize` for the
model to call and the optimizer wrapper: DDP with climseg's hierarchical allreduce hook, or the
Horovod-style :class:`~climseg.distributed.optimizer.DistributedOptimizer` when gradients lag a
step. With one process everything here is the identity.
"""

import torch

from climseg.distributed.hooks import HierarchicalHookState, hierarchical_allreduce_hook
from climseg.distributed.optimizer import DistributedOptimizer
from climseg.errors import ConfigError


class Ranks:
    """This run's processes (``topology`` from :func:`climseg.distributed.launch.init`, or None
    for one process) and the small collectives the loop needs."""

    def __init__(self, topology, device):
        self.topo = topology
        self.device = device
        self.rank = topology.rank if topology else 0
        self.world = topology.world_size if topology else 1
        self.is_main = self.rank == 0

    @property
    def group(self):
        """The world process group, or None with one process (sums are then local)."""
        return self.topo.world if self.world > 1 else None

    def _flags(self, values, op):
        import torch.distributed as dist

        t = torch.tensor(values, device=self.device if self.topo.backend == "nccl" else "cpu")
        dist.all_reduce(t, op=op, group=self.topo.world)
        return [int(v) for v in t.tolist()]

    def min(self, value):
        """The smallest ``value`` over all ranks (every rank must take as many steps)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        return self._flags([value], dist.ReduceOp.MIN)[0]

    def any(self, *flags):
        """Each flag OR-ed over all ranks: a rank out of data ends the epoch for all, and a
        stop asked of any rank (a signal may reach only one) stops all at the same step."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        import torch.distributed as dist

        return tuple(bool(v) for v in self._flags([int(f) for f in flags], dist.ReduceOp.MAX))

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier(group=self.topo.world)

    def broadcast_buffers(self, module):
        """Give every rank rank 0's buffers (batch-norm statistics) of ``module``."""
        if self.world > 1:
            import torch.distributed as dist

            for buf in module.buffers():
                dist.broadcast(buf, src=0, group=self.topo.world)


def uses_hierarchical(allreduce, topology):
    """Whether gradients take the hierarchical allreduce (``--allreduce auto|hierarchical|flat``)."""
    if topology is None or allreduce == "flat":
        return False
    if allreduce == "hierarchical" and not topology.uniform:
        raise ConfigError("option allreduce: hierarchical needs the same number of ranks on every node")
    return topology.uniform and (allreduce == "hierarchical" or topology.hierarchical)


def parallelize(net, optimizer, cfg, ranks):
    """``(model to call, DistributedOptimizer or None)``: DDP with the hierarchical hook across
    processes, or the DistributedOptimizer when gradients lag a step (``cfg.gradient_lag``)."""
    compression = None if cfg.compression == "none" else cfg.compression
    hierarchical = uses_hierarchical(cfg.allreduce, ranks.topo)
    if cfg.gradient_lag:
        dopt = DistributedOptimizer(
            optimizer,
            net.named_parameters(),
            hierarchical=hierarchical,
            compression=compression,
            gradient_lag=1,
            bucket_bytes=int(cfg.bucket_mb * 2**20),
            topology=ranks.topo,
            max_grad_norm=cfg.clip_grad_norm,
        )
        return net, dopt
    if ranks.world == 1:
        return net, None
    from torch.nn.parallel import DistributedDataParallel

    device = ranks.device
    # --bn-stats-sync epoch: each rank keeps its own running statistics through the epoch (averaged at
    # its end, as the MLPerf reference); none: DDP gives every rank rank 0's at each forward
    ddp = DistributedDataParallel(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=cfg.bucket_mb,
        process_group=ranks.topo.world,
        broadcast_buffers=cfg.bn_stats_sync == "none",
    )
    if hierarchical or compression:
        state = HierarchicalHookState(topology=ranks.topo, compression=compression, hierarchical=hierarchical)
        ddp.register_comm_hook(state, hierarchical_allreduce_hook)
    return ddp, None
