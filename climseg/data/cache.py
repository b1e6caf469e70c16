"""The synthetic dataset that ``climseg train`` uses when given no data: made
once, its samples compressed (about 1.2 GB instead of 1.7 GB), then reused from the cache
folder (:mod:`climseg.data.cache_folder`: ``$CLIMSEG_CACHE``, default ``~/.cache/climseg``)."""

import dataclasses
import os
import shutil

from climseg.data.cache_folder import CACHE_ENV as CACHE_ENV  # noqa: F401 - climseg info reads it here
from climseg.data.cache_folder import cache_dir
from climseg.data.generate import generate_dataset, read_dataset_summary
from climseg.data.synthetic import GENERATOR_VERSION, Features

# 400 training and 48 validation samples of 192 x 288 (0.94 x 1.25 degrees), with more
# cyclones per snapshot than the generator's default, so that the short default run sees
# enough of the rarest class.
DEFAULT_DATASET = dict(samples=448, height=192, width=288, seed=2018, validation_fraction=48 / 448, cyclones_mean=5.0)


def default_dataset(progress=True, log=print, **overrides):
    """Path of the default synthetic dataset, generating it on first use."""
    params = dict(DEFAULT_DATASET, **overrides)
    features = Features(**{k: params[k] for k in ("cyclones_mean", "rivers_mean") if k in params})
    params["features"] = dataclasses.asdict(features)
    name = (
        f"synthetic-{params['height']}x{params['width']}-n{params['samples']}-seed{params['seed']}"
        f"-tc{features.cyclones_mean:g}-ar{features.rivers_mean:g}-v{GENERATOR_VERSION}"
    )
    path = os.path.join(cache_dir(), name)
    if _complete(path, params):
        return path
    if os.path.exists(path):  # left over by an older or broken run
        shutil.rmtree(path)
    log(f"climseg: generating the default synthetic dataset in {path} (once)")
    try:
        generate_dataset(
            path,
            params["samples"],
            params["height"],
            params["width"],
            params["seed"],
            params["validation_fraction"],
            progress=progress,
            features=features,
            compress=True,
        )
    except OSError:
        if not _complete(path, params):  # another process finished it first: use theirs
            raise
    return path


def _complete(path, params):
    summary = read_dataset_summary(path) if os.path.isdir(path) else None
    return (
        bool(summary)
        and summary.get("version") == GENERATOR_VERSION
        and all(summary.get(k) == params[k] for k in ("height", "width", "seed", "features"))
        and summary.get("train", 0) + summary.get("validation", 0) == params["samples"]
    )
