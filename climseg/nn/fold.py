"""Batch-norm folding: an eval-mode ``BatchNorm2d`` as a per-channel affine map,

    y = (x - mean) / sqrt(var + eps) * weight + bias  =  x * scale + shift,
    scale = weight / sqrt(var + eps),  shift = bias - mean * scale,

computed in float32. :class:`climseg.nn.AtrousConv2d` applies ``(scale, shift)`` in its fused
epilogue (:meth:`~climseg.nn.AtrousConv2d.fuse_affine`), :class:`climseg.nn.ASPP` folds its branch
norms with it, and :func:`climseg.nn.convert_model` folds every convolution -> batch-norm pair
of a traced model; :func:`climseg.nn.unfold_state_dict` uses the same formula from saved
statistics.
"""

import torch
import torch.nn as nn

__all__ = ["fold_batchnorm", "fold_values", "is_foldable_batchnorm"]


def fold_batchnorm(bn):
    """``(scale, shift)`` of an eval-mode BatchNorm2d: ``y = x * scale + shift``."""
    return fold_values(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def fold_values(mean, var, eps, weight=None, bias=None):
    """``(scale, shift)`` in float32 of a batch norm with these statistics and affine terms."""
    scale = torch.rsqrt(var.float() + eps)
    shift = -mean.float() * scale
    if weight is not None:
        scale = scale * weight.float()
        shift = shift * weight.float() + (bias.float() if bias is not None else 0)
    return scale, shift


def is_foldable_batchnorm(module):
    """Whether ``module`` is a ``BatchNorm2d`` with running statistics (so that it can be folded)."""
    return isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_mean is not None
