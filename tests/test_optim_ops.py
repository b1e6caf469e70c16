"""LAMB against a hand computation, schedules, the atrous op's reference and backend switch."""

import types

import pytest
import torch
import torch.nn.functional as F

from climseg.errors import ConfigError
from climseg.ops import atrous_conv2d, atrous_conv2d_reference
from climseg.ops import backend as backend_mod
from climseg.ops import cuda as cuda_ops
from climseg.optim import LAMB, build_scheduler, lr_factor


def test_lamb_two_steps_by_hand():
    w0 = torch.tensor([1.0, -2.0, 2.0])
    p = torch.nn.Parameter(w0.clone())
    opt = LAMB([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    grads = [torch.tensor([0.5, 0.0, -1.0]), torch.tensor([0.1, 0.2, 0.3])]
    w, m, v = w0.clone().double(), torch.zeros(3).double(), torch.zeros(3).double()
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        g = g.double()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        u = (m / (1 - 0.9**t)) / ((v / (1 - 0.99**t)).sqrt() + 1e-6) + 0.01 * w
        w = w - 0.1 * (w.norm() / u.norm()) * u
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-6)


def test_schedules():
    assert lr_factor(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(9, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", warmup_steps=10) == pytest.approx(0.0)
    assert [lr_factor(s, 100, "multistep", milestones=(3, 6)) for s in (2, 3, 6)] == pytest.approx([1, 0.1, 0.01])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, 10, "cosine", warmup_steps=2)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    build_scheduler(opt2, 10, "cosine", warmup_steps=2, last_step=5)
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor(5, 10, "cosine", 2))
    assert seen[:2] == pytest.approx([0.5, 1.0])
    with pytest.raises(ConfigError):
        build_scheduler(opt, 10, "linear")


@pytest.mark.parametrize(
    "stride, padding, dilation, groups", [(1, 2, 2, 1), (2, 1, 1, 1), (1, 12, 12, 3), (1, 0, 1, 1)]
)
def test_atrous_reference_epilogue(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 19, 23, dtype=torch.float64)
    w = torch.randn(9, 6 // groups, 3 if padding else 1, 3 if padding else 1, dtype=torch.float64)
    b, scale, shift = torch.randn(9).double(), torch.rand(9).double() + 0.5, torch.randn(9).double()
    conv = F.conv2d(x, w, b, stride, padding, dilation, groups)
    res = torch.randn_like(conv)
    expected = torch.relu((conv * scale.view(1, -1, 1, 1)) + shift.view(1, -1, 1, 1) + res)
    out = atrous_conv2d(
        x,
        w,
        b,
        stride,
        padding,
        dilation,
        groups,
        scale=scale,
        shift=shift,
        residual=res,
        activation="relu",
        backend="torch",
    )
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        atrous_conv2d_reference(x, w, None, stride, padding, dilation, groups),
        F.conv2d(x, w, None, stride, padding, dilation, groups),
    )


def test_backend_switch(monkeypatch):
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(2, 2, 3, 3)
    assert backend_mod.resolve("atrous_conv2d", "auto", x) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors reach Triton only through its interpreter
    with pytest.raises(ConfigError, match="backend 'triton' cannot run here: CPU tensors"):
        atrous_conv2d(x, w, backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError, match="unknown backend 'fast'"):
        atrous_conv2d(x, w, backend="fast")
    with pytest.raises(ConfigError, match="activation must be None or 'relu'"):
        atrous_conv2d(x, w, activation="gelu")
    monkeypatch.setenv("CLIMSEG_BACKEND", "cuda")
    if cuda_ops.probe(x)[0]:  # CPU tensors reach the CUDA kernels through their emulation (climseg._cuda_emulated)
        assert torch.allclose(atrous_conv2d(x, w), atrous_conv2d_reference(x, w), rtol=1e-2, atol=1e-2)
        with pytest.raises(ConfigError, match="the CUDA kernels cannot compute this: dtype torch.float64"):
            atrous_conv2d(x.double(), w.double())
    else:
        with pytest.raises(ConfigError, match="backend 'cuda' is not available"):
            atrous_conv2d(x, w)
    monkeypatch.setenv("CLIMSEG_BACKEND", "nonsense")
    with pytest.raises(ConfigError, match="CLIMSEG_BACKEND='nonsense'"):
        atrous_conv2d(x, w)
    monkeypatch.setenv("CLIMSEG_BACKEND", "torch")
    assert atrous_conv2d(x, w).shape == (1, 2, 3, 3)
    # a registered fast backend is taken by auto when its probe accepts the tensor
    monkeypatch.delenv("CLIMSEG_BACKEND")
    monkeypatch.setattr(backend_mod, "_REGISTRY", {})
    backend_mod.register(
        "atrous_conv2d", "triton", lambda t: (t is not None and t.dtype == torch.float16, "needs fp16")
    )
    cuda_half = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float16)  # stands in for a GPU tensor
    cuda_float = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    assert backend_mod.resolve("atrous_conv2d", "auto", cuda_half) == "triton"
    assert backend_mod.resolve("atrous_conv2d", "auto", cuda_float) == "torch"
    assert backend_mod.resolve("atrous_conv2d", "auto", x.half()) == "torch"  # CPU tensors: the reference
    assert backend_mod.resolve("atrous_conv2d", "triton", x.half()) == "triton"  # unless a backend is named
    with pytest.raises(ConfigError, match="cannot run here: needs fp16"):
        backend_mod.resolve("atrous_conv2d", "triton", x)
    rows = backend_mod.describe()
    assert [r[0] for r in rows] == sorted(backend_mod._REGISTRY_OPS) and rows[1][0] == "atrous_conv2d"
    assert all(r[2] == "torch" for r in rows)


