"""DeepLabv3+ and its encoders; configurations ``kurth2018``, ``deepcam``, ``tiny``."""
from climseg.models.deeplabv3plus import CONFIGS, DeepLabV3Plus, count_parameters

__all__ = ["CONFIGS", "DeepLabV3Plus", "count_parameters"]
