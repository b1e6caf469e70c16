"""Epoch order: a permutation drawn from ``(seed, epoch)`` alone, optionally
sharded over ranks and started part-way (to resume mid-epoch exactly); a loader's
ranks (given, or ``torch.distributed``'s) and the ``sampler`` through which trainers
set its epoch."""

import torch

from climseg.errors import ConfigError


def epoch_order(num_samples, seed, epoch, shuffle=True):
    """Sample indices of one epoch: a seeded permutation, or ``0..n-1`` without shuffling."""
    if not shuffle:
        return torch.arange(num_samples)
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(num_samples, generator=g)


class EpochSampler(torch.utils.data.Sampler):
    """Indices for rank ``rank`` of ``world_size`` in epoch ``epoch``, from position ``start`` on.

    Every rank gets ``num_samples // world_size`` indices (the remainder is
    left out of that epoch, a different part each epoch when shuffling).
    """

    def __init__(self, num_samples, seed=0, epoch=0, shuffle=True, start=0, rank=0, world_size=1):
        self.num_samples, self.seed, self.epoch, self.shuffle = num_samples, seed, epoch, shuffle
        self.start, self.rank, self.world_size = start, rank, world_size

    def indices(self):
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)
        per_rank = self.num_samples // self.world_size
        mine = order[self.rank : per_rank * self.world_size : self.world_size]
        return mine[self.start :].tolist()

    def __iter__(self):
        return iter(self.indices())

    def __len__(self):
        return max(0, self.num_samples // self.world_size - self.start)


class EpochControl:
    """A loader's :attr:`FastLoader.sampler`: ``set_epoch(epoch)`` starts epoch ``epoch`` from its
    first batch; iterating yields this rank's sample indices of the current epoch (into
    ``loader.files``), ``len()`` counts them."""

    def __init__(self, loader):
        self.loader = loader

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader.epoch_indices())

    def __len__(self):
        return len(self.loader.epoch_indices())


def resolve_ranks(rank=None, world_size=None):
    """``(rank, world_size)`` of a loader: the given values; where both are None,
    ``torch.distributed``'s when it runs, else ``(0, 1)``; where one is given, the other from
    ``torch.distributed`` when it runs that many processes (else a ``ConfigError``: give both)."""
    dist = torch.distributed
    running = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None:
        return (dist.get_rank(), dist.get_world_size()) if running else (0, 1)
    if rank is None:
        if running and world_size == dist.get_world_size():
            rank = dist.get_rank()
        elif world_size == 1:
            rank = 0
        else:
            raise ConfigError(f"world_size={world_size} was given without rank: give both")
    if world_size is None:
        if running:
            world_size = dist.get_world_size()
        else:
            raise ConfigError(f"rank={rank} was given without world_size: give both")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
    return int(rank), int(world_size)
