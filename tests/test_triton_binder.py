"""Triton's private JIT binder, the one place climseg uses it (climseg.verify.binder.specialize):
when a Triton release changes what it gives, these tests fail with a message naming the Triton
version and what changed, instead of the static check compiling other programs than the JIT.

The binder only exists for compiled kernels (the interpreter, which conftest turns on, has
none): the probe runs in a fresh process with TRITON_INTERPRET=0.
"""

import types

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from climseg.verify.binder import specialize  # noqa: E402
from climseg.verify.triton_kernels import compile_pool  # noqa: E402


@triton.jit
def probe_kernel(x_ptr, aligned, one, odd, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < aligned + one + odd
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


def specialize_probe(arch):
    """Worker: the specialization of probe_kernel[grid](x, 32, 1, 7, BLOCK=64), x a bf16 tensor."""
    import torch

    x = torch.empty(64, device="meta", dtype=torch.bfloat16)
    config = triton.Config({"BLOCK": 64}, num_warps=2, num_stages=3)
    signature, constexprs, attrs, options = specialize(probe_kernel, arch, (x, 32, 1, 7), {}, config)
    return dict(
        version=triton.__version__,
        signature=signature,
        constexprs=constexprs,
        attrs=attrs,
        num_warps=options.num_warps,
        num_stages=options.num_stages,
        option_type=type(options).__name__,
    )


@pytest.fixture(scope="module")
def probed():
    with compile_pool(1) as pool:
        return {arch: pool.submit(specialize_probe, arch).result() for arch in (80, 90)}


def _changed(got, what, value, expected):
    return (
        f"Triton {got['version']}: its private JIT binder changed: {what} is {value!r}, climseg.verify.binder "
        f"expects {expected!r} (as in Triton 3.6 to 3.9); update climseg.verify.binder.specialize"
    )


@pytest.mark.parametrize("arch", [80, 90])
def test_the_binder_gives_the_jits_specialization(probed, arch):
    got = probed[arch]
    expected = {"x_ptr": "*bf16", "aligned": "i32", "one": "constexpr", "odd": "i32", "BLOCK": "constexpr"}
    assert got["signature"] == expected, _changed(got, "the signature", got["signature"], expected)
    expected = {(2,): 1, (4,): 64}  # an integer equal to 1 becomes a constant, like the constexpr
    assert got["constexprs"] == expected, _changed(got, "the constants", got["constexprs"], expected)
    divisible = sorted(
        path
        for path, values in got["attrs"].items()
        if any(value[0] == "tt.divisibility" and value[1] == 16 for value in values)
    )
    expected = [(0,), (1,)]  # the aligned pointer and 32, not 7
    assert divisible == expected, _changed(got, "the tt.divisibility attributes", got["attrs"], expected)
    assert (got["num_warps"], got["num_stages"]) == (2, 3), _changed(
        got, "(num_warps, num_stages) of the options", (got["num_warps"], got["num_stages"]), (2, 3)
    )


def test_a_binder_that_is_gone_is_named_with_the_version():
    """Without JITFunction._pack_args (as if Triton renamed it), specialize says so and names the version."""
    gone = types.SimpleNamespace(signature=None, params=[], arg_names=[])
    with pytest.raises(RuntimeError) as info:
        specialize(gone, 80, (), {}, triton.Config({}, num_warps=4))
    message = str(info.value)
    assert f"Triton {triton.__version__}" in message and "_pack_args is gone" in message
