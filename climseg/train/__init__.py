"""Training: options (:mod:`.config`), the set-up (:mod:`.builder`), the loop (:mod:`.trainer`) and
its events (:mod:`.events`: the run folder's record, :mod:`.record`; the MLPerf log,
:mod:`.mlperf_log`), checkpoints and resuming (:mod:`.checkpoint`)."""

from climseg.train.builder import build_trainer
from climseg.train.checkpoint import build_model, load_checkpoint, save_checkpoint
from climseg.train.config import TrainConfig, merge, read_config_file
from climseg.train.events import TrainingListener
from climseg.train.trainer import Trainer, TrainingStopped


def prepare(options=None, config_file=None, log=print):
    """A ready :class:`Trainer`. ``options`` are TrainConfig fields (None = not
    given); ``config_file`` a YAML/JSON file of more. Precedence: defaults <
    file < the resumed checkpoint's options < ``options``."""
    options = dict(options or {})
    file_options = read_config_file(config_file) if config_file else {}
    resume = options.get("resume") or file_options.get("resume")
    checkpoint = load_checkpoint(resume) if resume else None
    saved = dict(checkpoint["train"]["options"]) if checkpoint and checkpoint.get("train") else {}
    for key in ("resume", "out", "progress", "max_steps"):
        saved.pop(key, None)
    cfg = merge(file_options, saved, options)
    return build_trainer(cfg, checkpoint, log=log)


def train(options=None, config_file=None, log=print):
    """Run a training job (see :func:`prepare`); returns the Trainer's summary."""
    return prepare(options, config_file, log).fit()


__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingListener",
    "TrainingStopped",
    "build_model",
    "build_trainer",
    "load_checkpoint",
    "merge",
    "prepare",
    "read_config_file",
    "save_checkpoint",
    "train",
]
