"""CGNet (config ``cgnet``): parameter count against a hand derivation of ClimateNet's layer list,
shapes for any input size and channel count, and import of ClimateNet-named weights checked
against a direct functional computation with those weights (fp32, CPU)."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from climseg.data.checkpoints import convert_checkpoint as convert
from climseg.errors import CheckpointError, ConfigError
from climseg.models import CGNet, build_network, count_parameters
from climseg.models.layouts import climatenet_model, init_weights


def hand_count(c, k, m=3, n=21):
    """Trainable parameters of ClimateNet's CGNetModule(classes=k, channels=c, M=m, N=n), from its layer
    list: conv weights (no biases), BN 2 per channel, PReLU 1 per channel, SE linears with biases."""

    def cbp(cin, cout, ks):  # ConvBNPReLU
        return cin * cout * ks * ks + 3 * cout

    def se(w, r):  # FGlo: Linear(w, w/r), Linear(w/r, w)
        return w * (w // r) + w // r + (w // r) * w + w

    def down(cin, w, r):  # ContextGuidedBlock_Down
        return cbp(cin, w, 3) + 9 * w + 9 * w + 3 * 2 * w + 2 * w * w + se(w, r)

    def block(w, r):  # ContextGuidedBlock
        h = w // 2
        return cbp(w, h, 1) + 9 * h + 9 * h + 3 * w + se(w, r)

    stage1 = cbp(c, 32, 3) + 2 * cbp(32, 32, 3) + 3 * (32 + c)
    stage2 = down(32 + c, 64, 8) + (m - 1) * block(64, 8) + 3 * (128 + c)
    stage3 = down(128 + c, 128, 16) + (n - 1) * block(128, 16) + 3 * 256
    return stage1 + stage2 + stage3 + 256 * k


@pytest.mark.parametrize("c,k,m,n", [(4, 3, 3, 21), (16, 3, 3, 21), (3, 19, 3, 21), (2, 3, 2, 4)])
def test_parameter_count(c, k, m, n):
    model = CGNet(c, k, blocks_stage2=m, blocks_stage3=n)
    assert count_parameters(model) == hand_count(c, k, m, n)


def test_parameter_count_figures():
    # ClimateNet's default network (4 fields, 3 classes) and the paper's Cityscapes network
    # (3 channels, 19 classes; Wu et al. 2018 give 0.5 M parameters for M=3, N=21).
    assert count_parameters(CGNet(4, 3)) == 494_232
    assert round(count_parameters(CGNet(3, 19)) / 1e6, 1) == 0.5


@pytest.mark.parametrize("c,h,w", [(4, 37, 53), (16, 25, 40), (1, 26, 27)])
def test_any_size_and_channels(c, h, w):
    model = build_network("cgnet", c, 3).eval()
    y = model(torch.randn(2, c, h, w))
    assert y.shape == (2, 3, h, w) and torch.isfinite(y).all()
    y.float().sum()
    with pytest.raises(ConfigError):
        model(torch.randn(1, c + 1, h, w))
    with pytest.raises(ConfigError, match="at least 25"):
        model(torch.randn(1, c, 24, w))


def test_pole_padding_changes_only_edges_on_input():
    torch.manual_seed(0)
    circ = CGNet(4, 3).eval()
    zeros = CGNet(4, 3, pole_padding="zeros").eval()
    zeros.load_state_dict(circ.state_dict())
    x = torch.randn(1, 4, 32, 48)
    assert not torch.equal(circ(x), zeros(x))
    with pytest.raises(ConfigError):
        CGNet(4, 3, pole_padding="reflect")


def test_trains_a_step():
    model = CGNet(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 4, 32, 40), torch.randint(0, 3, (2, 32, 40))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()


# ---------------------------------------------------------------- ClimateNet-named weights
def climatenet_shapes(c, k, m=3, n=21):
    """(key, shape) of ClimateNet's CGNetModule state_dict, re-stated from its layer naming:
    level1_0..2 / b1 / level2_0 / level2.i / bn_prelu_2 / level3_0 / level3.i / bn_prelu_3 /
    classifier.0; ConvBNPReLU = conv, bn, act; BNPReLU = bn, act; F_loc/F_sur/reduce hold .conv;
    FGlo is fc.0 and fc.2 (Linear), fc.1 ReLU, fc.3 Sigmoid."""
    out = []

    def bn(prefix, ch):
        out.extend(
            [
                (f"{prefix}.weight", (ch,)),
                (f"{prefix}.bias", (ch,)),
                (f"{prefix}.running_mean", (ch,)),
                (f"{prefix}.running_var", (ch,)),
                (f"{prefix}.num_batches_tracked", ()),
            ]
        )

    def cbp(prefix, cin, cout, ks):
        out.append((f"{prefix}.conv.weight", (cout, cin, ks, ks)))
        bn(f"{prefix}.bn", cout)
        out.append((f"{prefix}.act.weight", (cout,)))

    def bnp(prefix, ch):
        bn(f"{prefix}.bn", ch)
        out.append((f"{prefix}.act.weight", (ch,)))

    def fglo(prefix, w, r):
        out.extend(
            [
                (f"{prefix}.fc.0.weight", (w // r, w)),
                (f"{prefix}.fc.0.bias", (w // r,)),
                (f"{prefix}.fc.2.weight", (w, w // r)),
                (f"{prefix}.fc.2.bias", (w,)),
            ]
        )

    def down(prefix, cin, w, r):
        cbp(f"{prefix}.conv1x1", cin, w, 3)
        out.extend([(f"{prefix}.F_loc.conv.weight", (w, 1, 3, 3)), (f"{prefix}.F_sur.conv.weight", (w, 1, 3, 3))])
        bn(f"{prefix}.bn", 2 * w)
        out.append((f"{prefix}.act.weight", (2 * w,)))
        out.append((f"{prefix}.reduce.conv.weight", (w, 2 * w, 1, 1)))
        fglo(f"{prefix}.F_glo", w, r)

    def block(prefix, w, r):
        h = w // 2
        cbp(f"{prefix}.conv1x1", w, h, 1)
        out.extend([(f"{prefix}.F_loc.conv.weight", (h, 1, 3, 3)), (f"{prefix}.F_sur.conv.weight", (h, 1, 3, 3))])
        bnp(f"{prefix}.bn_prelu", w)
        fglo(f"{prefix}.F_glo", w, r)

    cbp("level1_0", c, 32, 3)
    cbp("level1_1", 32, 32, 3)
    cbp("level1_2", 32, 32, 3)
    bnp("b1", 32 + c)
    down("level2_0", 32 + c, 64, 8)
    for i in range(m - 1):
        block(f"level2.{i}", 64, 8)
    bnp("bn_prelu_2", 128 + c)
    down("level3_0", 128 + c, 128, 16)
    for i in range(n - 1):
        block(f"level3.{i}", 128, 16)
    bnp("bn_prelu_3", 256)
    out.append(("classifier.0.conv.weight", (k, 256, 1, 1)))
    return out


def random_climatenet_state(c, k, m=3, n=21):
    state = {}
    for key, shape in climatenet_shapes(c, k, m, n):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        elif key.endswith(".act.weight"):
            state[key] = torch.rand(shape) * 0.5
        elif key.endswith("bn.weight"):
            state[key] = torch.rand(shape) + 0.5
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            state[key] = torch.randn(shape) / fan_in**0.5
    return state


def functional_climatenet(s, x):
    """ClimateNet's forward written out with torch.nn.functional on its own key names."""

    def wrap(t, p):
        return F.pad(t, (p, p, p, p), mode="circular") if p else t

    def conv(t, key, stride=1, d=1, groups=1):
        w = s[key]
        return F.conv2d(wrap(t, (w.shape[-1] - 1) // 2 * d), w, None, stride, 0, d, groups)

    def bnp(t, prefix, bn="bn", act="act"):
        t = F.batch_norm(
            t,
            s[f"{prefix}.{bn}.running_mean"],
            s[f"{prefix}.{bn}.running_var"],
            s[f"{prefix}.{bn}.weight"],
            s[f"{prefix}.{bn}.bias"],
            False,
            0.0,
            1e-3,
        )
        return F.prelu(t, s[f"{prefix}.{act}.weight"])

    def cbp(t, prefix, stride=1):
        return bnp(conv(t, f"{prefix}.conv.weight", stride), prefix)

    def fglo(t, prefix):
        g = t.mean((2, 3))
        g = torch.sigmoid(
            F.linear(
                torch.relu(F.linear(g, s[f"{prefix}.fc.0.weight"], s[f"{prefix}.fc.0.bias"])),
                s[f"{prefix}.fc.2.weight"],
                s[f"{prefix}.fc.2.bias"],
            )
        )
        return t * g[:, :, None, None]

    def down(t, prefix, d):
        t = cbp(t, f"{prefix}.conv1x1", 2)
        ch = t.shape[1]
        j = torch.cat(
            [conv(t, f"{prefix}.F_loc.conv.weight", groups=ch), conv(t, f"{prefix}.F_sur.conv.weight", d=d, groups=ch)],
            1,
        )
        j = conv(bnp(j, prefix), f"{prefix}.reduce.conv.weight")
        return fglo(j, f"{prefix}.F_glo")

    def block(t, prefix, d):
        u = cbp(t, f"{prefix}.conv1x1")
        ch = u.shape[1]
        j = torch.cat(
            [conv(u, f"{prefix}.F_loc.conv.weight", groups=ch), conv(u, f"{prefix}.F_sur.conv.weight", d=d, groups=ch)],
            1,
        )
        return t + fglo(bnp(j, f"{prefix}.bn_prelu"), f"{prefix}.F_glo")

    def pool(t, times):
        for _ in range(times):
            t = F.avg_pool2d(wrap(t, 1), 3, 2)
        return t

    y = cbp(cbp(cbp(x, "level1_0", 2), "level1_1"), "level1_2")
    y = bnp(torch.cat([y, pool(x, 1)], 1), "b1")
    d2 = down(y, "level2_0", 2)
    y = d2
    i = 0
    while f"level2.{i}.F_glo.fc.0.weight" in s:
        y = block(y, f"level2.{i}", 2)
        i += 1
    y = bnp(torch.cat([y, d2, pool(x, 2)], 1), "bn_prelu_2")
    d3 = down(y, "level3_0", 4)
    y = d3
    i = 0
    while f"level3.{i}.F_glo.fc.0.weight" in s:
        y = block(y, f"level3.{i}", 4)
        i += 1
    y = bnp(torch.cat([d3, y], 1), "bn_prelu_3")
    y = conv(y, "classifier.0.conv.weight")
    return F.interpolate(y, x.shape[2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("c,h,w,m,n", [(4, 40, 56, 3, 21), (3, 27, 31, 2, 3)])
def test_climatenet_weights_import_matches_functional(tmp_path, c, h, w, m, n):
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    state = random_climatenet_state(c, 3, m, n)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    model, section = climatenet_model(str(path))
    assert section["config"] == "cgnet" and section["in_channels"] == c
    assert len(model.state_dict()) == len(state)  # every key consumed, none left empty
    model.eval()
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        ours = model(x)
        ref = functional_climatenet(
            {k: v.double() if v.is_floating_point() else v for k, v in state.items()}, x.double()
        )
        ref32 = functional_climatenet(state, x)
    err_ours = (ours.double() - ref).abs().max().item()
    err_torch = (ref32.double() - ref).abs().max().item()
    assert err_ours <= 2 * err_torch + 1e-5, (err_ours, err_torch)


def test_climatenet_import_rejects_odd_weights(tmp_path):
    state = random_climatenet_state(4, 3, 2, 2)
    state["level2_0.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="unmapped key"):
        climatenet_model(str(tmp_path / "a.pth"))
    state = random_climatenet_state(4, 3, 2, 2)
    del state["level3_0.F_sur.conv.weight"]
    torch.save(state, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="no weights for"):
        climatenet_model(str(tmp_path / "b.pth"))
    (tmp_path / "c.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable"):
        climatenet_model(str(tmp_path / "c.pth"))


CONFIG = {
    "fields": {
        "TMQ": {"mean": 19.21859, "std": 15.81723},
        "U850": {"mean": 1.55302, "std": 8.29764},
        "V850": {"mean": 0.25413, "std": 6.23163},
        "PSL": {"mean": 100814.414, "std": 1461.2227},
    },
    "labels": ["Background", "Tropical Cyclone", "Atmospheric River"],
}


def test_convert_command_and_init_weights(tmp_path, capsys):
    from climseg.cli import main
    from climseg.train.checkpoint import build_model, load_checkpoint

    state = random_climatenet_state(4, 3, 2, 2)
    torch.save(state, tmp_path / "weights.pth")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    out = tmp_path / "cgnet.pt"
    assert main(["convert", "--from", "climatenet", str(tmp_path / "weights.pth"), str(out)]) == 0
    ckpt = load_checkpoint(str(out))
    assert ckpt["data"]["channels"] == ["TMQ", "U850", "V850", "PSL"]
    assert torch.allclose(ckpt["data"]["shift"][3], torch.tensor(100814.414))
    assert torch.allclose(ckpt["data"]["scale"][0], torch.tensor(1 / 15.81723))
    model = build_model(ckpt).eval()
    x = torch.randn(1, 4, 32, 40)
    with torch.no_grad():
        assert torch.allclose(model(x), functional_climatenet(state, x), atol=1e-5)
    fresh = CGNet(4, 3, blocks_stage2=2, blocks_stage3=2)
    init_weights(f"climatenet:{tmp_path / 'weights.pth'}", fresh)
    assert torch.equal(fresh.state_dict()["classifier.conv.weight"], state["classifier.0.conv.weight"])
    with pytest.raises(CheckpointError, match="blocks|fit"):
        init_weights(f"climatenet:{tmp_path / 'weights.pth'}", CGNet(4, 3))
    # predict straight from ClimateNet weights: the same masks as from the converted checkpoint
    import numpy as np

    from climseg.data.netcdf import write_cam5_netcdf
    from climseg.predict import predict

    rng = np.random.default_rng(1)
    fields = rng.standard_normal((2, 32, 40, 4)).astype(np.float32) * [15.8, 8.3, 6.2, 1461] + [19, 1.5, 0.3, 1e5]
    write_cam5_netcdf(
        str(tmp_path / "in.nc"), fields, np.linspace(-80, 80, 32), np.arange(40) * 9.0, channels=list(CONFIG["fields"])
    )
    quiet = dict(maps=False, progress=False, log=lambda *a: None)
    a = predict(f"climatenet:{tmp_path / 'weights.pth'}", [str(tmp_path / "in.nc")], str(tmp_path / "p1"), **quiet)
    b = predict(str(out), [str(tmp_path / "in.nc")], str(tmp_path / "p2"), **quiet)
    assert a["model"] == "cgnet" and a["inputs"][0]["time_steps"] == b["inputs"][0]["time_steps"]
    # a missing config, an unknown format: one line, exit 2
    os.remove(tmp_path / "config.json")
    capsys.readouterr()
    assert main(["convert", "--from", "climatenet", str(tmp_path / "weights.pth"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError):
        convert(str(tmp_path / "weights.pth"), str(out), from_format="nope")


def test_context_guided_blocks_on_the_triton_kernels():
    """The stride-2, 1x1 and depthwise dilated convolutions of CGNet's blocks on climseg's Triton kernels
    (the interpreter without a GPU) against float64, beside PyTorch in float32."""
    pytest.importorskip("triton")
    import copy

    from conftest import DEVICE

    from climseg.models.cgnet import ContextGuidedBlock, ContextGuidedDown
    from climseg.nn import AtrousConv2d

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    for block, x in (
        (ContextGuidedDown(6, 16, dilation=2, reduction=8), torch.randn(2, 6, 13, 11)),
        (ContextGuidedBlock(16, dilation=4, reduction=8), torch.randn(1, 16, 9, 10)),
    ):
        block = block.eval().to(DEVICE)
        x = x.to(DEVICE)
        exact = copy.deepcopy(block).double()
        ours = copy.deepcopy(block)
        for m in ours.modules():
            if isinstance(m, AtrousConv2d):
                m.backend = "triton"
        with torch.no_grad():
            ref = exact(x.double())
            err_ours = (ours(x).double() - ref).abs().max().item()
            err_torch = (block(x).double() - ref).abs().max().item()
        assert err_ours == err_ours and err_ours <= 2 * err_torch + 1e-5 * (1 + ref.abs().max().item())
