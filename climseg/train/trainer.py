"""The training loop: data -> model -> weighted cross-entropy -> optimizer, with validation every
epoch and checkpoints that let ``--resume`` continue exactly where a run stopped.

Per step: a batch from the epoch's seeded order, forward under autocast (bf16, or fp16 with a
dynamic loss scale that skips overflowing steps), loss in float32, backward, optional gradient
clipping, optimizer and learning-rate step, running IoU counts of the predictions (from the loss's
own pass). With ``--accumulate N`` a step is N batches whose gradients add up (loss / N each).

Per epoch: the training row, the running batch-norm statistics averaged over ranks
(``--bn-stats-sync epoch``), validation on the held-out split (every ``--validate-every`` epochs
and after the last), ``last.pt`` (and ``best.pt`` when the validation mean IoU improves).
``--target-iou`` ends training at the first validation that reaches it. ``request_stop()``
(SIGINT/SIGTERM in the CLI) finishes the current step, writes ``last.pt`` and stops;
``--max-steps`` and ``--checkpoint-every`` write ``last.pt`` at those steps.

The loop reports what happens as events (:mod:`climseg.train.events`) to its listeners, which write
``metrics.jsonl`` and ``run.json`` (:mod:`climseg.train.record`), the MLPerf log
(:mod:`climseg.train.mlperf_log`) and the console lines. Everything it works with arrives built
(:func:`climseg.train.builder.build_trainer`); what a checkpoint holds and how a run resumes is
:mod:`climseg.train.checkpoint`.
"""

import contextlib
import dataclasses
import math
import os
import time
import typing
import warnings

import torch

from climseg.data.sampling import EpochSampler
from climseg.distributed.batchnorm import average_running_stats
from climseg.errors import TrainingError
from climseg.metrics import RunningScores
from climseg.output import RunLock
from climseg.perf.hardware import AUTOCAST_DTYPES
from climseg.progress import progress_bar
from climseg.train.checkpoint import save_training_checkpoint
from climseg.train.config import TrainConfig
from climseg.train.data import TrainingData, torch_loader
from climseg.train.events import Listeners
from climseg.train.parallel import Ranks


class TrainingStopped(Exception):
    """Training stopped early on request (signal); a checkpoint was written."""

    def __init__(self, checkpoint):
        super().__init__(f"stopped; checkpoint written to {checkpoint}")
        self.checkpoint = checkpoint


