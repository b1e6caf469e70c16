"""Learning-rate schedules by optimizer step: linear warmup, then constant,
multistep decay or cosine decay to ``min_factor`` of the base rate."""

import math

import torch

from climseg.errors import ConfigError

SCHEDULES = ("cosine", "multistep", "constant")


def lr_factor(step, total_steps, schedule="cosine", warmup_steps=0, milestones=(), decay=0.1, min_factor=0.0):
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return decay ** sum(step >= m for m in milestones)
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ConfigError(f"unknown learning-rate schedule {schedule!r} (choose from {', '.join(SCHEDULES)})")


def build_scheduler(
    optimizer, total_steps, schedule="cosine", warmup_steps=0, milestones=(), decay=0.1, min_factor=0.0, last_step=0
):
    """A ``LambdaLR`` stepping once per optimizer step with :func:`lr_factor`,
    positioned at ``last_step`` steps done (to resume a run)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown learning-rate schedule {schedule!r} (choose from {', '.join(SCHEDULES)})")
    milestones = tuple(sorted(int(m) for m in milestones))

    def factor(step):
        return lr_factor(step, total_steps, schedule, warmup_steps, milestones, decay, min_factor)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if last_step:
        scheduler.last_epoch = last_step
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * factor(last_step)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return scheduler
