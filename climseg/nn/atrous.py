"""``AtrousConv2d``: a drop-in ``torch.nn.Conv2d`` that runs on ``climseg.ops.atrous_conv2d``.

Same constructor, same parameters (``weight``, ``bias``), same state_dict keys,
so a model can swap its convolutions without touching checkpoints.
"""
import torch.nn as nn

from climseg.ops import atrous_conv2d


class AtrousConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed by :func:`climseg.ops.atrous_conv2d`.

    ``backend`` (keyword only): ``"auto"``, ``"triton"``, ``"cuda"`` or ``"torch"``.
    Padding modes other than ``"zeros"`` use ``nn.Conv2d``'s own path.
    """

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, x):
        if self.padding_mode != "zeros":
            return super().forward(x)
        return atrous_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             self.groups, backend=self.backend)
