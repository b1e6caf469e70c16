"""The CUDA atrous-convolution kernels (csrc/cuda/atrous.cu) against a float64 F.conv2d reference.

Without a GPU they run in their CPU emulation (climseg._cuda_emulated: the same source, the
warp-level MMAs emulated cooperatively), for both tensor-core families: ``sm70`` (mma.sync
m8n8k4, Volta) and ``sm80`` (m16n8k16). Inputs are fresh random tensors every run; every buffer
the op and the launchers allocate starts as NaN, so an element a kernel fails to write fails the
test. Accuracy rule: err(ours) <= 2 * err(PyTorch in the same precision) + a small floor, both
against float64. The kernels multiply fp32 inputs as fp16 operands (converted at load, like
TF32's 10 mantissa bits), so PyTorch "in the same precision" is PyTorch on fp16 inputs there.
"""

import pytest
import torch
import torch.nn as nn

import climseg.ops.atrous as ops_atrous
import climseg.ops.conv_branches as conv_branches
from climseg.errors import ConfigError
from climseg.ops import aspp_conv, aspp_conv_reference, atrous_conv2d, atrous_conv2d_reference, atrous_cuda
from climseg.ops import backend as op_backend

pytest.importorskip("climseg._cuda_emulated")

FLOOR = {torch.float32: 2e-3, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = {"sm70": (torch.float16, torch.float32), "sm80": (torch.float16, torch.bfloat16, torch.float32)}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every buffer the op or the launchers allocate starts as NaN."""
    real_nhwc, real_empty = conv_branches._empty_nhwc, atrous_cuda.empty
    monkeypatch.setattr(conv_branches, "_empty_nhwc", lambda shape, like: real_nhwc(shape, like).fill_(float("nan")))
    monkeypatch.setattr(
        atrous_cuda, "empty", lambda shape, device, dtype: real_empty(shape, device, dtype).fill_(float("nan"))
    )


def _family(monkeypatch, family):
    monkeypatch.setitem(atrous_cuda.EMULATED_FAMILY, "family", family)


def _same_precision(dtype):
    return torch.float16 if dtype == torch.float32 else dtype


def _check(ours, theirs, exact, dtype, what):
    scale = 1 + exact.abs().max().item()
    err = (ours.double() - exact).abs().max().item()
    ref = (theirs.double() - exact).abs().max().item()
    assert err == err, f"{what}: NaN in the output (an element was not written)"
    assert err <= 2 * ref + FLOOR[dtype] * scale, f"{what}: error {err:.3g} vs PyTorch's {ref:.3g}"


def _leaves(tensors, dtype):
    return [t.to(dtype).detach().requires_grad_() if t is not None else None for t in tensors]


# cin, cout, kernel, stride, padding, dilation, N, H, W: the anchors' dilations 1, 6, 12, 18 with
# padding on every border, strides 1 and 2, odd sizes; channel counts below, above and not multiples
# of the 128 x 64 x 32 tile, multiples of 8 (16-byte loads) and not (element loads); batch 1 and 2
CASES = {
    "d1-vec": (16, 24, 3, 1, 1, 1, 2, 7, 9),
    "d6-odd-channels": (5, 7, 3, 1, 6, 6, 1, 13, 11),
    "d12-stride2": (8, 40, 3, 2, 12, 12, 2, 15, 13),
    "d18-wide": (40, 72, 3, 1, 18, 18, 1, 19, 21),
    "1x1-stride2": (24, 16, 1, 2, 0, 1, 2, 9, 7),
}
# which dtypes and families each case runs in (the emulation is slow: every case once per family,
# every dtype on two cases)
RUNS = [
    (case, family, dtype)
    for case in CASES
    for family in DTYPES
    for dtype in DTYPES[family]
    if case in ("d1-vec", "d6-odd-channels") or dtype == (torch.float16 if family == "sm70" else torch.bfloat16)
]


@pytest.mark.parametrize("case, family, dtype", RUNS, ids=[f"{c}-{f}-{str(d)[6:]}" for c, f, d in RUNS])
def test_forward_and_all_gradients(case, family, dtype, monkeypatch):
    _family(monkeypatch, family)
    cin, cout, k, stride, padding, dilation, N, H, W = CASES[case]
    x = torch.randn(N, cin, H, W)
    w = torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5
    bias, scale, shift = torch.randn(cout), torch.rand(cout) + 0.5, torch.randn(cout)
    residual = torch.randn(N, cout, *atrous_conv2d_reference(x, w, None, stride, padding, dilation).shape[2:])
    kw = dict(stride=stride, padding=padding, dilation=dilation)
    exact_in = _leaves([x, w, bias, scale, shift, residual], torch.float64)
    same_in = _leaves([x, w, bias, scale, shift, residual], _same_precision(dtype))
    ours_in = _leaves([x, w, bias, scale, shift, residual], dtype)
    activation = "relu" if dtype == torch.float32 else None  # see tests/test_atrous_kernels.py

    def run(fn, t, **extra):
        return fn(t[0], t[1], t[2], scale=t[3], shift=t[4], residual=t[5], activation=activation, **kw, **extra)

    exact = run(atrous_conv2d_reference, exact_in)
    theirs = run(atrous_conv2d_reference, same_in)
    ours = run(atrous_conv2d, ours_in, backend="cuda")
    assert ours.dtype == dtype and ours.shape == exact.shape
    _check(ours, theirs.detach(), exact.detach(), dtype, "output")
    grad = torch.randn(exact.shape, dtype=torch.float64)
    g_exact = torch.autograd.grad(exact, exact_in, grad)
    g_theirs = torch.autograd.grad(theirs, same_in, grad.to(same_in[0].dtype))
    g_ours = torch.autograd.grad(ours, ours_in, grad.to(dtype))
    for i, name in enumerate(["input", "weight", "bias", "scale", "shift", "residual"]):
        _check(g_ours[i], g_theirs[i], g_exact[i], dtype, f"grad {name}")


@pytest.mark.parametrize("family", list(DTYPES))
def test_fused_aspp_one_launch_and_deterministic_weight_gradient(family, monkeypatch):
    """The ASPP branches (1x1 and three dilated 3x3) into channel slices of one output with the
    epilogue and the pooled slice, one forward launch; the input gradient of all branches in one
    launch; the weight gradient with atomics and, deterministic, bitwise repeatable."""
    _family(monkeypatch, family)
    launches = []
    real = atrous_cuda._launch
    monkeypatch.setattr(atrous_cuda, "_launch", lambda name, *a: launches.append(name) or real(name, *a))
    x = torch.randn(2, 16, 9, 10, dtype=torch.float16)
    weights = [torch.randn(8, 16, 1, 1) / 4] + [torch.randn(8, 16, 3, 3) / 12 for _ in range(3)]
    dilations = [1, 2, 6, 12]
    bias, scale, shift = torch.randn(32), torch.rand(32) + 0.5, torch.randn(32)
    pooled = torch.randn(2, 8)
    exact_in = _leaves([x] + weights, torch.float64)
    same_in = _leaves([x] + weights, torch.float16)
    ours_in = _leaves([x] + weights, torch.float16)

    def run(fn, t, **extra):
        return fn(t[0], t[1:], dilations, bias=bias, scale=scale, shift=shift, pooled=pooled, **extra)

    exact, theirs = run(aspp_conv_reference, exact_in), run(aspp_conv_reference, same_in)
    ours = run(aspp_conv, ours_in, backend="cuda")
    assert launches == [f"atrous_fwd_f16_{family}"]
    _check(ours, theirs.detach(), exact.detach(), torch.float16, "output")
    grad = torch.randn(exact.shape, dtype=torch.float64)
    g_exact = torch.autograd.grad(exact, exact_in, grad)
    g_theirs = torch.autograd.grad(theirs, same_in, grad.half())
    g_ours = torch.autograd.grad(ours, ours_in, grad.half())
    assert launches[1:] == [f"atrous_dgrad_f16_{family}", f"atrous_wgrad_f16_{family}"]
    for i in range(5):
        _check(g_ours[i], g_theirs[i], g_exact[i], torch.float16, f"grad {i}")

    det = [run(aspp_conv, ours_in, backend="cuda", deterministic=True) for _ in range(2)]
    grads = [torch.autograd.grad(y, ours_in, grad.half()) for y in det]
    for a, b in zip(grads[0], grads[1]):
        assert torch.equal(a, b)
    for i in range(5):
        _check(grads[0][i], g_theirs[i], g_exact[i], torch.float16, f"deterministic grad {i}")


def test_weight_gradient_splits_atomic_and_workspace_agree(monkeypatch):
    """More pixels than one part: the split parts added with atomics and summed from the
    workspace give the same weight gradient (within fp32 rounding), every element written."""
    x = torch.randn(1, 8, 24, 24, dtype=torch.float16)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float16) / 8
    seen = []
    real = atrous_cuda.reduction_splits
    monkeypatch.setattr(atrous_cuda, "reduction_splits", lambda *a: seen.append(real(*a)) or seen[-1])
    out = []
    for deterministic in (False, True):
        wr = w.clone().requires_grad_()
        y = atrous_conv2d(x, wr, padding=3, dilation=3, deterministic=deterministic, backend="cuda")
        (dw,) = torch.autograd.grad(y.float().sum(), [wr])
        out.append(dw.float())
    assert seen[0] > 1
    assert torch.isfinite(out[0]).all() and torch.allclose(out[0], out[1], rtol=1e-3, atol=1e-2)


def test_modules_and_convert_model_take_the_cuda_kernels(monkeypatch):
    from climseg.nn import ASPP, AtrousConv2d, convert_model

    calls = []
    real = atrous_cuda._launch
    monkeypatch.setattr(atrous_cuda, "_launch", lambda name, *a: calls.append(name) or real(name, *a))
    conv = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
    expected = conv(x := torch.randn(1, 8, 6, 7)).detach()
    model = convert_model(nn.Sequential(conv).eval(), backend="cuda").half()
    assert isinstance(model[0], AtrousConv2d) and model[0].backend == "cuda"
    torch.testing.assert_close(model(x.half()).float(), expected, rtol=2e-2, atol=2e-2)
    assert calls == ["atrous_fwd_f16_sm80"]
    aspp = ASPP(16, 8, (2, 3, 4), backend="cuda").eval()
    reference = ASPP(16, 8, (2, 3, 4), fused=False, backend="torch").eval()
    reference.load_state_dict(aspp.state_dict())
    x = torch.randn(1, 16, 7, 6)
    torch.testing.assert_close(aspp(x), reference(x), rtol=2e-2, atol=2e-2)
    assert "atrous_fwd_f32_sm80" in calls[1:]


def test_what_the_cuda_kernels_refuse(monkeypatch):
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ConfigError, match="groups=4"):
        atrous_conv2d(x, torch.randn(4, 1, 3, 3), padding=1, groups=4, backend="cuda")
    _family(monkeypatch, "sm70")
    with pytest.raises(ConfigError, match="bf16"):
        atrous_conv2d(x.bfloat16(), torch.randn(4, 4, 3, 3).bfloat16(), padding=1, backend="cuda")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    with pytest.raises(ConfigError, match="allow_tf32"):
        atrous_conv2d(x, torch.randn(4, 4, 3, 3), padding=1, backend="cuda")


def test_auto_prefers_a_backend_that_says_why(monkeypatch):
    """backend.register's prefer: auto tries a preferred backend first, and describe() says why."""
    monkeypatch.setattr(op_backend, "_REGISTRY", {})
    monkeypatch.setattr(op_backend, "_PREFER", {})
    op_backend.register("demo", "triton", lambda t: (True, ""))
    op_backend.register("demo", "cuda", lambda t: (True, ""), prefer=lambda t: "")
    assert op_backend.resolve("demo", "auto", None) == "triton"
    op_backend.register("demo", "cuda", lambda t: (True, ""), prefer=lambda t: "sm_70: no tensor cores in Triton")
    assert op_backend.resolve("demo", "auto", None) == "cuda"
    assert op_backend.resolve("demo", "triton", None) == "triton"
    op_backend.register("demo", "cuda", lambda t: (False, "not built"), prefer=lambda t: "sm_70")
    assert op_backend.resolve("demo", "auto", None) == "triton"


def test_info_says_the_policy_of_the_convolutions():
    rows = {op: why for op, _, _, why in op_backend.describe(["atrous_conv2d", "aspp_conv"])}
    for op in ("atrous_conv2d", "aspp_conv"):
        assert "CUDA kernels first below sm_80" in rows[op] or torch.cuda.is_available()


def test_cuda_preference_follows_the_device(monkeypatch):
    class OnTheGPU:
        device = torch.device("cuda", 0)

    fake = OnTheGPU()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert "sm_70" in ops_atrous._cuda_preferred(fake)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(ops_atrous, "_triton_probe", lambda t: (True, ""))
    assert ops_atrous._cuda_preferred(fake) == ""
    monkeypatch.setattr(ops_atrous, "_triton_probe", lambda t: (False, "Triton is not installed"))
    assert "Triton is not installed" in ops_atrous._cuda_preferred(fake)
    assert ops_atrous._cuda_preferred(torch.empty(0)) == ""


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_on_the_gpu(dtype):
    """The kernels of the device's own family (sm70 below compute capability 8.0) on CUDA tensors:
    the anchors' dilations with the epilogue and every gradient, and the fused ASPP."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    device = torch.device("cuda")
    if atrous_cuda.unsupported(dtype, device):
        pytest.skip(atrous_cuda.unsupported(dtype, device))
    for cin, cout, d, stride, n, h, w in ((64, 96, 6, 1, 2, 37, 29), (40, 24, 18, 2, 1, 41, 45)):
        x = torch.randn(n, cin, h, w, device=device)
        wt = torch.randn(cout, cin, 3, 3, device=device) / (9 * cin) ** 0.5
        b = torch.randn(cout, device=device)
        exact_in = _leaves([x, wt, b], torch.float64)
        same_in = _leaves([x, wt, b], _same_precision(dtype))
        ours_in = _leaves([x.contiguous(memory_format=torch.channels_last), wt, b], dtype)
        kw = dict(stride=stride, padding=d, dilation=d)
        exact = atrous_conv2d_reference(*exact_in, **kw)
        theirs = atrous_conv2d_reference(*same_in, **kw)
        ours = atrous_conv2d(*ours_in, **kw, backend="cuda")
        _check(ours, theirs.detach(), exact.detach(), dtype, "output")
        grad = torch.randn(exact.shape, dtype=torch.float64, device=device)
        for i, (a, t, e) in enumerate(
            zip(
                torch.autograd.grad(ours, ours_in, grad.to(dtype)),
                torch.autograd.grad(theirs, same_in, grad.to(same_in[0].dtype)),
                torch.autograd.grad(exact, exact_in, grad),
            )
        ):
            _check(a, t, e, dtype, f"grad {i}")


def _cuda_build_plan():
    """setup.py's cuda_build_plan, taken from the file (importing setup.py would run setup())."""
    import ast
    import os
    import re
    import shutil
    import subprocess

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "cuda_build_plan"]
    scope = dict(os=os, re=re, shutil=shutil, subprocess=subprocess)
    exec(compile(ast.Module([node], []), path, "exec"), scope)
    return scope["cuda_build_plan"]


@pytest.mark.parametrize("release, built", [("12.9", True), ("13.0", False)])
def test_volta_builds_with_cuda_12_and_cuda_13_says_why_not(release, built, tmp_path, monkeypatch):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("CLIMSEG_CUDA_ARCHS", "70;80;90")
    monkeypatch.delenv("CLIMSEG_SKIP_CUDA_BUILD", raising=False)
    found, archs, why = _cuda_build_plan()()
    if built:
        assert found == str(nvcc) and archs == ["70", "80", "90"] and "sm_70" in why
    else:
        assert found is None and archs == [] and "\n" not in why
        assert "CUDA 13 cannot compile for 70;80;90" in why and "CUDA 12" in why
