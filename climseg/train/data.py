"""The data of a training run: the dataset folder's two splits, their normalisation statistics,
and the loaders that feed the loop.

``open_training_data`` checks the folder and opens both splits with the same statistics and
channels. Two layouts: DeepCAM (``train/`` and ``validation/`` of HDF5 samples with ``stats.h5``)
and ClimateNet (``train/`` and ``validation/`` or ``test/`` of netCDF files with ``LABELS``; see
:mod:`climseg.data.climatenet`). With ``--loader fast`` it builds a
:class:`~climseg.data.loader.FastLoader` (DeepCAM) or :class:`~climseg.data.climatenet_loader.NetCDFLoader`
(ClimateNet) per split that gives each rank its share. Every rank takes the same number of steps
per epoch: the smallest share. With ``--loader torch`` the loop draws its batches through
:func:`torch_loader` (a ``DataLoader`` over the dataset, in the order of a sampler).
"""

import dataclasses
import os

from torch.utils.data import DataLoader

from climseg.data import DeepCAMDataset, find_stats, read_stats
from climseg.data.loader import FastLoader
from climseg.errors import ConfigError, DataError


@dataclasses.dataclass
class TrainingData:
    root: str
    train_dir: str
    stats: object
    train_set: DeepCAMDataset
    val_set: DeepCAMDataset
    train_loader: FastLoader = None  # None with --loader torch
    val_loader: FastLoader = None
    steps_per_epoch: int = 0


def open_training_data(cfg, root, ranks, input_dtype, device, log):
    """The splits and loaders of ``root`` for this rank (see the module docstring)."""
    from climseg.data.climatenet import find_layout

    if find_layout(root) is not None:
        return _open_climatenet(cfg, root, ranks, input_dtype, device, log)
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "validation")
    if not os.path.exists(root):
        raise DataError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: is a file; --data names a dataset folder holding train/ and validation/")
    for d in (train_dir, val_dir):
        if not os.path.isdir(d):
            raise DataError(
                f"{root}: expected sub-folders train/ and validation/ (DeepCAM layout); "
                f"{os.path.basename(d)}/ is missing"
            )
    stats = read_stats(find_stats(train_dir))
    train_set = DeepCAMDataset(train_dir, stats, cfg.channels, cfg.normalization)
    val_set = DeepCAMDataset(val_dir, stats, cfg.channels, cfg.normalization)
    if val_set.shape != train_set.shape:  # name both files: either may be the odd one
        raise DataError(
            f"{train_set.files[0]}: is {train_set.shape[0]}x{train_set.shape[1]} but "
            f"{val_set.files[0]} is {val_set.shape[0]}x{val_set.shape[1]}; every sample must have "
            f"the same grid"
        )
    data = TrainingData(root, train_dir, stats, train_set, val_set)
    return _with_loaders(
        data,
        cfg,
        ranks,
        FastLoader,
        train_dir,
        val_dir,
        input_dtype,
        device,
        log,
        stats=stats,
        channels=cfg.channels,
        normalization=cfg.normalization,
    )


def _with_loaders(data, cfg, ranks, loader, train_source, val_source, input_dtype, device, log, **options):
    """``data`` with a loader per split (``--loader fast``) and this rank's steps per epoch, checked."""
    if cfg.loader == "fast":
        common = dict(
            dtype=input_dtype,
            layout="nhwc" if cfg.channels_last else "nchw",
            threads=cfg.workers,
            seed=cfg.seed,
            rank=ranks.rank,
            world_size=ranks.world,
            on_bad_sample=cfg.on_bad_sample,
            device=device if device.type == "cuda" else None,
            log=log,
            **options,
        )
        data.train_loader = loader(train_source, cfg.batch_size, shuffle=True, drop_last=True, **common)
        data.val_loader = loader(val_source, cfg.batch_size, shuffle=False, drop_last=False, **common)
        data.steps_per_epoch = ranks.min(len(data.train_loader))
    else:
        data.steps_per_epoch = len(data.train_set) // ranks.world // cfg.batch_size
    if data.steps_per_epoch == 0:
        raise ConfigError(
            f"option batch-size: {cfg.batch_size} per process x {ranks.world} processes is larger than "
            f"the {len(data.train_set)} training samples"
        )
    return data


def _open_climatenet(cfg, root, ranks, input_dtype, device, log):
    """The ClimateNet-layout counterpart of :func:`open_training_data`."""
    from climseg.data.climatenet import ClimateNetDataset, find_layout, open_climatenet
    from climseg.data.climatenet_loader import NetCDFLoader

    train_dir, _ = find_layout(root)
    train, val, stats, channel_index, normalization = open_climatenet(root, cfg.channels, cfg.normalization, log)
    train_set = ClimateNetDataset(train, stats, channel_index, normalization)
    val_set = ClimateNetDataset(val, stats, channel_index, normalization)
    data = TrainingData(root, train_dir, stats, train_set, val_set)
    return _with_loaders(data, cfg, ranks, NetCDFLoader, train_set, val_set, input_dtype, device, log)


def torch_loader(dataset, sampler, batch_size, drop_last, workers, device):
    """A ``DataLoader`` over ``dataset`` in the order of ``sampler`` (a sampler or a list of
    indices); ``workers`` None: none on CPU, else up to 8 processes; memory pinned for CUDA."""
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
