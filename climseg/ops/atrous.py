"""``atrous_conv2d``: a (dilated) 2-D convolution with a fused epilogue.

    y = activation((conv(x, weight) + bias) * scale + shift + residual)

scale and shift are per output channel (a folded batch norm or its affine
part); every term is optional; activation is None or "relu". The output has
the input's dtype; the PyTorch reference accumulates as F.conv2d does.

The reference below is the specification and the CPU path. Fast backends
register themselves with :mod:`climseg.ops.backend`.
"""
import torch
import torch.nn.functional as F

from climseg.errors import ConfigError
from climseg.ops import backend as _backend

ACTIVATIONS = (None, "relu")


def atrous_conv2d_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                            scale=None, shift=None, activation=None, residual=None):
    """Plain PyTorch: ``F.conv2d`` followed by the epilogue, term by term."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1).to(y.dtype)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1).to(y.dtype)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = torch.relu(y)
    return y


def atrous_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                  scale=None, shift=None, activation=None, residual=None, backend="auto"):
    """Dilated convolution with fused bias / per-channel scale and shift / residual / ReLU.

    Args follow ``torch.nn.functional.conv2d``; ``stride``, ``padding`` and
    ``dilation`` take an int or a pair (``padding`` also ``"same"``/``"valid"``).
    ``backend``: ``"auto"`` (default, or ``CLIMSEG_BACKEND``), ``"triton"``,
    ``"cuda"`` or ``"torch"``; naming a backend this build lacks is an error.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"atrous_conv2d: activation must be None or 'relu', not {activation!r}")
    _backend.resolve("atrous_conv2d", backend, x)
    return atrous_conv2d_reference(x, weight, bias, stride, padding, dilation, groups,
                                   scale=scale, shift=shift, activation=activation, residual=residual)
