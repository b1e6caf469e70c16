"""Class-weighted per-pixel softmax cross-entropy, computed in float32.

    loss = sum_pixels w[y] * (logsumexp(z) - z[y]) / normaliser

Presets, from class frequencies f (background, TC, AR):

* ``"kurth2018"`` (SC18): w = f**-0.5, normalised to sum to 1; the loss is
  the mean over pixels of the weighted per-pixel loss.
* ``"deepcam"`` (MLPerf HPC DeepCAM): w = f**-0.125; mean over pixels.

Frequencies default to those the MLPerf reference hard-codes for the CAM5
dataset; pass ``frequencies=`` a vector, a ``stats.h5`` path, or a dataset folder
to use your own data's.

:class:`JaccardLoss` is ClimateNet's soft IoU loss (``climatenet/utils/losses.py``,
``jaccard_loss``): with p = softmax(z) and t the one-hot labels, sums over the batch and
the pixels per class c,

    loss = 1 - mean_c [ sum(p_c t_c) / (sum(p_c + t_c) - sum(p_c t_c) + 1e-7) ]

(ClimateNet's training loop passes already-softmaxed outputs into it, which softmaxes
again; climseg applies softmax once, to the logits.) :func:`build_loss` makes the
``--loss`` choices: ``ce`` (weighted cross-entropy), ``jaccard``, ``ce+jaccard`` (their sum).
"""

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from climseg.constants import NUM_CLASSES
from climseg.errors import ConfigError
from climseg.ops.counts import prediction_counts
from climseg.ops.cross_entropy import weighted_cross_entropy_with_counts

# Pixel fractions of background, TC, AR in the CAM5 DeepCAM data (MLPerf HPC reference).
DEEPCAM_FREQUENCIES = (0.986267818390377, 0.0004578708870701058, 0.01327431072255291)
PRESETS = ("kurth2018", "deepcam", "uniform")
LOSSES = ("ce", "jaccard", "ce+jaccard")


def class_weights(preset="deepcam", frequencies=None):
    """Per-class weights (float32 tensor) of a preset for the given class frequencies."""
    freq = np.asarray(_frequencies(frequencies), dtype=np.float64)
    if freq.ndim != 1 or len(freq) < 2 or np.any(~np.isfinite(freq)) or np.any(freq < 0):
        raise ConfigError(f"class frequencies must be a vector of non-negative numbers, got {freq.tolist()}")
    freq = np.maximum(freq / freq.sum(), 1e-8)
    if preset == "kurth2018":
        w = freq**-0.5
        w = w / w.sum()
    elif preset == "deepcam":
        w = freq**-0.125
    elif preset == "uniform":
        w = np.ones_like(freq)
    else:
        raise ConfigError(f"unknown loss weight preset {preset!r} (choose from {', '.join(PRESETS)})")
    return torch.tensor(w, dtype=torch.float32)


def _frequencies(frequencies):
    if frequencies is None:
        return DEEPCAM_FREQUENCIES
    if isinstance(frequencies, (str, os.PathLike)):
        from climseg.data.stats import find_stats, read_stats

        path = os.fspath(frequencies)
        stats = read_stats(path if os.path.isfile(path) else find_stats(path))
        if stats.class_frequencies is None:
            raise ConfigError(f"{stats.path}: holds no climate/class_frequencies; pass the frequencies explicitly")
        return stats.class_frequencies
    if torch.is_tensor(frequencies):
        return frequencies.detach().cpu().double().numpy()
    return frequencies


