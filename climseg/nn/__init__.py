"""Drop-in modules: ``AtrousConv2d`` (an ``nn.Conv2d`` on the fused op), ``ASPP`` (its
branches in one launch on GPUs), and ``convert_model`` (swap a model's convs)."""
from climseg.nn.aspp import ASPP
from climseg.nn.atrous import AtrousConv2d, convert_model
from climseg.nn.layers import ChannelAffine, ConvNormAct, make_norm

__all__ = ["ASPP", "AtrousConv2d", "ChannelAffine", "ConvNormAct", "convert_model", "make_norm"]
