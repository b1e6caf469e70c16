"""DeepLabv3+ for climate segmentation, with three configurations.

``"kurth2018"``: the SC18 Gordon Bell network (Kurth et al. 2018): ResNet-50 v2
at output stride 8, ASPP of depth 256 at rates 12/24/36 with image pooling,
the "deconv1x" decoder with a full-resolution skip branch from the input.
``"deepcam"``: the MLPerf HPC DeepCAM reference: aligned Xception with 16
middle blocks at output stride 16, ASPP at rates 6/12/18, the transposed-conv
"DeconvUpsampler" decoder.
``"tiny"``: a narrow kurth2018 that trains on two CPU cores in minutes.

Data flow: input (N, C, H, W) -> encoder -> (features at H/os, low-level at H/4)
-> ASPP(features) -> decoder(ASPP out, low-level, input) -> logits (N, classes, H, W).
Every dilated convolution is a ``climseg.nn.AtrousConv2d``, the pyramid a
``climseg.nn.ASPP``. Constructible on the ``meta`` device.
"""

import copy

import torch
import torch.nn as nn

from climseg.constants import CHANNELS, NUM_CLASSES
from climseg.errors import ConfigError
from climseg.models.decoders import Deconv1xDecoder, DeconvUpsampler
from climseg.models.resnet import ResNetV2
from climseg.models.xception import AlignedXception
from climseg.nn import ASPP

NUM_CHANNELS = len(CHANNELS)

CONFIGS = {
    "kurth2018": dict(
        encoder="resnet_v2",
        encoder_args=dict(
            blocks=[(3, 64, 256, 2), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 1)],
            output_stride=8,
            root_channels=64,
            root_kernel=7,
        ),
        aspp=dict(out_channels=256, rates=(12, 24, 36)),
        decoder="deconv1x",
        decoder_args=dict(low_level_width=48, width=256, skip_widths=(64, 128), head_width=256),
    ),
    "deepcam": dict(
        encoder="xception",
        encoder_args=dict(output_stride=16, middle_blocks=16),
        aspp=dict(out_channels=256, rates=(6, 12, 18)),
        decoder="deconv_upsampler",
        decoder_args=dict(low_level_width=48, width=256),
    ),
    "tiny": dict(
        encoder="resnet_v2",
        encoder_args=dict(
            blocks=[(2, 16, 48, 2), (2, 24, 96, 2), (2, 32, 128, 1)], output_stride=8, root_channels=24, root_kernel=3
        ),
        aspp=dict(out_channels=48, rates=(2, 4, 6)),
        decoder="deconv1x",
        decoder_args=dict(low_level_width=16, width=48, skip_widths=(8, 16), head_width=16),
    ),
}


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ segmentation network.

    Args:
        config: ``"kurth2018"``, ``"deepcam"``, ``"tiny"``, or a dict shaped like
            an entry of :data:`CONFIGS`.
        in_channels: input channels (16 climate variables by default).
        num_classes: output classes (background, tropical cyclone, atmospheric river).
        norm: ``"batch"`` (default) or ``"none"``.

    Input height and width must be multiples of :attr:`input_multiple`.
    """

    def __init__(self, config="kurth2018", in_channels=NUM_CHANNELS, num_classes=NUM_CLASSES, norm="batch"):
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ConfigError(f"unknown model configuration {config!r} (choose from {', '.join(CONFIGS)})")
            self.config_name, spec = config, copy.deepcopy(CONFIGS[config])
        else:
            self.config_name, spec = "custom", copy.deepcopy(dict(config))
        self.spec = spec
        self.in_channels, self.num_classes, self.norm = in_channels, num_classes, norm
        if spec["encoder"] == "resnet_v2":
            self.encoder = ResNetV2(in_channels, norm=norm, **spec["encoder_args"])
            self.input_multiple = self.encoder.output_stride
        elif spec["encoder"] == "xception":
            self.encoder = AlignedXception(in_channels, norm=norm, **spec["encoder_args"])
            self.input_multiple = 16
        else:
            raise ConfigError(f"unknown encoder {spec['encoder']!r}")
        self.output_stride = self.encoder.output_stride
        self.aspp = ASPP(self.encoder.out_channels, norm=norm, **spec["aspp"])
        depth = spec["aspp"]["out_channels"]
        if spec["decoder"] == "deconv1x":
            self.decoder = Deconv1xDecoder(
                depth, self.encoder.low_level_channels, in_channels, num_classes, norm=norm, **spec["decoder_args"]
            )
        elif spec["decoder"] == "deconv_upsampler":
            self.decoder = DeconvUpsampler(
                depth, self.encoder.low_level_channels, num_classes, norm=norm, **spec["decoder_args"]
            )
        else:
            raise ConfigError(f"unknown decoder {spec['decoder']!r}")
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def init_class_prior(self, frequencies):
        """Set the classifier's bias to log class frequencies, so that training starts
        from the prior instead of spending its first steps learning it (Lin et al. 2017).
        Returns False (and changes nothing) when the last layer has no bias."""
        bias = getattr(self.decoder.classifier, "bias", None)
        if bias is None:
            return False
        freq = torch.as_tensor(frequencies, dtype=torch.float64).clamp_min(1e-6)
        with torch.no_grad():
            bias.copy_(torch.log(freq / freq.sum()).to(bias.dtype))
        return True

    def check_input(self, shape):
        """Raise ConfigError unless ``shape`` (N, C, H, W) fits this network."""
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ConfigError(
                f"{self.config_name} model expects input (N, {self.in_channels}, H, W), got {tuple(shape)}"
            )
        h, w = shape[2], shape[3]
        if h % self.input_multiple or w % self.input_multiple:
            raise ConfigError(
                f"{self.config_name} model needs height and width that are multiples of "
                f"{self.input_multiple}, got {h}x{w}"
            )

    def forward(self, x):
        self.check_input(x.shape)
        features, low_level = self.encoder(x)
        return self.decoder(self.aspp(features), low_level, x)


def count_parameters(model, trainable_only=True):
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
