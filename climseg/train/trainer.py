"""The training loop: data -> model -> weighted cross-entropy -> optimizer, with
validation every epoch, metrics in ``metrics.jsonl`` and checkpoints that let
``--resume`` continue exactly where a run stopped.

Per step: a batch from the epoch's seeded order, forward under autocast
(bf16, or fp16 with a dynamic loss scale that skips overflowing steps), loss in
float32, backward, optional gradient clipping, optimizer and learning-rate
step, running IoU counts of the predictions (from the loss's own pass). Per epoch: validation on
the held-out split, one JSON line per split, ``last.pt`` (and ``best.pt`` when
the validation mean IoU improves). ``request_stop()`` (SIGINT/SIGTERM in the
CLI) finishes the current step, writes ``last.pt`` and returns.

With ``--accumulate N`` a step is N batches whose gradients add up (loss / N each). Batch norms
share statistics within ``--batchnorm-group-size`` ranks (:mod:`climseg.distributed.batchnorm`),
and at each epoch's end, before validation and the checkpoint, the running statistics are
averaged over ranks (``--bn-stats-sync epoch``). ``--target-iou`` ends training at the first
validation that reaches it; ``--mlperf-log`` writes the MLPerf HPC log
(:mod:`climseg.train.mlperf_log`) from rank 0.

Around the loop: the device and precision come from :mod:`climseg.perf.hardware`, the data
and loaders from :mod:`climseg.train.data`, the data-parallel wiring (collective decisions,
DDP or the DistributedOptimizer) from :mod:`climseg.train.parallel`, and the running scores
from :class:`climseg.metrics.RunningScores`.
"""
import contextlib
import datetime
import json
import math
import os
import random
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.data.cache import default_dataset
from climseg.data.sampling import EpochSampler
from climseg.distributed import launch as dist_launch
from climseg.distributed.batchnorm import average_running_stats, convert_batchnorm, running_stat_buffers
from climseg.errors import CheckpointError, ConfigError, DataError, TrainingError, first_line
from climseg.output import RunLock, append_line, atomic_path, check_output_location, write_json
from climseg.losses import DEEPCAM_FREQUENCIES, build_loss
from climseg.metrics import RunningScores
from climseg.models import build_network, count_parameters
from climseg.optim import FusedLAMB, FusedLARCAdam, build_scheduler
from climseg.perf import count_flops
from climseg.perf.cpu import tune_cpu_allocator
from climseg.perf.hardware import AUTOCAST_DTYPES, resolve_device, resolve_precision
from climseg.progress import progress_bar
from climseg.train.checkpoint import load_model_state, rng_state, save_checkpoint, set_rng_state
from climseg.train.config import TrainConfig
from climseg.train.data import open_training_data
from climseg.train.mlperf_log import RULES_TARGET_IOU, MLPerfLog
from climseg.train.parallel import Ranks, parallelize, uses_hierarchical

class TrainingStopped(Exception):
    """Training stopped early on request (signal); a checkpoint was written."""

    def __init__(self, checkpoint):
        super().__init__(f"stopped; checkpoint written to {checkpoint}")
        self.checkpoint = checkpoint


