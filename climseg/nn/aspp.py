"""``ASPP``: atrous spatial pyramid pooling (DeepLabv3).

    y = project(concat[conv1x1(x), atrous_r1(x), atrous_r2(x), atrous_r3(x), broadcast(pool(x))])

Each branch is conv -> norm -> ReLU; the image-pooling branch averages over
space, applies a 1x1 conv, a per-channel affine and ReLU, and is broadcast back
(no interpolation, no hard-coded sizes). The projection is a 1x1 conv ->
norm -> ReLU over the concatenation. With ``norm="none"`` there are no norms,
no affine and no biases (the SC18 network as counted in its paper).

Fused path (when the convolutions run on the Triton kernels, i.e. CUDA tensors):
the four convolution branches are ONE kernel launch (:func:`climseg.ops.aspp_conv`)
writing the channel slices of one output; in inference their batch norms and
ReLUs are folded into that launch's epilogue; in training one batch norm over
the concatenated channels replaces the four (per-channel statistics: the same
numbers). There is no ``torch.cat``: the projection is linear, so its part that
reads the spatially constant pooled branch is a per-sample, per-channel bias
``W_pool @ pooled`` added to the 1x1 projection of the four branches (a fifth
less projection work). The unfused path is the reference; ``fused=False``
forces it.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from climseg.nn.atrous import AtrousConv2d
from climseg.nn.fold import fold_batchnorm
from climseg.nn.layers import ChannelAffine, ConvNormAct
from climseg.ops import aspp_conv, atrous_conv2d
from climseg.ops import backend as _backend


class ASPP(nn.Module):
    """ASPP with a 1x1 branch, one dilated 3x3 branch per rate and image pooling.

    Args:
        in_channels, out_channels: channels in and of every branch (the "depth", 256 in DeepLab).
        rates: dilation of each 3x3 branch, e.g. (6, 12, 18) at output stride 16.
        norm: ``"batch"`` or ``"none"``.
        fused: use the one-launch branch kernel when the backend allows (default True).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for the fused path.
        dropout: probability of a dropout after the projection (default 0: none), as
            torchvision's and segmentation-models-pytorch's ASPP (0.5) have.
    """

    def __init__(
        self,
        in_channels,
        out_channels=256,
        rates=(6, 12, 18),
        norm="batch",
        fused=True,
        backend="auto",
        deterministic=False,
        dropout=0.0,
    ):
        super().__init__()
        self.rates = tuple(rates)
        self.fused, self.backend, self.deterministic = fused, backend, deterministic
        self.conv1x1 = ConvNormAct(in_channels, out_channels, 1, norm=norm, conv=AtrousConv2d)
        self.atrous = nn.ModuleList(
            ConvNormAct(in_channels, out_channels, 3, padding=r, dilation=r, norm=norm, conv=AtrousConv2d)
            for r in self.rates
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            ChannelAffine(out_channels) if norm != "none" else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        self.project = ConvNormAct(out_channels * (len(self.rates) + 2), out_channels, 1, norm=norm, conv=AtrousConv2d)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def branches(self):
        return [self.conv1x1] + list(self.atrous)

    def forward(self, x):
        if self.fused and self._fusable(x):
            return self.dropout(self._forward_fused(x))
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        branches = [b(x) for b in self.branches()] + [pooled]
        return self.dropout(self.project(torch.cat(branches, dim=1)))

    # -- fused path ----------------------------------------------------------------------------
    def _fusable(self, x):
        try:
            if _backend.resolve("aspp_conv", self.backend, x) == "torch":
                return False
        except Exception:
            return False
        for b in self.branches():
            conv = b.conv
            if (
                not isinstance(conv, nn.Conv2d)
                or conv.groups != 1
                or conv.stride != (1, 1)
                or conv.padding_mode != "zeros"
                or conv.kernel_size[0] != conv.kernel_size[1]
            ):
                return False
            if (
                not isinstance(b.act, (nn.ReLU, nn.Identity))
                or isinstance(b.act, nn.Identity)
                and getattr(conv, "activation", None) != "relu"
            ):
                return False
            if not isinstance(b.norm, (nn.BatchNorm2d, nn.Identity)):
                return False
        return True

    def _branch_epilogue(self):
        """Concatenated (bias, scale, shift) for the launch, and the batch norms left to apply
        with batch statistics (training), or None."""
        biases, scales, shifts, train_norms = [], [], [], []
        for b in self.branches():
            conv, norm = b.conv, b.norm
            c = conv.out_channels
            dev = conv.weight.device
            bias = conv.bias if conv.bias is not None else torch.zeros(c, device=dev)
            scale = getattr(conv, "scale", None)
            shift = getattr(conv, "shift", None)
            scale = scale if scale is not None else torch.ones(c, device=dev)
            shift = shift if shift is not None else torch.zeros(c, device=dev)
            if isinstance(norm, nn.BatchNorm2d):
                if norm.weight is None or norm.momentum is None or norm.eps != self.conv1x1.norm.eps:
                    return None
                if norm.training or not norm.track_running_stats:
                    train_norms.append(norm)
                else:
                    s, t = fold_batchnorm(norm)
                    scale, shift = scale * s, shift * s + t
            biases.append(bias)
            scales.append(scale)
            shifts.append(shift)
        if train_norms and len(train_norms) != len(self.branches()):
            return None
        plain = all(
            b.conv.bias is None and getattr(b.conv, "scale", None) is None and not isinstance(b.norm, nn.BatchNorm2d)
            for b in self.branches()
        )
        if plain or train_norms:  # nothing to apply in the launch but (maybe) a bias
            any_bias = any(b.conv.bias is not None for b in self.branches())
            return (torch.cat(biases) if any_bias else None), None, None, train_norms
        return torch.cat(biases), torch.cat(scales), torch.cat(shifts), train_norms

    def _forward_fused(self, x):
        weights = [b.conv.weight for b in self.branches()]
        dilations = [b.conv.dilation[0] for b in self.branches()]
        epilogue = self._branch_epilogue()
        if epilogue is None or any(b.conv.dilation[0] != b.conv.dilation[1] for b in self.branches()):
            pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
            return self.project(torch.cat([b(x) for b in self.branches()] + [pooled], dim=1))
        bias, scale, shift, train_norms = epilogue
        if train_norms:  # batch statistics: conv in one launch, then one batch norm over all branches
            y = aspp_conv(
                x,
                weights,
                dilations,
                bias=bias,
                scale=scale,
                shift=shift,
                activation=None,
                deterministic=self.deterministic,
                backend=self.backend,
            )
            y = torch.relu(self._batch_norm(y, train_norms))
        else:
            y = aspp_conv(
                x,
                weights,
                dilations,
                bias=bias,
                scale=scale,
                shift=shift,
                activation="relu",
                deterministic=self.deterministic,
                backend=self.backend,
            )
        pooled = self.pool(x).flatten(1)  # (N, C)
        conv = self.project.conv
        n_branch = y.shape[1]
        w = conv.weight.flatten(1)  # (C, 5C)
        z = atrous_conv2d(y, conv.weight[:, :n_branch], None, deterministic=self.deterministic, backend=self.backend)
        per_sample = pooled.to(w.dtype) @ w[:, n_branch:].t()  # (N, C)
        if conv.bias is not None:
            per_sample = per_sample + conv.bias
        z = z + per_sample.to(z.dtype)[:, :, None, None]
        if getattr(conv, "scale", None) is not None:
            z = z * conv.scale.view(1, -1, 1, 1).to(z.dtype) + conv.shift.view(1, -1, 1, 1).to(z.dtype)
        if getattr(conv, "activation", None) == "relu":
            z = torch.relu(z)
        return self.project.act(self.project.norm(z))

    @staticmethod
    def _batch_norm(y, norms):
        """One batch norm over the concatenated channels of several BatchNorm2d; their running
        statistics are updated as if each had seen its own slice. Group batch norms
        (:class:`climseg.distributed.batchnorm.GroupBatchNorm2d`, same group for all) share the
        statistics with their group of ranks."""
        first = norms[0]
        means = torch.cat([n.running_mean for n in norms])
        variances = torch.cat([n.running_var for n in norms])
        weight, bias = torch.cat([n.weight for n in norms]), torch.cat([n.bias for n in norms])
        if hasattr(first, "group_normalize"):  # statistics shared by a group of ranks (GroupBatchNorm2d)
            out = first.group_normalize(y, means, variances, weight, bias)
        else:
            out = F.batch_norm(
                y,
                means,
                variances,
                weight,
                bias,
                True,
                first.momentum if first.momentum is not None else 0.1,
                first.eps,
            )
        with torch.no_grad():
            offset = 0
            for n in norms:
                c = n.num_features
                n.running_mean.copy_(means[offset : offset + c])
                n.running_var.copy_(variances[offset : offset + c])
                n.num_batches_tracked += 1
                offset += c
        return out
