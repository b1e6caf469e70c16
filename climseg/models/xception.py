"""Modified aligned Xception (Chollet 2017; Chen et al. 2018), the encoder of the
MLPerf HPC DeepCAM reference.

Entry flow (two convs, three strided blocks), 16 middle blocks of 728
channels, exit flow to 2048 channels. Every 3x3 is a depthwise-separable
convolution (depthwise ``AtrousConv2d`` + pointwise 1x1) with padding equal
to its dilation; max pooling is replaced by strided separable convolutions.
"""

import torch.nn as nn
import torch.nn.functional as F

from climseg.nn import AtrousConv2d, make_norm


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (dilated) convolution followed by a pointwise 1x1, no biases."""

    def __init__(self, in_channels, out_channels, stride=1, dilation=1):
        super().__init__()
        padding = dilation if stride == 1 else 1
        self.depthwise = AtrousConv2d(
            in_channels,
            in_channels,
            3,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """``reps`` separable convs (norm + ReLU between them), a strided separable
    conv when ``stride > 1`` (or an extra one for the last block), plus a
    shortcut (1x1 projection + norm when the shape changes)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        reps,
        stride=1,
        dilation=1,
        end_with_relu=True,
        grow_first=True,
        is_last=False,
        norm="batch",
    ):
        super().__init__()
        self.end_with_relu = end_with_relu
        if in_channels != out_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skip_norm = make_norm(norm, out_channels)
        else:
            self.skip = None
        layers = []
        widths = [(in_channels, out_channels)] if grow_first else []
        filters = out_channels if grow_first else in_channels
        widths += [(filters, filters)] * (reps - 1)
        if not grow_first:
            widths.append((in_channels, out_channels))
        for cin, cout in widths:
            layers += [SeparableConv2d(cin, cout, dilation=dilation), make_norm(norm, cout), nn.ReLU(inplace=True)]
        layers = layers[:-1]
        if stride != 1:
            layers.append(SeparableConv2d(out_channels, out_channels, stride=2))
        elif is_last:
            layers.append(SeparableConv2d(out_channels, out_channels))
        self.rep = nn.Sequential(*layers)

    def forward(self, x):
        skip = self.skip_norm(self.skip(x)) if self.skip is not None else x
        y = self.rep(x) + skip
        return F.relu(y) if self.end_with_relu else y


class AlignedXception(nn.Module):
    """Aligned Xception encoder returning ``(features, low_level_features)``.

    ``output_stride`` 16 (DeepCAM) or 8; low-level features are the ReLU of the
    first block's output (128 channels at stride 4).
    """

    def __init__(self, in_channels, output_stride=16, middle_blocks=16, norm="batch"):
        super().__init__()
        if output_stride == 16:
            entry3_stride, middle_rate, exit_rates = 2, 1, (1, 2)
        elif output_stride == 8:
            entry3_stride, middle_rate, exit_rates = 1, 2, (2, 4)
        else:
            raise ValueError(f"aligned Xception supports output stride 8 or 16, not {output_stride}")
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(in_channels, 32, 3, stride=2, padding=1, bias=False)
        self.norm1 = make_norm(norm, 32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, 64)
        self.block1 = XceptionBlock(64, 128, 2, stride=2, end_with_relu=False, norm=norm)
        self.block2 = XceptionBlock(128, 256, 2, stride=2, norm=norm)
        self.block3 = XceptionBlock(256, 728, 2, stride=entry3_stride, is_last=True, norm=norm)
        self.middle = nn.Sequential(
            *[XceptionBlock(728, 728, 3, dilation=middle_rate, norm=norm) for _ in range(middle_blocks)]
        )
        self.exit_block = XceptionBlock(
            728, 1024, 2, dilation=exit_rates[0], end_with_relu=False, grow_first=False, is_last=True, norm=norm
        )
        self.exit = nn.Sequential(
            SeparableConv2d(1024, 1536, dilation=exit_rates[1]),
            make_norm(norm, 1536),
            nn.ReLU(inplace=True),
            SeparableConv2d(1536, 1536, dilation=exit_rates[1]),
            make_norm(norm, 1536),
            nn.ReLU(inplace=True),
            SeparableConv2d(1536, 2048, dilation=exit_rates[1]),
            make_norm(norm, 2048),
            nn.ReLU(inplace=True),
        )
        self.out_channels = 2048
        self.low_level_channels = 128

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = F.relu(self.block1(x))
        low_level = x
        x = self.block3(self.block2(x))
        x = self.exit(self.exit_block(self.middle(x)))
        return x, low_level
