"""MLPerf HPC ``:::MLLOG`` logging of a training run (``--mlperf-log FILE``), written with the
``mlperf-logging`` package's ``mllog`` so that its compliance checker reads it
(``python -m mlperf_logging.compliance_checker --usage hpc --ruleset 3.0.0 FILE``).

:class:`MLPerfLog` is a listener on the loop's events (:mod:`climseg.train.events`) and turns
them into the keys, in the order, the hpc 3.0.0 DeepCAM rules expect:

    setup_start: init_start
    data_start:  submission_*, cache_clear, staging_start      (opening the data)
    data_stop:   staging_stop
    setup_stop:  seed, number_of_*, global_batch_size, batchnorm_group_size,
                 gradient_accumulation_frequency, opt_*, scheduler_*, train_samples, eval_samples
    run_start:   init_stop, run_start
    per epoch:   epoch_start, eval_start, eval_accuracy (DeepCAM IoU, epoch_num), eval_stop, epoch_stop
    run_stop:    run_stop with status success (a completed run whose last validation reached the
                 target DeepCAM IoU, --target-iou or the rules' 0.82) or aborted

Only rank 0 writes; on other ranks (and without ``--mlperf-log``) every hook does nothing.
The file is appended line by line as the run goes (a log, like metrics.jsonl), each line flushed.
"""

import logging
import math
import os

from climseg.errors import ConfigError
from climseg.train.events import TrainingListener

RULES_TARGET_IOU = 0.82  # hpc 3.0.0 closed_deepcam.yaml / open_deepcam.yaml: eval_accuracy >= 0.82
OPTIMIZER_NAMES = {"adam": "Adam", "adamw": "AdamW", "lamb": "LAMB", "larc-adam": "LARC-Adam"}
SCHEDULER_NAMES = {"multistep": "multistep", "cosine": "cosine_annealing", "constant": "constant"}


