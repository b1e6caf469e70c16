"""Set-up of a training run: from a :class:`~climseg.train.config.TrainConfig` (and a checkpoint to
resume) to a ready :class:`~climseg.train.trainer.Trainer`.

:func:`build_trainer` does, in this order (each rank; the random-number use is the same as ever,
so a seed gives the same run):

1. processes: under mpirun, srun, jsrun or torchrun one process per device
   (:func:`climseg.distributed.launch.init`); the listeners (MLPerf log) start;
2. output: the run folder checked and locked (one run per folder) before the data are read or the
   model built; a folder that already holds a run is refused unless resumed;
3. device and precision (:mod:`climseg.perf.hardware`), seeds, determinism, the CPU allocator;
4. data: the dataset (by default the cached synthetic set, made by one rank per node), its splits
   and loaders (:mod:`climseg.train.data`) and the steps per epoch;
5. network (on the device, in its memory format, with batch-norm groups), loss with its class
   weights, initial weights (``--init-weights``);
6. optimizer, data-parallel wiring (:mod:`climseg.train.parallel`), loss scaler, FLOPs and the
   device's peak, ``run.json``'s description;
7. the checkpoint resumed (:func:`climseg.train.checkpoint.resume`), then the learning-rate
   schedule positioned at the step reached.

A refused or failed set-up releases the run folder, leaving it as it was.
"""

import datetime
import os
import random

import numpy as np
import torch

from climseg.constants import NUM_CLASSES
from climseg.data.cache import default_dataset
from climseg.distributed import launch
from climseg.distributed.batchnorm import convert_batchnorm
from climseg.errors import ConfigError, DataError
from climseg.losses import DEEPCAM_FREQUENCIES, build_loss
from climseg.models import build_network, count_parameters
from climseg.optim import FusedLAMB, FusedLARCAdam, build_scheduler
from climseg.output import RunLock, check_output_location
from climseg.perf import count_flops
from climseg.perf.cpu import tune_cpu_allocator
from climseg.perf.hardware import AUTOCAST_DTYPES, resolve_device, resolve_precision
from climseg.perf.peaks import device_peak
from climseg.train.checkpoint import resume
from climseg.train.data import open_training_data
from climseg.train.events import ConsoleReport, Listeners
from climseg.train.mlperf_log import MLPerfLog
from climseg.train.parallel import Ranks, parallelize
from climseg.train.record import RunRecord
from climseg.train.trainer import Trainer


def build_trainer(cfg, checkpoint=None, log=print):
    """A ready :class:`~climseg.train.trainer.Trainer` for ``cfg``; ``checkpoint`` (from
    :func:`climseg.train.checkpoint.load_checkpoint`) resumes a run; ``log`` receives one-line
    progress messages (on rank 0). Under a launcher every rank calls this."""
    topo = launch.init() if launch.is_launched() else None
    is_main = topo is None or topo.rank == 0
    events = Listeners([MLPerfLog(cfg.mlperf_log, enabled=is_main, append=checkpoint is not None)])
    events.setup_start()
    log = log if is_main else _silent
    out = cfg.out or (os.path.dirname(checkpoint["path"]) if checkpoint else default_out(cfg.network))
    run_lock = RunLock(out)
    try:
        return _build(cfg, checkpoint, log, topo, events, out, run_lock)
    except BaseException:
        run_lock.release()  # a refused or failed set-up leaves the folder as it was
        raise


def _build(cfg, checkpoint, log, topo, events, out, run_lock):
    if topo is None or topo.rank == 0:
        _claim_output(out, run_lock, resuming=checkpoint is not None)
    device = _choose_device(cfg.device, topo)
    ranks = Ranks(topo, device)
    precision = resolve_precision(cfg.precision, device)
    _seed_everything(cfg.seed)
    _set_determinism(cfg.deterministic, device)
    show_progress = cfg.progress and ranks.is_main

    events.data_start(cfg, device)
    root = cfg.data or _default_dataset(topo, ranks, show_progress, log)
    if "{" in root and topo is not None:  # node-local staged copies: --data /local/{node}
        root = root.format(node=topo.node, rank=ranks.rank)
    data = open_training_data(cfg, root, ranks, AUTOCAST_DTYPES.get(precision, torch.float32), device, log)
    steps_per_epoch = data.steps_per_epoch // cfg.accumulate * cfg.accumulate  # batches, whole steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"option accumulate: {cfg.accumulate} batches per step but this rank has only "
            f"{data.steps_per_epoch} batches per epoch"
        )
    events.data_stop()

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net, loss_fn = _build_network(cfg, data, device, memory_format, topo, log, resuming=checkpoint is not None)
    optimizer = build_optimizer(cfg, net.parameters())
    model, dopt = parallelize(net, optimizer, cfg, ranks)
    input_shape = (len(data.train_set.channels),) + data.train_set.shape
    flops_per_sample = count_flops(net, (1,) + input_shape)
    peak_tflops, peak_source = device_peak(device, AUTOCAST_DTYPES.get(precision, torch.float32))
    trainer = Trainer(
        cfg=cfg,
        ranks=ranks,
        device=device,
        precision=precision,
        memory_format=memory_format,
        data=data,
        net=net,
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        dopt=dopt,
        scheduler=None,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
        steps_per_epoch=steps_per_epoch,
        total_steps=cfg.epochs * steps_per_epoch // cfg.accumulate,
        flops_per_sample=flops_per_sample,
        peak_tflops=peak_tflops,
        out=out,
        run_lock=run_lock,
        events=events,
        log=log,
        show_progress=show_progress,
    )
    if ranks.is_main:
        events.add(
            RunRecord(
                out,
                dict(
                    options=cfg.to_dict(),
                    data_root=os.path.abspath(root),
                    device=str(device),
                    precision=precision,
                    torch=torch.__version__,
                    parameters=count_parameters(net),
                    flops_per_sample=flops_per_sample,
                    peak_tflops=peak_tflops,
                    peak_source=peak_source,
                    input_shape=list(input_shape),
                    channels=list(data.train_set.channels),
                    steps_per_epoch=steps_per_epoch,
                ),
            )
        )
        events.add(ConsoleReport(log))
    events.setup_stop(trainer)
    if checkpoint is not None:
        resume(trainer, checkpoint)
    # the schedule is a function of the step (and of --epochs, which a resumed run may change)
    trainer.scheduler = build_scheduler(
        optimizer,
        trainer.total_steps,
        cfg.lr_schedule,
        cfg.warmup_steps,
        cfg.milestones,
        cfg.lr_decay,
        last_step=trainer.step,
    )
    return trainer


