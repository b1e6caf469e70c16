"""The Triton atrous-convolution kernels against a float64 F.conv2d reference.

Without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1, set in
conftest). Inputs are fresh random tensors every run; every output buffer is
poisoned with NaN before the call, so an element a kernel fails to write fails
the test. Accuracy rule: err(ours) <= 2 * err(PyTorch in the same precision)
+ a small floor, both against float64.
"""

import copy

import pytest
import torch
import torch.nn as nn
from conftest import DEVICE

import climseg.ops.atrous as ops_atrous
import climseg.ops.conv_branches as conv_branches
from climseg.errors import ConfigError
from climseg.kernels import runtime
from climseg.nn import ASPP, AtrousConv2d, convert_model
from climseg.ops import aspp_conv, aspp_conv_reference, atrous_conv2d, atrous_conv2d_reference

pytest.importorskip("triton")
dense = pytest.importorskip("climseg.kernels.atrous_dense")

FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every buffer the op or the launchers allocate starts as NaN."""
    real_nhwc, real_empty = conv_branches._empty_nhwc, runtime.empty
    monkeypatch.setattr(conv_branches, "_empty_nhwc", lambda shape, like: real_nhwc(shape, like).fill_(float("nan")))
    monkeypatch.setattr(
        runtime, "empty", lambda shape, device, dtype: real_empty(shape, device, dtype).fill_(float("nan"))
    )


def _check(ours, theirs, exact, dtype, what):
    scale = 1 + exact.abs().max().item()
    err = (ours.double() - exact).abs().max().item()
    ref = (theirs.double() - exact).abs().max().item()
    assert err == err, f"{what}: NaN in the output (an element was not written)"
    assert err <= 2 * ref + FLOOR[dtype] * scale, f"{what}: error {err:.3g} vs PyTorch's {ref:.3g}"


def _leaves(tensors, dtype):
    return [t.to(DEVICE, dtype).detach().requires_grad_() if t is not None else None for t in tensors]


# cin, cout, kernel (kh, kw), stride, padding, dilation, groups, N, H, W
CASES = {
    "3x3-dil2-odd": (5, 7, (3, 3), 1, 2, 2, 1, 2, 11, 13),
    "stride2-dil3": (6, 9, (3, 3), 2, 3, 3, 1, 1, 12, 9),
    "1x1": (10, 3, (1, 1), 1, 0, 1, 1, 2, 7, 5),
    "dil36-nonsquare": (3, 4, (3, 3), 1, 36, 36, 1, 1, 37, 38),
    "kernel-3x1-pairs": (3, 5, (3, 1), (2, 1), (2, 0), (2, 1), 1, 2, 9, 6),
    "depthwise-dil4": (7, 7, (3, 3), 1, 4, 4, 7, 2, 10, 11),
    "depthwise-stride2": (6, 6, (3, 3), 2, 1, 1, 6, 1, 9, 8),
    "wide-channels": (40, 36, (3, 3), 1, 1, 1, 1, 1, 6, 7),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_and_all_gradients(case, dtype):
    if dtype != torch.float32 and DEVICE == "cpu" and case not in ("3x3-dil2-odd", "stride2-dil3", "depthwise-dil4"):
        pytest.skip("16-bit types in the CPU interpreter: three cases suffice")
    cin, cout, ks, stride, padding, dilation, groups, N, H, W = CASES[case]
    x = torch.randn(N, cin, H, W)
    w = torch.randn(cout, cin // groups, *ks) / (cin // groups * ks[0] * ks[1]) ** 0.5
    bias, scale, shift = torch.randn(cout), torch.rand(cout) + 0.5, torch.randn(cout)
    residual = torch.randn(N, cout, *atrous_conv2d_reference(x, w, None, stride, padding, dilation, groups).shape[2:])
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    exact_in = _leaves([x, w, bias, scale, shift, residual], torch.float64)
    same_in = _leaves([x, w, bias, scale, shift, residual], dtype)
    ours_in = _leaves([x, w, bias, scale, shift, residual], dtype)
    ours_in[0] = ours_in[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()

    # ReLU in fp32 only: in 16 bits, outputs within rounding of zero take either side of the
    # mask in different implementations, and the gradient comparison would measure that
    activation = "relu" if dtype == torch.float32 else None

    def run(fn, t, **extra):
        return fn(t[0], t[1], t[2], scale=t[3], shift=t[4], residual=t[5], activation=activation, **kw, **extra)

    exact = run(atrous_conv2d_reference, exact_in)
    theirs = run(atrous_conv2d_reference, same_in)
    ours = run(atrous_conv2d, ours_in, backend="triton")
    assert ours.dtype == dtype and ours.shape == exact.shape
    _check(ours, theirs.detach(), exact.detach(), dtype, "output")
    grad = torch.randn(exact.shape, dtype=torch.float64)
    g_exact = torch.autograd.grad(exact, exact_in, grad)
    g_theirs = torch.autograd.grad(theirs, same_in, grad.to(dtype))
    g_ours = torch.autograd.grad(ours, ours_in, grad.to(dtype))
    for i, name in enumerate(["input", "weight", "bias", "scale", "shift", "residual"]):
        _check(g_ours[i], g_theirs[i], g_exact[i], dtype, f"grad {name}")


def test_plain_conv_without_epilogue_and_batch_one():
    x = torch.randn(1, 8, 13, 6, device=DEVICE)
    w = torch.randn(5, 8, 3, 3, device=DEVICE, requires_grad=True)
    y = atrous_conv2d(x, w, padding=6, dilation=6, backend="triton")
    exact = atrous_conv2d_reference(x.double(), w.double(), padding=6, dilation=6)
    _check(y, atrous_conv2d_reference(x, w, padding=6, dilation=6).detach(), exact.detach(), torch.float32, "output")
    (dw,) = torch.autograd.grad(y.sum(), [w])
    assert torch.isfinite(dw).all()


def test_aspp_conv_one_launch_with_pooled_slice():
    x = torch.randn(2, 12, 9, 14, device=DEVICE)
    weights = [torch.randn(6, 12, 1, 1, device=DEVICE)] + [
        torch.randn(6, 12, 3, 3, device=DEVICE) / 6 for _ in range(3)
    ]
    weights = [w.requires_grad_() for w in weights]
    pooled = torch.randn(2, 6, device=DEVICE, requires_grad=True)
    scale, shift = torch.rand(24, device=DEVICE) + 0.5, torch.randn(24, device=DEVICE)
    launches = []
    real = dense.dense_forward
    dense.dense_forward = lambda *a, **k: launches.append(1) or real(*a, **k)
    try:
        ours = aspp_conv(
            x, weights, [1, 2, 4, 6], scale=scale, shift=shift, activation="relu", pooled=pooled, backend="triton"
        )
    finally:
        dense.dense_forward = real
    assert launches == [1], "the four branches must be one launch"
    exact = aspp_conv_reference(
        x.double(),
        [w.double() for w in weights],
        [1, 2, 4, 6],
        scale=scale.double(),
        shift=shift.double(),
        activation="relu",
        pooled=pooled.double(),
    )
    theirs = aspp_conv_reference(x, weights, [1, 2, 4, 6], scale=scale, shift=shift, activation="relu", pooled=pooled)
    assert ours.shape == (2, 30, 9, 14)
    _check(ours, theirs.detach(), exact.detach(), torch.float32, "aspp output")
    grad = torch.randn_like(exact)
    g_ours = torch.autograd.grad(ours, weights + [pooled], grad.float())
    g_exact = torch.autograd.grad(exact, weights + [pooled], grad)
    g_theirs = torch.autograd.grad(theirs, weights + [pooled], grad.float())
    for a, b, c in zip(g_ours, g_theirs, g_exact):
        _check(a, b, c, torch.float32, "aspp grads")


def _aspp_pair(norm):
    reference = ASPP(10, 6, rates=(2, 3, 5), norm=norm, fused=False).to(DEVICE)
    for b in reference.branches():
        b.conv.backend = "torch"
    fused = copy.deepcopy(reference)
    fused.fused, fused.backend = True, "triton"
    for b in fused.branches():
        b.conv.backend = "triton"
    fused.project.conv.backend = "triton"
    return reference, fused


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_fused_aspp_module_equals_unfused(norm):
    reference, fused = _aspp_pair(norm)
    x = torch.randn(2, 10, 8, 11, device=DEVICE)
    for training in (True, False):
        reference.train(training)
        fused.train(training)
        y_ref, y_fused = reference(x), fused(x)
        torch.testing.assert_close(y_fused, y_ref, rtol=1e-4, atol=1e-4)
        g_ref = torch.autograd.grad(y_ref.square().sum(), list(reference.parameters()), allow_unused=True)
        g_fused = torch.autograd.grad(y_fused.square().sum(), list(fused.parameters()), allow_unused=True)
        for a, b in zip(g_fused, g_ref):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    for a, b in zip(fused.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)  # running statistics updated alike


def test_fused_aspp_skips_concatenation():
    _, fused = _aspp_pair("batch")
    fused.eval()
    calls = []
    real = torch.cat
    torch.cat = lambda tensors, *a, **k: calls.append(tuple(t.shape for t in tensors)) or real(tensors, *a, **k)
    try:
        fused(torch.randn(1, 10, 6, 7, device=DEVICE))
    finally:
        torch.cat = real
    assert not [c for c in calls if len(c) and len(c[0]) == 4], f"activations were concatenated: {calls}"


def test_deterministic_bitwise_and_without_atomics(monkeypatch):
    x = torch.randn(2, 9, 12, 10, device=DEVICE)
    w = torch.randn(11, 9, 3, 3, device=DEVICE, requires_grad=True)
    seen = []
    real = dense.dense_wgrad
    monkeypatch.setattr(dense, "dense_wgrad", lambda *a: seen.append(a[-1]) or real(*a))

    def run(**kw):
        y = atrous_conv2d(x, w, padding=3, dilation=3, backend="triton", **kw)
        return (y, *torch.autograd.grad(y.square().sum(), [w]))

    first, second = run(deterministic=True), run(deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert seen == [True, True]
    torch.use_deterministic_algorithms(True)
    try:
        run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert seen[-1] is True, "torch.use_deterministic_algorithms(True) must select the atomic-free weight gradient"
    run()
    assert seen[-1] is False


def test_convert_model_whole_network_with_folded_batch_norm():
    from climseg.models import DeepLabV3Plus

    torch.manual_seed(3)
    model = DeepLabV3Plus("tiny").to(DEVICE)
    with torch.no_grad():  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(1, 16, 16, 32, device=DEVICE)
    with torch.no_grad():
        expected = model(x)
        converted = convert_model(model, fold_bn=True, backend="triton")
        got = converted(x)
    convs = [m for m in converted.modules() if isinstance(m, AtrousConv2d)]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert any(c.scale is not None and c.activation == "relu" for c in convs)
    folded = sum(c.scale is not None for c in convs)
    left = sum(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert folded > 0 and left == before - folded  # pre-activation norms (ResNet v2) stay
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert converted.state_dict().keys() >= {k for k in model.state_dict() if "norm" not in k and "bn" not in k}


def test_convert_model_dilated_only_keeps_parameters_and_any_module_tree():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            return self.b(self.a(x))

    model = Custom()
    converted = convert_model(model, dilated_only=True, backend="torch", inplace=True)
    assert converted is model and type(model.a) is nn.Conv2d and isinstance(model.b[0], AtrousConv2d)
    assert model.b[0].weight is converted.b[0].weight
    with pytest.raises(ValueError, match="eval"):
        convert_model(model, fold_bn=True)


def test_torch_compile_traces_without_graph_break():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = nn.Sequential(
        AtrousConv2d(5, 6, 3, padding=2, dilation=2, backend="triton"),
        nn.ReLU(),
        AtrousConv2d(6, 6, 3, padding=1, groups=6, backend="triton"),
    ).to(DEVICE)
    x = torch.randn(1, 5, 8, 9, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, model(x))
    assert not counters["graph_break"]


def test_backend_choice_and_errors(monkeypatch):
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    # auto on CPU tensors: the reference, even with the interpreter on
    calls = []
    monkeypatch.setattr(ops_atrous, "atrous_conv2d_reference", lambda *a, **k: calls.append(1) or "ref")
    assert atrous_conv2d(torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3)) == "ref"
    monkeypatch.undo()
    # groups other than 1 and depthwise: auto takes the reference, an explicit triton is an error
    with pytest.raises(ConfigError, match="groups=2"):
        atrous_conv2d(x.to(DEVICE), w.to(DEVICE), groups=2, backend="triton")
    with pytest.raises(ConfigError, match="activation"):
        atrous_conv2d(x, w, groups=2, activation="gelu")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ConfigError, match="interpreter"):
            atrous_conv2d(x, w, groups=2, backend="triton")
    monkeypatch.setenv("CLIMSEG_BACKEND", "torch")
    assert atrous_conv2d(x, w, groups=2).shape == (1, 4, 3, 3)


def test_interpreter_compatibility_is_in_place():
    """Triton < 3.9 converts interpreted scalars with int(array), which NumPy >= 2.4 refuses: the
    runtime patches the interpreter's private _patch_lang_tensor there (the one Triton-private
    name of climseg.kernels). Where that hook is gone, this Triton must not need it."""
    import triton

    version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    installed = runtime.install_interpreter_compatibility()
    assert installed or version >= (3, 9), (
        f"Triton {triton.__version__}: its interpreter has no _patch_lang_tensor any more, which "
        "climseg.kernels.runtime.install_interpreter_compatibility patches for Triton < 3.9 (scalars as loop bounds "
        "under NumPy >= 2.4); update it for this Triton"
    )


@pytest.mark.gpu
def test_gpu_real_layer_against_cudnn():
    """A real ASPP layer shape in bf16 on the GPU against cuDNN (channels_last)."""
    x = torch.randn(2, 512, 48, 72, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(256, 512, 3, 3, device="cuda") / 48).to(torch.bfloat16)
    exact = atrous_conv2d_reference(x.double(), w.double(), padding=12, dilation=12)
    theirs = atrous_conv2d_reference(x, w, padding=12, dilation=12)
    ours = atrous_conv2d(x, w, padding=12, dilation=12, backend="triton")
    _check(ours, theirs, exact, torch.bfloat16, "bf16 ASPP layer")
