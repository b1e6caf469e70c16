"""The one piece of bookkeeping every optimizer's ``step(closure)`` shares."""

import torch


def closure_loss(closure):
    """The loss an optimizer closure returns, evaluated with gradients enabled; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
