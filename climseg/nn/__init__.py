"""Drop-in modules: ``AtrousConv2d`` (an ``nn.Conv2d`` on the fused op), ``ASPP`` (its
branches in one launch on GPUs), ``convert_model`` (put them into any model: swap its
convolutions and third-party ASPPs, fold its batch norms) and ``unfold_state_dict`` (the
weights back in the original layout)."""

from climseg.nn.aspp import ASPP
from climseg.nn.atrous import AtrousConv2d
from climseg.nn.convert import ConversionReport, convert_model, unfold_state_dict
from climseg.nn.layers import ChannelAffine, ConvNormAct, make_norm

__all__ = [
    "ASPP",
    "AtrousConv2d",
    "ChannelAffine",
    "ConversionReport",
    "ConvNormAct",
    "convert_model",
    "make_norm",
    "unfold_state_dict",
]
