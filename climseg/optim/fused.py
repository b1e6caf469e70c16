"""Fused LARC-Adam and LAMB: the optimizers of climseg.optim.LARC(torch.optim.Adam) and
climseg.optim.LAMB as one multi-tensor step per parameter group (three kernel launches for
all its tensors, climseg.ops.larc_adam_step / lamb_step) instead of a dozen small
operations per tensor. On CPU tensors, or where the CUDA kernels are missing, the same
step runs through the ops' PyTorch references.

Parameters in fp16/bf16 get an fp32 master copy in the optimizer state; the kernels update
it and write the 16-bit model weight in the same pass. State keys (``step``, ``exp_avg``,
``exp_avg_sq``) are torch.optim.Adam's, so checkpoints move between the two.
"""

import collections

import torch

from climseg.ops.multi_tensor import in_layout_of
from climseg.ops.optimizers import lamb_step, larc_adam_step
from climseg.optim.closure import closure_loss
from climseg.optim.deprecation import UNSET, renamed


class _FusedAdamFamily(torch.optim.Optimizer):
    def _groups_of_tensors(self, group):
        """(step, grad dtype, 16-bit?) -> lists of fp32 params, grads, exp_avgs, exp_avg_sqs, model params."""
        lists = collections.defaultdict(lambda: ([], [], [], [], []))
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                if p.dtype != torch.float32:
                    state["master"] = p.detach().float()
            state["step"] = int(state["step"]) + 1
            half = p.dtype != torch.float32
            grad = in_layout_of(p.grad, p)  # the kernels pair elements by memory position
            target = lists[(state["step"], grad.dtype, half)]
            target[0].append(state["master"] if half else p)
            target[1].append(grad)
            target[2].append(state["exp_avg"])
            target[3].append(state["exp_avg_sq"])
            target[4].append(p if half else None)
        return lists

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            for key, value in self.defaults.items():  # groups loaded from a torch.optim.Adam checkpoint
                group.setdefault(key, value)
            for (step, _, half), (params, grads, exp_avgs, exp_avg_sqs, models) in self._groups_of_tensors(
                group
            ).items():
                self._fused_step(group, step, params, grads, exp_avgs, exp_avg_sqs, models if half else None)
        return loss


class FusedLARCAdam(_FusedAdamFamily):
    """LARC (You et al. 2017; apex semantics, clip mode by default) around Adam, the SC18 optimizer.

    Args:
        params: parameters or parameter groups.
        lr, betas, eps, weight_decay: Adam's (weight decay is L2, added to the gradient by LARC).
        trust_coefficient: LARC's (default 0.002, as SC18).
        clip: LARC clip mode, min(local lr / lr, 1) (default); False: LARS scaling.
        trust_eps: LARC's epsilon (default 1/16000, as SC18), as in :class:`climseg.optim.LARC`;
            ``eps_larc`` is its old name (deprecated). Checkpoints written with ``eps_larc``
            in their parameter groups load.
        backend: ``"auto" | "cuda" | "torch"`` for the step (see climseg.ops.backend).
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        trust_coefficient=0.002,
        clip=True,
        trust_eps=1.0 / 16000,
        backend="auto",
        *,
        eps_larc=UNSET,
    ):
        trust_eps = renamed("FusedLARCAdam", "eps_larc", "trust_eps", eps_larc, trust_eps, 1.0 / 16000)
        if lr <= 0.0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust coefficient must be positive, got {trust_coefficient}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            clip=clip,
            trust_eps=trust_eps,
        )
        super().__init__(params, defaults)
        self.backend = backend
        self.register_load_state_dict_pre_hook(_rename_eps_larc)

    def _fused_step(self, group, step, params, grads, exp_avgs, exp_avg_sqs, models):
        larc_adam_step(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            step=step,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            trust_coefficient=group["trust_coefficient"],
            clip=group["clip"],
            eps_larc=group["trust_eps"],
            model_params=models,
            backend=self.backend,
        )


def _rename_eps_larc(optimizer, state_dict):
    """Parameter groups saved before the rename hold ``eps_larc``: call it ``trust_eps``."""
    groups = [dict(g) for g in state_dict["param_groups"]]
    for g in groups:
        if "eps_larc" in g:
            g.setdefault("trust_eps", g.pop("eps_larc"))
    return {**state_dict, "param_groups": groups}


class FusedLAMB(_FusedAdamFamily):
    """LAMB (You et al. 2020), as climseg.optim.LAMB, in one multi-tensor step per group.

    Args: as :class:`climseg.optim.LAMB` (lr 1e-3, betas (0.9, 0.999), eps 1e-6,
    weight_decay 0.01, max_trust_ratio 10), and ``backend``.
    """

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_trust_ratio=10.0, backend="auto"
    ):
        if lr <= 0.0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_trust_ratio=max_trust_ratio)
        super().__init__(params, defaults)
        self.backend = backend

    def _fused_step(self, group, step, params, grads, exp_avgs, exp_avg_sqs, models):
        lamb_step(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            step=step,
            lr=group["lr"],
            betas=group["betas"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            max_trust_ratio=group["max_trust_ratio"],
            model_params=models,
            backend=self.backend,
        )
