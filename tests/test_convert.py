"""convert_model on other people's models: batch norms folded wherever the data flow has a
conv -> norm pair (torch.fx, with the module-structure rule where a model does not trace),
third-party ASPPs replaced by climseg's (same outputs in train and eval mode), the state dict
back in the original layout (unfold_state_dict).

The models below are written here in the SHAPE of torchvision's DeepLabV3 / FCN (ResNet-50
Bottleneck blocks that hold conv1/bn1 as attributes and call them in forward, one shared ReLU,
an IntermediateLayerGetter-style backbone returning a dict, torchvision's ASPP) and of
segmentation-models-pytorch's DeepLabV3+ (a ResNet encoder, a forward that checks the input
size in Python, separable or plain ASPP), with narrow widths so that each test takes a second.
The real packages are tested at the end where they import.
"""

import collections
import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from climseg.nn import ASPP, AtrousConv2d, convert_model, unfold_state_dict


# ---------------------------------------------------------------------------------------------
# torchvision-shaped models
# ---------------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)  # one ReLU module called three times
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet-50's layout ([3, 4, 6, 3] Bottlenecks) at 1/16 of its width; the last two stages
    dilated instead of strided (replace_stride_with_dilation=[False, True, True])."""

    def __init__(self, in_channels=16, width=4, layers=(3, 4, 6, 3), dilate=(False, True, True)):
        super().__init__()
        self.inplanes, self.dilation = width, 1
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(width, layers[0])
        self.layer2 = self._layer(width * 2, layers[1], 2, dilate[0])
        self.layer3 = self._layer(width * 4, layers[2], 2, dilate[1])
        self.layer4 = self._layer(width * 8, layers[3], 2, dilate[2])

    def _layer(self, planes, blocks, stride=1, dilate=False):
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        out = [Bottleneck(self.inplanes, planes, stride, downsample, previous)]
        self.inplanes = planes * 4
        out += [Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*out)


class IntermediateLayerGetter(nn.ModuleDict):
    def __init__(self, model, return_layers):
        layers = collections.OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            if name == list(return_layers)[-1]:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x):
        out = collections.OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class TVASPPConv(nn.Sequential):
    def __init__(self, cin, cout, dilation):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )


class TVASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class TVASPP(nn.Module):
    def __init__(self, cin, rates, cout=8, dropout=0.5):
        super().__init__()
        modules = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        modules += [TVASPPConv(cin, cout, r) for r in rates]
        modules.append(TVASPPPooling(cin, cout))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, x):
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class SimpleSegmentationModel(nn.Module):
    def __init__(self, backbone, classifier, aux_classifier=None):
        super().__init__()
        self.backbone, self.classifier, self.aux_classifier = backbone, classifier, aux_classifier

    def forward(self, x):
        input_shape = x.shape[-2:]
        features = self.backbone(x)
        result = collections.OrderedDict()
        result["out"] = F.interpolate(
            self.classifier(features["out"]), size=input_shape, mode="bilinear", align_corners=False
        )
        if self.aux_classifier is not None:
            result["aux"] = F.interpolate(
                self.aux_classifier(features["aux"]), size=input_shape, mode="bilinear", align_corners=False
            )
        return result


def tv_deeplabv3(num_classes=3, aux=False):
    """torchvision.models.segmentation.deeplabv3_resnet50's structure (16 input channels)."""
    backbone = IntermediateLayerGetter(ResNet(), {"layer3": "aux", "layer4": "out"} if aux else {"layer4": "out"})
    head = nn.Sequential(
        TVASPP(128, [12, 24, 36]),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, num_classes, 1),
    )
    return SimpleSegmentationModel(backbone, head, tv_fcn_head(64, num_classes) if aux else None)


