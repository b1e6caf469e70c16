"""Are the ranks' copies of a model the same? A check for the end of data-parallel training.

In data-parallel training every rank must end with the same weights; a gradient average that
silently covered fewer ranks than run (a miswired hook, a process group of one) lets them drift
apart while the run exits 0. :func:`check_replicas` compares every rank's parameters (and,
optionally, buffers) with rank 0's: one broadcast of the flat tensors and one scalar all-reduce.
"""

import torch
import torch.distributed as dist

from climseg.errors import TrainingError


@torch.no_grad()
def check_replicas(module, buffers=False, tolerance=0.0, group=None):
    """The largest difference between this rank's parameters of ``module`` (and its floating-point
    buffers with ``buffers=True``: batch-norm running statistics, see
    :func:`climseg.distributed.sync_batchnorm_stats`) and rank 0's, over all ranks of ``group``
    (default: the world). Raises ``TrainingError`` naming the first differing tensor when the
    difference exceeds ``tolerance``. 0.0 without ``torch.distributed`` or on one rank.
    Collective: every rank must call it with the same module structure."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return 0.0
    named = [(n, p) for n, p in module.named_parameters()]
    if buffers:
        named += [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    if not named:
        return 0.0
    mine = torch.cat([t.detach().float().reshape(-1) for _, t in named])
    first = mine.clone()
    dist.broadcast(first, dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    local = (mine - first).abs()
    worst = local.max().reshape(1)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    spread = float(worst)
    if spread > tolerance:
        where, offset = "", 0
        for name, t in named:
            part = local[offset : offset + t.numel()]
            offset += t.numel()
            if part.numel() and float(part.max()) > tolerance:
                where = f"; on this rank first in {name} (by {float(part.max()):.3g})"
                break
        raise TrainingError(
            f"the ranks' copies of the model differ from rank 0's by up to {spread:.3g}{where}: the "
            f"gradients were not averaged over every rank (see climseg.distributed.init and the hook's state)"
        )
    return spread
