"""Segmentation scores: the MLPerf DeepCAM IoU and a dataset-level confusion matrix.

``deepcam_iou``: per sample, ``sum_c TP_c / (C * (TP_c + FP_c + FN_c))``, a class
absent from both prediction and truth counting as IoU 1; averaged over the batch.

``ConfusionMatrix``: accumulates ``matrix[true, predicted]`` pixel counts over a
whole dataset; ``iou()`` is ``TP / (TP + FP + FN)`` per class (NaN where a class
never occurs in truth or prediction). Matrices merge by addition, across
batches, workers or ranks (``all_reduce``).

``IoUCounts``: the same scores from per-class (TP, FP, FN) counts alone, which the
fused loss kernel (climseg.ops.weighted_cross_entropy_with_counts) produces in the
loss's own pass; ``deepcam_iou_from_counts`` is the DeepCAM score from per-sample counts.
``RunningScores`` accumulates those counts with the loss and throughput over a pass (what
the trainer writes to ``metrics.jsonl``), summed over ranks.
"""

import math

import torch

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.ops.counts import prediction_counts


def tp_fp_fn(pred, target, num_classes=NUM_CLASSES):
    """Per-sample counts, each an int64 tensor (N, num_classes)."""
    return prediction_counts(pred, target, num_classes).unbind(-1)


def deepcam_iou(pred, target, num_classes=NUM_CLASSES):
    """The MLPerf HPC DeepCAM score of predicted class indices against labels, both (N, H, W)."""
    tp, fp, fn = tp_fp_fn(pred, target, num_classes)
    return deepcam_iou_from_counts(torch.stack([tp, fp, fn], dim=-1))


def deepcam_iou_from_counts(counts):
    """The DeepCAM score from per-sample counts (N, C, 3) of (TP, FP, FN)."""
    tp, fp, fn = counts.unbind(-1)
    union = (tp + fp + fn).double()
    per_class = torch.where(union > 0, tp.double() / union.clamp_min(1), torch.ones_like(union))
    return per_class.mean(dim=1).mean()


def _iou(tp, fp, fn):
    union = (tp + fp + fn).double()
    return torch.where(union > 0, tp.double() / union.clamp_min(1), torch.full_like(union, math.nan))


def _mean_iou(iou):
    valid = ~torch.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else math.nan


def _iou_dict(iou, mean, names=CLASS_NAMES):
    short = {"background": "background", "tropical_cyclone": "tc", "atmospheric_river": "ar"}
    out = {f"iou_{short.get(n, n)}": v for n, v in zip(names, iou.tolist())}
    out["mean_iou"] = mean
    return out


class IoUCounts:
    """Dataset-level per-class (TP, FP, FN) counts, ``counts[c] = (tp, fp, fn)`` (int64)."""

    def __init__(self, num_classes=NUM_CLASSES, device="cpu"):
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes, 3, dtype=torch.int64, device=device)

    @classmethod
    def from_matrix(cls, matrix):
        """The counts of a confusion matrix ``matrix[true, predicted]``."""
        out = cls(matrix.shape[0], matrix.device)
        tp = matrix.diagonal()
        out.counts = torch.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp], dim=-1).to(torch.int64)
        return out

    def add(self, counts):
        """Add (C, 3) counts, or per-sample (N, C, 3) ones."""
        counts = counts.to(self.counts.device)
        self.counts += counts.sum(0) if counts.dim() == 3 else counts
        return self

    def iou(self):
        """Per-class IoU over everything seen (float64 tensor; NaN for classes never seen)."""
        return _iou(*self.counts.unbind(-1))

    def mean_iou(self):
        return _mean_iou(self.iou())

    def accuracy(self):
        """Pixels predicted right over labelled pixels (each pixel is a TP or an FN of its true class)."""
        tp, _, fn = self.counts.unbind(-1)
        total = int((tp + fn).sum())
        return float(tp.sum()) / total if total else math.nan

    def as_dict(self, names=CLASS_NAMES):
        """``{"iou_background": ..., "iou_tc": ..., "iou_ar": ..., "mean_iou": ...}`` for 3 classes."""
        return _iou_dict(self.iou(), self.mean_iou(), names)


