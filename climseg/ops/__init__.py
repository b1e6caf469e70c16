"""One public function per fused op; each picks its backend (Triton kernel, CUDA
kernel or the PyTorch reference, see :mod:`climseg.ops.backend`)."""
from climseg.ops.atrous import aspp_conv, aspp_conv_reference, atrous_conv2d, atrous_conv2d_reference

__all__ = ["aspp_conv", "aspp_conv_reference", "atrous_conv2d", "atrous_conv2d_reference"]
