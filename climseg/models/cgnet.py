"""CGNet, the Context Guided Network (Wu et al. 2018, arXiv:1811.08201), as ClimateNet builds it.

ClimateNet (Prabhat et al. 2021, andregraubner/ClimateNet) segments tropical cyclones and
atmospheric rivers with CGNet at M=3, N=21: a light network (about half a million parameters)
whose context-guided blocks join a local 3x3 feature, a dilated 3x3 "surrounding context"
feature (both channel-wise, i.e. depthwise) and a squeeze-and-excitation "global context"
gate. ClimateNet pads every convolution and pooling circularly on both axes ("Wrap") instead of
with zeros; this module does the same by default so that ClimateNet's ``weights.pth`` gives
the same logits (``pole_padding="zeros"`` pads zeros across the poles instead, keeping the
date-line wrap).

Data flow, input (N, C, H, W), any size from 25 x 25 (strided layers round up):

    stage 1   3 x conv3x3-BN-PReLU (32 ch, the first at stride 2)        -> H/2
              concat [stage 1, input avg-pooled once]  -> BN-PReLU        (32 + C ch)
    stage 2   context-guided down block (-> 64 ch, dilation 2, SE r=8)   -> H/4
              M-1 = 2 context-guided blocks (64 ch, dilation 2, residual)
              concat [blocks, down output, input avg-pooled twice] -> BN-PReLU  (128 + C ch)
    stage 3   context-guided down block (-> 128 ch, dilation 4, SE r=16) -> H/8
              N-1 = 20 context-guided blocks (128 ch, dilation 4, residual)
              concat [down output, blocks] -> BN-PReLU                   (256 ch)
    head      1x1 conv (no bias) -> classes, bilinear upsampling to H x W (align_corners=False)

A context-guided block of width w: 1x1 conv-BN-PReLU to w/2, then in parallel a depthwise 3x3
(local) and a depthwise dilated 3x3 (context), concatenated to w, BN-PReLU, then the global
gate x * sigmoid(fc2(relu(fc1(mean_hw(x))))), plus the block's input. The down block makes its
first conv a 3x3 at stride 2 to the full width w, concatenates to 2w, applies BN-PReLU and a 1x1
projection back to w before the gate, and has no residual. Batch norms use eps = 1e-3.

Every convolution is a :class:`climseg.nn.AtrousConv2d` on explicitly wrapped input (padding 0),
so the depthwise dilated ones run on climseg's depthwise atrous kernels on GPUs.
:func:`climatenet_key` maps ClimateNet's ``CGNetModule`` state_dict names to these modules'.
"""

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from climseg.constants import NUM_CLASSES
from climseg.errors import ConfigError
from climseg.nn import AtrousConv2d

BN_EPS = 1e-3
POLE_PADDINGS = ("circular", "zeros")
MIN_SIZE = 25  # ceil(25 / 8) = 4 rows and columns at stage 3: enough to wrap a dilation-4 kernel


def wrap_pad(x, pad, pole_padding="circular"):
    """``x`` padded by ``pad`` cells on each side: circularly in longitude (the last axis), and in
    latitude circularly (ClimateNet) or with zeros (``pole_padding="zeros"``)."""
    if pad == 0:
        return x
    if pole_padding == "circular":
        return F.pad(x, (pad, pad, pad, pad), mode="circular")
    x = F.pad(x, (pad, pad, 0, 0), mode="circular")
    return F.pad(x, (0, 0, pad, pad))


class WrappedConv(nn.Module):
    """A bias-free k x k convolution (optionally depthwise and dilated) on wrapped input."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, dilation=1, depthwise=False, pole_padding="circular"
    ):
        super().__init__()
        self.pad = (kernel_size - 1) // 2 * dilation
        self.pole_padding = pole_padding
        self.conv = AtrousConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=in_channels if depthwise else 1,
            bias=False,
        )

    def forward(self, x):
        return self.conv(wrap_pad(x, self.pad, self.pole_padding))


class NormPReLU(nn.Module):
    """BatchNorm (eps 1e-3) then a per-channel PReLU."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x):
        return self.act(self.norm(x))


