"""FLOP counting for convolutional segmentation networks.

Counts the multiply-adds of convolutions, transposed convolutions and linear
layers as 2 FLOPs each (elementwise work, norms and pooling are left out, as
in the SC18 code's ``graph_flops``):

* Conv2d: ``2 * N * H_out * W_out * C_out * (C_in / groups) * kh * kw``
* ConvTranspose2d: ``2 * N * H_in * W_in * C_in * (C_out / groups) * kh * kw``
* Linear: ``2 * N * in_features * out_features``

Training (``backward=True``) counts 3x the forward pass: the backward pass of
each layer computes an input gradient and a weight gradient, each as costly
as the forward product (the convention of the SC18 paper and of MFU).

The count runs the model on the ``meta`` device, so it needs no memory and
works for full-size inputs of the largest configurations.
"""

import copy

import torch
import torch.nn as nn


def count_flops(model, input_shape, backward=True):
    """FLOPs of one forward (+ backward) pass of ``model`` on an input of ``input_shape``.

    ``model`` may live on any device, or be built under ``torch.device("meta")``;
    it is not changed. Returns an int.
    """
    total = [0]

    def conv_hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):
            n, cin, h, w = x.shape
            total[0] += 2 * n * h * w * cin * (module.out_channels // module.groups) * _prod(module.kernel_size)
        elif isinstance(module, nn.Conv2d):
            n, cout, h, w = output.shape
            total[0] += 2 * n * h * w * cout * (module.in_channels // module.groups) * _prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            total[0] += 2 * (x.numel() // x.shape[-1]) * module.in_features * module.out_features

    meta_model = _on_meta(model)
    handles = [
        m.register_forward_hook(conv_hook)
        for m in meta_model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            meta_model(torch.empty(tuple(input_shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total[0] * (3 if backward else 1)


def _on_meta(model):
    """The model itself if it lives on ``meta``, else a copy there (weights are not copied)."""
    tensors = list(model.parameters()) + list(model.buffers())
    if not tensors or tensors[0].device.type == "meta":
        return model
    memo = {id(t): torch.empty_like(t, device="meta") for t in tensors}
    clone = copy.deepcopy(model, memo)
    return clone.eval()


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out
