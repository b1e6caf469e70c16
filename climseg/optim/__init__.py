"""Optimizers and schedules for large-batch training: LARC, LAMB; warmup + multistep/cosine."""
from climseg.optim.lamb import LAMB
from climseg.optim.larc import LARC
from climseg.optim.schedules import SCHEDULES, build_scheduler, lr_factor

__all__ = ["LAMB", "LARC", "SCHEDULES", "build_scheduler", "lr_factor"]
