"""``atrous_conv2d`` and ``aspp_conv``: (dilated) 2-D convolutions with a fused epilogue.

    y = activation((conv(x, weight) + bias) * scale + shift + residual)

scale and shift are per output channel (a folded batch norm or its affine
part); every term is optional; activation is None or "relu". The output has
the input's dtype; accumulation is float32 in the Triton kernels, as in
cuDNN. ``aspp_conv`` computes several convolutions of one input (the 1x1 and
dilated 3x3 branches of ASPP) into the channel slices of one output, in one
kernel launch, with the same epilogue over the concatenated channels.

Data flow: public function -> backend choice (:mod:`climseg.ops.backend`) ->
either the PyTorch reference below (the specification, and the CPU path) or
the custom op ``climseg::conv_branches`` (registered with ``torch.library``:
fake implementation for ``torch.compile``, autograd) -> launchers in
``climseg.kernels.atrous`` (NHWC implicit-GEMM kernels for groups = 1, direct
kernels for depthwise). The epilogue's backward (ReLU mask, scale, sums for
bias/scale/shift/residual) is a few elementwise PyTorch ops; the input and
weight gradients are Triton kernels.
"""

import os
import sys
import typing
import warnings

import torch
import torch.nn.functional as F

from climseg.errors import ConfigError
from climseg.ops import backend as _backend

ACTIVATIONS = (None, "relu")
Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------
def atrous_conv2d_reference(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    scale=None,
    shift=None,
    activation=None,
    residual=None,
):
    """Plain PyTorch: ``F.conv2d`` followed by the epilogue, term by term."""
    y = _at_caller(F.conv2d, x, weight, bias, stride, padding, dilation, groups)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1).to(y.dtype)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1).to(y.dtype)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = torch.relu(y)
    return y


def aspp_conv_reference(x, weights, dilations, *, bias=None, scale=None, shift=None, activation=None, pooled=None):
    """``concat[conv_b(x) for each branch b] -> epilogue``, then the broadcast ``pooled`` (N, C)
    appended as the last channels. Branch b has padding ``dilation_b * (k_b - 1) // 2``."""
    y = torch.cat(
        [_at_caller(F.conv2d, x, w, None, 1, d * (w.shape[-1] - 1) // 2, d) for w, d in zip(weights, dilations)], 1
    )
    y = atrous_conv2d_reference_epilogue(y, bias, scale, shift, activation)
    if pooled is not None:
        y = torch.cat([y, pooled[:, :, None, None].to(y.dtype).expand(-1, -1, y.shape[2], y.shape[3])], 1)
    return y


_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules["climseg"], torch))


def _at_caller(function, *args):
    """``function(*args)``, with the warnings it raises issued at the first frame outside climseg and
    torch. PyTorch's C++ code warns at the Python frame that called it (stack level 1): without this,
    ATen's own warnings (e.g. padding='same' with an even kernel) would seem to come from this file,
    and filters on the user's module would not apply. Traced code (torch.compile) calls it plainly.
    (``warnings.catch_warnings`` is process-wide: a warning another thread raises meanwhile is
    issued at this caller's line too, never lost.)"""
    if torch.compiler.is_compiling():
        return function(*args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = function(*args)
    if caught:
        frame = sys._getframe(1)
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OWN_DIRS):
            frame = frame.f_back
        where = frame.f_globals if frame is not None else {}
        for w in caught:
            warnings.warn_explicit(
                w.message,
                w.category,
                frame.f_code.co_filename if frame else w.filename,
                frame.f_lineno if frame else w.lineno,
                module=where.get("__name__"),
                registry=where.setdefault("__warningregistry__", {}),
            )
    return out


def atrous_conv2d_reference_epilogue(y, bias=None, scale=None, shift=None, activation=None):
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1).to(y.dtype)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1).to(y.dtype)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1).to(y.dtype)
    if activation == "relu":
        y = torch.relu(y)
    return y


# ---------------------------------------------------------------------------------------------
# argument handling and backend choice
# ---------------------------------------------------------------------------------------------
def _pair(v, name):
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ConfigError(f"atrous_conv2d: {name} must be an int or a pair of ints, not {v!r}")
    return v


