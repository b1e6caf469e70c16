"""Optimizers and schedules for large-batch training: LAMB; warmup + multistep/cosine."""
from climseg.optim.lamb import LAMB
from climseg.optim.schedules import SCHEDULES, build_scheduler, lr_factor

__all__ = ["LAMB", "SCHEDULES", "build_scheduler", "lr_factor"]
