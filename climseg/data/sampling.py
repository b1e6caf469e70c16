"""Epoch order: a permutation drawn from ``(seed, epoch)`` alone, optionally
sharded over ranks and started part-way (to resume mid-epoch exactly)."""

import torch


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
