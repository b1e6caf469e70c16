"""Training checkpoints: what one holds to continue a run exactly, and the rules a resumed run follows.

The file format (reading, writing, building the network; the ``model`` and ``data`` sections that
inference needs) is :mod:`climseg.models.checkpoint`. A training checkpoint
(:func:`save_training_checkpoint`, written by rank 0 as ``last.pt`` and ``best.pt``) is that file
with these sections:

* ``model``: {config, in_channels, num_classes, norm, state_dict};
* ``data``: {channels, normalization, shift, scale, height, width, class_names}, so that inference
  normalises inputs exactly as training did;
* ``train``: ``options`` (the TrainConfig as a dict), the ``optimizer`` state (the
  DistributedOptimizer's, with its pending lagged gradient, under ``--gradient-lag``),
  ``scheduler`` and ``scaler`` states, ``rng`` (torch, CUDA, numpy, python; :func:`rng_state`),
  ``progress`` {epoch, batch_in_epoch, step, best_mean_iou}, ``partial`` (the running scores of an
  unfinished epoch, summed over ranks; None at an epoch's end), ``world_size`` and
  ``rank_bn_stats`` (every rank's batch-norm running statistics when they differ: mid-epoch with
  ``--bn-stats-sync epoch`` on several ranks; else None).

Resuming (:func:`resume`) checks that the checkpoint fits the run (same network, normalisation
layers and input channels; optimizer state present and loadable; mid-epoch: the same batch size and
a position at a whole accumulation step; epochs left to train), then restores weights, this rank's
batch-norm statistics, optimizer and loss-scale states, the position, the partial scores (rank 0
keeps the sum), the random-number states, and drops ``metrics.jsonl`` lines written after the
checkpoint.
"""

import math
import os
import random

import numpy as np
import torch

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.distributed.batchnorm import gather_running_stats, load_running_stats
from climseg.errors import CheckpointError, ConfigError, first_line
from climseg.models.checkpoint import FORMAT, VERSION, build_model, load_checkpoint, load_model_state, save_checkpoint
from climseg.train.record import truncate_metrics

__all__ = [
    "FORMAT",
    "VERSION",
    "build_model",
    "load_checkpoint",
    "load_model_state",
    "save_checkpoint",
    "rng_state",
    "set_rng_state",
    "save_training_checkpoint",
    "training_checkpoint",
    "rank_running_stats",
    "resume",
]


# ----------------------------------------------------------------------------- the schema


def save_training_checkpoint(trainer, path, scores=None):
    """Write ``trainer``'s state to ``path`` from rank 0 and return ``path``. Every rank calls this
    (collective): the partial ``scores`` (a :class:`~climseg.metrics.RunningScores` of the unfinished
    epoch, or None) are summed over ranks and the batch-norm statistics gathered."""
    ranks = trainer.ranks
    partial = scores.state(ranks.group) if scores is not None else None
    optimizer_state = trainer.dopt.state_dict() if trainer.dopt is not None else trainer.optimizer.state_dict()
    rank_bn_stats = rank_running_stats(trainer)
    if ranks.is_main:
        save_checkpoint(path, training_checkpoint(trainer, optimizer_state, partial, rank_bn_stats))
    return path


def training_checkpoint(trainer, optimizer_state, partial, rank_bn_stats):
    """The sections of a training checkpoint (see the module docstring) for ``trainer`` as it is now."""
    cfg, dataset = trainer.cfg, trainer.train_set
    return dict(
        model=dict(
            config=cfg.network,
            in_channels=len(dataset.channels),
            num_classes=NUM_CLASSES,
            norm=cfg.norm,
            state_dict=trainer.net.state_dict(),
        ),
        data=dict(
            channels=list(dataset.channels),
            normalization=dataset.normalization,
            shift=torch.from_numpy(dataset.shift.reshape(-1).copy()),
            scale=torch.from_numpy(dataset.scale.reshape(-1).copy()),
            height=dataset.shape[0],
            width=dataset.shape[1],
            class_names=list(CLASS_NAMES),
        ),
        train=dict(
            options=cfg.to_dict(),
            optimizer=optimizer_state,
            scheduler=trainer.scheduler.state_dict(),
            scaler=trainer.scaler.state_dict(),
            rng=rng_state(),
            progress=dict(
                epoch=trainer.epoch,
                batch_in_epoch=trainer.batch_in_epoch,
                step=trainer.step,
                best_mean_iou=trainer.best_mean_iou,
            ),
            partial=partial,
            world_size=trainer.ranks.world,
            rank_bn_stats=rank_bn_stats,
        ),
    )


