"""Climate data: the DeepCAM HDF5 layout, its statistics, the synthetic generator,
CAM5 netCDF input for inference, FastLoader and staging to node-local storage."""
from climseg.data.deepcam import DeepCAMDataset, channel_indices, list_samples, read_sample
from climseg.data.loader import FastLoader
from climseg.data.stats import ChannelStats, find_stats, read_stats, write_stats
from climseg.data.synthetic import generate_dataset, generate_sample

__all__ = [
    "ChannelStats", "DeepCAMDataset", "FastLoader", "channel_indices", "find_stats", "generate_dataset",
    "generate_sample", "list_samples", "read_sample", "read_stats", "write_stats",
]
