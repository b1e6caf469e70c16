"""LARC: layer-wise adaptive rate control (You et al. 2017), wrapping any optimizer.
The SC18 runs used it on Adam.

For each parameter tensor w with gradient g in a group with learning rate lr
and weight decay wd (both norms non-zero):

    local = trust_coefficient * ||w|| / (||g|| + wd ||w|| + trust_eps)
    factor = min(local / lr, 1)   with clip=True (LARC), else local (LARS scaling)
    g <- (g + wd w) * factor

then the wrapped optimizer steps with its own weight decay set to 0 (the
decay is already in g) and restored afterwards — the semantics of NVIDIA
apex's ``LARC``.
"""

import torch

from climseg.optim.closure import closure_loss
from climseg.optim.deprecation import UNSET, renamed


class LARC(torch.optim.Optimizer):
    """Layer-wise adaptive rate control around ``optimizer``.

    The wrapper shares the wrapped optimizer's parameter groups, so learning-rate
    schedulers may be given either of them.

    Args:
        optimizer: the optimizer to wrap (SC18: ``torch.optim.Adam``).
        trust_coefficient: default 0.002 (SC18).
        clip: clip mode, ``min(local / lr, 1)`` (default); False: LARS scaling.
        trust_eps: the epsilon of the local rate's denominator (default 1/16000, SC18); the
            same name as in :class:`climseg.optim.FusedLARCAdam`. ``eps`` is its old name
            (deprecated).
    """

    def __init__(self, optimizer, trust_coefficient=0.002, clip=True, trust_eps=1.0 / 16000, *, eps=UNSET):
        trust_eps = renamed("LARC", "eps", "trust_eps", eps, trust_eps, 1.0 / 16000)
        if trust_coefficient <= 0:
            raise ValueError(f"trust coefficient must be positive, got {trust_coefficient}")
        self.optimizer = optimizer
        self.trust_coefficient, self.clip, self.trust_eps = trust_coefficient, clip, trust_eps
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups  # the same dicts: lr changes reach both
        self.state = optimizer.state

    def __repr__(self):
        return (
            f"LARC(trust_coefficient={self.trust_coefficient}, clip={self.clip}, trust_eps={self.trust_eps}, "
            f"{self.optimizer!r})"
        )

    @property
    def eps(self):
        """Deprecated name of :attr:`trust_eps`."""
        return self.trust_eps

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        decays = []
        for group in self.optimizer.param_groups:
            wd = group.get("weight_decay", 0.0)
            decays.append(wd)
            group["weight_decay"] = 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = p.norm(), p.grad.norm()
                usable = (w_norm > 0) & (g_norm > 0)
                local = self.trust_coefficient * w_norm / (g_norm + w_norm * wd + self.trust_eps)
                if self.clip:
                    local = torch.clamp(local / group["lr"], max=1.0)
                factor = torch.where(usable, local, torch.ones_like(local))
                if wd:
                    p.grad.add_(p * torch.where(usable, torch.full_like(local, wd), torch.zeros_like(local)))
                p.grad.mul_(factor)
        try:
            self.optimizer.step()
        finally:
            for group, wd in zip(self.optimizer.param_groups, decays):
                group["weight_decay"] = wd
        return loss
