"""DeepLabv3+ configurations: parameter counts against the published figures,
output shapes at sizes other than 768 x 1152, the drop-in modules."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from climseg.errors import ConfigError
from climseg.models import CONFIGS, DeepLabV3Plus, count_parameters
from climseg.nn import ASPP, AtrousConv2d

SC18_PARAMETERS = 43_669_251  # Kurth et al. 2018, trainable parameters
DEEPCAM_PARAMETERS = 56.45e6  # MLPerf HPC DeepCAM reference


def meta_model(config, **kw):
    with torch.device("meta"):
        return DeepLabV3Plus(config, **kw)


def test_kurth2018_parameters():
    n = count_parameters(meta_model("kurth2018"))
    assert abs(n - SC18_PARAMETERS) / SC18_PARAMETERS < 0.05
    # the published count leaves out batch-norm parameters: without norms it is exact
    assert count_parameters(meta_model("kurth2018", norm="none")) == SC18_PARAMETERS


def test_deepcam_parameters():
    n = count_parameters(meta_model("deepcam"))
    assert abs(n - DEEPCAM_PARAMETERS) / DEEPCAM_PARAMETERS < 0.01


@pytest.mark.parametrize("config", ["kurth2018", "deepcam", "tiny"])
@pytest.mark.parametrize("shape", [(2, 16, 96, 144), (1, 16, 128, 64), (1, 16, 48, 208)])
def test_output_shapes_on_meta(config, shape):
    model = meta_model(config)
    if shape[2] % model.input_multiple or shape[3] % model.input_multiple:
        pytest.skip("size not a multiple of this network's stride")
    out = model(torch.empty(shape, device="meta"))
    assert tuple(out.shape) == (shape[0], 3, shape[2], shape[3])


def test_strides_and_dilations():
    kurth, deepcam = meta_model("kurth2018"), meta_model("deepcam")
    assert kurth.output_stride == 8 and deepcam.output_stride == 16
    assert kurth.aspp.rates == (12, 24, 36) and deepcam.aspp.rates == (6, 12, 18)
    dilated = [m for m in kurth.modules() if isinstance(m, nn.Conv2d) and max(m.dilation) > 1]
    assert dilated and all(isinstance(m, AtrousConv2d) for m in dilated)
    dilated = [m for m in deepcam.modules() if isinstance(m, nn.Conv2d) and max(m.dilation) > 1]
    assert dilated and all(isinstance(m, AtrousConv2d) for m in dilated)
    assert any(m.groups == m.in_channels > 1 for m in dilated), "no depthwise dilated convs in the Xception exit flow"
    assert isinstance(kurth.aspp, ASPP) and isinstance(deepcam.aspp, ASPP)


def test_tiny_runs_forward_backward_and_channels_last():
    torch.manual_seed(0)
    model = DeepLabV3Plus("tiny").eval()
    x = torch.randn(2, 16, 32, 48)
    y = model(x)
    assert y.shape == (2, 3, 32, 48) and torch.isfinite(y).all()
    cl = model.to(memory_format=torch.channels_last)
    y2 = cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, y2, rtol=1e-4, atol=1e-4)
    model.train()
    loss = F.cross_entropy(model(x), torch.randint(0, 3, (2, 32, 48)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_other_channel_counts_and_bad_input():
    model = meta_model("tiny", in_channels=4, num_classes=5)
    assert model(torch.empty(1, 4, 32, 32, device="meta")).shape == (1, 5, 32, 32)
    with pytest.raises(ConfigError, match="multiples of 16"):
        meta_model("deepcam")(torch.empty(1, 16, 40, 48, device="meta"))
    with pytest.raises(ConfigError, match=r"expects input \(N, 4, H, W\)"):
        model(torch.empty(1, 16, 32, 32, device="meta"))
    with pytest.raises(ConfigError, match="unknown model configuration 'resnet'"):
        DeepLabV3Plus("resnet")
    assert set(CONFIGS) == {"kurth2018", "deepcam", "tiny"}


def test_atrous_conv2d_is_a_drop_in():
    torch.manual_seed(1)
    ref = nn.Conv2d(6, 10, 3, stride=1, padding=4, dilation=4, bias=True)
    ours = AtrousConv2d(6, 10, 3, stride=1, padding=4, dilation=4, bias=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 17, 23)
    torch.testing.assert_close(ours(x), ref(x))
    grouped = AtrousConv2d(6, 6, 3, padding=2, dilation=2, groups=6, bias=False)
    assert grouped(x).shape == (2, 6, 17, 23)
    reflect = AtrousConv2d(6, 4, 3, padding=1, padding_mode="reflect")
    assert reflect(x).shape == (2, 4, 17, 23)


def test_aspp_matches_a_hand_built_pyramid():
    torch.manual_seed(2)
    aspp = ASPP(8, 4, rates=(1, 2, 3)).eval()
    x = torch.randn(2, 8, 9, 11)
    branches = [aspp.conv1x1(x)] + [b(x) for b in aspp.atrous]
    pooled = F.relu(aspp.pool[2](aspp.pool[1](x.mean(dim=(2, 3), keepdim=True))))
    branches.append(pooled.expand(-1, -1, 9, 11))
    torch.testing.assert_close(aspp(x), aspp.project(torch.cat(branches, 1)))
    assert aspp(x).shape == (2, 4, 9, 11)
    # batch norm in the pooling branch would fail on a single 1x1 sample in training
    aspp.train()(torch.randn(1, 8, 5, 5))