class Trainer:
    """Runs one training job described by a :class:`TrainConfig`.

    ``checkpoint`` (from :func:`climseg.train.checkpoint.load_checkpoint`)
    resumes a run; ``log`` receives one-line progress messages.
    """

    def __init__(self, cfg: TrainConfig, checkpoint=None, log=print):
        try:
            self._init(cfg, checkpoint, log)
        except BaseException:
            if getattr(self, "run_lock", None) is not None:
                self.run_lock.release()     # a refused or failed set-up leaves the folder as it was
            raise

    def _init(self, cfg, checkpoint, log):
        self.cfg = cfg
        # data parallelism: one process per device under mpirun, srun, jsrun or torchrun
        self.topo = dist_launch.init() if dist_launch.is_launched() else None
        self.rank = self.topo.rank if self.topo else 0
        self.world = self.topo.world_size if self.topo else 1
        self.is_main = self.rank == 0
        self.mlperf = MLPerfLog(cfg.mlperf_log, enabled=self.is_main, append=checkpoint is not None)
        self.mlperf.start("init_start")
        self.log = log if self.is_main else (lambda *a, **k: None)
        self.show_progress = cfg.progress and self.is_main
        # output: checked and locked (one run per folder) before the data are read or the model built
        self.out = cfg.out or (os.path.dirname(checkpoint["path"]) if checkpoint else _default_out(cfg.network))
        self.metrics_path = os.path.join(self.out, "metrics.jsonl")
        self.run_lock = RunLock(self.out)
        if self.is_main:
            check_output_location(self.out)
            self.run_lock.acquire()
            if checkpoint is None and os.path.exists(os.path.join(self.out, "last.pt")):
                raise ConfigError(f"{self.out}: already holds a training run (last.pt); continue it with "
                                  f"--resume {os.path.join(self.out, 'last.pt')} or choose another --out")
        if self.topo is not None and cfg.device == "auto":
            self.device = self.topo.device
        else:
            self.device = resolve_device(cfg.device)
        self.ranks = Ranks(self.topo, self.device)
        if self.topo is not None and self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.topo.local_size))
        self.precision = resolve_precision(cfg.precision, self.device)
        self._seed_everything(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.device.type == "cpu":
            tune_cpu_allocator()

        self.mlperf.submission(cfg, _platform(self.device))
        self.mlperf.event("cache_clear", True)   # nothing cached from a previous run: this process opens all afresh

        # data ("staging": making or finding the dataset and opening it)
        self.mlperf.start("staging_start")
        root = cfg.data or self._default_dataset()
        if "{" in root and self.topo is not None:   # node-local staged copies: --data /local/{node}
            root = root.format(node=self.topo.node, rank=self.rank)
        self.data_root = root
        self.input_dtype = AUTOCAST_DTYPES.get(self.precision, torch.float32)
        data = open_training_data(cfg, root, self.ranks, self.input_dtype, self.device, self.log)
        self.train_set, self.val_set, stats = data.train_set, data.val_set, data.stats
        self.train_loader, self.val_loader = data.train_loader, data.val_loader
        self.steps_per_epoch = data.steps_per_epoch // cfg.accumulate * cfg.accumulate   # batches, whole steps
        if self.steps_per_epoch == 0:
            raise ConfigError(f"option accumulate: {cfg.accumulate} batches per step but this rank has only "
                              f"{data.steps_per_epoch} batches per epoch")
        self.mlperf.end("staging_stop")
        train_dir = data.train_dir

        # model, loss, optimizer
        self.net = build_network(cfg.network, in_channels=len(self.train_set.channels), num_classes=NUM_CLASSES, norm=cfg.norm)
        try:
            self.net.check_input((1, len(self.train_set.channels)) + self.train_set.shape)
        except ConfigError as exc:
            raise DataError(f"{train_dir}: {exc}") from None
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.net.to(self.device, memory_format=self.memory_format)
        if cfg.batchnorm_group_size > 1:      # batch statistics shared by groups of ranks
            convert_batchnorm(self.net, cfg.batchnorm_group_size, self.topo)
        if cfg.class_frequencies == "dataset" and stats.class_frequencies is not None:
            frequencies = stats.class_frequencies
        else:
            if cfg.class_frequencies == "dataset":
                log(f"climseg: {stats.path} holds no class frequencies; using the CAM5 DeepCAM figures for the loss weights")
            frequencies = DEEPCAM_FREQUENCIES
        self.loss_fn = build_loss(cfg.loss, cfg.loss_weights, frequencies).to(self.device)
        self.net.init_class_prior(frequencies)
        if cfg.init_weights and checkpoint is None:
            from climseg.models.layouts import init_weights

            init_weights(cfg.init_weights, self.net)
            log(f"climseg: initial weights from {cfg.init_weights}")
        self.optimizer = self._build_optimizer()
        self.model, self.dopt = parallelize(self.net, self.optimizer, cfg, self.ranks)
        self.total_steps = cfg.epochs * self.steps_per_epoch // cfg.accumulate    # optimizer steps
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.lr_schedule, cfg.warmup_steps,
                                         cfg.milestones, cfg.lr_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.flops_per_sample = count_flops(self.net, (1, len(self.train_set.channels)) + self.train_set.shape)
        from climseg.perf.peaks import device_peak

        self.peak_tflops, self.peak_source = device_peak(self.device, AUTOCAST_DTYPES.get(self.precision, torch.float32))
        self.mlperf.hyperparameters(cfg, self.optimizer, self.world, self.topo.num_nodes if self.topo else 1,
                                    self.topo.local_size if self.topo else 1, self.total_steps)
        self.mlperf.event("train_samples", len(self.train_set))
        self.mlperf.event("eval_samples", len(self.val_set))

        # progress
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best_mean_iou = -math.inf
        self.partial = None
        self.stop_requested = False
        if checkpoint is not None:
            self._restore(checkpoint)

    # ------------------------------------------------------------------ set-up
    def _seed_everything(self, seed):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _default_dataset(self):
        """The cached synthetic set; made by one rank per node, the others wait for it."""
        first = self.topo is None or self.topo.local_rank == 0
        path = default_dataset(progress=self.show_progress, log=self.log) if first else None
        if self.topo is not None:
            self.ranks.barrier()
            path = path or default_dataset(progress=False, log=self.log)
        return path

    def _build_optimizer(self):
        cfg, params = self.cfg, self.net.parameters()
        common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.adam_eps is not None:
            common["eps"] = cfg.adam_eps
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, **common)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, **common)
        if cfg.optimizer == "larc-adam":    # SC18: LARC on Adam, as one fused multi-tensor step
            return FusedLARCAdam(params, **common)
        return FusedLAMB(params, **common)

    def _restore(self, ckpt):
        where = ckpt["path"]
        spec = ckpt["model"]
        if spec["config"] != self.cfg.network or spec.get("norm", "batch") != self.cfg.norm:
            raise CheckpointError(f"{where}: was trained with model configuration {spec['config']!r}, not {self.cfg.network!r}")
        if spec["in_channels"] != len(self.train_set.channels):
            raise CheckpointError(f"{where}: expects {spec['in_channels']} input channels, the data gives {len(self.train_set.channels)}")
        load_model_state(self.net, spec["state_dict"], where, self.cfg.network)
        train = ckpt.get("train")
        if not train:
            raise CheckpointError(f"{where}: holds weights only (no optimizer state) and cannot be resumed")
        self._restore_bn_stats(train.get("rank_bn_stats"))
        try:
            saved = train["optimizer"]
            if "pending" in saved:                    # written with gradient lag
                if self.dopt is not None:
                    self.dopt.load_state_dict(saved)
                else:
                    self.optimizer.load_state_dict(saved["optimizer"])
                    if saved["pending"] is not None:
                        self.log(f"climseg: {where} holds a lagged gradient that a run without --gradient-lag drops")
            else:
                self.optimizer.load_state_dict(saved)
            self.scaler.load_state_dict(train["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: optimizer state does not fit this run ({first_line(exc)})") from None
        progress = train["progress"]
        saved_batch = train.get("options", {}).get("batch_size", self.cfg.batch_size)
        if progress["batch_in_epoch"] and saved_batch != self.cfg.batch_size:
            raise CheckpointError(f"{where}: was written mid-epoch with batch size {saved_batch}; resume it with "
                                  f"--batch-size {saved_batch}")
        saved_accumulate = train.get("options", {}).get("accumulate", 1)
        if progress["batch_in_epoch"] % self.cfg.accumulate:
            raise CheckpointError(f"{where}: was written mid-epoch with --accumulate {saved_accumulate}; resume it "
                                  f"with --accumulate {saved_accumulate}")
        if progress["epoch"] >= self.cfg.epochs:
            raise ConfigError(f"{where}: has already trained {progress['epoch']} epochs; pass --epochs above "
                              f"{progress['epoch']} to train further")
        # the schedule is a function of the step (and of --epochs, which a resumed run may change)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.cfg.lr_schedule, self.cfg.warmup_steps,
                                         self.cfg.milestones, self.cfg.lr_decay, last_step=progress["step"])
        self.epoch, self.batch_in_epoch, self.step = progress["epoch"], progress["batch_in_epoch"], progress["step"]
        self.best_mean_iou = progress.get("best_mean_iou", -math.inf)
        self.partial = train.get("partial") if self.is_main else None   # the sum over ranks, kept by rank 0
        set_rng_state(train["rng"])
        if self.is_main:
            self._truncate_metrics(self.step)
        self.log(f"climseg: resuming {where} at epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}")

    def _gather_bn_stats(self):
        """Every rank's running statistics (a list by rank) when they differ, i.e. mid-epoch with
        ``--bn-stats-sync epoch`` on several ranks; None otherwise. Collective."""
        if self.world == 1 or self.cfg.bn_stats_sync != "epoch" or not self.batch_in_epoch:
            return None
        import torch.distributed as dist

        buffers = running_stat_buffers(self.net)
        if not buffers:
            return None
        flat = torch.cat([b.float().reshape(-1) for b in buffers])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat, group=self.topo.world)
        return [g.cpu() for g in gathered]

    def _restore_bn_stats(self, stats):
        """This rank's own running statistics from a mid-epoch checkpoint of as many ranks."""
        if not stats or len(stats) != self.world:
            return
        flat, offset = stats[self.rank], 0
        with torch.no_grad():
            for b in running_stat_buffers(self.net):
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def _truncate_metrics(self, step):
        """Drop metric lines written after the checkpoint we resume from."""
        if not os.path.isfile(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with atomic_path(self.metrics_path) as tmp, open(tmp, "w") as f:
            f.writelines(rows)

    # ------------------------------------------------------------------ loop
    def request_stop(self):
        """Finish the current step, write a checkpoint and stop (safe from a signal handler)."""
        self.stop_requested = True

    def fit(self):
        """Train to ``cfg.epochs``; returns the last validation metrics (a dict)."""
        try:
            return self._fit()
        finally:
            self.run_lock.release()

    def _fit(self):
        cfg = self.cfg
        if self.is_main:
            self.run_lock.acquire()        # held since set-up; again when fit() is called a second time
            self._write_run_info()
        where = f"{self.device}" if self.world == 1 else (
            f"{self.world} processes ({self.topo.num_nodes} node(s) x {self.topo.local_size}, "
            f"{'hierarchical' if uses_hierarchical(cfg.allreduce, self.topo) else 'flat'} allreduce"
            f"{', gradient lag 1' if cfg.gradient_lag else ''}) on {self.device.type}")
        self.log(f"climseg: training {cfg.network} ({count_parameters(self.net):,} parameters) on {where} in "
                 f"{self.precision}, {len(self.train_set)} training / {len(self.val_set)} validation samples of "
                 f"{self.train_set.shape[0]}x{self.train_set.shape[1]}, batch {cfg.batch_size}"
                 f"{' per process' if self.world > 1 else ''}, {cfg.epochs} epochs -> {self.out}")
        started = time.time()
        self.mlperf.end("init_stop")
        self.mlperf.start("run_start")
        last_val, reached = None, False
        while self.epoch < cfg.epochs:
            self.mlperf.start("epoch_start", metadata=dict(epoch_num=self.epoch + 1, step_num=self.step))
            try:
                train_row = self._train_epoch()
            except TrainingStopped:
                self.mlperf.end("run_stop", metadata=dict(status="aborted", epoch_num=self.epoch + 1))
                self.mlperf.close()
                raise
            if train_row is None:  # stopped by max_steps
                self.mlperf.end("run_stop", metadata=dict(status="aborted", epoch_num=self.epoch + 1))
                self.mlperf.close()
                return dict(stopped=True, step=self.step, checkpoint=os.path.join(self.out, "last.pt"))
            self._append_metrics(train_row)
            finished = self.epoch + 1
            if finished == cfg.epochs and self.dopt is not None:
                self.dopt.flush()   # the last step's lagged gradient: N steps make N updates
            self._sync_bn_stats()
            if finished % cfg.validate_every == 0 or finished == cfg.epochs:
                self.mlperf.start("eval_start", metadata=dict(epoch_num=finished))
                last_val = self.validate()
                last_val.update(epoch=finished, step=self.step)
                self.mlperf.event("eval_accuracy", _finite(last_val["deepcam_iou"], 0.0), metadata=dict(epoch_num=finished))
                self.mlperf.end("eval_stop", metadata=dict(epoch_num=finished))
                reached = bool(cfg.target_iou) and _finite(last_val["deepcam_iou"], -1.0) >= cfg.target_iou
                if reached:
                    last_val.update(target_iou=cfg.target_iou, time_to_target_s=time.time() - started)
                self._append_metrics(last_val)
                self.log(_epoch_line(train_row, last_val))
            else:
                self.log(_epoch_line(train_row, None))
            self.mlperf.end("epoch_stop", metadata=dict(epoch_num=finished, step_num=self.step))
            self.epoch, self.batch_in_epoch, self.partial = finished, 0, None
            improved = last_val is not None and last_val.get("epoch") == finished and \
                _finite(last_val["mean_iou"], -math.inf) > self.best_mean_iou
            if improved:
                self.best_mean_iou = last_val["mean_iou"]
            self._save("last.pt")
            if improved:
                self._save("best.pt")
            if reached:
                self.log(f"climseg: reached the target DeepCAM IoU {cfg.target_iou} at epoch {finished} after "
                         f"{last_val['time_to_target_s']:.1f} s")
                break
        summary = dict(validation=last_val, seconds=time.time() - started, out=self.out,
                       checkpoint=os.path.join(self.out, "last.pt"))
        target = cfg.target_iou or RULES_TARGET_IOU
        success = last_val is not None and _finite(last_val["deepcam_iou"], -1.0) >= target
        self.mlperf.end("run_stop", metadata=dict(status="success" if success else "aborted", epoch_num=self.epoch))
        self.mlperf.close()
        if reached:
            summary.update(target_iou=cfg.target_iou, time_to_target_s=last_val["time_to_target_s"])
        return summary

    def _sync_bn_stats(self):
        """``--bn-stats-sync epoch``: every rank's running statistics become their mean over ranks."""
        if self.world > 1 and self.cfg.bn_stats_sync == "epoch":
            average_running_stats(self.net, self.topo.world, self.world)

    def _loader(self, dataset, sampler, batch_size, drop_last):
        workers = self.cfg.workers
        if workers is None:
            workers = 0 if self.device.type == "cpu" else min(8, os.cpu_count() or 1)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def _to_device(self, data, labels):
        data = data.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return data, labels.to(self.device, non_blocking=True)

    def _train_batches(self):
        """This rank's batches of the current epoch, from the resume position on."""
        cfg = self.cfg
        if self.train_loader is not None:
            self.train_loader.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            return iter(self.train_loader)
        sampler = EpochSampler(len(self.train_set), cfg.seed, self.epoch, shuffle=True,
                               start=self.batch_in_epoch * cfg.batch_size, rank=self.rank, world_size=self.world)
        return iter(self._loader(self.train_set, sampler, cfg.batch_size, drop_last=True))

    def _train_epoch(self):
        cfg = self.cfg
        self.model.train()
        batches = self._train_batches()
        acc = RunningScores(self.device, self.partial)
        skipped_before = self.train_loader.skipped if self.train_loader is not None else 0
        with progress_bar(total=self.steps_per_epoch, initial=self.batch_in_epoch, disable=not self.show_progress,
                          desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch", leave=False) as bar:
            tick = time.time()
            while self.batch_in_epoch < self.steps_per_epoch:
                batch = next(batches, None)
                ended, stop = self.ranks.any(batch is None, self.stop_requested)
                at_step = self.batch_in_epoch % cfg.accumulate == 0   # not inside an accumulation
                self.stop_requested = stop
                if stop and at_step:
                    raise TrainingStopped(self._save("last.pt", acc))
                if ended:   # some rank ran out (files skipped): all end the epoch together
                    if not at_step:          # drop the unfinished accumulation
                        self.optimizer.zero_grad(set_to_none=True)
                        self.batch_in_epoch += cfg.accumulate - self.batch_in_epoch % cfg.accumulate
                    break
                if not self._train_step(batch[0], batch[1], acc):   # inside an accumulation: no step yet
                    acc.seconds += time.time() - tick
                    tick = time.time()
                    bar.update()
                    continue
                acc.seconds += time.time() - tick
                tick = time.time()
                bar.update()
                bar.set_postfix(loss=f"{acc.loss_sum / max(acc.samples, 1):.4f}",
                                samples_per_s=f"{acc.samples / max(acc.seconds, 1e-9):.1f}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._save("last.pt", acc)
                if cfg.max_steps and self.step >= cfg.max_steps:
                    self._save("last.pt", acc)
                    self.log(f"climseg: reached max-steps {cfg.max_steps}; checkpoint written to "
                             f"{os.path.join(self.out, 'last.pt')}")
                    return None
        if self.train_loader is not None:
            acc.skipped_samples += self.train_loader.skipped - skipped_before
        row = acc.row("train", self.ranks.group)
        row.update(epoch=self.epoch + 1, step=self.step, lr=self.optimizer.param_groups[0]["lr"],
                   tflops_per_s=row["samples_per_s"] * self.flops_per_sample / 1e12)
        row["mfu"] = row["tflops_per_s"] / (self.world * self.peak_tflops)   # per device, against its peak
        return row

    def _train_step(self, data, labels, acc):
        """One batch forward and backward; with ``--accumulate N`` the optimizer steps after every
        N-th batch, on the sum of the N gradients of loss / N (one step on N times the batch: the
        loss is a mean over pixels and the batches are the same size). Returns whether it stepped."""
        cfg = self.cfg
        n = cfg.accumulate
        micro = self.batch_in_epoch % n
        last = micro == n - 1
        data, labels = self._to_device(data, labels)
        if micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        no_sync = self.model.no_sync() if not last and hasattr(self.model, "no_sync") else contextlib.nullcontext()
        with no_sync:     # DDP averages the gradients once, at the last batch of the step
            with self._autocast():
                logits = self.model(data)
            loss, counts = self.loss_fn(logits, labels, return_counts=True)
            if not torch.isfinite(loss) and self.precision != "fp16":
                raise TrainingError(f"loss became {loss.item()} at step {self.step + 1}; lower --lr or use --clip-grad-norm")
            if not last:
                self.scaler.scale(loss / n).backward()
                self.batch_in_epoch += 1
                acc.add(counts, loss.detach(), False)
                return False
        skipped = False
        if self.dopt is not None:          # averages (of this or the previous step) applied inside, clipped there
            loss.backward()
            self.dopt.step()
        else:
            self.scaler.scale(loss / n if n > 1 else loss).backward()
            if cfg.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.clip_grad_norm)
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = scale is not None and self.scaler.get_scale() < scale
        with warnings.catch_warnings():    # a lagged first step has no update, by design
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        acc.add(counts, loss.detach(), skipped)
        return True

    @torch.no_grad()
    def validate(self, dataset=None):
        """Loss, per-class IoU, mean IoU and DeepCAM IoU over ``dataset`` (default: validation split)."""
        if self.dopt is not None and self.cfg.bn_stats_sync == "none":
            self.ranks.broadcast_buffers(self.net)   # DDP gives every rank rank 0's statistics each step; this path here
        was_training = self.model.training
        self.model.eval()
        if dataset is None and self.val_loader is not None:
            self.val_loader.set_epoch(0)
            loader = self.val_loader     # every sample exactly once over the ranks
        else:
            dataset = dataset or self.val_set
            shard = list(range(self.rank, len(dataset), self.world))
            loader = self._loader(dataset, shard, self.cfg.batch_size, drop_last=False)
        acc = RunningScores(self.device)
        tick = time.time()
        for data, labels in loader:
            data, labels = self._to_device(data, labels)
            with self._autocast():
                logits = self.model(data)
            loss, counts = self.loss_fn(logits, labels, return_counts=True)
            acc.add(counts, loss, False)
        acc.seconds = time.time() - tick
        self.model.train(was_training)
        return acc.row("validation", self.ranks.group)

    # ------------------------------------------------------------------ output
    def _save(self, name, acc=None):
        """Write a checkpoint from rank 0 (every rank calls this: the partial metrics are summed)."""
        path = os.path.join(self.out, name)
        cfg = self.cfg
        partial = acc.state(self.ranks.group) if acc is not None else None
        optimizer_state = self.dopt.state_dict() if self.dopt is not None else self.optimizer.state_dict()
        rank_bn_stats = self._gather_bn_stats()
        if not self.is_main:
            return path
        payload = dict(
            model=dict(config=cfg.network, in_channels=len(self.train_set.channels), num_classes=NUM_CLASSES,
                       norm=cfg.norm, state_dict=self.net.state_dict()),
            data=dict(channels=list(self.train_set.channels), normalization=self.train_set.normalization,
                      shift=torch.from_numpy(self.train_set.shift.reshape(-1).copy()),
                      scale=torch.from_numpy(self.train_set.scale.reshape(-1).copy()),
                      height=self.train_set.shape[0], width=self.train_set.shape[1], class_names=list(CLASS_NAMES)),
            train=dict(options=cfg.to_dict(), optimizer=optimizer_state,
                       scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), rng=rng_state(),
                       progress=dict(epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, step=self.step,
                                     best_mean_iou=self.best_mean_iou),
                       partial=partial, world_size=self.world, rank_bn_stats=rank_bn_stats),
        )
        save_checkpoint(path, payload)
        return path

    def _append_metrics(self, row):
        if not self.is_main:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        append_line(self.metrics_path, json.dumps(clean))

    def _write_run_info(self):
        info = dict(options=self.cfg.to_dict(), data_root=os.path.abspath(self.data_root), device=str(self.device),
                    precision=self.precision, torch=torch.__version__, parameters=count_parameters(self.net),
                    flops_per_sample=self.flops_per_sample, peak_tflops=self.peak_tflops,
                    peak_source=self.peak_source, input_shape=[len(self.train_set.channels), *self.train_set.shape],
                    channels=list(self.train_set.channels), steps_per_epoch=self.steps_per_epoch,
                    started=datetime.datetime.now().isoformat(timespec="seconds"))
        write_json(os.path.join(self.out, "run.json"), info)


def _platform(device):
    """The MLPerf submission_platform default: the accelerator's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def _finite(x, default):
    return x if isinstance(x, float) and math.isfinite(x) else default


def _fmt(x):
    return "  n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _epoch_line(train, val):
    line = (f"epoch {train['epoch']:3d}  step {train['step']:6d}  loss {train['loss']:.4f}  "
            f"{train['samples_per_s']:.1f} samples/s  {train['tflops_per_s']:.2f} TFLOP/s ({100 * train['mfu']:.0f}% MFU)")
    if val is not None:
        line += (f"  | validation loss {val['loss']:.4f}  IoU tc {_fmt(val['iou_tc'])}  ar {_fmt(val['iou_ar'])}  "
                 f"mean {_fmt(val['mean_iou'])}  deepcam {_fmt(val['deepcam_iou'])}")
    return line


def _default_out(config):
    return os.path.join("runs", f"{config}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
