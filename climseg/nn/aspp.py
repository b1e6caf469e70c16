"""``ASPP``: atrous spatial pyramid pooling (DeepLabv3).

    y = project(concat[conv1x1(x), atrous_r1(x), atrous_r2(x), atrous_r3(x), broadcast(pool(x))])

Each branch is conv -> norm -> ReLU; the image-pooling branch averages over
space, applies a 1x1 conv, a per-channel affine and ReLU, and is broadcast back
(no interpolation, no hard-coded sizes). The projection is a 1x1 conv ->
norm -> ReLU over the concatenation. With ``norm="none"`` there are no norms,
no affine and no biases (the SC18 network as counted in its paper).
"""
import torch
import torch.nn as nn

from climseg.nn.atrous import AtrousConv2d
from climseg.nn.layers import ChannelAffine, ConvNormAct


class ASPP(nn.Module):
    """ASPP with a 1x1 branch, one dilated 3x3 branch per rate and image pooling.

    Args:
        in_channels, out_channels: channels in and of every branch (the "depth", 256 in DeepLab).
        rates: dilation of each 3x3 branch, e.g. (6, 12, 18) at output stride 16.
        norm: ``"batch"`` or ``"none"``.
    """

    def __init__(self, in_channels, out_channels=256, rates=(6, 12, 18), norm="batch"):
        super().__init__()
        self.rates = tuple(rates)
        self.conv1x1 = ConvNormAct(in_channels, out_channels, 1, norm=norm)
        self.atrous = nn.ModuleList(
            ConvNormAct(in_channels, out_channels, 3, padding=r, dilation=r, norm=norm, conv=AtrousConv2d)
            for r in self.rates
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            ChannelAffine(out_channels) if norm != "none" else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        self.project = ConvNormAct(out_channels * (len(self.rates) + 2), out_channels, 1, norm=norm)

    def forward(self, x):
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        branches = [self.conv1x1(x)] + [b(x) for b in self.atrous] + [pooled]
        return self.project(torch.cat(branches, dim=1))
