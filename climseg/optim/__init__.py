"""Optimizers and schedules for large-batch training: LARC, LAMB (and their fused
multi-tensor forms FusedLARCAdam, FusedLAMB); warmup + multistep/cosine."""

from climseg.optim.fused import FusedLAMB, FusedLARCAdam
from climseg.optim.lamb import LAMB
from climseg.optim.larc import LARC
from climseg.optim.schedules import SCHEDULES, build_scheduler, lr_factor

__all__ = ["FusedLAMB", "FusedLARCAdam", "LAMB", "LARC", "SCHEDULES", "build_scheduler", "lr_factor"]