def _padding(padding, weight, dilation, stride):
    """Padding as a pair, or None when 'same' needs uneven padding (even kernel sizes)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0]
        if padding != "same":
            raise ConfigError(f"atrous_conv2d: padding must be an int, a pair, 'same' or 'valid', not {padding!r}")
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[-2:])]
        if any(t % 2 for t in total):
            return None
        return [t // 2 for t in total]
    return _pair(padding, "padding")


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels():
    from climseg.kernels import atrous

    return atrous


def _triton_probe(tensor):
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "Triton is not installed (pip install triton)"
    if tensor is not None and tensor.device.type == "cpu" and not _interpreting():
        return False, "CPU tensors run Triton kernels only in the interpreter (TRITON_INTERPRET=1)"
    if tensor is not None and tensor.device.type not in ("cpu", "cuda"):
        return False, f"no Triton kernels for {tensor.device.type} tensors"
    return True, ""


_backend.register("atrous_conv2d", "triton", _triton_probe)
_backend.register("aspp_conv", "triton", _triton_probe)


def _unsupported(x, weight, groups):
    """Why the Triton kernels cannot take this convolution, or '' when they can."""
    if x.dim() != 4 or weight.dim() != 4:
        return "input and weight must be 4-D (N, C, H, W)"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} (fp16, bf16 and fp32 only)"
    cin, cout = x.shape[1], weight.shape[0]
    if groups == 1:
        return "" if weight.shape[1] == cin else f"weight expects {weight.shape[1]} input channels, input has {cin}"
    if groups == cin == cout and weight.shape[1] == 1:
        return ""
    return f"groups={groups} (only 1 and depthwise, groups = in = out channels)"


def _choose(op, backend, x, why_not):
    """'triton' or 'torch'; an explicit 'triton' that cannot run is an error."""
    return _backend.choose(op, backend, x, why_not)


def _autocast(x, residual):
    """Under autocast, compute in the autocast dtype as F.conv2d would (weights are cast inside)."""
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        x = x.to(dtype)
        residual = residual.to(dtype) if residual is not None else None
    return x, residual


def _deterministic(flag):
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
def atrous_conv2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    scale=None,
    shift=None,
    activation=None,
    residual=None,
    deterministic=False,
    backend="auto",
):
    """Dilated convolution with fused bias / per-channel scale and shift / residual / ReLU.

    Args follow ``torch.nn.functional.conv2d``; ``stride``, ``padding`` and
    ``dilation`` take an int or a pair (``padding`` also ``"same"``/``"valid"``).
    ``deterministic=True`` (or ``torch.use_deterministic_algorithms(True)``): no atomics,
    bitwise repeatable outputs and gradients. ``backend``: ``"auto"`` (default, or
    ``CLIMSEG_BACKEND``) takes the Triton kernels for CUDA tensors when Triton is
    importable and the PyTorch reference otherwise; ``"triton"`` (also on CPU tensors
    under ``TRITON_INTERPRET=1``), ``"torch"``.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"atrous_conv2d: activation must be None or 'relu', not {activation!r}")
    stride_p, dilation_p = _pair(stride, "stride"), _pair(dilation, "dilation")
    pad = _padding(padding, weight, dilation_p, stride_p) if torch.is_tensor(weight) else None

    def why_not():
        if pad is None:
            return "uneven 'same' padding (even kernel size)"
        if isinstance(padding, str) and padding == "same" and stride_p != [1, 1]:
            return "padding='same' with stride > 1"
        return _unsupported(x, weight, groups)

    if _choose("atrous_conv2d", backend, x, why_not) == "torch":
        return atrous_conv2d_reference(
            x,
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
            scale=scale,
            shift=shift,
            activation=activation,
            residual=residual,
        )
    x, residual = _autocast(x, residual)
    return torch.ops.climseg.conv_branches(
        x,
        [weight],
        stride_p,
        pad,
        dilation_p,
        groups,
        bias,
        scale,
        shift,
        residual,
        None,
        activation == "relu",
        _deterministic(deterministic),
    )