@dataclasses.dataclass(eq=False, repr=False)
class Trainer:
    """Runs one training job described by a :class:`TrainConfig` over parts built for it by
    :func:`climseg.train.builder.build_trainer` (or :func:`climseg.train.prepare`), which also
    resumes a checkpoint into it. :meth:`fit` trains; :meth:`request_stop` asks it to stop."""

    cfg: TrainConfig
    ranks: Ranks  # this run's processes and their collective decisions
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 (the autocast dtype; fp16 with a loss scale)
    memory_format: torch.memory_format  # of the network's inputs (channels_last by default)
    data: TrainingData  # the two splits and their loaders
    net: torch.nn.Module  # the network: weights, batch norms, checkpoints
    model: torch.nn.Module  # what the loop calls: the network, or its DDP wrapper
    loss_fn: torch.nn.Module  # returns (loss, prediction counts)
    optimizer: torch.optim.Optimizer
    dopt: typing.Any  # the DistributedOptimizer with --gradient-lag, else None
    scheduler: typing.Any  # learning rate per optimizer step
    scaler: torch.amp.GradScaler  # fp16 loss scale (disabled otherwise)
    steps_per_epoch: int  # batches per epoch on every rank, whole accumulation steps
    total_steps: int  # optimizer steps of the whole run
    flops_per_sample: float  # forward + backward, for TFLOP/s and MFU
    peak_tflops: float  # the device's peak, for MFU
    out: str  # the run folder
    run_lock: RunLock  # held from set-up to the end of fit (rank 0)
    events: Listeners = dataclasses.field(default_factory=Listeners)
    log: typing.Callable = print  # one-line messages (a no-op on ranks other than 0)
    show_progress: bool = False
    # where the run stands (restored on resume)
    epoch: int = 0  # epochs done
    batch_in_epoch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps done
    best_mean_iou: float = -math.inf
    partial: typing.Optional[dict] = None  # the running scores of an unfinished epoch (rank 0)
    stop_requested: bool = False

    @property
    def train_set(self):
        return self.data.train_set

    @property
    def val_set(self):
        return self.data.val_set

    # ------------------------------------------------------------------ loop
    def request_stop(self):
        """Finish the current step, write a checkpoint and stop (safe from a signal handler)."""
        self.stop_requested = True

    def fit(self):
        """Train to ``cfg.epochs``; returns a summary: the last validation metrics (a dict under
        ``validation``), the time, the run folder and its checkpoint. Raises
        :class:`TrainingStopped` after a stop request; ``--max-steps`` returns ``stopped=True``."""
        try:
            return self._fit()
        finally:
            self.run_lock.release()

    def _fit(self):
        cfg = self.cfg
        if self.ranks.is_main:
            self.run_lock.acquire()  # held since set-up; again when fit() is called a second time
        self.events.run_start(self)
        started = time.time()
        last_val, reached = None, False
        while self.epoch < cfg.epochs:
            self.events.epoch_start(self.epoch + 1, self.step)
            try:
                train_row = self._train_epoch()
            except TrainingStopped:
                self.events.run_stop("stopped", self.epoch + 1)
                raise
            if train_row is None:  # stopped by max_steps
                self.events.run_stop("stopped", self.epoch + 1)
                return dict(stopped=True, step=self.step, checkpoint=os.path.join(self.out, "last.pt"))
            self.events.train_stop(train_row)
            finished = self.epoch + 1
            if finished == cfg.epochs and self.dopt is not None:
                self.dopt.flush()  # the last step's lagged gradient: N steps make N updates
            if self.ranks.world > 1 and cfg.bn_stats_sync == "epoch":
                average_running_stats(self.net, self.ranks.group, self.ranks.world)
            if finished % cfg.validate_every == 0 or finished == cfg.epochs:
                last_val, reached = self._validate_epoch(finished, started)
            self.events.epoch_stop(finished, self.step)
            self._end_epoch(finished, last_val)
            if reached:
                self.log(
                    f"climseg: reached the target DeepCAM IoU {cfg.target_iou} at epoch {finished} after "
                    f"{last_val['time_to_target_s']:.1f} s"
                )
                break
        summary = dict(
            validation=last_val,
            seconds=time.time() - started,
            out=self.out,
            checkpoint=os.path.join(self.out, "last.pt"),
        )
        self.events.run_stop("completed", self.epoch)
        if reached:
            summary.update(target_iou=cfg.target_iou, time_to_target_s=last_val["time_to_target_s"])
        return summary

    def _end_epoch(self, finished, last_val):
        """Epoch ``finished`` done: ``last.pt``, and ``best.pt`` when its validation improved the mean IoU."""
        self.epoch, self.batch_in_epoch, self.partial = finished, 0, None
        improved = (
            last_val is not None
            and last_val.get("epoch") == finished
            and _finite(last_val["mean_iou"], -math.inf) > self.best_mean_iou
        )
        if improved:
            self.best_mean_iou = last_val["mean_iou"]
        self._save("last.pt")
        if improved:
            self._save("best.pt")

    def _validate_epoch(self, epoch, started):
        """Validation after ``epoch``: its row, and whether it reached ``--target-iou``."""
        self.events.eval_start(epoch)
        row = self.validate()
        row.update(epoch=epoch, step=self.step)
        target = self.cfg.target_iou
        reached = bool(target) and _finite(row["deepcam_iou"], -1.0) >= target
        if reached:
            row.update(target_iou=target, time_to_target_s=time.time() - started)
        self.events.eval_stop(row)
        return row, reached

    def _train_epoch(self):
        """The current epoch's steps from the resume position on; its training row, or None when
        ``--max-steps`` was reached. A stop request raises :class:`TrainingStopped` at a step's end."""
        cfg = self.cfg
        self.model.train()
        batches = self.train_batches()
        scores = RunningScores(self.device, self.partial)
        loader = self.data.train_loader
        skipped_before = loader.skipped if loader is not None else 0
        with progress_bar(
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            disable=not self.show_progress,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
        ) as bar:
            tick = time.time()
            while self.batch_in_epoch < self.steps_per_epoch:
                batch = next(batches, None)
                ended, stop = self.ranks.any(batch is None, self.stop_requested)
                at_step = self.batch_in_epoch % cfg.accumulate == 0  # not inside an accumulation
                self.stop_requested = stop
                if stop and at_step:
                    raise TrainingStopped(self._save("last.pt", scores))
                if ended:  # some rank ran out (files skipped): all end the epoch together
                    if not at_step:  # drop the unfinished accumulation
                        self.optimizer.zero_grad(set_to_none=True)
                        self.batch_in_epoch += cfg.accumulate - self.batch_in_epoch % cfg.accumulate
                    break
                stepped = self.train_step(batch[0], batch[1], scores)
                scores.seconds += time.time() - tick
                tick = time.time()
                bar.update()
                if not stepped:  # inside an accumulation: no step yet
                    continue
                bar.set_postfix(
                    loss=f"{scores.loss_sum / max(scores.samples, 1):.4f}",
                    samples_per_s=f"{scores.samples / max(scores.seconds, 1e-9):.1f}",
                )
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._save("last.pt", scores)
                if cfg.max_steps and self.step >= cfg.max_steps:
                    self._save("last.pt", scores)
                    self.log(
                        f"climseg: reached max-steps {cfg.max_steps}; checkpoint written to "
                        f"{os.path.join(self.out, 'last.pt')}"
                    )
                    return None
        if loader is not None:
            scores.skipped_samples += loader.skipped - skipped_before
        row = scores.row("train", self.ranks.group)
        row.update(
            epoch=self.epoch + 1,
            step=self.step,
            lr=self.optimizer.param_groups[0]["lr"],
            tflops_per_s=row["samples_per_s"] * self.flops_per_sample / 1e12,
        )
        row["mfu"] = row["tflops_per_s"] / (self.ranks.world * self.peak_tflops)  # per device, against its peak
        return row

    def train_batches(self):
        """This rank's batches of the current epoch, from the resume position on."""
        cfg = self.cfg
        if self.data.train_loader is not None:
            self.data.train_loader.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            return iter(self.data.train_loader)
        sampler = EpochSampler(
            len(self.train_set),
            cfg.seed,
            self.epoch,
            shuffle=True,
            start=self.batch_in_epoch * cfg.batch_size,
            rank=self.ranks.rank,
            world_size=self.ranks.world,
        )
        return iter(torch_loader(self.train_set, sampler, cfg.batch_size, True, cfg.workers, self.device))

    def train_step(self, data, labels, scores):
        """One batch forward and backward, its counts and loss added to ``scores``; with
        ``--accumulate N`` the optimizer steps after every N-th batch, on the sum of the N gradients
        of loss / N (one step on N times the batch: the loss is a mean over pixels and the batches
        are the same size). Returns whether it stepped."""
        cfg = self.cfg
        n = cfg.accumulate
        micro = self.batch_in_epoch % n
        last = micro == n - 1
        data, labels = self._to_device(data, labels)
        if micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        no_sync = self.model.no_sync() if not last and hasattr(self.model, "no_sync") else contextlib.nullcontext()
        with no_sync:  # DDP averages the gradients once, at the last batch of the step
            with self._autocast():
                logits = self.model(data)
            loss, counts = self.loss_fn(logits, labels, return_counts=True)
            if not torch.isfinite(loss) and self.precision != "fp16":
                raise TrainingError(
                    f"loss became {loss.item()} at step {self.step + 1}; lower --lr or use --clip-grad-norm"
                )
            if not last:
                self.scaler.scale(loss / n).backward()
                self.batch_in_epoch += 1
                scores.add(counts, loss.detach(), False)
                return False
        skipped = False
        if self.dopt is not None:  # averages (of this or the previous step) applied inside, clipped there
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
        with warnings.catch_warnings():  # a lagged first step has no update, by design
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        self.step += 1
        self.batch_in_epoch += 1
        scores.add(counts, loss.detach(), skipped)
        return True

    @torch.no_grad()
    def validate(self, dataset=None):
        """Loss, per-class IoU, mean IoU and DeepCAM IoU over ``dataset`` (default: validation split)."""
        if self.dopt is not None and self.cfg.bn_stats_sync == "none":
            # DDP gives every rank rank 0's statistics each step; this path does it here
            self.ranks.broadcast_buffers(self.net)
        was_training = self.model.training
        self.model.eval()
        if dataset is None and self.data.val_loader is not None:
            self.data.val_loader.set_epoch(0)
            loader = self.data.val_loader  # every sample exactly once over the ranks
        else:
            dataset = dataset or self.val_set
            shard = list(range(self.ranks.rank, len(dataset), self.ranks.world))
            loader = torch_loader(dataset, shard, self.cfg.batch_size, False, self.cfg.workers, self.device)
        scores = RunningScores(self.device)
        tick = time.time()
        for data, labels in loader:
            data, labels = self._to_device(data, labels)
            with self._autocast():
                logits = self.model(data)
            loss, counts = self.loss_fn(logits, labels, return_counts=True)
            scores.add(counts, loss, False)
        scores.seconds = time.time() - tick
        self.model.train(was_training)
        return scores.row("validation", self.ranks.group)

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def _to_device(self, data, labels):
        data = data.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return data, labels.to(self.device, non_blocking=True)

    def _save(self, name, scores=None):
        """Write a checkpoint from rank 0 (every rank calls this: the partial scores are summed)."""
        return save_training_checkpoint(self, os.path.join(self.out, name), scores)


def _finite(x, default):
    return x if isinstance(x, float) and math.isfinite(x) else default