class MLPerfLog(TrainingListener):
    """The MLPerf log of one run; ``path`` None or ``enabled`` False make every call a no-op.
    ``append``: add to an existing log (a resumed run) instead of starting it afresh."""

    def __init__(self, path, enabled=True, append=False):
        self.path = path if enabled else None
        self.mllogger = None
        self._handler = None
        self.target_iou = RULES_TARGET_IOU
        self.accuracy = None  # the last validation's DeepCAM IoU (finite, else None)
        if self.path is None:
            return
        try:
            from mlperf_logging.mllog import mllog as mllog_module
        except ImportError:
            raise ConfigError(
                "option mlperf-log: needs the mlperf-logging package (pip install 'climseg[mlperf]')"
            ) from None

        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise ConfigError(f"option mlperf-log: {self.path}: folder {folder} does not exist")
        logger = logging.getLogger(f"climseg.mllog.{os.path.abspath(self.path)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        for h in list(logger.handlers):  # a second run in this process writing the same file
            logger.removeHandler(h)
            h.close()
        try:
            self._handler = logging.FileHandler(self.path, mode="a" if append else "w")
        except OSError as exc:
            raise ConfigError(f"option mlperf-log: {self.path}: cannot write ({exc.strerror})") from None
        self._handler.setLevel(logging.INFO)
        logger.addHandler(self._handler)
        self.mllogger = mllog_module.MLLogger(logger=logger, default_stack_offset=2)

    @property
    def active(self):
        return self.mllogger is not None

    def event(self, key, value=None, metadata=None):
        if self.active:
            self.mllogger.event(key=key, value=value, metadata=metadata)
            self._handler.flush()

    def start(self, key, value=None, metadata=None):
        if self.active:
            self.mllogger.start(key=key, value=value, metadata=metadata)
            self._handler.flush()

    def end(self, key, value=None, metadata=None):
        if self.active:
            self.mllogger.end(key=key, value=value, metadata=metadata)
            self._handler.flush()

    def close(self):
        if self._handler is not None:
            self.mllogger.logger.removeHandler(self._handler)
            self._handler.close()
            self._handler, self.mllogger = None, None

    # -- the loop's events -----------------------------------------------------------------------
    def setup_start(self):
        self.start("init_start")

    def data_start(self, cfg, device):
        self.target_iou = cfg.target_iou or RULES_TARGET_IOU
        self.submission(cfg, platform_name(device))
        self.event("cache_clear", True)  # nothing cached from a previous run: this process opens all afresh
        self.start("staging_start")

    def data_stop(self):
        self.end("staging_stop")

    def setup_stop(self, trainer):
        topo = trainer.ranks.topo
        self.hyperparameters(
            trainer.cfg,
            trainer.optimizer,
            trainer.ranks.world,
            topo.num_nodes if topo else 1,
            topo.local_size if topo else 1,
            trainer.total_steps,
        )
        self.event("train_samples", len(trainer.train_set))
        self.event("eval_samples", len(trainer.val_set))

    def run_start(self, trainer):
        self.end("init_stop")
        self.start("run_start")

    def epoch_start(self, epoch, step):
        self.start("epoch_start", metadata=dict(epoch_num=epoch, step_num=step))

    def eval_start(self, epoch):
        self.start("eval_start", metadata=dict(epoch_num=epoch))

    def eval_stop(self, row):
        self.accuracy = _finite(row["deepcam_iou"])
        self.event(
            "eval_accuracy", 0.0 if self.accuracy is None else self.accuracy, metadata=dict(epoch_num=row["epoch"])
        )
        self.end("eval_stop", metadata=dict(epoch_num=row["epoch"]))

    def epoch_stop(self, epoch, step):
        self.end("epoch_stop", metadata=dict(epoch_num=epoch, step_num=step))

    def run_stop(self, status, epoch):
        success = status == "completed" and self.accuracy is not None and self.accuracy >= self.target_iou
        self.end("run_stop", metadata=dict(status="success" if success else "aborted", epoch_num=epoch))
        self.close()

    # -- the blocks of the set-up ----------------------------------------------------------------
    def submission(self, cfg, platform):
        """The submission fields, from the options (defaults: org climseg, division open, status
        research, platform the device's name)."""
        self.event("submission_benchmark", "deepcam")
        self.event("submission_org", cfg.mlperf_org)
        self.event("submission_division", cfg.mlperf_division)
        self.event("submission_status", cfg.mlperf_status)
        self.event("submission_platform", cfg.mlperf_platform or platform)

    def hyperparameters(self, cfg, optimizer, world, num_nodes, local_size, total_steps):
        """seed, sizes, optimizer and schedule as the hpc DeepCAM rules name them."""
        self.event("seed", cfg.seed)
        self.event("number_of_ranks", world)
        self.event("number_of_nodes", num_nodes)
        self.event("accelerators_per_node", local_size)
        self.event("global_batch_size", cfg.batch_size * world * cfg.accumulate)
        self.event("local_batch_size", cfg.batch_size)
        self.event("batchnorm_group_size", cfg.batchnorm_group_size)
        self.event("gradient_accumulation_frequency", cfg.accumulate)
        group = optimizer.param_groups[0]
        self.event("opt_name", OPTIMIZER_NAMES[cfg.optimizer])
        self.event("opt_lr", cfg.lr)
        self.event("opt_betas", [float(b) for b in group.get("betas", (0.9, 0.999))])
        self.event("opt_eps", float(group.get("eps", cfg.adam_eps)))
        self.event("opt_weight_decay", cfg.weight_decay)
        if cfg.optimizer == "lamb":  # climseg's LAMB: bias-corrected moments, (1 - beta1) averaging
            self.event("opt_bias_correction", True)
            self.event("opt_grad_averaging", True)
            self.event("opt_max_grad_norm", cfg.clip_grad_norm)
        elif cfg.clip_grad_norm:
            self.event("opt_max_grad_norm", cfg.clip_grad_norm)
        self.event("opt_gradient_clip_norm", cfg.clip_grad_norm)
        kind = SCHEDULER_NAMES[cfg.lr_schedule]
        self.event("scheduler_type", kind)
        self.event("scheduler_lr_warmup_steps", cfg.warmup_steps)
        self.event("scheduler_lr_warmup_factor", 1.0)  # linear warm-up to the base rate
        if kind == "multistep":
            # counted after the warm-up, as the reference's MultiStepLRWarmup counts them
            self.event("scheduler_milestones", [max(0, int(m) - cfg.warmup_steps) for m in cfg.milestones])
            self.event("scheduler_decay_rate", cfg.lr_decay)
        elif kind == "cosine_annealing":
            self.event("scheduler_t_max", max(1, total_steps - cfg.warmup_steps))
            self.event("scheduler_eta_min", 0.0)


def platform_name(device):
    """The MLPerf submission_platform default: the accelerator's name, or the CPU's."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _finite(x):
    return x if isinstance(x, float) and math.isfinite(x) else None
