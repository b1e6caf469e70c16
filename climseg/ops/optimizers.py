"""Multi-tensor optimizer steps (CUDA kernels in csrc/cuda/optimizers.cu; references below):
all the tensors of a parameter group in three launches instead of a dozen per tensor.

``larc_adam_step``: LARC (clip mode; apex semantics, see climseg.optim.larc) around
torch.optim.Adam, the SC18 optimizer. ``lamb_step``: climseg.optim.LAMB. Both update
``params`` (fp32), ``exp_avgs`` and ``exp_avg_sqs`` (fp32) in place from ``grads`` (fp32,
fp16 or bf16, all one dtype); with ``model_params`` (16-bit, the grads' dtype) the fp32
params are master weights and the model copy is written from them in the same pass. The
kernels walk raw memory, so any dense layout (channels-last included) works as long as a
parameter's gradient and states share its strides.
"""

import math

import torch

from climseg.ops import backend as _backend
from climseg.ops import cuda as _cuda
from climseg.ops import multi_tensor as _mt

_backend.register("larc_adam_step", "cuda", _cuda.probe)
_backend.register("lamb_step", "cuda", _cuda.probe)


def larc_adam_step_reference(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    trust_coefficient=0.002,
    clip=True,
    eps_larc=1.0 / 16000,
    model_params=None,
):
    """LARC then Adam, tensor by tensor, in fp32 (the specification of the kernel)."""
    beta1, beta2 = betas
    bias_correction1, bias_correction2 = 1.0 - beta1**step, 1.0 - beta2**step
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        g = g.float()
        p_norm, g_norm = p.norm(), g.norm()
        usable = (p_norm > 0) & (g_norm > 0)
        local = trust_coefficient * p_norm / (g_norm + p_norm * weight_decay + eps_larc)
        if clip:
            local = torch.clamp(local / lr, max=1.0)
        factor = torch.where(usable, local, torch.ones_like(local))
        decay = torch.where(usable, torch.full_like(local, weight_decay), torch.zeros_like(local))
        g = (g + decay * p) * factor
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = v.sqrt() / math.sqrt(bias_correction2) + eps
        p.addcdiv_(m, denom, value=-lr / bias_correction1)
        if model_params is not None:
            model_params[i].copy_(p)


def lamb_step_reference(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr,
    betas=(0.9, 0.999),
    eps=1e-6,
    weight_decay=0.01,
    max_trust_ratio=10.0,
    model_params=None,
):
    """LAMB tensor by tensor, in fp32 (the specification of the kernel)."""
    beta1, beta2 = betas
    bias_correction1, bias_correction2 = 1.0 - beta1**step, 1.0 - beta2**step
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        g = g.float()
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        update = (m / bias_correction1) / ((v / bias_correction2).sqrt() + eps) + weight_decay * p
        p_norm, u_norm = p.norm(), update.norm()
        ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm))
        p.sub_(lr * ratio.clamp(max=max_trust_ratio) * update)
        if model_params is not None:
            model_params[i].copy_(p)


