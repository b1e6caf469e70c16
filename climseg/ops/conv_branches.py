"""The custom ops behind ``atrous_conv2d`` and ``aspp_conv`` on the Triton and CUDA paths:
``climseg::conv_branches`` (one input, one or more convolution branches into the channel
slices of one output, with the fused epilogue and an optional broadcast ``pooled`` slice) and
``climseg::conv_branches_backward`` (the input and weight gradients of the branches), each
registered with ``torch.library`` with a fake implementation (shapes for ``torch.compile``),
and the autograd of the first.

Data flow: :mod:`climseg.ops.atrous` (argument checks, backend choice) calls
``torch.ops.climseg.conv_branches`` with NCHW tensors -> the output size is checked per branch
-> activations go to NHWC, the weights are packed ([KH, KW, Cin, Cout] per branch, one after
another, with an int32 table of each branch's offset, kernel size, dilation, padding and
output-channel offset; [KH*KW, C] for depthwise) -> the launchers of
:mod:`climseg.kernels.atrous_dense` (groups = 1) or :mod:`climseg.kernels.atrous_depthwise`
write into a channels_last output; with ``backend="cuda"`` the launchers of
:mod:`climseg.ops.atrous_cuda` (the kernels of ``csrc/cuda/atrous.cu``, same arguments) take the
place of the dense ones. Backward: the epilogue's part (ReLU mask, scale, sums for
bias/scale/shift/residual/pooled) is a few elementwise PyTorch ops; the input and weight
gradients are ``climseg::conv_branches_backward``, kernels of the same backend again.
"""

import typing

import torch

from climseg.errors import ConfigError

Tensor = torch.Tensor


def _kernels(backend):
    """The dense and depthwise launcher modules of ``backend`` (imported on first use: Triton's
    need Triton; the CUDA kernels have no depthwise launcher)."""
    if backend == "cuda":
        from climseg.ops import atrous_cuda

        return atrous_cuda, None
    from climseg.kernels import atrous_dense, atrous_depthwise

    return atrous_dense, atrous_depthwise


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
    backend: str,
) -> Tensor:
    dense, depthwise = _kernels(backend)
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
        dense.dense_forward(
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
        depthwise.depthwise_forward(
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
    x, weights, stride, paddings, dilations, groups, bias, scale, shift, residual, pooled, relu, deterministic, backend
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
    backend: str,
) -> typing.List[Tensor]:
    """``[dx] + [dw per branch]`` for the gradient ``grad`` of the branches' (pre-epilogue) output."""
    dense, depthwise = _kernels(backend)
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
            dense.dense_dgrad(
                g,
                torch.cat(packed_t).contiguous(),
                _table(rows, x.device),
                xn.shape,
                cout,
                stride,
                deterministic,
                out=dx.permute(0, 2, 3, 1),
            )
        flat = dense.dense_wgrad(xn, g, _table(jobs, x.device), offset, cout, stride, deterministic)
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
        depthwise.depthwise_dgrad(
            g, taps, xn.shape, ks, stride, pads[0], dils[0], deterministic, out=dx.permute(0, 2, 3, 1)
        )
    dw = depthwise.depthwise_wgrad(xn, g, ks, stride, pads[0], dils[0])  # [KH*KW, C]
    return [dx, dw.t().reshape(w.shape).contiguous().to(w.dtype)]


@_conv_branches_backward.register_fake
def _conv_branches_backward_fake(
    grad, x, weights, stride, paddings, dilations, groups, need_input, deterministic, backend
):
    return [_like_input(x, need_input)] + [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def _setup_context(ctx, inputs, output):
    (
        x,
        weights,
        stride,
        paddings,
        dilations,
        groups,
        bias,
        scale,
        shift,
        residual,
        pooled,
        relu,
        deterministic,
        backend,
    ) = inputs
    ctx.config = (list(stride), list(paddings), list(dilations), groups, relu, deterministic, backend)
    ctx.flags = (bias is not None, scale is not None, shift is not None, residual is not None, pooled is not None)
    ctx.num_weights = len(weights)
    ctx.save_for_backward(x, bias, scale, shift, output if relu else None, *weights)


def _backward(ctx, grad):
    stride, paddings, dilations, groups, relu, deterministic, backend = ctx.config
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
            x, weights, stride, paddings, dilations, groups, bias, None, None, None, None, False, deterministic, backend
        )
        d_scale = (g.float() * z.float()).sum(sums).to(scale.dtype)
    if has_scale:
        g = g * scale.view(1, -1, 1, 1).to(g.dtype)
    d_bias = g.sum(sums, dtype=torch.float32).to(bias.dtype) if has_bias and needs[6] else None
    d_x, d_w = None, None
    if needs[0] or needs[1]:
        grads = torch.ops.climseg.conv_branches_backward(
            g, x, weights, stride, paddings, dilations, groups, needs[0], deterministic, backend
        )
        d_x = grads[0] if needs[0] else None
        d_w = grads[1:] if needs[1] else None
    return d_x, d_w, None, None, None, None, d_bias, d_scale, d_shift, d_res, d_pooled, None, None, None


_conv_branches.register_autograd(_backward, setup_context=_setup_context)