def rank_running_stats(trainer):
    """Every rank's batch-norm running statistics (a list by rank) when they differ, i.e. mid-epoch
    with ``--bn-stats-sync epoch`` on several ranks; None otherwise. Collective."""
    ranks = trainer.ranks
    if ranks.world == 1 or trainer.cfg.bn_stats_sync != "epoch" or not trainer.batch_in_epoch:
        return None
    return gather_running_stats(trainer.net, ranks.group, ranks.world)


def rng_state():
    """The random-number states of torch (and CUDA), numpy and Python, as a checkpoint keeps them."""
    state = dict(torch=torch.get_rng_state(), python=_python_state(), numpy=_numpy_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore the states :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _python_state():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


# ----------------------------------------------------------------------------- the resume rules


def resume(trainer, ckpt):
    """Continue ``trainer`` (built for the resumed run's options) from the training checkpoint
    ``ckpt`` (from :func:`load_checkpoint`): checks, then restores (see the module docstring). A
    checkpoint that does not fit is a :class:`~climseg.errors.CheckpointError` (or a
    :class:`~climseg.errors.ConfigError` for ``--epochs``) naming the file. Every rank calls this."""
    where, cfg = ckpt["path"], trainer.cfg
    spec = ckpt["model"]
    if spec["config"] != cfg.network or spec.get("norm", "batch") != cfg.norm:
        raise CheckpointError(f"{where}: was trained with model configuration {spec['config']!r}, not {cfg.network!r}")
    in_channels = len(trainer.train_set.channels)
    if spec["in_channels"] != in_channels:
        raise CheckpointError(f"{where}: expects {spec['in_channels']} input channels, the data gives {in_channels}")
    load_model_state(trainer.net, spec["state_dict"], where, cfg.network)
    train = ckpt.get("train")
    if not train:
        raise CheckpointError(f"{where}: holds weights only (no optimizer state) and cannot be resumed")
    stats = train.get("rank_bn_stats")
    if stats and len(stats) == trainer.ranks.world:  # this rank's own, from a mid-epoch checkpoint of as many
        load_running_stats(trainer.net, stats[trainer.ranks.rank])
    _load_optimizer_state(trainer, train, where)
    progress = train["progress"]
    _check_position(progress, train.get("options", {}), cfg, where)
    trainer.epoch, trainer.batch_in_epoch = progress["epoch"], progress["batch_in_epoch"]
    trainer.step = progress["step"]
    trainer.best_mean_iou = progress.get("best_mean_iou", -math.inf)
    trainer.partial = train.get("partial") if trainer.ranks.is_main else None  # the sum over ranks, kept by rank 0
    set_rng_state(train["rng"])
    if trainer.ranks.is_main:
        truncate_metrics(os.path.join(trainer.out, "metrics.jsonl"), trainer.step)
    trainer.log(
        f"climseg: resuming {where} at epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}, step {trainer.step}"
    )


def _load_optimizer_state(trainer, train, where):
    """The optimizer's (or DistributedOptimizer's) and the loss scaler's states."""
    try:
        saved = train["optimizer"]
        if "pending" in saved:  # written with gradient lag
            if trainer.dopt is not None:
                trainer.dopt.load_state_dict(saved)
            else:
                trainer.optimizer.load_state_dict(saved["optimizer"])
                if saved["pending"] is not None:
                    trainer.log(f"climseg: {where} holds a lagged gradient that a run without --gradient-lag drops")
        else:
            trainer.optimizer.load_state_dict(saved)
        trainer.scaler.load_state_dict(train["scaler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: optimizer state does not fit this run ({first_line(exc)})") from None


def _check_position(progress, saved_options, cfg, where):
    """A mid-epoch position needs the batch size it was counted in and a whole accumulation step;
    a run needs epochs left to train."""
    saved_batch = saved_options.get("batch_size", cfg.batch_size)
    if progress["batch_in_epoch"] and saved_batch != cfg.batch_size:
        raise CheckpointError(
            f"{where}: was written mid-epoch with batch size {saved_batch}; resume it with --batch-size {saved_batch}"
        )
    saved_accumulate = saved_options.get("accumulate", 1)
    if progress["batch_in_epoch"] % cfg.accumulate:
        raise CheckpointError(
            f"{where}: was written mid-epoch with --accumulate {saved_accumulate}; resume it "
            f"with --accumulate {saved_accumulate}"
        )
    if progress["epoch"] >= cfg.epochs:
        raise ConfigError(
            f"{where}: has already trained {progress['epoch']} epochs; pass --epochs above "
            f"{progress['epoch']} to train further"
        )