def _claim_output(out, run_lock, resuming):
    """Check and lock the run folder; one that holds a run already is for ``--resume`` only."""
    check_output_location(out)
    run_lock.acquire()
    if not resuming and os.path.exists(os.path.join(out, "last.pt")):
        raise ConfigError(
            f"{out}: already holds a training run (last.pt); continue it with "
            f"--resume {os.path.join(out, 'last.pt')} or choose another --out"
        )


def _choose_device(name, topo):
    """The launcher's device for ``auto`` under a launcher, else ``name`` resolved; CPU ranks
    share the cores of their node."""
    device = topo.device if topo is not None and name == "auto" else resolve_device(name)
    if topo is not None and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // topo.local_size))
    return device


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _set_determinism(deterministic, device):
    """``--deterministic`` algorithms, else cuDNN's autotuner on CUDA; the CPU allocator tuned."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu":
        tune_cpu_allocator()


def _default_dataset(topo, ranks, show_progress, log):
    """The cached synthetic set; made by one rank per node, the others wait for it."""
    first = topo is None or topo.local_rank == 0
    path = default_dataset(progress=show_progress, log=log) if first else None
    if topo is not None:
        ranks.barrier()
        path = path or default_dataset(progress=False, log=log)
    return path


def _build_network(cfg, data, device, memory_format, topo, log, resuming):
    """The network checked against the data's shape and moved to ``device``, with batch-norm
    groups, the class prior and ``--init-weights`` (not when resuming); and the loss."""
    channels = len(data.train_set.channels)
    net = build_network(cfg.network, in_channels=channels, num_classes=NUM_CLASSES, norm=cfg.norm)
    try:
        net.check_input((1, channels) + data.train_set.shape)
    except ConfigError as exc:
        raise DataError(f"{data.train_dir}: {exc}") from None
    net.to(device, memory_format=memory_format)
    if cfg.batchnorm_group_size > 1:  # batch statistics shared by groups of ranks
        convert_batchnorm(net, cfg.batchnorm_group_size, topo)
    frequencies = _class_frequencies(cfg.class_frequencies, data.stats, log)
    loss_fn = build_loss(cfg.loss, cfg.loss_weights, frequencies).to(device)
    net.init_class_prior(frequencies)
    if cfg.init_weights and not resuming:
        from climseg.models.layouts import init_weights

        init_weights(cfg.init_weights, net)
        log(f"climseg: initial weights from {cfg.init_weights}")
    return net, loss_fn


def _class_frequencies(source, stats, log):
    """The class frequencies the loss weights and the class prior use: the dataset's (``stats.h5``)
    when asked and present, else the CAM5 DeepCAM figures."""
    if source == "dataset" and stats.class_frequencies is not None:
        return stats.class_frequencies
    if source == "dataset":
        log(f"climseg: {stats.path} holds no class frequencies; using the CAM5 DeepCAM figures for the loss weights")
    return DEEPCAM_FREQUENCIES


def build_optimizer(cfg, params):
    """The optimizer ``cfg.optimizer`` names over ``params``, with ``cfg``'s learning rate, weight
    decay and (when given) Adam epsilon: Adam, AdamW, LARC on Adam (SC18) or LAMB (MLPerf)."""
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.adam_eps is not None:
        common["eps"] = cfg.adam_eps
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, **common)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, **common)
    if cfg.optimizer == "larc-adam":  # SC18: LARC on Adam, as one fused multi-tensor step
        return FusedLARCAdam(params, **common)
    return FusedLAMB(params, **common)


def default_out(network):
    """The default run folder: ``runs/<network>-<date>-<time>``."""
    return os.path.join("runs", f"{network}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def _silent(*args, **kwargs):
    pass