class WeightedCrossEntropy(nn.Module):
    """Weighted softmax cross-entropy over (N, classes, H, W) logits and (N, H, W) labels.

    Args:
        weights: a preset name (``"kurth2018"``, ``"deepcam"``, ``"uniform"``)
            or a sequence/tensor of per-class weights.
        frequencies: class frequencies for a preset: a vector, a ``stats.h5``
            path or a dataset folder (default: the CAM5 DeepCAM frequencies).
        reduction: ``"mean"`` (over pixels: sum(w[y] * ce) / pixels, as both
            presets), ``"weighted_mean"`` (sum(w[y] * ce) / sum(w[y]), as
            ``F.cross_entropy(weight=...)``), ``"sum"`` or ``"none"``.

    The loss is computed in float32 whatever the logits' dtype, by
    :func:`climseg.ops.weighted_cross_entropy_with_counts`: on CUDA one fused kernel that
    also yields the per-class IoU counts (``return_counts=True``), on CPU its PyTorch
    reference. ``backend`` chooses (default ``"auto"``).
    """

    def __init__(self, weights="deepcam", frequencies=None, reduction="mean", num_classes=NUM_CLASSES, backend="auto"):
        super().__init__()
        self.backend = backend
        if isinstance(weights, str):
            self.preset = weights
            w = class_weights(weights, frequencies)
        else:
            self.preset = None
            w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if len(w) != num_classes:
            raise ConfigError(f"{len(w)} class weights given for {num_classes} classes")
        if reduction not in ("mean", "weighted_mean", "sum", "none"):
            raise ConfigError(f"unknown reduction {reduction!r}")
        self.reduction = reduction
        self.register_buffer("weight", w)

    def forward(self, logits, labels, return_counts=False):
        """The loss; with ``return_counts`` also the per-sample (N, C, 3) TP, FP, FN of the
        argmax prediction, from the same pass."""
        weight = self.weight.to(device=logits.device, dtype=torch.float32)
        if not return_counts and logits.device.type != "cuda":
            return self._reference(logits, labels, weight)
        reduction = {"weighted_mean": "mean", "mean": "sum"}.get(self.reduction, self.reduction)
        loss, counts = weighted_cross_entropy_with_counts(
            logits, labels, weight, reduction, per_sample=True, loss_dtype=torch.float32, backend=self.backend
        )
        if self.reduction == "mean":
            loss = loss / labels.numel()
        return (loss, counts) if return_counts else loss

    def _reference(self, logits, labels, weight):
        if self.reduction == "weighted_mean":
            return F.cross_entropy(logits.float(), labels, weight=weight)
        per_pixel = F.cross_entropy(logits.float(), labels, weight=weight, reduction="none")
        if self.reduction == "mean":
            return per_pixel.mean()
        if self.reduction == "sum":
            return per_pixel.sum()
        return per_pixel

    def extra_repr(self):
        return f"preset={self.preset}, weight={[round(x, 5) for x in self.weight.tolist()]}, reduction={self.reduction}"


def jaccard_loss(logits, labels, eps=1e-7):
    """ClimateNet's soft Jaccard loss (module docstring) of (N, C, H, W) logits and (N, H, W)
    labels, in float32 (float64 logits stay float64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits.to(dtype), dim=1)
    onehot = F.one_hot(labels.long(), logits.shape[1]).permute(0, 3, 1, 2).to(dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    union = (probs + onehot).sum(dims) - intersection
    return 1 - (intersection / (union + eps)).mean()


class JaccardLoss(nn.Module):
    """:func:`jaccard_loss` as a module with the trainer's interface: ``return_counts`` also
    gives the per-sample (N, C, 3) TP, FP, FN of the argmax prediction."""

    def __init__(self, eps=1e-7, num_classes=NUM_CLASSES):
        super().__init__()
        self.eps, self.num_classes = eps, num_classes

    def forward(self, logits, labels, return_counts=False):
        loss = jaccard_loss(logits, labels, self.eps)
        if not return_counts:
            return loss
        with torch.no_grad():
            counts = prediction_counts(logits.argmax(1), labels, self.num_classes)
        return loss, counts


class SumOfLosses(nn.Module):
    """The sum of several losses; the IoU counts come from the first one's pass."""

    def __init__(self, *losses):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits, labels, return_counts=False):
        first = self.losses[0](logits, labels, return_counts=return_counts)
        loss, counts = first if return_counts else (first, None)
        for other in self.losses[1:]:
            loss = loss + other(logits, labels)
        return (loss, counts) if return_counts else loss


def build_loss(name="ce", weights="deepcam", frequencies=None, num_classes=NUM_CLASSES):
    """The loss of ``--loss``: ``"ce"`` (:class:`WeightedCrossEntropy` with ``weights``),
    ``"jaccard"`` (:class:`JaccardLoss`) or ``"ce+jaccard"`` (their sum)."""
    if name == "ce":
        return WeightedCrossEntropy(weights, frequencies, num_classes=num_classes)
    if name == "jaccard":
        return JaccardLoss(num_classes=num_classes)
    if name == "ce+jaccard":
        return SumOfLosses(
            WeightedCrossEntropy(weights, frequencies, num_classes=num_classes), JaccardLoss(num_classes=num_classes)
        )
    raise ConfigError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})")
