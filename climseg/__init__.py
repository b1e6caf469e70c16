"""climseg: DeepLabv3+ segmentation of extreme weather in climate simulation data.

Data flows one way: ``cli -> train -> models -> nn -> ops -> (kernels | _cuda | reference)``;
``climseg.data`` feeds ``climseg.train``; ``distributed`` and ``optim`` wrap the
optimizer step. Classes: 0 background, 1 tropical cyclone (TC), 2 atmospheric river (AR).
"""
from climseg.constants import CHANNELS, CLASS_NAMES, NUM_CLASSES

__version__ = "0.1.0"
__all__ = ["CHANNELS", "CLASS_NAMES", "NUM_CLASSES", "__version__"]


def _kernels_from_source_tree():
    """Installed, ``kernels/`` is the subpackage ``climseg.kernels`` (setup.py's package_dir). Run
    from a source tree (the tree on sys.path, or the current directory), it lies beside this
    package: register it under the same name so that the kernels import alike."""
    import importlib.util
    import os
    import sys

    if "climseg.kernels" in sys.modules or os.path.isdir(os.path.join(os.path.dirname(__file__), "kernels")):
        return
    init = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels", "__init__.py")
    if not os.path.isfile(init) or importlib.util.find_spec("climseg.kernels") is not None:
        return
    spec = importlib.util.spec_from_file_location("climseg.kernels", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["climseg.kernels"] = module
    spec.loader.exec_module(module)


_kernels_from_source_tree()