def test_larc_epsilon_has_one_name_and_the_old_names_still_work():
    """LARC and FusedLARCAdam call LARC's epsilon ``trust_eps``; ``eps`` (LARC) and ``eps_larc``
    (FusedLARCAdam) are accepted with a DeprecationWarning and mean the same thing."""
    import inspect

    from climseg.optim import LARC, FusedLARCAdam

    assert "trust_eps" in inspect.signature(LARC).parameters
    assert "trust_eps" in inspect.signature(FusedLARCAdam).parameters
    trust_eps = float(torch.rand(()) * 0.5 + 0.1)  # large enough to matter
    w0, g0 = torch.randn(7), torch.randn(7)

    def larc_step(**kwargs):
        p = torch.nn.Parameter(w0.clone())
        p.grad = g0.clone()
        LARC(torch.optim.SGD([p], lr=0.1), clip=False, **kwargs).step()
        return p.detach()

    def fused_step(**kwargs):
        p = torch.nn.Parameter(w0.clone())
        p.grad = g0.clone()
        opt = FusedLARCAdam([p], lr=0.1, clip=False, backend="torch", **kwargs)
        opt.step()
        return p.detach(), opt

    new = larc_step(trust_eps=trust_eps)
    with pytest.warns(DeprecationWarning, match="'eps' is now called 'trust_eps'"):
        old = larc_step(eps=trust_eps)
    assert torch.equal(new, old) and not torch.equal(new, larc_step())
    new, opt = fused_step(trust_eps=trust_eps)
    with pytest.warns(DeprecationWarning, match="'eps_larc' is now called 'trust_eps'"):
        old, _ = fused_step(eps_larc=trust_eps)
    assert torch.equal(new, old) and not torch.equal(new, fused_step()[0])
    with pytest.raises(TypeError, match="give 'trust_eps' only"):
        LARC(torch.optim.SGD([torch.nn.Parameter(w0)], lr=0.1), trust_eps=0.5, eps=0.25)
    # a checkpoint written before the rename (param groups with eps_larc) loads and keeps its value
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        group["eps_larc"] = group.pop("trust_eps")
    _, fresh = fused_step()
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["trust_eps"] == trust_eps and "eps_larc" not in fresh.param_groups[0]
