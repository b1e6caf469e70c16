"""The synthetic dataset in the DeepCAM layout, written by ``climseg generate`` and, once, by the
default ``climseg train``: :func:`generate_dataset` draws samples with
:func:`climseg.data.synthetic.generate_sample` in a process pool (deterministic by seed, whatever the
number of workers), writes them with :func:`climseg.data.deepcam.write_sample` into a temporary
folder with their statistics (``stats.h5``) and a summary (``climseg-dataset.json``), and renames
the folder into place when it is complete.
"""

import concurrent.futures
import dataclasses
import datetime
import json
import math
import os

import numpy as np

from climseg.data.deepcam import dataset_statistics, sample_statistics, write_sample
from climseg.data.stats import write_stats
from climseg.data.synthetic import GENERATOR_VERSION, Features, generate_sample
from climseg.errors import UserError
from climseg.output import atomic_directory, check_output_location, check_workers, write_json
from climseg.progress import progress_bar


def _sample_name(split, index):
    start = datetime.datetime(2106 if split == "train" else 2116, 1, 1)
    when = start + datetime.timedelta(hours=3 * index)
    return f"data-{when:%Y-%m-%d-%H}-1.h5"


def _make_one(job):
    folder, split, index, height, width, seed, features, compress = job
    data, labels, meta = generate_sample(height, width, seed, split, index, features)
    write_sample(os.path.join(folder, split, _sample_name(split, index)), data, labels, compress)
    return split, index, sample_statistics(data, labels), len(meta["cyclones"]), len(meta["rivers"])


#: Memory a worker needs per grid cell to draw a sample (measured: 601 MB at 768 x 1152, 347 MB at
#: 384 x 576 on 2026-12-03, of which about 250 MB is the interpreter), bytes.
BYTES_PER_CELL = 400
#: The largest mean number of cyclones or rivers per sample (--cyclones, --rivers); at most 8 and 9
#: are drawn at once anyway.
MAX_FEATURES_MEAN = 100.0


def check_generator_options(height, width, seed, workers, features):
    """The options both generators share, checked before any work: ``seed`` a whole number >= 0,
    ``workers`` within :func:`climseg.output.check_workers`, the features' means finite and at most
    :data:`MAX_FEATURES_MEAN`, and a grid whose samples fit in this machine's memory."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed {seed}: expected a whole number >= 0")
    if workers is not None:
        check_workers(workers)
    for name, flag in (("cyclones_mean", "--cyclones"), ("rivers_mean", "--rivers")):
        value = getattr(features, name)
        if not math.isfinite(value) or not 0.0 <= value <= MAX_FEATURES_MEAN:
            raise UserError(f"{flag} {value}: expected a mean number per sample from 0 to {MAX_FEATURES_MEAN:g}")
    need = BYTES_PER_CELL * height * width * (workers or 1)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if have and need > have:
        per_worker = BYTES_PER_CELL * height * width / 2**30
        raise UserError(
            f"--height {height} --width {width}: a sample needs about {per_worker:.1f} GiB of memory per "
            f"worker; this machine has {have / 2**30:.1f} GiB"
        )


def generate_dataset(
    out,
    samples,
    height=768,
    width=1152,
    seed=0,
    validation_fraction=0.125,
    workers=None,
    progress=True,
    features=Features(),
    compress=False,
):
    """Write a synthetic dataset: ``out/train/*.h5``, ``out/validation/*.h5``, ``out/stats.h5``.

    ``samples`` is the total; ``round(samples * validation_fraction)`` (at least
    one) go to validation. Statistics cover the training split. Deterministic
    by ``seed`` whatever ``workers`` is. The dataset is built in a temporary
    folder and renamed to ``out`` when complete; ``out`` must not exist or be empty.
    ``compress``: the samples' datasets compressed
    (:data:`climseg.data.deepcam.COMPRESSION`; a third smaller, slower to read).
    Returns a summary dict (also written to ``out/climseg-dataset.json``).
    """
    if height % 16 or width % 16 or height < 16 or width < 16:
        raise UserError(f"height {height} and width {width} must be positive multiples of 16")
    if samples < 2:
        raise UserError(f"--samples {samples}: need at least 2 (one for training, one for validation)")
    if not 0.0 < validation_fraction < 1.0:
        raise UserError(f"validation fraction {validation_fraction} must lie between 0 and 1")
    check_generator_options(height, width, seed, workers, features)
    check_output_location(out, "folder", must_be_new=True)
    n_val = min(samples - 1, max(1, int(round(samples * validation_fraction))))
    n_train = samples - n_val
    workers = workers or min(8, os.cpu_count() or 1)

    def jobs_for(folder):
        return [(folder, "train", i, height, width, seed, features, compress) for i in range(n_train)] + [
            (folder, "validation", i, height, width, seed, features, compress) for i in range(n_val)
        ]

    with (
        atomic_directory(out) as tmp,
        progress_bar(
            total=n_train + n_val, desc=f"generate {height}x{width}", unit="sample", disable=not progress
        ) as bar,
    ):
        os.makedirs(os.path.join(tmp, "train"))
        os.makedirs(os.path.join(tmp, "validation"))
        jobs = jobs_for(tmp)
        results = []
        if workers > 1 and len(jobs) > 1:
            with concurrent.futures.ProcessPoolExecutor(workers) as pool:
                for res in pool.map(_make_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                    results.append(res)
                    bar.update()
        else:
            for job in jobs:
                results.append(_make_one(job))
                bar.update()
        stats = dataset_statistics([r[2] for r in results if r[0] == "train"])
        write_stats(os.path.join(tmp, "stats.h5"), stats)
        summary = dict(
            generator="climseg.data.synthetic",
            version=GENERATOR_VERSION,
            seed=int(seed),
            height=height,
            width=width,
            train=n_train,
            validation=n_val,
            class_frequencies=dict(
                zip(("background", "tropical_cyclone", "atmospheric_river"), stats.class_frequencies.round(5).tolist())
            ),
            cyclones=int(sum(r[3] for r in results)),
            rivers=int(sum(r[4] for r in results)),
            features=dataclasses.asdict(features),
            compression="gzip-1+shuffle" if compress else None,
        )
        write_json(os.path.join(tmp, "climseg-dataset.json"), summary)
    return summary


def read_dataset_summary(folder):
    """The ``climseg-dataset.json`` a generated dataset carries, or None."""
    path = os.path.join(folder, "climseg-dataset.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
