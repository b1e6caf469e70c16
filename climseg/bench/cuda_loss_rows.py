"""The ``loss+counts`` rows of ``climseg bench cuda-kernels`` (:mod:`climseg.bench.cuda_kernels`):
``weighted_cross_entropy_with_counts`` on the CUDA kernels against ``F.cross_entropy`` +
``argmax`` + ``bincount``, forward, forward+backward and the fused gradient.

Data flow: :func:`loss_inputs` draws labels with the DeepCAM class frequencies and logits that
favour the true class (a trained network's, mostly right); :func:`loss_case` checks that the
two sides agree (loss, counts), times both and turns the timings into rows
(:func:`climseg.bench.cuda_rows.make_row`) with the bytes each mode must move.
"""

import torch
import torch.nn.functional as F

from climseg.bench.cuda_rows import dtype_name, make_row, nbytes, say

CLASSES = 3


def loss_inputs(batch, dtype, layout, height, width, device, seed=0):
    """Labels with the DeepCAM class frequencies; logits favouring the true class (mostly right)."""
    from climseg.losses import DEEPCAM_FREQUENCIES

    generator = torch.Generator(device=device).manual_seed(seed)
    edges = torch.tensor(DEEPCAM_FREQUENCIES, dtype=torch.float64).cumsum(0)[:-1].to(device=device, dtype=torch.float32)
    labels = torch.bucketize(torch.rand(batch, height, width, device=device, generator=generator), edges)
    logits = torch.randn(batch, CLASSES, height, width, device=device, generator=generator)
    logits.scatter_add_(1, labels.unsqueeze(1), torch.full_like(labels.unsqueeze(1), 2.5, dtype=logits.dtype))
    logits = logits.to(dtype)
    if layout == "NHWC":
        logits = logits.contiguous(memory_format=torch.channels_last)
    return logits, labels.long()


def loss_rows(timer, device, batches, dtypes, layouts, height, width, copy_gbps):
    from climseg.losses import class_weights

    weight = class_weights("deepcam").to(device)
    rows = []
    for batch in batches:
        for dtype in dtypes:
            for layout in layouts:
                rows += loss_case(timer, device, batch, dtype, layout, height, width, weight, copy_gbps)
    return rows


def loss_case(timer, device, batch, dtype, layout, height, width, weight, copy_gbps):
    from climseg.ops import weighted_cross_entropy_with_counts as wce

    logits, labels = loss_inputs(batch, dtype, layout, height, width, device)
    leaf = logits.detach().requires_grad_(True)
    case = f"B={batch} {dtype_name(dtype)} {layout} {height}x{width}"

    def ours_forward():
        return wce(logits, labels, weight, check_labels=False, loss_dtype=torch.float32, backend="cuda")

    def ours_forward_backward():
        loss, _ = wce(leaf, labels, weight, check_labels=False, loss_dtype=torch.float32, backend="cuda")
        return torch.autograd.grad(loss, leaf)

    def ours_fused():
        return wce(
            logits, labels, weight, return_grad=True, check_labels=False, loss_dtype=torch.float32, backend="cuda"
        )

    def torch_forward(x=logits):
        loss = F.cross_entropy(x.float(), labels, weight=weight)
        pred = x.argmax(1)
        counts = torch.bincount((labels * CLASSES + pred).flatten(), minlength=CLASSES * CLASSES)
        return loss, counts

    def torch_forward_backward():
        loss, _ = torch_forward(leaf)
        return torch.autograd.grad(loss, leaf)

    with torch.no_grad():  # the two sides compute the same thing: same loss, same counts
        loss, counts = ours_forward()
        ref_loss, matrix = torch_forward()
        matrix = matrix.view(CLASSES, CLASSES)  # [true, predicted]
        tp = matrix.diagonal()
        ref_counts = torch.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp], dim=-1)
        counts_agree = bool(torch.equal(counts.cpu(), ref_counts.cpu()))
        loss_rel_diff = abs(float(loss) - float(ref_loss)) / max(abs(float(ref_loss)), 1e-30)
    if not counts_agree or loss_rel_diff > 1e-3:
        print(
            f"WARNING: {case}: the kernel and PyTorch disagree (counts equal: {counts_agree}, loss relative "
            f"difference {loss_rel_diff:.2e})",
            flush=True,
        )
    logit_bytes, label_bytes = nbytes(logits), nbytes(labels)
    small = 4 + CLASSES * 3 * 8  # the fp32 loss and the int64 (C, 3) counts
    with torch.no_grad():
        t_forward = timer(torch_forward)
        t_ours_forward = timer(ours_forward)
        t_ours_fused = timer(ours_fused)
    t_forward_backward = timer(torch_forward_backward)
    t_ours_forward_backward = timer(ours_forward_backward)
    reference = "F.cross_entropy(logits.float(), labels, weight=w) + argmax(1) + bincount"
    rows = [
        make_row(
            "loss+counts",
            case,
            "forward",
            t_ours_forward,
            logit_bytes + label_bytes + small,
            "logits + labels (+ loss, counts)",
            copy_gbps,
            t_forward,
            reference,
        ),
        make_row(
            "loss+counts",
            case,
            "forward+backward",
            t_ours_forward_backward,
            3 * logit_bytes + 2 * label_bytes + small,
            "2 (logits + labels) + gradient (+ loss, counts)",
            copy_gbps,
            t_forward_backward,
            reference + ", then autograd backward",
        ),
        make_row(
            "loss+counts",
            case,
            "fused grad",
            t_ours_fused,
            2 * logit_bytes + label_bytes + small,
            "logits + labels + gradient (+ loss, counts)",
            copy_gbps,
            t_forward_backward,
            reference + ", then autograd backward",
        ),
    ]
    rows[2]["vs_ours_forward_backward"] = t_ours_forward_backward[0] / t_ours_fused[0]
    for row in rows:
        row.update(counts_agree=counts_agree, loss_rel_diff=loss_rel_diff)
    for row in rows:
        say(row)
    return rows
