"""Pre-activation ResNet (ResNet v2, He et al. 2016) with DeepLab's output-stride control,
the encoder of the SC18 network (``tf.contrib.slim.nets.resnet_v2`` layout).

A unit is ``x + conv3(relu(bn(conv2(relu(bn(conv1(relu(bn(x)))))))))``; the
shortcut is a biased 1x1 projection of the pre-activation when the width
changes, else the (subsampled) input. Strides sit in the last unit of a block.
Once the running stride reaches ``output_stride``, further strides turn into
dilation (atrous convolution), as in slim's ``stack_blocks_dense``.
"""

import torch.nn as nn
import torch.nn.functional as F

from climseg.nn import AtrousConv2d, ConvNormAct, make_norm


class PreActBottleneck(nn.Module):
    def __init__(self, in_channels, out_channels, mid_channels, stride=1, dilation=1, norm="batch"):
        super().__init__()
        self.stride = stride
        self.preact = make_norm(norm, in_channels)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=True) if in_channels != out_channels else None
        )
        self.conv1 = ConvNormAct(in_channels, mid_channels, 1, norm=norm)
        self.conv2 = ConvNormAct(
            mid_channels,
            mid_channels,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            norm=norm,
            conv=AtrousConv2d,
        )
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=True)

    def forward(self, x, taps=None):
        pre = F.relu(self.preact(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(pre)
        else:
            shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        hidden = self.conv1(pre)
        if taps is not None:
            taps.append(hidden)
        return shortcut + self.conv3(self.conv2(hidden))


class ResNetV2(nn.Module):
    """ResNet v2 encoder returning ``(features, low_level_features)``.

    Args:
        in_channels: input channels (16 climate variables).
        blocks: ``[(units, mid_channels, out_channels, stride), ...]``; the
            stride is applied by the last unit of the block.
        output_stride: 8 or 16 (or any power of two the strides reach).
        root_channels, root_kernel: the stem convolution (stride 2, biased),
            followed by a 3x3 stride-2 max pool.
        norm: ``"batch"`` or ``"none"``.

    ``low_level_features`` is the output of the first 1x1 convolution of the
    last unit of the first block (at stride 4), as in the SC18 decoder.
    """

    def __init__(self, in_channels, blocks, output_stride=8, root_channels=64, root_kernel=7, norm="batch"):
        super().__init__()
        self.root = nn.Conv2d(in_channels, root_channels, root_kernel, stride=2, padding=root_kernel // 2, bias=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        current_stride, rate = 4, 1
        self.blocks = nn.ModuleList()
        channels = root_channels
        for units, mid, out, stride in blocks:
            block = nn.ModuleList()
            for u in range(units):
                unit_stride = stride if u == units - 1 else 1
                if current_stride >= output_stride:
                    block.append(PreActBottleneck(channels, out, mid, 1, rate, norm))
                    rate *= unit_stride
                else:
                    block.append(PreActBottleneck(channels, out, mid, unit_stride, 1, norm))
                    current_stride *= unit_stride
                channels = out
            self.blocks.append(block)
        self.postnorm = make_norm(norm, channels)
        self.out_channels = channels
        self.low_level_channels = blocks[0][1]
        self.output_stride = current_stride

    def forward(self, x):
        x = self.pool(self.root(x))
        low_level = None
        for b, block in enumerate(self.blocks):
            for u, unit in enumerate(block):
                taps = [] if (b == 0 and u == len(block) - 1) else None
                x = unit(x, taps)
                if taps:
                    low_level = taps[0]
        return F.relu(self.postnorm(x)), low_level