def aspp_conv(
    x,
    weights,
    dilations,
    *,
    bias=None,
    scale=None,
    shift=None,
    activation=None,
    pooled=None,
    deterministic=False,
    backend="auto",
):
    """The convolution branches of ASPP in one launch: ``concat[conv_b(x)]`` with the epilogue
    over the concatenated channels, then ``pooled`` (N, C) broadcast into the last channels.

    ``weights``: one (Cout, Cin, k, k) tensor per branch (odd k; the same Cout), e.g. a 1x1
    and three 3x3; ``dilations``: one int per branch; padding keeps the spatial size.
    bias/scale/shift: per channel of the branches together (len = branches x Cout)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"aspp_conv: activation must be None or 'relu', not {activation!r}")
    weights, dilations = list(weights), [int(d) for d in dilations]
    if len(weights) != len(dilations) or not weights:
        raise ConfigError("aspp_conv: give one dilation per weight")

    def why_not():
        for w in weights:
            reason = _unsupported(x, w, 1)
            if reason:
                return reason
            if w.shape[-1] % 2 == 0 or w.shape[-1] != w.shape[-2] or w.shape[0] != weights[0].shape[0]:
                return "branches need square odd kernels and the same number of output channels"
        return ""

    if _choose("aspp_conv", backend, x, why_not) == "torch":
        return aspp_conv_reference(
            x, weights, dilations, bias=bias, scale=scale, shift=shift, activation=activation, pooled=pooled
        )
    pads = [d * (w.shape[-1] - 1) // 2 for w, d in zip(weights, dilations)]
    x, _ = _autocast(x, None)
    return torch.ops.climseg.conv_branches(
        x,
        weights,
        [1, 1],
        [p for p in pads for _ in range(2)],
        [d for d in dilations for _ in range(2)],
        1,
        bias,
        scale,
        shift,
        None,
        pooled,
        activation == "relu",
        _deterministic(deterministic),
    )


# ---------------------------------------------------------------------------------------------
# the custom op (Triton path)
# ---------------------------------------------------------------------------------------------
def _out_hw(x, weight, stride, pad, dil):
    H, W = x.shape[2], x.shape[3]
    KH, KW = weight.shape[2], weight.shape[3]
    return (
        (H + 2 * pad[0] - dil[0] * (KH - 1) - 1) // stride[0] + 1,
        (W + 2 * pad[1] - dil[1] * (KW - 1) - 1) // stride[1] + 1,
    )


def _branch_params(weights, paddings, dilations):
    """Per branch (pad pair, dil pair); one shared pair is given for a single conv."""
    n = len(weights)
    return ([paddings[2 * i : 2 * i + 2] for i in range(n)], [dilations[2 * i : 2 * i + 2] for i in range(n)])


def _check(x, weights, stride, paddings, dilations):
    pads, dils = _branch_params(weights, paddings, dilations)
    shapes = {_out_hw(x, w, stride, p, d) for w, p, d in zip(weights, pads, dils)}
    if len(shapes) != 1:
        raise ConfigError(f"conv branches give different output sizes {sorted(shapes)}")
    oh, ow = shapes.pop()
    if oh <= 0 or ow <= 0:
        raise ConfigError(f"convolution output would be empty ({oh}x{ow}) for input {tuple(x.shape)}")
    return pads, dils, (oh, ow)


def _nhwc(t):
    """The NHWC (channels-last) storage of an NCHW tensor, as a contiguous (N, H, W, C) tensor."""
    return t.permute(0, 2, 3, 1).contiguous()


def _empty_nhwc(shape, like):
    """An uninitialised channels_last (N, C, H, W) tensor: every output of the Triton path
    (tests replace this to poison outputs with NaN)."""
    return torch.empty(shape, device=like.device, dtype=like.dtype, memory_format=torch.channels_last)


def _like_input(x, needed):
    """An empty channels_last tensor shaped like ``x``, or a 0-element tensor when it is not needed."""
    return _empty_nhwc(x.shape, x) if needed else x.new_empty(0)


def _epilogue_vec(t):
    return None if t is None else t.detach().reshape(-1).to(torch.float32).contiguous()


def _table(rows, device):
    return torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1, 8)


@torch.library.custom_op("climseg::conv_branches", mutates_args=())
def _conv_branches(
    x: Tensor,
    weights: typing.List[Tensor],
    stride: typing.List[int],
    paddings: typing.List[int],
    dilations: typing.List[int],
    groups: int,
    bias: typing.Optional[Tensor],
    scale: typing.Optional[Tensor],
    shift: typing.Optional[Tensor],
    residual: typing.Optional[Tensor],
    pooled: typing.Optional[Tensor],
    relu: bool,
    deterministic: bool,
) -> Tensor:
    K = _kernels()
    pads, dils, (OH, OW) = _check(x, weights, stride, paddings, dilations)
    xn = _nhwc(x)
    cout = weights[0].shape[0]
    branch_channels = cout * len(weights)
    total = branch_channels + (pooled.shape[1] if pooled is not None else 0)
    res = _nhwc(residual) if residual is not None else None
    y = _empty_nhwc((x.shape[0], total, OH, OW), x)
    yn = y.permute(0, 2, 3, 1)  # the same storage as (N, OH, OW, C), contiguous
    if groups == 1:
        packed, rows, offset = [], [], 0
        for i, (w, p, d) in enumerate(zip(weights, pads, dils)):
            packed.append(w.detach().permute(2, 3, 1, 0).reshape(-1).to(x.dtype))
            rows += [offset, w.shape[2], w.shape[3], d[0], d[1], p[0], p[1], i * cout]
            offset += w.numel()
        K.dense_forward(
            xn,
            torch.cat(packed).contiguous(),
            _table(rows, x.device),
            cout,
            total,
            (OH, OW),
            stride,
            bias=_epilogue_vec(bias),
            scale=_epilogue_vec(scale),
            shift=_epilogue_vec(shift),
            residual=res,
            relu=relu,
            deterministic=deterministic,
            out=yn,
        )
    else:
        w = weights[0]
        taps = w.detach().reshape(cout, -1).t().contiguous().to(x.dtype)  # [KH*KW, C]
        K.depthwise_forward(
            xn,
            taps,
            tuple(w.shape[2:]),
            stride,
            pads[0],
            dils[0],
            (OH, OW),
            bias=_epilogue_vec(bias),
            scale=_epilogue_vec(scale),
            shift=_epilogue_vec(shift),
            residual=res,
            relu=relu,
            deterministic=deterministic,
            out=yn,
        )
    if pooled is not None:
        yn[..., branch_channels:] = pooled.to(y.dtype)[:, None, None, :]
    return y


@_conv_branches.register_fake
def _conv_branches_fake(
    x, weights, stride, paddings, dilations, groups, bias, scale, shift, residual, pooled, relu, deterministic
):
    pads, dils = _branch_params(weights, paddings, dilations)
    OH, OW = _out_hw(x, weights[0], stride, pads[0], dils[0])
    total = weights[0].shape[0] * len(weights) + (pooled.shape[1] if pooled is not None else 0)
    return torch.empty((x.shape[0], total, OH, OW), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)


@torch.library.custom_op("climseg::conv_branches_backward", mutates_args=())
def _conv_branches_backward(
    grad: Tensor,
    x: Tensor,
    weights: typing.List[Tensor],
    stride: typing.List[int],
    paddings: typing.List[int],
    dilations: typing.List[int],
    groups: int,
    need_input: bool,
    deterministic: bool,
) -> typing.List[Tensor]:
    """``[dx] + [dw per branch]`` for the gradient ``grad`` of the branches' (pre-epilogue) output."""
    K = _kernels()
    pads, dils, _ = _check(x, weights, stride, paddings, dilations)
    xn, g = _nhwc(x), _nhwc(grad.to(x.dtype))
    cout = weights[0].shape[0]
    if groups == 1:
        packed_t, rows, jobs, offset = [], [], [], 0
        for i, (w, p, d) in enumerate(zip(weights, pads, dils)):
            KH, KW = w.shape[2], w.shape[3]
            packed_t.append(w.detach().permute(2, 3, 0, 1).reshape(-1).to(x.dtype))
            rows += [offset, KH, KW, d[0], d[1], p[0], p[1], i * cout]
            for t in range(KH * KW):
                jobs += [offset + t * x.shape[1] * cout, t // KW, t % KW, d[0], d[1], p[0], p[1], i * cout]
            offset += w.numel()
        dx = _like_input(x, need_input)
        if need_input:
            K.dense_dgrad(
                g,
                torch.cat(packed_t).contiguous(),
                _table(rows, x.device),
                xn.shape,
                cout,
                stride,
                deterministic,
                out=dx.permute(0, 2, 3, 1),
            )
        flat = K.dense_wgrad(xn, g, _table(jobs, x.device), offset, cout, stride, deterministic)
        dws, offset = [], 0
        for w in weights:  # packed [KH, KW, Cin, Cout] -> [Cout, Cin, KH, KW]
            dws.append(
                flat[offset : offset + w.numel()]
                .view(w.shape[2], w.shape[3], w.shape[1], cout)
                .permute(3, 2, 0, 1)
                .contiguous()
                .to(w.dtype)
            )
            offset += w.numel()
        return [dx] + dws
    w = weights[0]
    ks = tuple(w.shape[2:])
    taps = w.detach().reshape(cout, -1).t().contiguous().to(x.dtype)
    dx = _like_input(x, need_input)
    if need_input:
        K.depthwise_dgrad(g, taps, xn.shape, ks, stride, pads[0], dils[0], deterministic, out=dx.permute(0, 2, 3, 1))
    dw = K.depthwise_wgrad(xn, g, ks, stride, pads[0], dils[0])  # [KH*KW, C]
    return [dx, dw.t().reshape(w.shape).contiguous().to(w.dtype)]


@_conv_branches_backward.register_fake
def _conv_branches_backward_fake(grad, x, weights, stride, paddings, dilations, groups, need_input, deterministic):
    return [_like_input(x, need_input)] + [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def _setup_context(ctx, inputs, output):
    (x, weights, stride, paddings, dilations, groups, bias, scale, shift, residual, pooled, relu, deterministic) = (
        inputs
    )
    ctx.config = (list(stride), list(paddings), list(dilations), groups, relu, deterministic)
    ctx.flags = (bias is not None, scale is not None, shift is not None, residual is not None, pooled is not None)
    ctx.num_weights = len(weights)
    ctx.save_for_backward(x, bias, scale, shift, output if relu else None, *weights)


def _backward(ctx, grad):
    stride, paddings, dilations, groups, relu, deterministic = ctx.config
    x, bias, scale, shift, output, *weights = ctx.saved_tensors
    has_bias, has_scale, has_shift, has_res, has_pool = ctx.flags
    needs = ctx.needs_input_grad  # x, weights, stride, paddings, dilations, groups, bias, scale, shift, res, pooled
    nb = weights[0].shape[0] * len(weights)
    g = grad[:, :nb]
    d_pooled = grad[:, nb:].sum((2, 3)) if has_pool and needs[10] else None
    if relu:
        g = g.masked_fill(output[:, :nb] <= 0, 0)
    sums = (0, 2, 3)
    d_res = g if has_res and needs[9] else None
    d_shift = g.sum(sums, dtype=torch.float32).to(shift.dtype) if has_shift and needs[8] else None
    d_scale = None
    if has_scale and needs[7]:
        z = torch.ops.climseg.conv_branches(
            x, weights, stride, paddings, dilations, groups, bias, None, None, None, None, False, deterministic
        )
        d_scale = (g.float() * z.float()).sum(sums).to(scale.dtype)
    if has_scale:
        g = g * scale.view(1, -1, 1, 1).to(g.dtype)
    d_bias = g.sum(sums, dtype=torch.float32).to(bias.dtype) if has_bias and needs[6] else None
    d_x, d_w = None, None
    if needs[0] or needs[1]:
        grads = torch.ops.climseg.conv_branches_backward(
            g, x, weights, stride, paddings, dilations, groups, needs[0], deterministic
        )
        d_x = grads[0] if needs[0] else None
        d_w = grads[1:] if needs[1] else None
    return d_x, d_w, None, None, None, None, d_bias, d_scale, d_shift, d_res, d_pooled, None, None


_conv_branches.register_autograd(_backward, setup_context=_setup_context)
