"""climseg: DeepLabv3+ segmentation of extreme weather in climate simulation data.

Imports point down the layers of docs/architecture.md (checked by import-linter): ``cli`` >
``bench``, ``info`` > ``verify`` > ``train``, ``predict``, ``analytics`` > ``losses`` > ``data`` >
``models``, ``distributed``, ``optim`` > ``nn``, ``metrics`` > ``ops`` > ``kernels`` > the base
(``perf``, ``plotting``, ``sphere``, ``progress``, ``output``, ``constants``, ``errors``). Classes: 0
background, 1 tropical cyclone (TC), 2 atmospheric river (AR).

Importing ``climseg`` is light (the constants only). The public subpackages load on first
use (PEP 562): ``import climseg`` then ``climseg.nn.convert_model(model)`` works, and so
do ``climseg.ops``, ``climseg.data``, ``climseg.optim``, ``climseg.distributed``,
``climseg.losses``, ``climseg.metrics`` and the others in :data:`SUBPACKAGES`.
"""

import importlib

from climseg.constants import CHANNELS, CLASS_NAMES, NUM_CLASSES

__version__ = "0.1.0"

#: Subpackages and modules reachable as attributes of ``climseg``, imported on first access.
SUBPACKAGES = ("data", "distributed", "errors", "losses", "metrics", "models", "nn", "ops", "optim", "perf", "train")

__all__ = ["CHANNELS", "CLASS_NAMES", "NUM_CLASSES", "__version__", *SUBPACKAGES]


def __getattr__(name):
    if name in SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBPACKAGES))


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
    spec = importlib.util.spec_from_file_location(
        "climseg.kernels", init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["climseg.kernels"] = module
    spec.loader.exec_module(module)


_kernels_from_source_tree()
