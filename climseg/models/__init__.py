"""The segmentation networks: DeepLabv3+ (configurations ``kurth2018``, ``deepcam``, ``tiny``) and
CGNet (configuration ``cgnet``, ClimateNet's network); :func:`build_network` makes either by name."""

from climseg.models.cgnet import CGNet
from climseg.models.deeplabv3plus import CONFIGS, DeepLabV3Plus, count_parameters

NETWORKS = tuple(CONFIGS) + ("cgnet",)


def build_network(config, in_channels, num_classes, norm="batch", **options):
    """The network of configuration ``config``: :class:`CGNet` for ``"cgnet"`` (``options``:
    its keyword arguments, e.g. ``pole_padding``), else :class:`DeepLabV3Plus`."""
    if config == "cgnet":
        return CGNet(in_channels=in_channels, num_classes=num_classes, norm=norm, **options)
    return DeepLabV3Plus(config, in_channels=in_channels, num_classes=num_classes, norm=norm)


__all__ = ["CGNet", "CONFIGS", "DeepLabV3Plus", "NETWORKS", "build_network", "count_parameters"]
