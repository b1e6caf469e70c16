"""FLOP counting on the meta device."""

import torch
import torch.nn as nn

from climseg.models import DeepLabV3Plus
from climseg.perf import count_flops

SC18_TFLOP_PER_SAMPLE = 14.41  # forward + backward at 768 x 1152, as logged by the SC18 code


def test_single_layers_match_formula():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2)
    assert count_flops(conv, (3, 8, 20, 30), backward=False) == 2 * 3 * 10 * 15 * 12 * 4 * 9
    deconv = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
    assert count_flops(deconv, (1, 8, 5, 7)) == 3 * 2 * 5 * 7 * 8 * 6 * 9
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_flops(lin, (4, 3, 2, 2), backward=False) == 2 * 4 * 12 * 5


def test_kurth2018_near_the_sc18_figure_and_model_untouched():
    with torch.device("meta"):
        model = DeepLabV3Plus("kurth2018")
    tflop = count_flops(model, (1, 16, 768, 1152)) / 1e12
    assert abs(tflop - SC18_TFLOP_PER_SAMPLE) / SC18_TFLOP_PER_SAMPLE < 0.15
    tiny = DeepLabV3Plus("tiny")
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    assert count_flops(tiny, (2, 16, 64, 96)) == 2 * count_flops(tiny, (1, 16, 64, 96))
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert tiny.training and next(tiny.parameters()).device.type == "cpu"
