"""The rows of ``climseg bench cuda-kernels`` (:mod:`climseg.bench.cuda_kernels`) whose kernels
work over every parameter of a network: the fused optimizer steps ``larc_adam_step`` and
``lamb_step`` (against ``climseg.optim.LARC(torch.optim.Adam(foreach=True))`` and
``climseg.optim.LAMB``) and the gradient buckets ``flatten_gradients`` / ``unflatten_gradients``
(against ``torch.cat`` and ``torch.split`` + ``copy_``).

Data flow: :func:`parameter_shapes` builds the network on the meta device for its parameter
shapes; random fp32 tensors of those shapes go through our kernel and the PyTorch sequence, both
timed; the timings and the bytes each step must move become rows
(:func:`climseg.bench.cuda_rows.make_row`).
"""

import functools
import math

import torch

from climseg.bench.cuda_rows import make_row, say

LR, WEIGHT_DECAY, LAMB_WEIGHT_DECAY, STEP = 1e-3, 1e-4, 0.01, 10
BUCKET_SCALE = 1.0 / 8


@functools.cache
def parameter_shapes(config, max_tensors=None):
    """Shapes of every trainable parameter of ``DeepLabV3Plus(config)``, built on the meta device
    (the first ``max_tensors`` of them when given: the smoke check)."""
    from climseg.models import DeepLabV3Plus

    with torch.device("meta"):
        model = DeepLabV3Plus(config)
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad][:max_tensors]


def tensors(shapes, device, std, generator):
    return [torch.randn(s, device=device, generator=generator) * std for s in shapes]


def optimizer_rows(timer, device, config, copy_gbps, max_tensors=None):
    shapes = parameter_shapes(config, max_tensors)
    rows = [
        optimizer_case(timer, device, kernel, shapes, config, copy_gbps) for kernel in ("larc_adam_step", "lamb_step")
    ]
    for row in rows:
        say(row)
    return rows


def optimizer_case(timer, device, kernel, shapes, config, copy_gbps):
    from climseg.ops import lamb_step, larc_adam_step
    from climseg.optim import LAMB, LARC

    n = sum(math.prod(s) for s in shapes)
    case = f"{config}: {len(shapes)} tensors, {n / 1e6:.1f}M fp32"
    generator = torch.Generator(device=device).manual_seed(1)
    params, grads = tensors(shapes, device, 0.05, generator), tensors(shapes, device, 1e-3, generator)
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    reference_params = [p.clone().requires_grad_(True) for p in params]
    for p, g in zip(reference_params, grads):
        p.grad = g.clone()
    if kernel == "larc_adam_step":

        def ours():
            larc_adam_step(
                params, grads, exp_avgs, exp_avg_sqs, step=STEP, lr=LR, weight_decay=WEIGHT_DECAY, backend="cuda"
            )

        reference = LARC(torch.optim.Adam(reference_params, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True))
        label = "climseg.optim.LARC(torch.optim.Adam(params, foreach=True)).step()"
        count, formula = n * (8 + 28), "n (read p, g for the norms; read p, g, m, v; write p, m, v): 36 B/param"
    else:

        def ours():
            lamb_step(
                params, grads, exp_avgs, exp_avg_sqs, step=STEP, lr=LR, weight_decay=LAMB_WEIGHT_DECAY, backend="cuda"
            )

        reference = LAMB(reference_params, lr=LR, weight_decay=LAMB_WEIGHT_DECAY)
        label = "climseg.optim.LAMB(params).step()"
        count, formula = n * (24 + 16), "n (read p, g, m, v, write m, v; read p, m, v, write p): 40 B/param"
    t_ours = timer(ours)
    t_reference = timer(reference.step)
    row = make_row(kernel, case, "step", t_ours, count, formula, copy_gbps, t_reference, label)
    if kernel == "larc_adam_step" and device.type == "cuda":
        plain = torch.optim.Adam(reference_params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
        t_plain = timer(plain.step)
        row.update(torch_fused_adam_ms=t_plain[0], vs_torch_fused_adam=t_plain[0] / t_ours[0])
    return row


def bucket_rows(timer, device, config, copy_gbps, max_tensors=None):
    from climseg.ops import flatten_gradients, unflatten_gradients

    shapes = parameter_shapes(config, max_tensors)
    n = sum(math.prod(s) for s in shapes)
    case = f"{config}: {len(shapes)} tensors, {n / 1e6:.1f}M fp32 <-> bf16"
    generator = torch.Generator(device=device).manual_seed(2)
    grads = tensors(shapes, device, 1e-3, generator)
    sizes = [g.numel() for g in grads]

    def ours_flatten():
        return flatten_gradients(grads, torch.bfloat16, BUCKET_SCALE, backend="cuda")

    def torch_flatten():
        return torch.cat([g.flatten() for g in grads]).mul_(BUCKET_SCALE).to(torch.bfloat16)

    bucket = ours_flatten()

    def ours_unflatten():
        return unflatten_gradients(bucket, grads, backend="cuda")

    def torch_unflatten():
        for g, segment in zip(grads, torch.split(bucket, sizes)):
            g.copy_(segment.view_as(g))
        return ~torch.isfinite(bucket).all()

    rows = [
        make_row(
            "flatten_gradients",
            case,
            f"scale 1/{round(1 / BUCKET_SCALE)}",
            timer(ours_flatten),
            n * (4 + 2),
            "n (read fp32 + write bf16)",
            copy_gbps,
            timer(torch_flatten),
            "torch.cat([g.flatten() for g in grads]).mul_(scale).to(bf16)",
        ),
        make_row(
            "unflatten_gradients",
            case,
            "+ Inf/NaN flag",
            timer(ours_unflatten),
            n * (2 + 4),
            "n (read bf16 + write fp32)",
            copy_gbps,
            timer(torch_unflatten),
            "torch.split(bucket) + g.copy_(segment) + ~torch.isfinite(bucket).all()",
        ),
    ]
    for row in rows:
        say(row)
    return rows
