"""climseg: DeepLabv3+ segmentation of extreme weather in climate simulation data.

Data flows one way: ``cli -> train -> models -> nn -> ops -> (kernels | _cuda | reference)``;
``climseg.data`` feeds ``climseg.train``; ``distributed`` and ``optim`` wrap the
optimizer step. Classes: 0 background, 1 tropical cyclone (TC), 2 atmospheric river (AR).
"""
from climseg.constants import CHANNELS, CLASS_NAMES, NUM_CLASSES

__version__ = "0.1.0"
__all__ = ["CHANNELS", "CLASS_NAMES", "NUM_CLASSES", "__version__"]
