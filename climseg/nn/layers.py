"""Small building blocks shared by the models: conv -> norm -> activation, norms, affine."""

import torch
import torch.nn as nn

NORMS = ("batch", "none")


def make_norm(norm, channels):
    """``nn.BatchNorm2d(channels)`` for ``"batch"``, identity for ``"none"``."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")


class ChannelAffine(nn.Module):
    """``y = weight * x + bias`` per channel: a batch norm without statistics,
    safe on 1x1 maps with batch size 1 (the ASPP image-pooling branch)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvNormAct(nn.Module):
    """conv -> norm -> ReLU (or no activation). The conv has no bias unless asked:
    with ``norm="none"`` the block is conv -> ReLU, as in networks trained without norms."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        norm="batch",
        activation=True,
        bias=False,
        conv=nn.Conv2d,
    ):
        super().__init__()
        self.conv = conv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = make_norm(norm, out_channels)
        self.act = nn.ReLU(inplace=True) if activation else nn.Identity()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))