def _check(op, params, grads, exp_avgs, exp_avg_sqs, model_params):
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n) or (
        model_params is not None and len(model_params) != n
    ):
        raise ValueError(f"{op}: params, grads and states must be lists of one length")
    if params:
        _mt.check_devices(op, params[0].device, params, grads, exp_avgs, exp_avg_sqs, model_params)
    for name, tensors in (("params", params), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        for t in tensors:
            if t.dtype != torch.float32:
                raise ValueError(f"{op}: {name} must be float32 (got {t.dtype}); use model_params for 16-bit models")
    dtypes = {g.dtype for g in grads} | ({p.dtype for p in model_params} if model_params is not None else set())
    if len(dtypes) > 1:
        raise ValueError(f"{op}: grads (and model_params) must share one dtype, got {sorted(map(str, dtypes))}")
    for group in (params, grads, exp_avgs, exp_avg_sqs) + ((model_params,) if model_params is not None else ()):
        for a, b in zip(group, params):
            if a.numel() != b.numel():
                raise ValueError(f"{op}: a tensor has {a.numel()} elements, its parameter {b.numel()}")


def _choose(op, backend, params, grads, exp_avgs, exp_avg_sqs, model_params):
    if not params:
        return "torch"

    def why_not():
        if grads[0].dtype not in _cuda.FLOAT_NAMES:
            return f"gradients of dtype {grads[0].dtype}"
        rows = zip(params, grads, exp_avgs, exp_avg_sqs, model_params or [None] * len(params))
        if not all(_mt.same_layout([t for t in row[1:] if t is not None], row[0]) for row in rows):
            return "a parameter whose gradient or state has other strides, or is not dense"
        return ""

    return _backend.choose(op, backend, params[0], why_not)


def _tables(params, grads, exp_avgs, exp_avg_sqs, model_params):
    device = params[0].device
    model = model_params if model_params is not None else [None] * len(params)
    table = _mt.pointer_table([params, grads, exp_avgs, exp_avg_sqs, model], device)
    sizes = _mt.sizes_table(params, device)
    chunks, first, count = _mt.chunk_table([p.numel() for p in params], device)
    return device, table, sizes, chunks, first, count


def _norms(launch, device, kernel, table, sizes, chunks, first, count, tensors, partials=None):
    """Launch ``kernel`` (the per-chunk sums, unless ``partials`` are already there) and mt_norms."""
    if partials is None:
        partials = torch.empty(2 * count, device=device, dtype=torch.float32)
        launch(
            kernel,
            (count,),
            _mt.BLOCK,
            (table.data_ptr(), sizes.data_ptr(), chunks.data_ptr(), partials.data_ptr()),
            device,
        )
    norms = torch.empty(2 * tensors, device=device, dtype=torch.float32)
    launch(
        "mt_norms",
        (_cuda.grid_blocks(tensors, 128, 1 << 30),),
        128,
        (partials.data_ptr(), first.data_ptr(), tensors, norms.data_ptr()),
        device,
    )
    return norms


def larc_adam_step(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    trust_coefficient=0.002,
    clip=True,
    eps_larc=1.0 / 16000,
    model_params=None,
    backend="auto",
):
    """One LARC-Adam step over lists of tensors, in place (see the module docstring)."""
    _check("larc_adam_step", params, grads, exp_avgs, exp_avg_sqs, model_params)
    if _choose("larc_adam_step", backend, params, grads, exp_avgs, exp_avg_sqs, model_params) == "torch":
        return larc_adam_step_reference(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            step=step,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            clip=clip,
            eps_larc=eps_larc,
            model_params=model_params,
        )
    device, table, sizes, chunks, first, count = _tables(params, grads, exp_avgs, exp_avg_sqs, model_params)
    launch = _cuda.launcher(device).launch
    g = _cuda.FLOAT_NAMES[grads[0].dtype]
    norms = _norms(launch, device, f"mt_sumsq_{g}", table, sizes, chunks, first, count, len(params))
    beta1, beta2 = betas
    # 1 - beta, the step size and sqrt(bias correction) in double, as torch.optim.Adam
    launch(
        f"larc_adam_step_{g}",
        (count,),
        _mt.BLOCK,
        (
            table.data_ptr(),
            sizes.data_ptr(),
            chunks.data_ptr(),
            norms.data_ptr(),
            lr,
            beta1,
            beta2,
            1.0 - beta1,
            1.0 - beta2,
            eps,
            weight_decay,
            lr / (1.0 - beta1**step),
            math.sqrt(1.0 - beta2**step),
            trust_coefficient,
            int(clip),
            eps_larc,
        ),
        device,
    )


def lamb_step(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    *,
    step,
    lr,
    betas=(0.9, 0.999),
    eps=1e-6,
    weight_decay=0.01,
    max_trust_ratio=10.0,
    model_params=None,
    backend="auto",
):
    """One LAMB step over lists of tensors, in place (see the module docstring)."""
    _check("lamb_step", params, grads, exp_avgs, exp_avg_sqs, model_params)
    if _choose("lamb_step", backend, params, grads, exp_avgs, exp_avg_sqs, model_params) == "torch":
        return lamb_step_reference(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            step=step,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            max_trust_ratio=max_trust_ratio,
            model_params=model_params,
        )
    device, table, sizes, chunks, first, count = _tables(params, grads, exp_avgs, exp_avg_sqs, model_params)
    launch = _cuda.launcher(device).launch
    g = _cuda.FLOAT_NAMES[grads[0].dtype]
    beta1, beta2 = betas
    bias_correction1, bias_correction2 = 1.0 - beta1**step, 1.0 - beta2**step
    partials = torch.empty(2 * count, device=device, dtype=torch.float32)
    launch(
        f"lamb_moments_{g}",
        (count,),
        _mt.BLOCK,
        (
            table.data_ptr(),
            sizes.data_ptr(),
            chunks.data_ptr(),
            partials.data_ptr(),
            beta1,
            beta2,
            1.0 - beta1,
            1.0 - beta2,
            eps,
            weight_decay,
            bias_correction1,
            bias_correction2,
        ),
        device,
    )
    norms = _norms(launch, device, None, table, sizes, chunks, first, count, len(params), partials)
    launch(
        f"lamb_step_{g}",
        (count,),
        _mt.BLOCK,
        (
            table.data_ptr(),
            sizes.data_ptr(),
            chunks.data_ptr(),
            norms.data_ptr(),
            lr,
            eps,
            weight_decay,
            bias_correction1,
            bias_correction2,
            max_trust_ratio,
        ),
        device,
    )
