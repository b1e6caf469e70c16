"""Batch norm with statistics shared by a group of ranks, and the running statistics averaged
over all ranks.

With two samples per GPU, each rank's batch statistics are noisy; the MLPerf HPC DeepCAM
reference therefore normalises over *batch-norm groups* of G consecutive ranks
(``--batchnorm_group_size``). Per channel, every rank of a group computes the same

    mean = S1 / n,  var = S2 / n - mean**2,  with  S1 = sum x,  S2 = sum x**2,  n = count

summed (in float32) over the group's samples, normalises its own samples with them, and moves
its running statistics by ``momentum`` towards ``(mean, var * n / (n - 1))``: exactly what one
process doing plain batch norm over the group's concatenated samples computes. The backward pass
all-reduces the two sums ``sum dy`` and ``sum dy * (x - mean)`` within the group, so that input
gradients are those of the group's joint loss; weight and bias gradients stay local (the data
-parallel gradient average sums them, as it does for every other parameter).

``torch.nn.SyncBatchNorm`` cannot be used here: in torch 2.13 its forward refuses CPU tensors
("expected input tensor to be on GPU"), so the CPU/gloo runs this package supports everywhere
would lose it. This module's autograd function is device-neutral: elementwise ops and one
``all_reduce`` of ``2C + 1`` floats forward and ``2C`` backward per layer, and it keeps the
input's memory format (channels_last) and dtype (bf16/fp16 under autocast: statistics and
arithmetic in float32, output in the input's dtype).

Use: :func:`convert_batchnorm` (``model = convert_batchnorm(model, group_size=G)``) swaps every
``nn.BatchNorm2d`` for :class:`GroupBatchNorm2d`, a subclass, so code that looks for batch
norms (the fused ASPP among them) still finds them.

Running statistics across ranks (each rank's batch norms move their running means and variances
by their own batches): :func:`average_running_stats` makes them the mean over a process group
(every epoch's end in the trainer, ``--bn-stats-sync epoch``); :func:`gather_running_stats`
collects every rank's as one flat float32 tensor per rank (what a mid-epoch checkpoint keeps, when
they still differ), and :func:`load_running_stats` puts one rank's back (its resume). The flat
layout is :func:`flatten_running_stats`: means and variances of every tracking batch norm, in
module order (:func:`running_stat_buffers`). For other trainers, :func:`sync_batchnorm_stats`
does the same average over ``torch.distributed``'s world (or a group) and says how far apart
the ranks were; :class:`climseg.distributed.lightning.SyncBatchNormStats` calls it for Lightning.
"""

import torch
import torch.distributed as dist
import torch.nn as nn

from climseg.errors import ConfigError


def _all_reduce_sum(tensor, group):
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


class _GroupBatchNorm(torch.autograd.Function):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the group's mean and variance."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        c = x.shape[1]
        xf = x.float()
        dims = [d for d in range(x.dim()) if d != 1]
        local = torch.empty(2 * c + 1, dtype=torch.float32, device=x.device)
        local[:c] = xf.sum(dims)
        local[c : 2 * c] = (xf * xf).sum(dims)
        local[2 * c] = x.numel() // c
        stats = _all_reduce_sum(local, group)
        n = stats[2 * c]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min_(0)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp_min(1))
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = invstd if weight is None else invstd * weight.float()
        shift = -mean * scale if bias is None else bias.float() - mean * scale
        y = xf * scale.view(shape) + shift.view(shape)
        ctx.save_for_backward(x, weight, mean, invstd, n)
        ctx.group = group
        ctx.weight_dtype = weight.dtype if weight is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd, n = ctx.saved_tensors
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        dims = [d for d in range(x.dim()) if d != 1]
        dyf = dy.float()
        xmu = x.float() - mean.view(shape)
        sums = torch.empty(2 * c, dtype=torch.float32, device=x.device)
        sums[:c] = dyf.sum(dims)
        sums[c:] = (dyf * xmu).sum(dims)
        local_dy, local_dy_xmu = sums[:c].clone(), sums[c:].clone()
        sums = _all_reduce_sum(sums, ctx.group)
        mean_dy, mean_dy_xmu = sums[:c] / n, sums[c:] / n
        w = invstd if weight is None else invstd * weight.float()
        dx = None
        if ctx.needs_input_grad[0]:
            dx = (dyf - mean_dy.view(shape) - xmu * (invstd * invstd * mean_dy_xmu).view(shape)) * w.view(shape)
            dx = dx.to(x.dtype)
        dweight = (local_dy_xmu * invstd).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        dbias = local_dy.to(ctx.bias_dtype) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None, None, None


def group_batch_norm(x, running_mean, running_var, weight, bias, momentum, eps, group):
    """Training-mode batch norm of ``x`` (N, C, ...) with statistics over ``group`` (a
    ``torch.distributed`` process group; None: this process alone, plain batch norm).
    ``running_mean``/``running_var`` (or None) are updated in place."""
    if group is None:
        return torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    return _GroupBatchNorm.apply(x, weight, bias, running_mean, running_var, eps, momentum, group)


class GroupBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are shared by ``process_group`` (None:
    plain batch norm). In eval mode it uses its running statistics, as BatchNorm2d does."""

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        process_group=None,
        group_size=1,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group
        self.group_size = group_size

    def group_normalize(self, x, running_mean, running_var, weight, bias):
        """Training-mode normalisation of ``x`` with this layer's group and settings but the given
        tensors (the fused ASPP passes several layers' concatenated parameters)."""
        momentum = self.momentum if self.momentum is not None else 0.1
        return group_batch_norm(x, running_mean, running_var, weight, bias, momentum, self.eps, self.process_group)

    def forward(self, x):
        if not self.training or self.process_group is None:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        running = self.track_running_stats
        return group_batch_norm(
            x,
            self.running_mean if running else None,
            self.running_var if running else None,
            self.weight,
            self.bias,
            momentum if momentum is not None else 0.0,
            self.eps,
            self.process_group,
        )

    def extra_repr(self):
        return super().extra_repr() + f", group_size={self.group_size}"

    def __getstate__(self):
        # process groups neither pickle nor deep-copy: a copy (FLOP counting, torch.save of the
        # module) normalises on its own until convert_batchnorm is applied to it again
        state = dict(self.__dict__)
        state["process_group"] = None
        return state


def batchnorm_groups(group_size, topology=None):
    """This rank's batch-norm process group for groups of ``group_size`` consecutive ranks
    (None when the group is this rank alone). Collective: every rank must call it."""
    from climseg.distributed import launch

    # init() returns the current topology, or adopts the running group when that one is stale
    topo = launch.check_world(topology, "batch-norm groups") if topology is not None else launch.init()
    return launch.batchnorm_group(topo, group_size)


def convert_batchnorm(model, group_size, topology=None):
    """``model`` with every ``nn.BatchNorm2d`` replaced by a :class:`GroupBatchNorm2d` sharing
    statistics within groups of ``group_size`` consecutive ranks (1: plain per-rank batch norm,
    ranks per node: within each node, world size: over all ranks). Parameters and buffers are
    kept (same tensors' values, device and dtype). Collective: every rank must call it.
    Returns the model (modified in place; a bare BatchNorm2d is returned replaced)."""
    if group_size < 1:
        raise ConfigError(f"option batchnorm-group-size: must be at least 1, got {group_size}")
    group = batchnorm_groups(group_size, topology) if group_size > 1 else None
    return _replace(model, group, group_size)


def _replace(module, group, group_size):
    if isinstance(module, nn.BatchNorm2d):
        new = GroupBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group=group,
            group_size=group_size,
        )
        new.load_state_dict(module.state_dict())
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            new.to(device=ref.device)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        replaced = _replace(child, group, group_size)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def running_stat_buffers(model):
    """The running means and variances of ``model``'s batch norms, in module order."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            out += [m.running_mean, m.running_var]
    return out


def flatten_running_stats(model):
    """``model``'s running statistics (:func:`running_stat_buffers`) as one flat float32 tensor on
    their device; None when it has no batch norm tracking them."""
    buffers = running_stat_buffers(model)
    if not buffers:
        return None
    return torch.cat([b.float().reshape(-1) for b in buffers])


@torch.no_grad()
def load_running_stats(model, flat):
    """Copy ``flat`` (from :func:`flatten_running_stats` or one rank's entry of
    :func:`gather_running_stats`, of a model of the same architecture) into ``model``'s running
    means and variances, in place, each in its own dtype and device."""
    offset = 0
    for b in running_stat_buffers(model):
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def gather_running_stats(model, group=None, world_size=1):
    """Every rank's running statistics of ``model``: a list by rank of flat float32 CPU tensors
    (:func:`flatten_running_stats`) over ``group`` (``world_size`` ranks; with 1, this rank's alone
    and no collective). None when the model has no batch norm tracking them. Collective: every rank
    of ``group`` must call it."""
    flat = flatten_running_stats(model)
    if flat is None:
        return None
    if world_size == 1:
        return [flat.cpu()]
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat, group=group)
    return [g.cpu() for g in gathered]


@torch.no_grad()
def average_running_stats(model, group, world_size):
    """Average the running means and variances of ``model``'s batch norms over ``group``
    (``world_size`` ranks) in place; one flat float32 all-reduce. Collective."""
    if world_size == 1:
        return
    flat = flatten_running_stats(model)
    if flat is None:
        return
    _all_reduce_sum(flat, group)
    flat /= world_size
    load_running_stats(model, flat)


@torch.no_grad()
def sync_batchnorm_stats(model, group=None):
    """Make the running means and variances of ``model``'s batch norms (any module: a plain
    network, a DDP wrapper, a LightningModule) the mean over the ranks of ``group`` (default: the
    world of ``torch.distributed``), in place, as ``climseg train --bn-stats-sync epoch`` does at
    every epoch's end. Call it on every rank before validating, checkpointing or exporting: DDP
    copies rank 0's buffers at each forward, but every rank's last forward moves them by its own
    batch, so without it the ranks end with different statistics.

    Returns the largest difference, over ranks and statistics, between a rank's value and the
    mean before the sync (0.0 on one process, or for a model without running statistics).
    Collective: two all-reduces (one flat float32 sum, one scalar maximum)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    world_size = dist.get_world_size(group)
    flat = flatten_running_stats(model)
    if world_size == 1 or flat is None:
        return 0.0
    mean = _all_reduce_sum(flat.clone(), group) / world_size
    spread = (flat - mean).abs().max().reshape(1)
    dist.all_reduce(spread, op=dist.ReduceOp.MAX, group=group)
    load_running_stats(model, mean)
    return float(spread)
