"""The CUDA kernels of csrc/cuda against their PyTorch references.

Without a GPU, ``backend="cuda"`` on CPU tensors runs the very same kernel sources in
``climseg._cuda_emulated`` (g++, one OS thread per CUDA thread: sizes stay small). The tests
marked ``gpu`` repeat the comparisons on CUDA tensors, at realistic sizes, where a GPU
exists (the nvcc build, else CuPy's NVRTC build).

Inputs are fresh random tensors every run; each test seeds from ``torch.seed()`` and names
the seed in its failure messages (rerun one with ``CLIMSEG_TEST_SEED=<seed>``). Every
buffer an op allocates with ``torch.empty``/``torch.empty_like`` starts as NaN (the
``poison`` fixture), and so does every output the API lets us pass in, so an element a
kernel fails to write shows. Accuracy rule: err(ours) <= 2 * err(PyTorch in the same
precision) + a small floor, both against a float64 reference; where the op is a pure
conversion (buckets, input conversion) the result must equal the reference bit for bit.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import climseg.ops.buckets as ops_buckets
import climseg.ops.cross_entropy as ops_ce
import climseg.ops.normalize as ops_normalize
import climseg.ops.optimizers as ops_optimizers
from climseg.errors import ConfigError
from climseg.ops import cuda as ops_cuda
from climseg.ops.buckets import (
    flatten_gradients,
    flatten_gradients_reference,
    unflatten_gradients,
    unflatten_gradients_reference,
)
from climseg.ops.cross_entropy import (
    counts_reference,
    weighted_cross_entropy_with_counts,
    weighted_cross_entropy_with_counts_reference,
)
from climseg.ops.normalize import normalize_input, normalize_input_reference
from climseg.ops.optimizers import lamb_step, lamb_step_reference, larc_adam_step, larc_adam_step_reference
from climseg.optim import LAMB, LARC

try:
    from climseg import _cuda_emulated as EMULATED
except ImportError:
    EMULATED = None
try:
    from climseg import _cuda as COMPILED
except ImportError:
    COMPILED = None

emulated = pytest.mark.skipif(EMULATED is None, reason="climseg._cuda_emulated is not built")

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
LABELS = [torch.int64, torch.int32, torch.uint8]
REDUCTIONS = ["mean", "sum", "none"]
# relative to the largest magnitude of the exact result: about one unit in the last place
# of the output type (two for the 16-bit types), more than fp32 summation-order noise
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
CHUNK = 32768  # CS_CHUNK: the multi-tensor kernels walk tensors in chunks of this
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def seed():
    """A fresh seed every run (CLIMSEG_TEST_SEED pins one), named in failure messages."""
    value = int(os.environ.get("CLIMSEG_TEST_SEED", "0")) or torch.seed()
    torch.manual_seed(value)
    return value


def _where(seed):
    return f"(seed {seed}; rerun with CLIMSEG_TEST_SEED={seed})"


class _PoisonedTorch:
    """``torch`` as the op modules see it, except that torch.empty / torch.empty_like
    return floating tensors full of NaN (integers full of a sentinel)."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(0x5A if t.dtype == torch.uint8 else -0x5A5A)

    def empty(self, *args, **kwargs):
        return self._poison(self._real.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(self._real.empty_like(*args, **kwargs))


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every buffer the ops allocate (outputs, partial sums, norms) starts as NaN."""
    for module in (ops_ce, ops_optimizers, ops_buckets, ops_normalize):
        monkeypatch.setattr(module, "torch", _PoisonedTorch(torch))


def _check(ours, theirs, exact, dtype, what, seed, floor=None):
    """err(ours) <= 2 err(theirs) + FLOOR * max|exact|, both against ``exact`` (float64); NaN
    exactly where the exact result has NaN, the same infinities where it has infinities once
    rounded to ``dtype`` (an fp16 sum beyond 65504 is Inf in every fp16 implementation)."""
    exact = exact.detach()
    exact = torch.where(exact.to(dtype).isinf(), exact.to(dtype).to(exact.dtype), exact)
    ours, theirs, exact = (t.detach().double().cpu() for t in (ours, theirs, exact))
    assert ours.shape == exact.shape, f"{what}: shape {tuple(ours.shape)}, expected {tuple(exact.shape)} {_where(seed)}"
    nan = exact.isnan()
    assert torch.equal(ours.isnan(), nan), (
        f"{what}: NaN at {int((ours.isnan() & ~nan).sum())} elements where the "
        f"reference has none, missing at {int((nan & ~ours.isnan()).sum())} "
        f"{_where(seed)}"
    )
    inf = exact.isinf()
    assert torch.equal(ours[inf], exact[inf]) and not ours[~inf].isinf().any(), (
        f"{what}: infinities differ {_where(seed)}"
    )
    finite = exact.isfinite()
    if not finite.any():
        return
    scale = exact[finite].abs().max().item()
    err = (ours - exact)[finite].abs().max().item()
    ref = (theirs - exact)[finite].abs().max().item()
    floor = (FLOOR[dtype] if floor is None else floor) * scale
    assert err <= 2 * ref + floor, (
        f"{what}: error {err:.3g} against float64, PyTorch's {ref:.3g}, floor {floor:.3g} {_where(seed)}"
    )


def _bits(t):
    return t.contiguous().view(BITS[t.dtype]) if t.dtype in BITS else t


def _assert_bitwise(ours, ref, what, seed):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, (
        f"{what}: {ours.dtype} {tuple(ours.shape)} vs {ref.dtype} {tuple(ref.shape)}"
    )
    same = _bits(ours.cpu()) == _bits(ref.cpu())
    assert same.all(), (
        f"{what}: {int((~same).sum())} of {same.numel()} elements differ in their bits, first at "
        f"{int((~same).flatten().nonzero()[0])} {_where(seed)}"
    )


def _assert_same_values(ours, ref, what, seed):
    """Equal values, NaN where the reference has NaN (NaN bits may differ: sign, payload)."""
    ours, ref = ours.cpu(), ref.cpu()
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    same = (ours == ref) | (ours.isnan() & ref.isnan())
    assert same.all(), f"{what}: {int((~same).sum())} elements differ {_where(seed)}"


# ---------------------------------------------------------------------------------------------
# weighted cross-entropy with counts: one case, on any device


def _ce_inputs(
    shape, dtype, label_dtype, *, layout="nchw", ignore_index=-100, ignore_fraction=0.15, weights=True, device="cpu"
):
    n, c = shape[:2]
    logits = (torch.randn(shape, device=device) * 3).to(dtype)
    if layout == "nhwc":
        logits = logits.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, c, (n,) + tuple(shape[2:]), device=device)
    labels[torch.rand(labels.shape, device=device) < ignore_fraction] = ignore_index
    labels = labels.to(label_dtype)
    weight = torch.rand(c, device=device) + 0.5 if weights else None
    return logits, labels, weight


def _exact_loss(logits, labels, weight, reduction, ignore_index):
    """float64 F.cross_entropy and its float64 leaf."""
    leaf = logits.detach().double().requires_grad_()
    loss = F.cross_entropy(
        leaf,
        labels.long(),
        weight=None if weight is None else weight.double(),
        reduction=reduction,
        ignore_index=ignore_index,
    )
    return leaf, loss


def check_cross_entropy_case(
    logits, labels, weight, reduction, ignore_index, per_sample, seed, *, fused_grad=True, backward=True
):
    """Loss, counts, autograd gradient and the fused gradient of the CUDA kernel against
    the reference (in the logits' dtype) and float64."""
    dtype = logits.dtype
    kw = dict(ignore_index=ignore_index, per_sample=per_sample)
    x64, exact = _exact_loss(logits, labels, weight, reduction, ignore_index)
    xt = logits.detach().clone().requires_grad_()
    theirs, counts_t = weighted_cross_entropy_with_counts_reference(xt, labels, weight, reduction, **kw)
    xo = logits.detach().clone().requires_grad_()
    ours, counts = weighted_cross_entropy_with_counts(xo, labels, weight, reduction, backend="cuda", **kw)

    assert ours.dtype == dtype, f"loss dtype {ours.dtype}, expected {dtype}"
    _check(ours, theirs, exact, dtype, f"loss ({reduction})", seed)
    n, c = logits.shape[:2]
    assert counts.dtype == torch.int64 and counts.shape == ((n, c, 3) if per_sample else (c, 3))
    assert torch.equal(counts.cpu(), counts_t.cpu()), f"counts\n{counts}\nexpected\n{counts_t} {_where(seed)}"
    if not per_sample:
        # every non-ignored pixel is a TP, or one FP and one FN
        valid = int((labels.long() != ignore_index).sum())
        assert int(counts[:, 0].sum() + counts[:, 2].sum()) == valid

    if backward:
        grad_out = torch.randn(exact.shape, device=logits.device, dtype=torch.float64)
        (g_exact,) = torch.autograd.grad(exact, x64, grad_out, retain_graph=True)
        (g_theirs,) = torch.autograd.grad(theirs, xt, grad_out.to(dtype), retain_graph=True)
        (g_ours,) = torch.autograd.grad(ours, xo, grad_out.to(dtype))
        assert g_ours.dtype == dtype
        _check(g_ours, g_theirs, g_exact, dtype, f"autograd gradient ({reduction})", seed)

    if fused_grad:
        loss_r, counts_r, grad_r = weighted_cross_entropy_with_counts(
            logits, labels, weight, reduction, return_grad=True, backend="cuda", **kw
        )
        assert not loss_r.requires_grad and not grad_r.requires_grad
        # the same forward kernel: the loss is the same to the bit
        assert torch.equal(_bits(loss_r), _bits(ours.detach())), f"loss with return_grad differs {_where(seed)}"
        assert torch.equal(counts_r, counts)
        assert grad_r.dtype == dtype and grad_r.shape == logits.shape
        if logits.dim() == 4 and (logits.is_contiguous() or logits.is_contiguous(memory_format=torch.channels_last)):
            assert grad_r.stride() == logits.stride(), "the fused gradient has the logits' layout"
        ones = torch.ones_like(exact)
        (g_exact,) = torch.autograd.grad(exact, x64, ones)
        (g_theirs,) = torch.autograd.grad(theirs, xt, ones.to(dtype))
        _check(grad_r, g_theirs, g_exact, dtype, f"fused gradient ({reduction})", seed)
    return ours, counts


# ---------------------------------------------------------------------------------------------
# cross-entropy: the main matrix (emulated kernels)


@emulated
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_matches_reference(dtype, reduction, seed):
    """Nine cases in which every logits dtype meets every reduction, both layouts, every
    label dtype, batch 1 and 2, weights and none, per-sample and total counts."""
    d, r = FLOATS.index(dtype), REDUCTIONS.index(reduction)
    layout = ("nchw", "nhwc")[(d + r) % 2]
    label_dtype = LABELS[(d + 2 * r) % 3]
    ignore_index = {torch.int64: -100, torch.int32: 7, torch.uint8: 255}[label_dtype]
    n = (1, 2)[(d + r // 2) % 2]
    c = (3, 5)[d % 2]
    logits, labels, weight = _ce_inputs(
        (n, c, 13, 21), dtype, label_dtype, layout=layout, ignore_index=ignore_index, weights=(2 * d + r) % 3 != 0
    )
    check_cross_entropy_case(logits, labels, weight, reduction, ignore_index, per_sample=(d + r) % 3 == 1, seed=seed)


@emulated
@pytest.mark.parametrize(
    "shape, layout",
    [
        ((2, 4), "nchw"),  # no spatial dimensions: (N, C) logits, (N,) labels
        ((1, 3, 301), "nchw"),  # 1-D signal
        ((1, 3, 3, 7, 11), "nchw"),  # 3-D volume
        ((2, 3, 11, 9), "transposed"),  # neither layout: copied to contiguous first
        ((1, 64, 9, 7), "nhwc"),  # the most classes the kernel takes
        ((1, 2, 17, 1), "nchw"),  # width 1
    ],
)
def test_cross_entropy_shapes_and_layouts(shape, layout, seed):
    logits, labels, weight = _ce_inputs(shape, torch.float32, torch.int64)
    if layout == "nhwc":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        logits = logits.transpose(2, 3).contiguous().transpose(2, 3)
        assert not logits.is_contiguous() and not logits.is_contiguous(memory_format=torch.channels_last)
    check_cross_entropy_case(logits, labels, weight, "mean", -100, per_sample=True, seed=seed)


@emulated
@pytest.mark.parametrize("dtype, reduction", [(d, r) for d in (torch.float16, torch.bfloat16) for r in REDUCTIONS])
def test_cross_entropy_float32_loss_from_16bit_logits(dtype, reduction, seed):
    logits, labels, weight = _ce_inputs((2, 3, 11, 13), dtype, torch.int32)
    kw = dict(ignore_index=-100, loss_dtype=torch.float32)
    _, exact = _exact_loss(logits, labels, weight, reduction, -100)
    theirs, _ = weighted_cross_entropy_with_counts_reference(logits, labels, weight, reduction, **kw)
    ours, _ = weighted_cross_entropy_with_counts(logits, labels, weight, reduction, backend="cuda", **kw)
    assert ours.dtype == theirs.dtype == torch.float32
    _check(ours, theirs, exact, torch.float32, f"float32 loss ({reduction}) of {dtype} logits", seed)
    loss_r, _, _ = weighted_cross_entropy_with_counts(
        logits, labels, weight, reduction, return_grad=True, backend="cuda", **kw
    )
    assert loss_r.dtype == torch.float32
    _check(loss_r, theirs, exact, torch.float32, f"float32 loss ({reduction}, return_grad) of {dtype} logits", seed)


@emulated
@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_is_bitwise_reproducible(dtype, seed):
    reduction = ("mean", "sum", "none")[FLOATS.index(dtype)]
    logits, labels, weight = _ce_inputs((2, 3, 23, 29), dtype, torch.int64, layout="nhwc")
    first = weighted_cross_entropy_with_counts(logits, labels, weight, reduction, return_grad=True, backend="cuda")
    second = weighted_cross_entropy_with_counts(logits, labels, weight, reduction, return_grad=True, backend="cuda")
    for a, b, what in zip(first, second, ["loss", "counts", "gradient"]):
        assert torch.equal(_bits(a), _bits(b)), f"{what} ({reduction}) differs between two runs {_where(seed)}"


@emulated
@pytest.mark.parametrize(
    "label_dtype, bad, ignore_index, return_grad",
    [
        (torch.int64, 3, -100, False),  # == C
        (torch.int32, -1, -100, True),  # negative, not ignore_index
        (torch.uint8, 200, 255, False),  # too large for 3 classes
        (torch.int64, -100, -1, True),  # the usual ignore value, but not this call's
    ],
)
def test_cross_entropy_invalid_labels_raise(label_dtype, bad, ignore_index, return_grad, seed):
    logits, labels, weight = _ce_inputs((1, 3, 7, 9), torch.float32, label_dtype, ignore_index=ignore_index)
    labels.view(-1)[int(torch.randint(0, labels.numel(), ()))] = bad
    with pytest.raises(ValueError, match="labels lie outside"):
        weighted_cross_entropy_with_counts(
            logits, labels, weight, return_grad=return_grad, ignore_index=ignore_index, backend="cuda"
        )


@emulated
def test_cross_entropy_unchecked_invalid_labels_give_nan_pixels(seed):
    logits, labels, _ = _ce_inputs((1, 3, 7, 9), torch.float32, torch.int64)
    bad = torch.zeros(labels.shape, dtype=torch.bool)
    bad.view(-1)[torch.randperm(labels.numel())[:4]] = True
    labels[bad] = 5
    loss, counts = weighted_cross_entropy_with_counts(
        logits, labels, reduction="none", check_labels=False, backend="cuda"
    )
    assert torch.equal(loss.isnan(), bad), f"NaN loss exactly at the invalid labels {_where(seed)}"
    valid = (labels != -100) & ~bad
    assert int(counts[:, 0].sum() + counts[:, 2].sum()) == int(valid.sum()), "invalid labels count nowhere"


@emulated
@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_argmax_ties_nan_and_inf_like_torch(dtype, seed):
    """Ties go to the first maximum, a NaN wins (the first NaN), as torch.argmax."""
    n, c, h, w = 2, 4, 9, 17
    logits = torch.randint(-1, 2, (n, c, h, w)).to(dtype)  # ties everywhere
    special = torch.rand(n, c, h, w)
    logits[special < 0.03] = float("nan")
    logits[(special >= 0.03) & (special < 0.05)] = float("inf")
    logits[(special >= 0.05) & (special < 0.07)] = -float("inf")
    logits[0, :, 0, 0] = -float("inf")  # all -inf: argmax 0
    logits[1, :, 0, 1] = 2.0  # all equal
    labels = torch.randint(0, c, (n, h, w))
    labels[torch.rand(n, h, w) < 0.1] = -100
    loss, counts = weighted_cross_entropy_with_counts(logits, labels, reduction="none", per_sample=True, backend="cuda")
    expected = counts_reference(logits, labels)
    assert torch.equal(counts, expected), f"counts\n{counts}\nexpected (torch.argmax)\n{expected} {_where(seed)}"
    _, exact = _exact_loss(logits, labels, None, "none", -100)
    theirs, _ = weighted_cross_entropy_with_counts_reference(logits, labels, reduction="none")
    _check(loss, theirs, exact, dtype, "per-pixel loss with ties, NaN and Inf", seed)


@emulated
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_all_ignored(reduction, seed):
    """Nothing to average: "mean" is NaN as in F.cross_entropy, "sum" 0, counts 0, gradient 0."""
    logits, _, weight = _ce_inputs((1, 3, 5, 7), torch.float32, torch.int64)
    labels = torch.full((1, 5, 7), -100)
    ours, counts = check_cross_entropy_case(logits, labels, weight, reduction, -100, per_sample=False, seed=seed)
    assert bool(ours.isnan()) if reduction == "mean" else not ours.isnan().any()
    assert not counts.any()


@emulated
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_none_backward_through_a_reduction(dtype, seed):
    """The per-pixel gradient arrives expanded (stride 0) from .mean() of the "none" loss."""
    logits, labels, weight = _ce_inputs((2, 3, 9, 11), dtype, torch.int32, layout="nhwc")
    x64, exact = _exact_loss(logits, labels, weight, "none", -100)
    xt, xo = logits.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
    theirs, _ = weighted_cross_entropy_with_counts_reference(xt, labels, weight, "none")
    ours, _ = weighted_cross_entropy_with_counts(xo, labels, weight, "none", backend="cuda")
    for loss in (exact, theirs, ours):
        loss.mean().backward()
    _check(xo.grad, xt.grad, x64.grad, dtype, "gradient of the mean of the per-pixel loss", seed)


@emulated
def test_cross_entropy_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementations and autograd registration, as torch.compile needs them."""
    logits, labels, weight = _ce_inputs((1, 3, 5, 7), torch.float32, torch.int64)
    logits.requires_grad_()
    forward, with_grad = (
        torch.ops.climseg.weighted_cross_entropy_with_counts.default,
        torch.ops.climseg.weighted_cross_entropy_with_grad.default,
    )
    torch.library.opcheck(forward, (logits, labels, weight, "mean", -100, torch.float32))
    torch.library.opcheck(forward, (logits, labels, weight, "none", -100, torch.bfloat16))
    torch.library.opcheck(with_grad, (logits.detach(), labels, weight, "sum", -100, torch.float32))


@emulated
def test_cross_entropy_rejects_what_the_kernel_cannot_do():
    logits, labels, _ = _ce_inputs((1, 65, 3, 3), torch.float32, torch.int64)
    with pytest.raises(ConfigError, match="65 classes"):
        weighted_cross_entropy_with_counts(logits, labels, backend="cuda")
    with pytest.raises(ConfigError, match="reduction"):
        weighted_cross_entropy_with_counts(logits, labels, reduction="max", backend="cuda")
    with pytest.raises(ValueError, match="labels of shape"):
        weighted_cross_entropy_with_counts(logits, labels[:, :2], backend="cuda")
    with pytest.raises(ValueError, match="class weights"):
        weighted_cross_entropy_with_counts(logits[:, :3], labels.clamp(max=2), torch.ones(4), backend="cuda")
    # auto on a CPU tensor takes the reference, whatever the kernel could do
    loss, _ = weighted_cross_entropy_with_counts(logits, labels)
    assert torch.equal(loss, F.cross_entropy(logits, labels))


# ---------------------------------------------------------------------------------------------
# optimizers
#
# Betas exact in float32 (0.875, 1 - 2**-10), so that every error of the kernels shows at fp32
# precision; the default betas are checked on their own below (1 - beta comes from the host in
# double: formed in float32, 1 - 0.999f is 1.3e-5 off).
BETAS = (0.875, 1.0 - 2.0**-10)


def _sizes_and_scales():
    """Tensor sizes: one just over a chunk (two chunks), odd small ones, an empty one, one
    whose weights are zero (norm 0: factor 1, no decay); gradient scales that put LARC's
    factor on both sides of its clip (lr 0.01: unclipped at 1, clipped at 0.05)."""
    return [(CHUNK + 37,), (7, 5), (0,), (13,), (1,)], [1.0, 0.05, 1.0, 1.0, 10.0]


def _optimizer_state(sizes, device):
    params = [torch.randn(s, device=device) for s in sizes]
    if len(params) > 3:
        params[3].zero_()
    return params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]


def _step_grads(sizes, scales, grad_dtype, device, step):
    grads = [(torch.randn(s, device=device) * k).to(grad_dtype) for s, k in zip(sizes, scales)]
    if step == 2 and len(grads) > 1:
        grads[1].zero_()  # gradient norm 0 for a tensor with non-zero weights
    return grads


def check_optimizer_case(
    fused,
    reference,
    grad_dtype,
    weight_decay,
    seed,
    device="cpu",
    sizes=None,
    scales=None,
    floor=None,
    steps=3,
    **hyper,
):
    """``steps`` steps of ``fused`` (CUDA kernels) against ``reference`` in float32 and float64;
    with 16-bit gradients the fp32 params are master weights of a 16-bit model copy."""
    if sizes is None:
        sizes, scales = _sizes_and_scales()
    ours = _optimizer_state(sizes, device)
    theirs = [[t.clone() for t in group] for group in ours]
    exact = [[t.double() for t in group] for group in ours]
    sixteen = grad_dtype != torch.float32
    model = [torch.empty(p.shape, device=device, dtype=grad_dtype) for p in ours[0]] if sixteen else None
    model_theirs = [torch.empty_like(m) for m in model] if sixteen else None
    for step in range(1, steps + 1):
        grads = _step_grads(sizes, scales, grad_dtype, device, step)
        for m in model or []:
            m.fill_(float("nan"))
        kw = dict(step=step, weight_decay=weight_decay, **hyper)
        fused(ours[0], grads, ours[1], ours[2], model_params=model, backend="cuda", **kw)
        reference(theirs[0], grads, theirs[1], theirs[2], model_params=model_theirs, **kw)
        reference(exact[0], [g.double() for g in grads], exact[1], exact[2], **kw)
        for name, o, t, e in zip(["param", "exp_avg", "exp_avg_sq"], ours, theirs, exact):
            for i in range(len(sizes)):
                where = f"{fused.__name__}, {grad_dtype} grads, step {step}: {name} {i} {tuple(sizes[i])}"
                _check(o[i], t[i], e[i], torch.float32, where, seed, floor=floor)
        for i, m in enumerate(model or []):
            _assert_bitwise(m, ours[0][i].to(grad_dtype), f"step {step}: the model copy {i} of the fp32 param", seed)
            _check(m, model_theirs[i], exact[0][i], grad_dtype, f"step {step}: model param {i}", seed)


@emulated
@pytest.mark.parametrize(
    "fused, reference",
    [(larc_adam_step, larc_adam_step_reference), (lamb_step, lamb_step_reference)],
    ids=["larc_adam", "lamb"],
)
@pytest.mark.parametrize(
    "grad_dtype, weight_decay",
    [(torch.float32, 0.0), (torch.float32, 0.01), (torch.float16, 0.01), (torch.bfloat16, 0.0)],
)
def test_optimizer_step_matches_reference(fused, reference, grad_dtype, weight_decay, seed):
    check_optimizer_case(fused, reference, grad_dtype, weight_decay, seed, lr=0.01, betas=BETAS)


@emulated
def test_larc_adam_step_without_clip(seed):
    check_optimizer_case(
        larc_adam_step,
        larc_adam_step_reference,
        torch.bfloat16,
        0.01,
        seed,
        steps=2,
        lr=0.01,
        clip=False,
        trust_coefficient=0.02,
        betas=(0.75, 0.9375),
        eps=1e-6,
    )


@emulated
@pytest.mark.parametrize(
    "fused, reference",
    [(larc_adam_step, larc_adam_step_reference), (lamb_step, lamb_step_reference)],
    ids=["larc_adam", "lamb"],
)
def test_optimizer_state_with_default_betas_is_fp32_accurate(fused, reference, seed):
    """Default betas (0.9, 0.999): the moments to a few fp32 ulps, as PyTorch's."""
    check_optimizer_case(
        fused, reference, torch.float32, 0.0, seed, steps=1, lr=0.01, sizes=[(7, 5)], scales=[1.0], floor=1e-6
    )  # 8 units in the last place of float32


def check_against_optimizer(make_optimizer, fused, weight_decay, seed, device="cpu", **fused_kw):
    """Three steps of ``fused`` against the optimizer ``make_optimizer`` builds, in float32
    and float64: parameters and the Adam moments in its state."""
    sizes, scales = _sizes_and_scales()
    params, exp_avgs, exp_avg_sqs = _optimizer_state(sizes, device)
    theirs = [torch.nn.Parameter(p.clone()) for p in params]
    exact = [torch.nn.Parameter(p.double()) for p in params]
    opt_theirs, opt_exact = make_optimizer(theirs), make_optimizer(exact)
    for step in (1, 2, 3):
        grads = _step_grads(sizes, scales, torch.float32, device, step)
        for p, q, g in zip(theirs, exact, grads):
            p.grad, q.grad = g.clone(), g.double()
        opt_theirs.step()
        opt_exact.step()
        fused(params, grads, exp_avgs, exp_avg_sqs, step=step, weight_decay=weight_decay, backend="cuda", **fused_kw)
        for i in range(len(sizes)):
            where = f"{fused.__name__} vs {type(opt_theirs).__name__}, step {step}"
            _check(params[i], theirs[i], exact[i], torch.float32, f"{where}: param {i} {tuple(sizes[i])}", seed)
            for name, ours in (("exp_avg", exp_avgs[i]), ("exp_avg_sq", exp_avg_sqs[i])):
                _check(
                    ours,
                    opt_theirs.state[theirs[i]][name],
                    opt_exact.state[exact[i]][name],
                    torch.float32,
                    f"{where}: {name} {i}",
                    seed,
                )


@emulated
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_larc_adam_step_agrees_with_LARC_around_Adam(weight_decay, seed):
    lr = 0.01
    check_against_optimizer(
        lambda ps: LARC(torch.optim.Adam(ps, lr=lr, betas=BETAS, weight_decay=weight_decay)),
        larc_adam_step,
        weight_decay,
        seed,
        lr=lr,
        betas=BETAS,
    )


@emulated
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lamb_step_agrees_with_LAMB(weight_decay, seed):
    lr = 0.01
    check_against_optimizer(
        lambda ps: LAMB(ps, lr=lr, betas=BETAS, weight_decay=weight_decay),
        lamb_step,
        weight_decay,
        seed,
        lr=lr,
        betas=BETAS,
    )


@emulated
@pytest.mark.parametrize("fused", [larc_adam_step, lamb_step])
def test_optimizer_steps_on_empty_tensors_only(fused):
    params = [torch.empty(0), torch.empty(0, 3)]
    states = [[torch.empty_like(p) for p in params] for _ in range(2)]
    fused(params, [torch.empty_like(p) for p in params], *states, step=1, lr=0.1, backend="cuda")
    with pytest.raises(ValueError, match="one dtype"):
        fused(
            [torch.ones(3)] * 2,
            [torch.ones(3), torch.ones(3, dtype=torch.float16)],
            [torch.zeros(3)] * 2,
            [torch.zeros(3)] * 2,
            step=1,
            lr=0.1,
            backend="cuda",
        )


# ---------------------------------------------------------------------------------------------
# gradient buckets


def _bucket_tensors(dtype, device="cpu", big=CHUNK + 37):
    """Odd sizes, an empty tensor, one of more than a chunk; magnitudes from fp16 subnormals
    to thousands, so rounding of every kind happens."""
    shapes = [(big,), (7, 5), (0,), (1,), (3, 100)]
    out = []
    for s in shapes:
        t = torch.randn(s, device=device) * 10.0 ** torch.empty(s, device=device).uniform_(-7, 3)
        out.append(t.to(dtype))
    return out


@emulated
@pytest.mark.parametrize("bucket_dtype", FLOATS)
@pytest.mark.parametrize("source_dtype", FLOATS)
def test_flatten_unflatten_bitwise_like_reference(source_dtype, bucket_dtype, seed):
    tensors = _bucket_tensors(source_dtype)
    total = sum(t.numel() for t in tensors)
    scale = 1.0 / 3.0
    ref = flatten_gradients_reference(tensors, bucket_dtype, scale)
    out = torch.full((total,), float("nan"), dtype=bucket_dtype)
    ours = flatten_gradients(tensors, bucket_dtype, scale, out=out, backend="cuda")
    assert ours is out
    _assert_bitwise(ours, ref, f"flatten {source_dtype} -> {bucket_dtype}", seed)
    ours_new = flatten_gradients(tensors, bucket_dtype, scale, backend="cuda")  # poisoned allocation
    _assert_bitwise(ours_new, ref, f"flatten {source_dtype} -> {bucket_dtype} (allocated)", seed)

    for scale in (3.0, 1.0):
        targets = [torch.full_like(t, float("nan")) for t in tensors]
        expected = [torch.empty_like(t) for t in tensors]
        found = unflatten_gradients(ref, targets, scale, backend="cuda")
        found_ref = unflatten_gradients_reference(ref, expected, scale)
        for i, (o, e) in enumerate(zip(targets, expected)):
            _assert_bitwise(o, e, f"unflatten {bucket_dtype} -> {source_dtype}, scale {scale}: tensor {i}", seed)
        assert found.dtype == torch.bool and found.shape == () and not bool(found) and not bool(found_ref)
    # scale 1: the cast alone
    _assert_bitwise(
        flatten_gradients(tensors, bucket_dtype, backend="cuda"),
        flatten_gradients_reference(tensors, bucket_dtype),
        f"flatten {source_dtype} -> {bucket_dtype}, scale 1",
        seed,
    )


@emulated
@pytest.mark.parametrize(
    "case", ["inf", "nan", "fp32-1e6-to-fp16", "fp32-1e6-to-bf16", "fp16-times-scale", "finite", "flattened-overflow"]
)
def test_unflatten_flags_non_finite_values(case, seed):
    """The flag is true exactly when a value that arrives in a tensor is Inf or NaN."""
    bucket_dtype, target_dtype, scale = torch.float32, torch.float32, 1.0
    tensors = _bucket_tensors(torch.float32)
    bucket = flatten_gradients_reference(tensors, torch.float32)
    where = int(torch.randint(CHUNK, CHUNK + 37, ()))  # in the second chunk of the first tensor
    expected_flag = True
    if case == "inf":
        bucket[where] = -float("inf")
    elif case == "nan":
        bucket[-5] = float("nan")
    elif case == "fp32-1e6-to-fp16":
        bucket[where], target_dtype = 1e6, torch.float16
    elif case == "fp32-1e6-to-bf16":
        bucket[where], target_dtype, expected_flag = 1e6, torch.bfloat16, False
    elif case == "fp16-times-scale":
        bucket = bucket.half()
        bucket[7] = 60000.0
        bucket_dtype, target_dtype, scale = torch.float16, torch.float16, 2.0
    elif case == "finite":
        bucket[where], expected_flag = 3e38, False
    elif case == "flattened-overflow":
        tensors[1][2, 3] = 1e6
        bucket = flatten_gradients(tensors, torch.float16, backend="cuda")
        assert bool(bucket.isinf().any())
        bucket_dtype, target_dtype = torch.float16, torch.float32
    assert bucket.dtype == bucket_dtype
    targets = [torch.full(t.shape, float("nan"), dtype=target_dtype) for t in tensors]
    expected = [torch.empty(t.shape, dtype=target_dtype) for t in tensors]
    found = unflatten_gradients(bucket, targets, scale, backend="cuda")
    found_ref = unflatten_gradients_reference(bucket, expected, scale)
    assert bool(found_ref) == expected_flag
    assert bool(found) == expected_flag, f"{case}: flag {bool(found)}, expected {expected_flag} {_where(seed)}"
    for i, (o, e) in enumerate(zip(targets, expected)):
        _assert_same_values(o, e, f"{case}: tensor {i}", seed)


# ---------------------------------------------------------------------------------------------
# input conversion


def check_convert_case(dtype, layout, channels, shape, seed, device="cpu"):
    n, h, w, cin = shape
    x = torch.randn(shape, device=device) * 40 + 250
    c = cin if channels is None else len(channels)
    shift = torch.randn(c) * 10 + 250
    scale = 1.0 / (torch.rand(c) * 40 + 1)
    ref = normalize_input_reference(x, shift, scale, channels, dtype, layout)
    ours = normalize_input(x, shift, scale, channels, dtype, layout, backend="cuda")
    assert ours.device == x.device and ours.shape == (n, c, h, w)
    if layout == "nhwc":
        assert ours.is_contiguous(memory_format=torch.channels_last)
    else:
        assert ours.is_contiguous()
    assert [s for s, k in zip(ours.stride(), ours.shape) if k > 1] == [
        s for s, k in zip(ref.stride(), ref.shape) if k > 1
    ]
    _assert_bitwise(ours, ref, f"convert to {dtype} {layout}", seed)


@emulated
@pytest.mark.parametrize("channels", [None, [4, 0, 0, 5, 2]])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_normalize_input_bitwise_like_reference(dtype, layout, channels, seed):
    check_convert_case(dtype, layout, channels, (2, 7, 19, 6), seed)


@emulated
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_normalize_input_batch_one_small(layout, seed):
    check_convert_case(torch.bfloat16, layout, [1], (1, 3, 5, 2), seed)


# ---------------------------------------------------------------------------------------------
# the builds and their kernel tables


@emulated
def test_kernel_table_of_the_emulated_build():
    assert ops_cuda.kernel_signatures() == EMULATED.kernels()
    assert EMULATED.emulated is True and EMULATED.device_count() == 0
    found = ops_cuda.launcher(torch.device("cpu"))
    assert found.name == "climseg._cuda_emulated"
    assert ops_cuda.probe(torch.empty(1)) == (True, "")
    assert "emulat" in ops_cuda.describe().lower()
    with pytest.raises(ValueError, match="takes 4 arguments"):
        found.launch("mt_norms", (1,), 32, [0, 0, 0])
    with pytest.raises(ValueError, match="no kernel named"):
        found.launch("no_such_kernel", (1,), 32, [])
    found.launch("mt_norms", (0,), 32, [0, 0, 0, 0])  # an empty grid launches nothing


@pytest.mark.skipif(COMPILED is None, reason="climseg._cuda (nvcc) is not built")
def test_kernel_table_of_the_nvcc_build():
    assert COMPILED.kernels() == ops_cuda.kernel_signatures()
    assert COMPILED.emulated is False
    if EMULATED is not None:
        assert COMPILED.kernels() == EMULATED.kernels()
    if torch.cuda.is_available() or COMPILED.device_count() > 0:
        pytest.skip("a CUDA device is present: the no-device behaviour cannot be checked")
    assert COMPILED.device_count() == 0 and COMPILED.device_problem().startswith("no usable CUDA device (")
    with pytest.raises(RuntimeError, match=r"climseg._cuda: no usable CUDA device .*backend=\"torch\""):
        COMPILED.launch("mt_norms", (1,), 32, 0, 0, [0, 0, 0, 0])
    with pytest.raises(RuntimeError, match="no usable CUDA device"):  # again: the error was cleared
        COMPILED.launch("mt_norms", (1,), 32, 0, 0, [0, 0, 0, 0])
    assert "no usable CUDA device" in ops_cuda.describe()


# ---------------------------------------------------------------------------------------------
# the real kernels on a GPU, at realistic sizes

GPU_LOGITS = (2, 3, 768, 1152)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_cross_entropy(dtype, layout, seed):
    for r, reduction in enumerate(REDUCTIONS):
        label_dtype = LABELS[(FLOATS.index(dtype) + r) % 3]
        ignore_index = 255 if label_dtype == torch.uint8 else -100
        logits, labels, weight = _ce_inputs(
            GPU_LOGITS, dtype, label_dtype, layout=layout, ignore_index=ignore_index, weights=r != 1, device="cuda"
        )
        check_cross_entropy_case(logits, labels, weight, reduction, ignore_index, per_sample=r == 0, seed=seed)
    kw = dict(ignore_index=ignore_index, return_grad=True, backend="cuda")
    first = weighted_cross_entropy_with_counts(logits, labels, weight, "sum", **kw)
    second = weighted_cross_entropy_with_counts(logits, labels, weight, "sum", **kw)
    for a, b, what in zip(first, second, ["loss", "counts", "gradient"]):
        assert torch.equal(_bits(a), _bits(b)), f"{what} differs between two runs {_where(seed)}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_cross_entropy_edge_cases(dtype, seed):
    for shape in [(1, 64, 33, 65), (5, 4), (3, 3, 5, 7, 11)]:
        logits, labels, weight = _ce_inputs(shape, dtype, torch.int64, device="cuda")
        check_cross_entropy_case(logits, labels, weight, "mean", -100, per_sample=True, seed=seed)
    logits = torch.randint(-1, 2, (2, 4, 97, 131), device="cuda").to(dtype)
    logits[torch.rand(logits.shape, device="cuda") < 0.02] = float("nan")
    labels = torch.randint(0, 4, (2, 97, 131), device="cuda")
    _, counts = weighted_cross_entropy_with_counts(logits, labels, per_sample=True, backend="cuda")
    assert torch.equal(counts, counts_reference(logits, labels)), f"argmax ties / NaN {_where(seed)}"
    labels[0, 5, 5] = 4
    with pytest.raises(ValueError, match="labels lie outside"):
        weighted_cross_entropy_with_counts(logits, labels, backend="cuda")
    logits, _, weight = _ce_inputs((2, 3, 33, 65), dtype, torch.int64, device="cuda")
    loss, counts = weighted_cross_entropy_with_counts(
        logits, torch.full((2, 33, 65), -100, device="cuda"), weight, backend="cuda"
    )
    assert bool(loss.isnan()) and not counts.any()
    # float32 loss of 16-bit logits ("none": see test_cross_entropy_float32_loss_from_16bit_logits)
    for reduction in ("mean", "sum") if dtype != torch.float32 else ():
        logits, labels, weight = _ce_inputs((2, 3, 257, 129), dtype, torch.int32, device="cuda")
        _, exact = _exact_loss(logits, labels, weight, reduction, -100)
        theirs, _ = weighted_cross_entropy_with_counts_reference(
            logits, labels, weight, reduction, loss_dtype=torch.float32
        )
        ours, _ = weighted_cross_entropy_with_counts(
            logits, labels, weight, reduction, loss_dtype=torch.float32, backend="cuda"
        )
        _check(ours, theirs, exact, torch.float32, f"float32 loss ({reduction})", seed)


@pytest.mark.gpu
@pytest.mark.parametrize("per_sample", [False, True])
def test_gpu_cross_entropy_more_than_65535_samples(per_sample, seed):
    """CUDA caps gridDim.y at 65535: blocks take samples y, y + 65535, ...; (N, C) logits without
    per-sample counts run as one sample of N pixels."""
    logits, labels, weight = _ce_inputs((70001, 3), torch.float32, torch.int64, device="cuda")
    check_cross_entropy_case(logits, labels, weight, "mean", -100, per_sample=per_sample, seed=seed)
    logits, labels, weight = _ce_inputs((65537, 3, 2, 3), torch.bfloat16, torch.uint8, ignore_index=255, device="cuda")
    check_cross_entropy_case(logits, labels, weight, "sum", 255, per_sample=per_sample, seed=seed)


@emulated
@pytest.mark.parametrize("shape, per_sample", [((13, 3), False), ((13, 3), True), ((7, 3, 5, 6), True)])
def test_cross_entropy_more_samples_than_grid_rows(shape, per_sample, seed, monkeypatch):
    """The sample loop over gridDim.y, with the grid's row cap lowered to 3 so the emulation reaches it."""
    import climseg.ops.cross_entropy as ce

    monkeypatch.setattr(ce, "MAX_GRID_Y", 3)
    logits, labels, weight = _ce_inputs(shape, torch.float32, torch.int64)
    for reduction in REDUCTIONS:
        check_cross_entropy_case(logits, labels, weight, reduction, -100, per_sample=per_sample, seed=seed)


@pytest.mark.gpu
@pytest.mark.parametrize("grad_dtype", FLOATS)
def test_gpu_optimizers(grad_dtype, seed):
    sizes = [((1 << 20) + 3,), (257, 3, 3), (0,), (4096,), (CHUNK + 37,), (1,)]  # [3] has zero weights
    scales = [1.0, 0.05, 1.0, 1.0, 10.0, 1.0]  # [1] gets a zero gradient
    for weight_decay in (0.0, 0.01):
        check_optimizer_case(
            larc_adam_step,
            larc_adam_step_reference,
            grad_dtype,
            weight_decay,
            seed,
            device="cuda",
            sizes=sizes,
            scales=scales,
            lr=0.01,
            betas=BETAS,
        )
        check_optimizer_case(
            lamb_step,
            lamb_step_reference,
            grad_dtype,
            weight_decay,
            seed,
            device="cuda",
            sizes=sizes,
            scales=scales,
            lr=0.01,
            betas=BETAS,
        )
    if grad_dtype == torch.float32:
        check_against_optimizer(
            lambda ps: LARC(torch.optim.Adam(ps, lr=0.01, betas=BETAS, weight_decay=0.01)),
            larc_adam_step,
            0.01,
            seed,
            device="cuda",
            lr=0.01,
            betas=BETAS,
        )
        check_against_optimizer(
            lambda ps: LAMB(ps, lr=0.01, betas=BETAS, weight_decay=0.01),
            lamb_step,
            0.01,
            seed,
            device="cuda",
            lr=0.01,
            betas=BETAS,
        )


@pytest.mark.gpu
@pytest.mark.parametrize("source_dtype", FLOATS)
def test_gpu_buckets(source_dtype, seed):
    tensors = _bucket_tensors(source_dtype, device="cuda", big=3 * CHUNK + 5) + [
        t.to(source_dtype) for t in _bucket_tensors(torch.float32, device="cuda", big=(1 << 20) + 1)
    ]
    for bucket_dtype in FLOATS:
        ref = flatten_gradients_reference(tensors, bucket_dtype, 0.125)
        ours = flatten_gradients(tensors, bucket_dtype, 0.125, backend="cuda")
        _assert_bitwise(ours, ref, f"flatten {source_dtype} -> {bucket_dtype}", seed)
        targets = [torch.full_like(t, float("nan")) for t in tensors]
        expected = [torch.empty_like(t) for t in tensors]
        found = unflatten_gradients(ref, targets, 8.0, backend="cuda")
        assert bool(found) == bool(unflatten_gradients_reference(ref, expected, 8.0))
        for i, (o, e) in enumerate(zip(targets, expected)):
            _assert_same_values(o, e, f"unflatten {bucket_dtype} -> {source_dtype}: tensor {i}", seed)
        assert found.device.type == "cuda"
    bucket = flatten_gradients_reference(tensors, torch.float32)
    bucket[-1] = 1e6
    found = unflatten_gradients(bucket, [torch.empty_like(t, dtype=torch.float16) for t in tensors], backend="cuda")
    assert bool(found), f"1e6 into fp16 overflows {_where(seed)}"


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", FLOATS)
def test_gpu_normalize_input(dtype, layout, seed):
    check_convert_case(dtype, layout, None, (2, 768, 1152, 16), seed, device="cuda")
    check_convert_case(dtype, layout, [0, 3, 3, 15, 7], (3, 97, 131, 16), seed, device="cuda")


@pytest.mark.gpu
def test_gpu_kernel_builds():
    found = ops_cuda.launcher(torch.device("cuda"))
    assert found.name in ("climseg._cuda", "cupy")
    assert found.signatures == ops_cuda.kernel_signatures()
    assert ops_cuda.probe(torch.empty(1, device="cuda")) == (True, "")
    if COMPILED is not None:
        assert COMPILED.device_count() == torch.cuda.device_count()


@emulated
def test_cross_entropy_compiles_without_graph_break(seed):
    """torch.compile(fullgraph=True) traces the op (the backend probe is a constant to dynamo,
    the label check is skipped while compiling); outputs and gradients equal eager mode."""
    logits, labels, weight = _ce_inputs((2, 3, 9, 11), torch.float32, torch.int64)

    def f(x):
        loss, counts = weighted_cross_entropy_with_counts(x, labels, weight, "mean", per_sample=True, backend="cuda")
        return loss * 2, counts

    x1, x2 = logits.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
    (l1, c1), (l2, c2) = torch.compile(f, backend="aot_eager", fullgraph=True)(x1), f(x2)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2) and torch.equal(c1, c2) and torch.equal(x1.grad, x2.grad), f"seed {seed}"


@emulated
def test_fused_larc_adam_on_a_channels_last_model(seed):
    """Channels-last parameters (the trainer's default) take the kernels as they are: the kernels
    walk raw memory and pair parameter, gradient and moments by position; a gradient of other
    strides is brought into the parameter's layout first. backend="cuda" would raise on a fallback."""
    import copy

    from climseg.optim import LARC, FusedLARCAdam

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 9, 9).to(memory_format=torch.channels_last)
    ours, theirs = copy.deepcopy(net), copy.deepcopy(net)
    assert not next(ours.parameters()).is_contiguous()
    opt_ours = FusedLARCAdam(ours.parameters(), lr=0.01, weight_decay=1e-4, backend="cuda")
    opt_theirs = LARC(torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=1e-4))
    for step in range(3):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model(x).square().mean().backward()
            if step == 1:  # a contiguous gradient on a channels-last parameter
                p = next(model.parameters())
                p.grad = p.grad.contiguous()
            opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert p.stride() == q.stride()
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"seed {seed}")


