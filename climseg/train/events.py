"""The training loop's events, and the listeners that turn them into output.

The set-up (:mod:`climseg.train.builder`) and the loop (:mod:`climseg.train.trainer`) call one
:class:`TrainingListener` at each event, in this order:

    setup_start, data_start, data_stop, setup_stop          (building the run)
    run_start                                               (fit begins)
    per epoch: epoch_start, train_stop, [eval_start, eval_stop], epoch_stop
    run_stop                                                (finished, or stopped early)

Every method of :class:`TrainingListener` does nothing; a listener overrides the events it needs.
:class:`Listeners` passes each event to several, in order. The listeners climseg uses (on rank 0):
:class:`~climseg.train.mlperf_log.MLPerfLog` (the ``:::MLLOG`` file),
:class:`~climseg.train.record.RunRecord` (``run.json``, ``metrics.jsonl``) and :class:`ConsoleReport`
(the lines printed while training). A library user adds one with ``trainer.events.add(listener)``.
"""

import math

from climseg.models import count_parameters
from climseg.train.parallel import uses_hierarchical


class TrainingListener:
    """The events of a training run; each does nothing here. ``epoch`` is the epoch's number
    (1-based), ``step`` the optimizer steps done so far, a ``row`` one line of ``metrics.jsonl``."""

    def setup_start(self):
        """Set-up begins (before the output folder is checked)."""

    def data_start(self, cfg, device):
        """The data are about to be found (or made) and opened; ``device`` is the run's."""

    def data_stop(self):
        """The data and loaders are open."""

    def setup_stop(self, trainer):
        """The run is built (network, optimizer, schedule), before a checkpoint is resumed."""

    def run_start(self, trainer):
        """Training begins (``fit``)."""

    def epoch_start(self, epoch, step):
        """An epoch's training begins (or goes on, when resumed mid-epoch)."""

    def train_stop(self, row):
        """The epoch's training is done; ``row`` holds its loss, scores and speed."""

    def eval_start(self, epoch):
        """Validation after ``epoch`` begins."""

    def eval_stop(self, row):
        """Validation is done; ``row`` holds its loss and IoU scores (``deepcam_iou`` is the
        accuracy MLPerf logs), its ``epoch`` and ``step``, and ``target_iou`` and
        ``time_to_target_s`` when it reached ``--target-iou``."""

    def epoch_stop(self, epoch, step):
        """The epoch is done (before its checkpoints are written)."""

    def run_stop(self, status, epoch):
        """Training ends: ``status`` ``"completed"`` (every epoch, or the target reached) or
        ``"stopped"`` (a stop request or ``--max-steps``), in epoch ``epoch``."""


class Listeners(TrainingListener):
    """Several listeners, each told every event in the order they were added."""

    def __init__(self, listeners=()):
        self.listeners = list(listeners)

    def add(self, listener):
        """Tell ``listener`` (a :class:`TrainingListener`) the events from now on."""
        self.listeners.append(listener)

    def setup_start(self):
        for listener in self.listeners:
            listener.setup_start()

    def data_start(self, cfg, device):
        for listener in self.listeners:
            listener.data_start(cfg, device)

    def data_stop(self):
        for listener in self.listeners:
            listener.data_stop()

    def setup_stop(self, trainer):
        for listener in self.listeners:
            listener.setup_stop(trainer)

    def run_start(self, trainer):
        for listener in self.listeners:
            listener.run_start(trainer)

    def epoch_start(self, epoch, step):
        for listener in self.listeners:
            listener.epoch_start(epoch, step)

    def train_stop(self, row):
        for listener in self.listeners:
            listener.train_stop(row)

    def eval_start(self, epoch):
        for listener in self.listeners:
            listener.eval_start(epoch)

    def eval_stop(self, row):
        for listener in self.listeners:
            listener.eval_stop(row)

    def epoch_stop(self, epoch, step):
        for listener in self.listeners:
            listener.epoch_stop(epoch, step)

    def run_stop(self, status, epoch):
        for listener in self.listeners:
            listener.run_stop(status, epoch)


class ConsoleReport(TrainingListener):
    """The lines a training run prints through ``log``: what trains where at the start, and one
    line per epoch (training loss and speed, then the validation scores when it validated)."""

    def __init__(self, log=print):
        self.log = log
        self.train_row = None

    def run_start(self, trainer):
        self.log(start_line(trainer))

    def train_stop(self, row):
        self.train_row = row

    def eval_stop(self, row):
        self.log(epoch_line(self.train_row, row))
        self.train_row = None

    def epoch_stop(self, epoch, step):
        if self.train_row is not None:  # an epoch without validation
            self.log(epoch_line(self.train_row, None))
            self.train_row = None


def start_line(trainer):
    """What trains, on which processes and devices, on how much data, into which folder."""
    cfg, ranks, train_set = trainer.cfg, trainer.ranks, trainer.train_set
    where = (
        f"{trainer.device}"
        if ranks.world == 1
        else (
            f"{ranks.world} processes ({ranks.topo.num_nodes} node(s) x {ranks.topo.local_size}, "
            f"{'hierarchical' if uses_hierarchical(cfg.allreduce, ranks.topo) else 'flat'} allreduce"
            f"{', gradient lag 1' if cfg.gradient_lag else ''}) on {trainer.device.type}"
        )
    )
    return (
        f"climseg: training {cfg.network} ({count_parameters(trainer.net):,} parameters) on {where} in "
        f"{trainer.precision}, {len(train_set)} training / {len(trainer.val_set)} validation samples of "
        f"{train_set.shape[0]}x{train_set.shape[1]}, batch {cfg.batch_size}"
        f"{' per process' if ranks.world > 1 else ''}, {cfg.epochs} epochs -> {trainer.out}"
    )


def epoch_line(train, val):
    """One epoch's line: its training ``train`` row, and the validation row ``val`` (or None)."""
    line = (
        f"epoch {train['epoch']:3d}  step {train['step']:6d}  loss {train['loss']:.4f}  "
        f"{train['samples_per_s']:.1f} samples/s  {train['tflops_per_s']:.2f} TFLOP/s "
        f"({100 * train['mfu']:.0f}% MFU)"
    )
    if val is not None:
        line += (
            f"  | validation loss {val['loss']:.4f}  IoU tc {_score(val['iou_tc'])}  ar {_score(val['iou_ar'])}  "
            f"mean {_score(val['mean_iou'])}  deepcam {_score(val['deepcam_iou'])}"
        )
    return line


def _score(x):
    return "  n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"
