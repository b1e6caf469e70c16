"""The two transposed-convolution decoders of the anchor networks.

``Deconv1xDecoder`` (SC18, "deconv1x"): from stride 8, a 3x3 stride-2
transposed conv to stride 4; concatenation with the projected low-level
features; two 3x3 convs; two stride-2 transposed convs to full resolution;
concatenation with a full-resolution skip branch computed from the input
(two 3x3 convs); two 3x3 convs and a 1x1 to the classes. The SC18 code left
the transposed and full-resolution convs linear (``tf.layers`` defaults); here
each is followed by a ReLU, which changes neither parameters nor FLOPs.

``DeconvUpsampler`` (MLPerf DeepCAM): from stride 16, two stride-2 transposed
convs (norm, ReLU) to stride 4; concatenation with the low-level features; two
3x3 convs and a biased 1x1; a stride-2 transposed conv to stride 2 and a last
one straight to the class logits at full resolution.
"""

import torch
import torch.nn as nn

from climseg.nn import ConvNormAct, make_norm


def _up(in_channels, out_channels, bias):
    """3x3 stride-2 transposed conv that exactly doubles height and width."""
    return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=bias)


class Deconv1xDecoder(nn.Module):
    def __init__(
        self,
        encoder_channels,
        low_level_channels,
        in_channels,
        num_classes,
        low_level_width=48,
        width=256,
        skip_widths=(64, 128),
        head_width=256,
        norm="batch",
    ):
        super().__init__()
        self.low_level = ConvNormAct(low_level_channels, low_level_width, 1, norm=norm)
        self.up1 = _up(encoder_channels, encoder_channels, bias=True)
        self.fuse = nn.Sequential(
            ConvNormAct(encoder_channels + low_level_width, width, 3, padding=1, norm=norm),
            ConvNormAct(width, width, 3, padding=1, norm=norm),
        )
        self.up2 = _up(width, width, bias=True)
        self.up3 = _up(width, width, bias=True)
        self.skip = nn.Sequential(
            nn.Conv2d(in_channels, skip_widths[0], 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(skip_widths[0], skip_widths[1], 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(
            nn.Conv2d(width + skip_widths[1], head_width, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_width, head_width, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(head_width, num_classes, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features, low_level, inputs):
        x = self.relu(self.up1(features))
        x = self.fuse(torch.cat([x, self.low_level(low_level)], dim=1))
        x = self.relu(self.up3(self.relu(self.up2(x))))
        x = self.head(torch.cat([x, self.skip(inputs)], dim=1))
        return self.classifier(x)


class DeconvUpsampler(nn.Module):
    def __init__(self, encoder_channels, low_level_channels, num_classes, low_level_width=48, width=256, norm="batch"):
        super().__init__()
        self.low_level = ConvNormAct(low_level_channels, low_level_width, 1, norm=norm)
        self.up1 = nn.Sequential(
            _up(encoder_channels, width, bias=False),
            make_norm(norm, width),
            nn.ReLU(inplace=True),
            _up(width, width, bias=False),
            make_norm(norm, width),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            ConvNormAct(width + low_level_width, width, 3, padding=1, norm=norm),
            ConvNormAct(width, width, 3, padding=1, norm=norm),
            nn.Conv2d(width, width, 1, bias=True),
        )
        self.up2 = nn.Sequential(_up(width, width, bias=False), make_norm(norm, width), nn.ReLU(inplace=True))
        self.classifier = _up(width, num_classes, bias=False)

    def forward(self, features, low_level, inputs=None):
        x = self.up1(features)
        x = self.fuse(torch.cat([x, self.low_level(low_level)], dim=1))
        return self.classifier(self.up2(x))
