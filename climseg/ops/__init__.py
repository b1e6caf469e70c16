"""One public function per fused op; each picks its backend (Triton kernel, CUDA
kernel or the PyTorch reference, see :mod:`climseg.ops.backend`)."""

from climseg.ops.atrous import aspp_conv, aspp_conv_reference, atrous_conv2d, atrous_conv2d_reference
from climseg.ops.buckets import (
    flatten_gradients,
    flatten_gradients_reference,
    unflatten_gradients,
    unflatten_gradients_reference,
)
from climseg.ops.counts import prediction_counts
from climseg.ops.cross_entropy import weighted_cross_entropy_with_counts, weighted_cross_entropy_with_counts_reference
from climseg.ops.normalize import convert_input, convert_input_reference, normalize_input, normalize_input_reference
from climseg.ops.optimizers import lamb_step, lamb_step_reference, larc_adam_step, larc_adam_step_reference

__all__ = [
    "aspp_conv",
    "aspp_conv_reference",
    "atrous_conv2d",
    "atrous_conv2d_reference",
    "convert_input",
    "convert_input_reference",
    "flatten_gradients",
    "flatten_gradients_reference",
    "lamb_step",
    "lamb_step_reference",
    "larc_adam_step",
    "larc_adam_step_reference",
    "normalize_input",
    "normalize_input_reference",
    "prediction_counts",
    "unflatten_gradients",
    "unflatten_gradients_reference",
    "weighted_cross_entropy_with_counts",
    "weighted_cross_entropy_with_counts_reference",
]
