"""Drop-in modules: ``AtrousConv2d`` (an ``nn.Conv2d`` on the fused op) and ``ASPP``."""
from climseg.nn.aspp import ASPP
from climseg.nn.atrous import AtrousConv2d
from climseg.nn.layers import ChannelAffine, ConvNormAct, make_norm

__all__ = ["ASPP", "AtrousConv2d", "ChannelAffine", "ConvNormAct", "make_norm"]
