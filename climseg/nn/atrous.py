"""``AtrousConv2d``: a drop-in ``torch.nn.Conv2d`` that runs on ``climseg.ops.atrous_conv2d``
(:mod:`climseg.nn.convert` swaps a model's convolutions for it).

Same constructor, same parameters (``weight``, ``bias``), same state_dict keys,
so a model can swap its convolutions without touching checkpoints. An
``AtrousConv2d`` may also carry a fused epilogue: per-channel ``scale`` and
``shift`` buffers (a batch norm folded in for inference) and a ReLU.
"""

import torch
import torch.nn as nn

from climseg.ops import atrous_conv2d


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by :func:`climseg.ops.atrous_conv2d`.

    Keyword-only extras: ``backend`` (``"auto"``, ``"triton"``, ``"torch"``),
    ``activation`` (``None`` or ``"relu"``, fused), ``deterministic``. ``scale`` and
    ``shift`` buffers (None unless :meth:`fuse_affine` set them) are applied after the
    bias. Padding modes other than ``"zeros"`` use ``nn.Conv2d``'s own path.
    """

    def __init__(self, *args, backend="auto", activation=None, deterministic=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend
        self.activation = activation
        self.deterministic = deterministic
        self.register_buffer("scale", None)
        self.register_buffer("shift", None)

    @classmethod
    def from_conv(cls, conv, **kwargs):
        """An ``AtrousConv2d`` sharing ``conv``'s parameters (the same tensors)."""
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
            **kwargs,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def fuse_affine(self, scale, shift, activation=None):
        """Set the epilogue ``(conv + bias) * scale + shift``, then ``activation``."""
        self.scale = scale.detach().clone()
        self.shift = shift.detach().clone()
        self.activation = activation
        return self

    def forward(self, x):
        if self.padding_mode != "zeros":
            y = super().forward(x)
            if self.scale is not None:
                y = y * self.scale.view(1, -1, 1, 1).to(y.dtype) + self.shift.view(1, -1, 1, 1).to(y.dtype)
            return torch.relu(y) if self.activation == "relu" else y
        return atrous_conv2d(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            scale=self.scale,
            shift=self.shift,
            activation=self.activation,
            deterministic=self.deterministic,
            backend=self.backend,
        )

    def extra_repr(self):
        extra = []
        if self.scale is not None:
            extra.append("folded affine")
        if self.activation:
            extra.append(f"activation={self.activation}")
        return ", ".join([super().extra_repr()] + extra)
