"""``AtrousConv2d``: a drop-in ``torch.nn.Conv2d`` that runs on ``climseg.ops.atrous_conv2d``,
and ``convert_model``, which swaps a model's convolutions for it.

Same constructor, same parameters (``weight``, ``bias``), same state_dict keys,
so a model can swap its convolutions without touching checkpoints. An
``AtrousConv2d`` may also carry a fused epilogue: per-channel ``scale`` and
``shift`` buffers (a batch norm folded in for inference) and a ReLU.
"""
import copy

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
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta", **kwargs)
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
        return atrous_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                             scale=self.scale, shift=self.shift, activation=self.activation,
                             deterministic=self.deterministic, backend=self.backend)

    def extra_repr(self):
        extra = []
        if self.scale is not None:
            extra.append("folded affine")
        if self.activation:
            extra.append(f"activation={self.activation}")
        return ", ".join([super().extra_repr()] + extra)


def _fold(bn):
    """``(scale, shift)`` of an eval-mode BatchNorm2d: ``y = x * scale + shift``."""
    var, mean = bn.running_var.float(), bn.running_mean.float()
    scale = torch.rsqrt(var + bn.eps)
    shift = -mean * scale
    if bn.weight is not None:
        scale = scale * bn.weight.float()
        shift = shift * bn.weight.float() + (bn.bias.float() if bn.bias is not None else 0)
    return scale, shift


def _foldable_bn(m):
    return isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None


def convert_model(model, *, fold_bn=False, dilated_only=False, backend="auto", inplace=False):
    """The model with every ``nn.Conv2d`` (or only those with dilation > 1) replaced by an
    :class:`AtrousConv2d` with the same weights (the same parameter tensors).

    ``fold_bn=True`` (inference; the model must be in eval mode): a ``BatchNorm2d`` that
    directly follows a convolution — its next sibling in an ``nn.Sequential``, or the
    ``norm`` of a climseg ``ConvNormAct`` — folds into the convolution's epilogue, and a
    ``ReLU`` right after it too; they become ``nn.Identity``. Works on any module tree. A
    deep copy is converted unless ``inplace=True``.
    """
    if fold_bn and model.training:
        raise ValueError("convert_model(fold_bn=True) folds running statistics: call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)

    def wanted(m):
        return type(m) is nn.Conv2d and (not dilated_only or any(d > 1 for d in m.dilation))

    def convert(parent):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, AtrousConv2d.from_conv(child, backend=backend))
            elif isinstance(child, AtrousConv2d):
                child.backend = backend
            else:
                convert(child)
        if fold_bn:
            _fold_children(parent)

    convert(model)
    return model


def _fold_children(parent):
    from climseg.nn.layers import ConvNormAct

    if isinstance(parent, ConvNormAct):
        pairs = [("conv", "norm", "act")]
    elif isinstance(parent, nn.Sequential):
        names = [n for n, _ in parent.named_children()]
        pairs = [(a, b, c) for a, b, c in zip(names, names[1:], names[2:] + [None])]
    else:
        return
    for conv_name, norm_name, act_name in pairs:
        conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
        if not isinstance(conv, AtrousConv2d) or conv.scale is not None or conv.activation is not None:
            continue
        if not _foldable_bn(norm) or norm.num_features != conv.out_channels:
            continue
        act = getattr(parent, act_name) if act_name is not None else None
        relu = isinstance(act, nn.ReLU)
        scale, shift = _fold(norm)
        conv.fuse_affine(scale, shift, "relu" if relu else None)
        setattr(parent, norm_name, nn.Identity())
        if relu:
            setattr(parent, act_name, nn.Identity())
