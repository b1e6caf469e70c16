"""Per-sample (TP, FP, FN) counts of predicted class indices against labels: the counts the fused
loss (:func:`climseg.ops.weighted_cross_entropy_with_counts`) produces in its own pass, and its
reference computes with :func:`prediction_counts`. :mod:`climseg.metrics` turns them into IoU
scores.
"""

import torch

from climseg.constants import NUM_CLASSES

__all__ = ["prediction_counts"]


def _flat_indices(pred, target):
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    return pred.reshape(pred.shape[0], -1).long(), target.reshape(target.shape[0], -1).long()


def prediction_counts(pred, target, num_classes=NUM_CLASSES, ignore_index=None):
    """Per-sample (TP, FP, FN) of class indices ``pred`` against ``target``: int64 (N, C, 3).
    Pixels whose target is ``ignore_index`` count nowhere; an index outside [0, C) matches no
    class. One bincount of per-sample confusion matrices (an extra row and column collect the
    out-of-range indices), then their diagonals and margins."""
    p, t = _flat_indices(pred, target)
    n, c = p.shape[0], num_classes
    keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    p = torch.where((p >= 0) & (p < c), p, c)
    t = torch.where((t >= 0) & (t < c), t, c)
    sample = torch.arange(n, device=p.device).view(n, 1).expand_as(t)
    size = (c + 1) * (c + 1)
    index = (sample * (c + 1) + t) * (c + 1) + p
    matrix = torch.bincount(index[keep], minlength=n * size)[: n * size].view(n, c + 1, c + 1)  # [n, true, pred]
    tp = matrix.diagonal(dim1=1, dim2=2)[:, :c]
    return torch.stack([tp, matrix.sum(1)[:, :c] - tp, matrix.sum(2)[:, :c] - tp], dim=-1)