class ConvNormPReLU(nn.Module):
    """Wrapped conv -> BatchNorm -> PReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pole_padding="circular"):
        super().__init__()
        self.conv = WrappedConv(in_channels, out_channels, kernel_size, stride, pole_padding=pole_padding)
        self.norm = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class GlobalContext(nn.Module):
    """Squeeze-and-excitation gate: ``x * sigmoid(fc2(relu(fc1(mean over H, W of x))))``."""

    def __init__(self, channels, reduction):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class ContextGuidedBlock(nn.Module):
    """Residual context-guided block of constant width (see the module docstring)."""

    def __init__(self, width, dilation, reduction, pole_padding="circular"):
        super().__init__()
        half = width // 2
        self.reduce = ConvNormPReLU(width, half, 1, pole_padding=pole_padding)
        self.local = WrappedConv(half, half, 3, depthwise=True, pole_padding=pole_padding)
        self.context = WrappedConv(half, half, 3, dilation=dilation, depthwise=True, pole_padding=pole_padding)
        self.joint = NormPReLU(width)
        self.glob = GlobalContext(width, reduction)

    def forward(self, x):
        y = self.reduce(x)
        y = self.joint(torch.cat([self.local(y), self.context(y)], 1))
        return x + self.glob(y)


class ContextGuidedDown(nn.Module):
    """Context-guided block that halves H and W and sets the width (no residual)."""

    def __init__(self, in_channels, width, dilation, reduction, pole_padding="circular"):
        super().__init__()
        self.reduce = ConvNormPReLU(in_channels, width, 3, stride=2, pole_padding=pole_padding)
        self.local = WrappedConv(width, width, 3, depthwise=True, pole_padding=pole_padding)
        self.context = WrappedConv(width, width, 3, dilation=dilation, depthwise=True, pole_padding=pole_padding)
        self.joint = NormPReLU(2 * width)
        self.project = WrappedConv(2 * width, width, 1, pole_padding=pole_padding)
        self.glob = GlobalContext(width, reduction)

    def forward(self, x):
        y = self.reduce(x)
        y = self.joint(torch.cat([self.local(y), self.context(y)], 1))
        return self.glob(self.project(y))


class InputInjection(nn.Module):
    """The input average-pooled ``times`` times by a wrapped 3x3 window at stride 2."""

    def __init__(self, times, pole_padding="circular"):
        super().__init__()
        self.times, self.pole_padding = times, pole_padding

    def forward(self, x):
        for _ in range(self.times):
            x = F.avg_pool2d(wrap_pad(x, 1, self.pole_padding), 3, stride=2)
        return x


class CGNet(nn.Module):
    """CGNet (Wu et al. 2018) with ClimateNet's layout: M=3, N=21 by default.

    Args:
        in_channels: input variables (ClimateNet's default four: TMQ, U850, V850, PSL).
        num_classes: output classes (background, tropical cyclone, atmospheric river).
        blocks_stage2, blocks_stage3: M and N of the paper (blocks per stage, the down block included).
        pole_padding: ``"circular"`` (ClimateNet: wrap in latitude too) or ``"zeros"``.
        dropout: ClimateNet's optional ``Dropout2d(0.1)`` before the classifier.

    Attributes ``config_name`` (``"cgnet"``), ``input_multiple`` (1: any size) and the methods
    ``check_input`` and ``init_class_prior`` match :class:`~climseg.models.DeepLabV3Plus`, so the
    trainer and ``climseg predict`` take either.
    """

    input_multiple = 1
    output_stride = 8

    def __init__(
        self,
        in_channels=4,
        num_classes=NUM_CLASSES,
        blocks_stage2=3,
        blocks_stage3=21,
        pole_padding="circular",
        dropout=False,
        norm="batch",
    ):
        super().__init__()
        if pole_padding not in POLE_PADDINGS:
            raise ConfigError(f"cgnet: pole_padding must be one of {', '.join(POLE_PADDINGS)}, not {pole_padding!r}")
        if norm != "batch":
            raise ConfigError(f"cgnet: only norm 'batch' is supported, not {norm!r}")
        if blocks_stage2 < 1 or blocks_stage3 < 1:
            raise ConfigError("cgnet: each stage needs at least its down-sampling block")
        self.config_name = "cgnet"
        self.in_channels, self.num_classes, self.norm = in_channels, num_classes, norm
        self.pole_padding = pole_padding
        p = dict(pole_padding=pole_padding)
        c = in_channels
        self.stem = nn.ModuleList(
            [ConvNormPReLU(c, 32, 3, stride=2, **p), ConvNormPReLU(32, 32, 3, **p), ConvNormPReLU(32, 32, 3, **p)]
        )
        self.inject_half = InputInjection(1, **p)
        self.inject_quarter = InputInjection(2, **p)
        self.stage1_out = NormPReLU(32 + c)
        self.stage2_down = ContextGuidedDown(32 + c, 64, dilation=2, reduction=8, **p)
        self.stage2 = nn.ModuleList([ContextGuidedBlock(64, 2, 8, **p) for _ in range(blocks_stage2 - 1)])
        self.stage2_out = NormPReLU(128 + c)
        self.stage3_down = ContextGuidedDown(128 + c, 128, dilation=4, reduction=16, **p)
        self.stage3 = nn.ModuleList([ContextGuidedBlock(128, 4, 16, **p) for _ in range(blocks_stage3 - 1)])
        self.stage3_out = NormPReLU(256)
        self.dropout = nn.Dropout2d(0.1) if dropout else nn.Identity()
        self.classifier = WrappedConv(256, num_classes, 1, **p)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def check_input(self, shape):
        """Raise ConfigError unless ``shape`` (N, C, H, W) fits this network."""
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ConfigError(f"cgnet model expects input (N, {self.in_channels}, H, W), got {tuple(shape)}")
        if min(shape[2], shape[3]) < MIN_SIZE:
            raise ConfigError(
                f"cgnet model needs height and width of at least {MIN_SIZE} (its dilation-4 layers wrap "
                f"an H/8 x W/8 map), got {shape[2]}x{shape[3]}"
            )

    def init_class_prior(self, frequencies):
        """CGNet's classifier has no bias (as ClimateNet's): nothing to set; returns False."""
        return False

    def forward(self, x):
        self.check_input(x.shape)
        y = x
        for layer in self.stem:
            y = layer(y)
        y = self.stage1_out(torch.cat([y, self.inject_half(x)], 1))
        down2 = self.stage2_down(y)
        y = down2
        for block in self.stage2:
            y = block(y)
        y = self.stage2_out(torch.cat([y, down2, self.inject_quarter(x)], 1))
        down3 = self.stage3_down(y)
        y = down3
        for block in self.stage3:
            y = block(y)
        y = self.stage3_out(torch.cat([down3, y], 1))
        logits = self.classifier(self.dropout(y))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


# ClimateNet CGNetModule name -> climseg CGNet name, as (pattern, replacement) pairs applied in order
# to each key; ClimateNet's own layer names are on the left.
_SUB_LAYERS = [
    (r"\.conv1x1\.conv\.", ".reduce.conv.conv."),
    (r"\.conv1x1\.bn\.", ".reduce.norm."),
    (r"\.conv1x1\.act\.", ".reduce.act."),
    (r"\.F_loc\.conv\.", ".local.conv."),
    (r"\.F_sur\.conv\.", ".context.conv."),
    (r"\.bn_prelu\.bn\.", ".joint.norm."),
    (r"\.bn_prelu\.act\.", ".joint.act."),
    (r"\.reduce\.conv\.weight$", ".project.conv.weight"),
    (r"\.F_glo\.fc\.0\.", ".glob.fc1."),
    (r"\.F_glo\.fc\.2\.", ".glob.fc2."),
]
_TOP_LAYERS = [
    (r"^level1_(\d)\.conv\.", r"stem.\1.conv.conv."),
    (r"^level1_(\d)\.bn\.", r"stem.\1.norm."),
    (r"^level1_(\d)\.act\.", r"stem.\1.act."),
    (r"^b1\.bn\.", "stage1_out.norm."),
    (r"^b1\.act\.", "stage1_out.act."),
    (r"^bn_prelu_2\.bn\.", "stage2_out.norm."),
    (r"^bn_prelu_2\.act\.", "stage2_out.act."),
    (r"^bn_prelu_3\.bn\.", "stage3_out.norm."),
    (r"^bn_prelu_3\.act\.", "stage3_out.act."),
    (r"^level2_0\.", "stage2_down."),
    (r"^level3_0\.", "stage3_down."),
    (r"^level2\.(\d+)\.", r"stage2.\1."),
    (r"^level3\.(\d+)\.", r"stage3.\1."),
    (r"^classifier\.\d+\.conv\.weight$", "classifier.conv.weight"),
]


def climatenet_key(name):
    """The climseg CGNet state_dict key of a ClimateNet ``CGNetModule`` key."""
    for pattern, repl in _TOP_LAYERS:
        name = re.sub(pattern, repl, name)
    # the down blocks' top-level bn/act (after the concatenation) are the "joint" norm
    name = re.sub(r"^(stage\d_down)\.bn\.", r"\1.joint.norm.", name)
    name = re.sub(r"^(stage\d_down)\.act\.", r"\1.joint.act.", name)
    for pattern, repl in _SUB_LAYERS:
        name = re.sub(pattern, repl, name)
    return name


def from_climatenet_state(state_dict):
    """ClimateNet ``CGNetModule`` weights as a climseg CGNet state_dict plus the model's shape:
    ``(state, dict(in_channels, num_classes, blocks_stage2, blocks_stage3, dropout))``."""
    state = {climatenet_key(k): v for k, v in state_dict.items()}
    try:
        in_channels = state["stem.0.conv.conv.weight"].shape[1]
        num_classes = state["classifier.conv.weight"].shape[0]
    except KeyError as exc:
        raise ConfigError(f"not a ClimateNet CGNetModule state dict (no {exc.args[0]!r} after renaming)") from None
    blocks2 = 1 + len({k.split(".")[1] for k in state if k.startswith("stage2.")})
    blocks3 = 1 + len({k.split(".")[1] for k in state if k.startswith("stage3.")})
    dropout = any(re.match(r"^classifier\.1\.conv\.weight$", k) for k in state_dict)
    return state, dict(
        in_channels=int(in_channels),
        num_classes=int(num_classes),
        blocks_stage2=blocks2,
        blocks_stage3=blocks3,
        dropout=dropout,
    )