class RunningScores:
    """Running loss, per-class (TP, FP, FN) counts, DeepCAM IoU and throughput of one pass over
    data (a training epoch or a validation), summable over ranks and storable in a checkpoint.
    The counts come from the loss's own pass (climseg.ops.weighted_cross_entropy_with_counts).

    ``add(counts, loss, skipped)`` per batch; ``state(group)`` the sums (over the ranks of
    ``group`` when given); ``row(split, group)`` the metrics row of ``metrics.jsonl``."""

    def __init__(self, device, state=None):
        self.cm = IoUCounts(NUM_CLASSES, device=device)
        self.loss_sum, self.deepcam_sum, self.samples, self.seconds, self.skipped = 0.0, 0.0, 0, 0.0, 0
        self.skipped_samples = 0
        if state:
            if "matrix" in state:  # a checkpoint from before the counts: its confusion matrix
                self.cm.add(IoUCounts.from_matrix(state["matrix"]).counts)
            else:
                self.cm.add(state["counts"])
            self.loss_sum, self.deepcam_sum = state["loss_sum"], state["deepcam_sum"]
            self.samples, self.seconds, self.skipped = state["samples"], state["seconds"], state["skipped"]
            self.skipped_samples = state.get("skipped_samples", 0)

    def add(self, counts, loss, skipped):
        """``counts``: per-sample (N, C, 3) TP, FP, FN of this batch."""
        n = counts.shape[0]
        self.cm.add(counts)
        self.deepcam_sum += float(deepcam_iou_from_counts(counts)) * n
        self.loss_sum += float(loss) * n
        self.samples += n
        self.skipped += int(skipped)

    def state(self, group=None):
        """The running sums; over all ranks of ``group`` (a collective) when given."""
        counts = self.cm.counts.clone()
        sums = torch.tensor(
            [self.loss_sum, self.deepcam_sum, float(self.samples), float(self.skipped), float(self.skipped_samples)],
            dtype=torch.float64,
            device=counts.device,
        )
        seconds = torch.tensor([self.seconds], dtype=torch.float64, device=counts.device)
        if group is not None:
            import torch.distributed as dist

            dist.all_reduce(counts, group=group)
            dist.all_reduce(sums, group=group)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=group)
        sums, seconds = sums.tolist(), float(seconds.item())
        return dict(
            counts=counts.cpu(),
            loss_sum=sums[0],
            deepcam_sum=sums[1],
            samples=int(sums[2]),
            seconds=seconds,
            skipped=int(sums[3]),
            skipped_samples=int(sums[4]),
        )

    def row(self, split, group=None):
        total = RunningScores(self.cm.counts.device, self.state(group))
        return total._row(split)

    def _row(self, split):
        row = dict(split=split, loss=self.loss_sum / max(self.samples, 1))
        row.update(self.cm.as_dict())
        row.update(
            deepcam_iou=self.deepcam_sum / max(self.samples, 1),
            accuracy=self.cm.accuracy(),
            samples=self.samples,
            samples_per_s=self.samples / max(self.seconds, 1e-9),
        )
        if self.skipped:
            row["skipped_steps"] = self.skipped
        if self.skipped_samples:
            row["skipped_samples"] = self.skipped_samples
        return row


class ConfusionMatrix:
    """Dataset-level confusion matrix of class indices, ``matrix[true, predicted]`` (int64)."""

    def __init__(self, num_classes=NUM_CLASSES, device="cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred, target):
        """Add predicted indices ``pred`` against ``target`` (same shape, any layout)."""
        p, t = pred.reshape(-1).long(), target.reshape(-1).long()
        if p.shape != t.shape:
            raise ValueError(f"prediction has {p.numel()} elements, target {t.numel()}")
        counts = torch.bincount(
            t.to(self.matrix.device) * self.num_classes + p.to(self.matrix.device), minlength=self.num_classes**2
        )
        self.matrix += counts[: self.num_classes**2].view(self.num_classes, self.num_classes)
        return self

    def merge(self, other):
        """Add another matrix's counts to this one (e.g. from another worker)."""
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    __iadd__ = merge

    def all_reduce(self, group=None):
        """Sum the matrix over the ranks of ``group`` (torch.distributed), in place."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM, group=group)
        return self

    def reset(self):
        self.matrix.zero_()

    def tp_fp_fn(self):
        m = self.matrix
        tp = m.diagonal()
        return tp, m.sum(0) - tp, m.sum(1) - tp

    def iou(self):
        """Per-class IoU over everything seen (float64 tensor; NaN for classes never seen)."""
        return _iou(*self.tp_fp_fn())

    def mean_iou(self):
        return _mean_iou(self.iou())

    def accuracy(self):
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else math.nan

    def as_dict(self, names=CLASS_NAMES):
        """``{"iou_background": ..., "iou_tc": ..., "iou_ar": ..., "mean_iou": ...}`` for 3 classes."""
        return _iou_dict(self.iou(), self.mean_iou(), names)


def label_components(mask, periodic=True):
    """Connected regions of a boolean (H, W) numpy mask, 8-connected, joined across
    the date line when ``periodic`` (global longitude). Returns ``(labels, count)``
    with labels ``1..count`` (0 outside); see :func:`climseg.sphere.label_components`."""
    from climseg.sphere import label_components as on_sphere

    return on_sphere(mask, periodic)


def count_objects(classes, num_classes=NUM_CLASSES, periodic=True):
    """Number of connected objects of each class > 0 in an (H, W) class map."""
    import numpy as np

    classes = np.asarray(classes)
    return {c: label_components(classes == c, periodic)[1] for c in range(1, num_classes)}