def test_distributed_optimizer_buckets_keep_channels_last_gradients():
    """One process: the bucket round trip (memory order) gives back every gradient exactly."""
    from climseg.distributed.optimizer import DistributedOptimizer

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1)).to(memory_format=torch.channels_last)
    opt = DistributedOptimizer(torch.optim.SGD(net.parameters(), lr=0.0), net.named_parameters(), hierarchical=False)
    net(torch.randn(2, 3, 7, 7).to(memory_format=torch.channels_last)).sum().backward()
    expected = [p.grad.clone() for p in net.parameters()]
    opt.synchronize()
    for p, g in zip(net.parameters(), expected):
        assert torch.equal(p.grad, g) and p.grad.stride() == p.stride()
    assert not bool(opt.nonfinite)
    opt.remove_hooks()


def test_tensors_on_another_device_are_refused_before_any_launch():
    """A kernel handed a pointer of another device would read the wrong memory: every op checks first."""
    meta = dict(device="meta")
    cases = [
        (lambda: flatten_gradients([torch.zeros(3)], out=torch.zeros(3, **meta), backend="cuda"), "flatten_gradients"),
        (lambda: unflatten_gradients(torch.zeros(3), [torch.zeros(3, **meta)], backend="cuda"), "unflatten_gradients"),
        (
            lambda: larc_adam_step(
                [torch.zeros(3)],
                [torch.zeros(3, **meta)],
                [torch.zeros(3)],
                [torch.zeros(3)],
                step=1,
                lr=0.1,
                backend="cuda",
            ),
            "larc_adam_step",
        ),
        (
            lambda: weighted_cross_entropy_with_counts(
                torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long, **meta), backend="cuda"
            ),
            "weighted_cross_entropy_with_counts",
        ),
    ]
    for call, op in cases:
        with pytest.raises(ValueError, match=f"{op}: .*meta"):
            call()