def tv_fcn_head(cin, num_classes):
    return nn.Sequential(
        nn.Conv2d(cin, cin // 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(cin // 4),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(cin // 4, num_classes, 1),
    )


def tv_fcn(num_classes=3):
    """torchvision.models.segmentation.fcn_resnet50's structure, with its auxiliary head."""
    backbone = IntermediateLayerGetter(ResNet(), {"layer3": "aux", "layer4": "out"})
    return SimpleSegmentationModel(backbone, tv_fcn_head(128, num_classes), tv_fcn_head(64, num_classes))


# ---------------------------------------------------------------------------------------------
# segmentation-models-pytorch-shaped DeepLabV3+
# ---------------------------------------------------------------------------------------------
class SeparableConv2d(nn.Sequential):
    def __init__(self, cin, cout, kernel_size, padding=0, dilation=1, bias=True):
        super().__init__(
            nn.Conv2d(cin, cin, kernel_size, padding=padding, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=bias),
        )


class SmpASPP(nn.Module):
    def __init__(self, cin, cout, rates, separable, dropout=0.5):
        super().__init__()
        branch = (
            (
                lambda r: nn.Sequential(
                    SeparableConv2d(cin, cout, 3, padding=r, dilation=r, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
                )
            )
            if separable
            else (lambda r: TVASPPConv(cin, cout, r))
        )
        modules = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        modules += [branch(r) for r in rates]
        modules.append(TVASPPPooling(cin, cout))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(
            nn.Conv2d(5 * cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, x):
        res = [conv(x) for conv in self.convs]
        return self.project(torch.cat(res, dim=1))


class SmpResNetEncoder(ResNet):
    def __init__(self):
        super().__init__(layers=(3, 4, 6, 3), dilate=(False, False, True))  # output stride 16

    def forward(self, x):
        stages = [
            nn.Identity(),
            nn.Sequential(self.conv1, self.bn1, self.relu),
            nn.Sequential(self.maxpool, self.layer1),
            self.layer2,
            self.layer3,
            self.layer4,
        ]
        features = []
        for stage in stages:
            x = stage(x)
            features.append(x)
        return features


class SmpDeepLabV3PlusDecoder(nn.Module):
    def __init__(self, encoder_channels, out_channels=8, rates=(12, 24, 36), separable=True):
        super().__init__()
        self.aspp = nn.Sequential(
            SmpASPP(encoder_channels[-1], out_channels, rates, separable),
            SeparableConv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.up = nn.UpsamplingBilinear2d(scale_factor=4)
        self.block1 = nn.Sequential(nn.Conv2d(encoder_channels[2], 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = nn.Sequential(
            SeparableConv2d(6 + out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, *features):
        aspp = self.up(self.aspp(features[-1]))
        return self.block2(torch.cat([aspp, self.block1(features[2])], dim=1))


class SmpDeepLabV3Plus(nn.Module):
    """segmentation_models_pytorch.DeepLabV3Plus(encoder_name="resnet50")'s structure."""

    def __init__(self, classes=3, separable=True):
        super().__init__()
        self.encoder = SmpResNetEncoder()
        self.decoder = SmpDeepLabV3PlusDecoder([16, 4, 16, 32, 64, 128], separable=separable)
        self.segmentation_head = nn.Sequential(nn.Conv2d(8, classes, 1), nn.UpsamplingBilinear2d(scale_factor=4))

    def check_input_shape(self, x):
        h, w = x.shape[-2:]
        if h % 16 or w % 16:  # Python control flow on the shape: torch.fx cannot trace it
            raise RuntimeError(f"input size {h}x{w} is not divisible by 16")

    def forward(self, x):
        self.check_input_shape(x)
        return self.segmentation_head(self.decoder(*self.encoder(x)))


# ---------------------------------------------------------------------------------------------
def _randomise(model, seed):
    """Non-trivial weights and running statistics, and the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


def _out(y):
    return y["out"] if isinstance(y, dict) else y


def _norms(model):
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.fixture
def seed():
    return int(torch.randint(0, 2**31 - 1, ()))


@pytest.mark.parametrize("fuse_aspp", [False, True])
def test_torchvision_shaped_deeplabv3_folds_every_norm_after_a_conv(seed, fuse_aspp, caplog):
    torch.manual_seed(seed)
    model = _randomise(tv_deeplabv3(), seed)
    assert _norms(model) == 60  # as torchvision's deeplabv3_resnet50
    x = torch.randn(2, 16, 33, 47)
    with torch.no_grad():
        expected = _out(model(x))
        with caplog.at_level(logging.INFO, logger="climseg.nn.convert"):
            converted = convert_model(model, fold_bn=True, fuse_aspp=fuse_aspp, backend="torch")
        got = _out(converted(x))
    report = converted.conversion_report
    assert report.norms == 60 and len(report.folded) == 60 and report.not_folded == [], report
    assert report.traced == ["(model)"] and report.untraced == []
    assert _norms(converted) == 0
    folded_names = {norm for _, norm, _ in report.folded}
    assert {
        "backbone.bn1",
        "backbone.layer1.0.bn1",
        "backbone.layer4.2.bn3",
        "backbone.layer2.0.downsample.1",
    } <= folded_names
    # the stem's ReLU feeds only its norm: folded; a Bottleneck's shared ReLU is not
    assert ("backbone.conv1", "backbone.bn1", "backbone.relu") in report.folded
    assert ("backbone.layer1.0.conv1", "backbone.layer1.0.bn1", None) in report.folded
    assert isinstance(converted.backbone.layer1[0].relu, nn.ReLU)
    if fuse_aspp:
        assert report.aspp_replaced == ["classifier.0"] and isinstance(converted.classifier[0], ASPP)
    assert "folded 60 of 60 batch norms" in caplog.text
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_torchvision_shaped_fcn_with_aux_head(seed):
    model = _randomise(tv_fcn(), seed)
    x = torch.randn(1, 16, 32, 40)
    with torch.no_grad():
        expected = model(x)
        converted = convert_model(model, fold_bn=True)
        got = converted(x)
    report = converted.conversion_report
    assert report.norms == _norms(model) == 55 and len(report.folded) == 55, report.not_folded
    for key in ("out", "aux"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("separable", [True, False])
def test_smp_shaped_deeplabv3plus_traces_part_by_part(seed, separable):
    """The model's forward does not trace (a size check in Python): its encoder, decoder and
    head are traced one by one, so the Bottlenecks' attribute norms still fold."""
    model = _randomise(SmpDeepLabV3Plus(separable=separable), seed)
    x = torch.randn(2, 16, 64, 48)
    with torch.no_grad():
        expected = model(x)
        converted = convert_model(model, fold_bn=True, fuse_aspp=True)
        got = converted(x)
    report = converted.conversion_report
    assert report.untraced and report.untraced[0][0] == "(model)" and "TraceError" in report.untraced[0][1]
    assert {"encoder", "decoder", "segmentation_head"} <= set(report.traced)  # encoder: stages built in forward
    assert report.norms == 62 and len(report.folded) == 62, report.not_folded
    if separable:  # depthwise + pointwise branches: not climseg's ASPP (it would cost 9x the work)
        assert report.aspp_replaced == [] and "separable" in report.aspp_not_replaced[0][1]
    else:
        assert report.aspp_replaced == ["decoder.aspp.0"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_third_party_aspp_becomes_climseg_aspp_with_the_same_outputs(seed, training):
    """Same parameter tensors, same outputs, and in training the same running statistics and
    the same dropout mask."""
    torch.manual_seed(seed)
    rates = [2, 3, 5]
    theirs = _randomise(TVASPP(12, rates, cout=6), seed).train(training)
    reference = copy.deepcopy(theirs)
    ours = convert_model(theirs, fuse_aspp=True, backend="torch", inplace=True)
    assert isinstance(ours, ASPP) and ours.rates == tuple(rates) and ours.training == training
    assert ours.backend == "torch" and all(m.backend == "torch" for m in ours.modules() if isinstance(m, AtrousConv2d))
    assert ours.atrous[1].conv.weight is theirs.convs[2][0].weight  # the same tensors
    x = torch.randn(3, 12, 9, 11)
    torch.manual_seed(seed)
    expected = reference(x)
    torch.manual_seed(seed)
    got = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if training:
        assert (got == 0).float().mean() > 0.3  # dropout ran
        ours_state = unfold_state_dict(ours)
        for name, a in reference.state_dict().items():
            torch.testing.assert_close(ours_state[name], a, rtol=1e-6, atol=1e-6)
        got.sum().backward()
        assert theirs.convs[1][0].weight.grad is not None


def test_unfold_state_dict_gives_the_original_model_the_weights(seed):
    model = _randomise(tv_deeplabv3(), seed)
    converted = convert_model(model, fold_bn=True, fuse_aspp=True)
    state = unfold_state_dict(converted)
    assert state.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():  # nothing changed: the saved norms come back
        assert torch.equal(state[key], value), key
    # a folded epilogue changed after conversion (fine-tuned, or loaded): the norm is rebuilt from it
    conv = converted.backbone.layer2[1].conv2
    conv.scale.mul_(torch.rand_like(conv.scale) + 0.5)
    conv.shift.add_(torch.randn_like(conv.shift) * 0.1)
    fresh = _randomise(tv_deeplabv3(), seed + 1)
    fresh.load_state_dict(unfold_state_dict(converted))
    x = torch.randn(1, 16, 31, 29)
    with torch.no_grad():
        torch.testing.assert_close(_out(fresh(x)), _out(converted(x)), rtol=1e-4, atol=1e-4)


def test_what_cannot_fold_is_reported_with_the_reason():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn_shared_input = nn.BatchNorm2d(4)
            self.bn_after_relu = nn.BatchNorm2d(4)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            return self.bn_shared_input(y) + self.bn_after_relu(self.relu(y))

    model = _randomise(Odd(), 5)
    x = torch.randn(2, 3, 7, 6)
    with torch.no_grad():
        expected = model(x)
        converted = convert_model(model, fold_bn=True)
        got = converted(x)
    reasons = dict(converted.conversion_report.not_folded)
    assert converted.conversion_report.folded == []
    assert "also used by" in reasons["bn_shared_input"]
    assert "relu" in reasons["bn_after_relu"] and "not a convolution" in reasons["bn_after_relu"]
    torch.testing.assert_close(got, expected)


def test_backend_reaches_every_climseg_module_including_aspp():
    from climseg.models import DeepLabV3Plus

    model = DeepLabV3Plus("tiny").eval()
    converted = convert_model(model, backend="torch")
    aspps = [m for m in converted.modules() if isinstance(m, ASPP)]
    assert aspps and all(m.backend == "torch" for m in aspps)
    assert all(m.backend == "torch" for m in converted.modules() if isinstance(m, AtrousConv2d))


# ---------------------------------------------------------------------------------------------
# the real packages, where they import
# ---------------------------------------------------------------------------------------------
def _import_or_skip(name):
    try:
        return __import__(name)
    except Exception as exc:  # torchvision beside a torch it was not built for raises RuntimeError
        pytest.skip(f"{name} does not import here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def test_real_torchvision_deeplabv3_resnet50():
    _import_or_skip("torchvision")
    from torchvision.models.segmentation import deeplabv3_resnet50

    model = _randomise(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3), 1)
    model.backbone.conv1 = nn.Conv2d(16, 64, 7, 2, 3, bias=False)
    x = torch.randn(1, 16, 64, 64)
    with torch.no_grad():
        expected = model(x)["out"]
        converted = convert_model(model, fold_bn=True, fuse_aspp=True)
        got = converted(x)["out"]
    report = converted.conversion_report
    assert report.aspp_replaced == ["classifier.0"] and len(report.folded) == report.norms == 60, report
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_real_smp_deeplabv3plus():
    _import_or_skip("torchvision")
    smp = _import_or_skip("segmentation_models_pytorch")

    model = _randomise(
        smp.DeepLabV3Plus("resnet34", encoder_weights=None, in_channels=16, classes=3, decoder_aspp_separable=False), 2
    )
    x = torch.randn(1, 16, 64, 64)
    with torch.no_grad():
        expected = model(x)
        converted = convert_model(model, fold_bn=True, fuse_aspp=True)
        got = converted(x)
    report = converted.conversion_report
    assert len(report.aspp_replaced) == 1 and not report.not_folded, report
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("training", [False, True])
def test_replaced_aspp_on_the_fused_kernel_path(seed, training):
    """backend="triton" (the Triton interpreter on CPU): the branches run as one launch, with the
    norms folded (eval) or as one batch norm over the concatenated channels (training)."""
    pytest.importorskip("triton")
    from climseg.ops import backend as backend_module

    theirs = _randomise(TVASPP(8, [2, 3, 4], cout=4, dropout=0.0), seed).train(training)
    reference = copy.deepcopy(theirs)
    ours = convert_model(theirs, fuse_aspp=True, fold_bn=not training, backend="triton")
    x = torch.randn(2, 8, 7, 5)
    try:
        fused = backend_module.resolve("aspp_conv", "triton", x) == "triton"
    except Exception as exc:
        pytest.skip(f"no Triton path here: {exc}")
    assert fused and ours._fusable(x)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


def test_converted_model_compiles_without_graph_break(seed):
    """A converted, folded third-party model (reference path on CPU) under
    torch.compile(fullgraph=True) gives the eager outputs."""
    model = _randomise(TVASPP(6, [2, 3], cout=4), seed)
    converted = convert_model(model, fold_bn=True, fuse_aspp=True, backend="torch")
    x = torch.randn(2, 6, 7, 9)
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), converted(x))
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# checkpoints: a converted model's state dict in the original layout, both ways (issue 28, item 5)
# ---------------------------------------------------------------------------------------------
def _climseg_state(model):
    """The converted model's own tensors (climseg's keys), for exact comparisons."""
    previous = model.state_dict_layout
    model.state_dict_layout = "climseg"
    try:
        return {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        model.state_dict_layout = previous


def _assert_same_tensors(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_converted_model_saves_the_original_layout_and_the_plain_model_loads_it(seed):
    """Before: plain.load_state_dict(converted.state_dict()) failed (Error(s) in loading state_dict)."""
    model = _randomise(tv_deeplabv3(), seed)
    converted = convert_model(model, fold_bn=True, fuse_aspp=True)
    assert converted.conversion_report.folded and converted.conversion_report.aspp_replaced
    state = converted.state_dict()
    _assert_same_tensors(state, model.state_dict())  # same keys, same order, same values
    plain = _randomise(tv_deeplabv3(), seed + 1)
    plain.load_state_dict(state)  # strict
    x = torch.randn(1, 16, 31, 29)
    with torch.no_grad():
        torch.testing.assert_close(_out(plain(x)), _out(converted(x)), rtol=1e-4, atol=1e-4)
    explicit = unfold_state_dict(converted)
    _assert_same_tensors(explicit, state)
    assert converted.state_dict_layout == "original"


def test_plain_checkpoint_loads_into_a_converted_model_exactly(seed):
    source = _randomise(tv_deeplabv3(), seed)
    target = convert_model(_randomise(tv_deeplabv3(), seed + 1), fold_bn=True, fuse_aspp=True)
    result = target.load_state_dict(source.state_dict())  # strict: nothing missing, nothing unexpected
    assert not result.missing_keys and not result.unexpected_keys
    expected = convert_model(source, fold_bn=True, fuse_aspp=True)
    _assert_same_tensors(_climseg_state(target), _climseg_state(expected))  # the same folded scale and shift
    _assert_same_tensors(target.state_dict(), source.state_dict())  # and back, unchanged
    x = torch.randn(1, 16, 23, 27)
    with torch.no_grad():
        torch.testing.assert_close(_out(target(x)), _out(source(x)), rtol=1e-4, atol=1e-4)


def test_changed_epilogue_goes_through_the_original_layout_bit_for_bit(seed):
    """A folded scale and shift that no saved norm gives (fine-tuned after folding): the original
    layout carries them as a unit-variance norm, and loading that back restores them exactly."""
    converted = convert_model(_randomise(tv_deeplabv3(), seed), fold_bn=True, fuse_aspp=True)
    for conv in (converted.backbone.layer2[1].conv2, converted.classifier[0].atrous[1].conv):
        conv.scale.mul_(torch.rand_like(conv.scale) + 0.5)
        conv.shift.add_(torch.randn_like(conv.shift) * 0.1)
    state = converted.state_dict()
    assert torch.equal(state["classifier.0.convs.2.1.running_mean"], torch.zeros(8))
    other = convert_model(_randomise(tv_deeplabv3(), seed + 2), fold_bn=True, fuse_aspp=True)
    other.load_state_dict(state)
    _assert_same_tensors(_climseg_state(other), _climseg_state(converted))
    plain = _randomise(tv_deeplabv3(), seed + 3)
    plain.load_state_dict(state)
    x = torch.randn(1, 16, 19, 21)
    with torch.no_grad():
        torch.testing.assert_close(_out(plain(x)), _out(converted(x)), rtol=1e-4, atol=1e-4)


def test_climseg_layout_on_request_and_both_layouts_load(seed):
    model = _randomise(tv_deeplabv3(), seed)
    ours = convert_model(model, fold_bn=True, fuse_aspp=True, state_dict_layout="climseg")
    own = ours.state_dict()
    assert "classifier.0.atrous.0.conv.scale" in own and "classifier.0.convs.1.1.weight" not in own
    with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict"):
        _randomise(tv_deeplabv3(), seed + 1).load_state_dict(own)  # climseg's keys: the plain model refuses them
    default = convert_model(_randomise(tv_deeplabv3(), seed + 1), fold_bn=True, fuse_aspp=True)
    default.load_state_dict(own)  # an old (climseg-layout) checkpoint still loads
    _assert_same_tensors(_climseg_state(default), own)
    with pytest.raises(ValueError, match="state_dict_layout"):
        convert_model(model, state_dict_layout="torchvision")


def test_wrapped_converted_model_keeps_the_original_layout_under_its_prefix(seed):
    """Inside a wrapper (as in a LightningModule, DDP or torch.compile) only the converted
    model's keys, under its prefix, change."""
    theirs = _randomise(TVASPP(6, [2, 3], cout=4), seed).train()
    wrapper = nn.ModuleDict({"head": nn.Conv2d(3, 6, 1), "net": convert_model(theirs, fuse_aspp=True)})
    plain = nn.ModuleDict({"head": nn.Conv2d(3, 6, 1), "net": _randomise(TVASPP(6, [2, 3], cout=4), seed + 1)})
    state = wrapper.state_dict()
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state)
    back = nn.ModuleDict({"head": nn.Conv2d(3, 6, 1), "net": convert_model(plain["net"], fuse_aspp=True)})
    back.load_state_dict(plain.state_dict())
    _assert_same_tensors(back.state_dict(), state)
    compiled = torch.compile(wrapper["net"], backend="eager")
    assert all(k.startswith("_orig_mod.convs.") or k.startswith("_orig_mod.project.") for k in compiled.state_dict())
