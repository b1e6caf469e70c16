"""Climate data: the DeepCAM HDF5 layout, its statistics, the synthetic generator,
CAM5 netCDF input for inference, FastLoader and staging to node-local storage.

The names below load their module on first use (PEP 562), so that
``from climseg.data import FastLoader`` does not import the generator's SciPy.
"""

import importlib

_WHERE = {
    "DeepCAMDataset": "deepcam",
    "channel_indices": "deepcam",
    "list_samples": "deepcam",
    "read_sample": "deepcam",
    "FastLoader": "loader",
    "ChannelStats": "stats",
    "find_stats": "stats",
    "read_stats": "stats",
    "write_stats": "stats",
    "generate_dataset": "generate",
    "generate_sample": "synthetic",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
