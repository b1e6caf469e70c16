"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"): Adam moments
with a per-tensor trust ratio.

For each parameter tensor w with gradient g, at step t:

    m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
    u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * w
    r = ||w|| / ||u||   (1 where either norm is 0; clamped to max_trust_ratio)
    w = w - lr * r * u
"""

import torch

from climseg.optim.closure import closure_loss


class LAMB(torch.optim.Optimizer):
    """Layer-wise adaptive large-batch optimizer.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: Adam coefficients (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-6).
        weight_decay: decoupled decay added to the update before the trust
            ratio (default 0.01).
        max_trust_ratio: upper clamp of ||w|| / ||u|| (default 10).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_trust_ratio=10.0):
        if lr <= 0.0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_trust_ratio=max_trust_ratio)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                m_hat = m / (1.0 - beta1 ** state["step"])
                v_hat = v / (1.0 - beta2 ** state["step"])
                weight = p.float()
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(weight, alpha=group["weight_decay"])
                w_norm, u_norm = weight.norm(), update.norm()
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                trust = trust.clamp(max=group["max_trust_ratio"])
                p.copy_(weight - group["lr"] * trust * update)
        return loss
