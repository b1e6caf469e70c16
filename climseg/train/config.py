"""Training options: one dataclass, filled from defaults < a YAML/JSON file <
a resumed checkpoint's options < the command line.

Each field carries its command-line option in its metadata (:func:`option`): what it means, the
values it takes and the name of its argument. ``climseg train`` generates its options from
them and shows each default from the dataclass itself, so help and defaults cannot drift; a
boolean becomes a flag that turns its default over (``--deterministic``, ``--no-progress``).
The command line spells the fields with dashes (``--batch-size``), files with either dashes or
underscores.

Renamed options (:data:`RENAMED`) are still read under their old names: from a configuration
file with a ``FutureWarning`` (:func:`read_config_file`), and silently by :func:`merge` (the saved
options of a checkpoint written before the rename, which ``--resume`` reads).
"""

import dataclasses
import json
import os
import typing
import warnings

from climseg.errors import ConfigError, first_line
from climseg.train.recipes import RECIPES

#: Old option name -> new one: ``config`` held the network's name in climseg 0.1.
RENAMED = {"config": "network"}

#: What ``--precision auto`` means: the rule of :func:`climseg.perf.hardware.choose_precision`, in the
#: same words as :data:`climseg.perf.hardware.PRECISION_RULE` (kept here so that the option table
#: builds without importing torch; a test holds the two equal).
PRECISION_RULE = (
    "auto: bf16 on GPUs with bf16 tensor cores (Ampere and later), fp16 on Volta and Turing, else "
    "fp32; on a CPU bf16 where the cores compute it natively (AVX512-BF16 or AMX), else fp32"
)


def option(default=None, help="", *, choices=None, metavar=None, default_text=None, section=None, default_factory=None):
    """A :class:`TrainConfig` field and its command-line option, written once.

    ``help``: what the option means (the default is added from the field itself); ``choices``:
    the values it takes, checked by :func:`validate`; ``metavar``: its argument's name in
    ``--help`` (default: the choices, or the field's name in capitals); ``default_text``: what
    a default of None means; ``section``: the heading of the options from this field on."""
    metadata = dict(help=help, choices=choices, metavar=metavar, default_text=default_text, section=section)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TrainConfig:
    data: typing.Optional[str] = option(
        None,
        "dataset folder with train/, validation/ and stats.h5 (DeepCAM layout), or train/ and validation/ "
        "or test/ of netCDF files with LABELS (ClimateNet layout, optional config.json)",
        metavar="DIR",
        default_text="a small synthetic dataset, generated once into the cache",
        section="data",
    )
    channels: typing.Optional[list[str]] = option(
        None, "comma-separated channel names", metavar="NAMES", default_text="all 16"
    )
    normalization: str = option("minmax", "input normalisation from the statistics", choices=("minmax", "zscore"))
    loader: str = option(
        "fast",
        "fast: FastLoader (C++ reader threads); torch: a DataLoader over DeepCAMDataset",
        choices=("fast", "torch"),
    )
    workers: typing.Optional[int] = option(
        None,
        "reader threads of the fast loader, or DataLoader processes of the torch loader",
        metavar="N",
        default_text="the cores (fast); 0 on CPU, up to 8 on CUDA (torch)",
    )
    on_bad_sample: str = option(
        "error", "error: stop, naming the file; skip: leave the sample out, log it, count it", choices=("error", "skip")
    )
    network: str = option(
        "tiny",
        "the network: the DeepLabv3+ of Kurth et al. 2018, of MLPerf DeepCAM, a tiny one, or ClimateNet's CGNet",
        choices=("kurth2018", "deepcam", "tiny", "cgnet"),
        section="model",
    )
    norm: str = option("batch", "the network's normalisation layers", choices=("batch", "none"))
    epochs: int = option(6, "number of epochs", metavar="N", section="optimisation")
    batch_size: int = option(8, "samples per optimizer step", metavar="N")
    optimizer: str = option(
        "adamw", "larc-adam: LARC around Adam, as SC18", choices=("adam", "adamw", "lamb", "larc-adam")
    )
    lr: float = option(2e-3, "peak learning rate", metavar="RATE")
    weight_decay: float = option(1e-4, "weight decay", metavar="DECAY")
    lr_schedule: str = option(
        "cosine", "learning-rate schedule after the warmup", choices=("cosine", "multistep", "constant")
    )
    warmup_steps: int = option(30, "linear warmup steps", metavar="N")
    milestones: list[int] = option(
        help="multistep: comma-separated steps where the rate is multiplied by --lr-decay",
        metavar="STEPS",
        default_factory=list,
    )
    lr_decay: float = option(0.1, "multistep decay factor", metavar="FACTOR")
    clip_grad_norm: float = option(0.0, "clip the gradient norm to this value; 0: off", metavar="NORM")
    adam_eps: typing.Optional[float] = option(
        None,
        "epsilon of Adam, AdamW, LAMB and LARC-Adam",
        metavar="EPS",
        default_text="the optimizer's own, 1e-8 (LAMB 1e-6)",
    )
    accumulate: int = option(1, "micro-batches of --batch-size whose gradients make one optimizer step", metavar="N")
    recipe: typing.Optional[str] = option(
        None,
        "a published hyperparameter set beneath the other options (docs/mlperf.md)",
        choices=tuple(RECIPES),
        default_text="none",
    )
    target_iou: float = option(
        0.0,
        "stop when the validation DeepCAM IoU reaches this; time to target in "
        "metrics.jsonl and the MLPerf log; 0: train all epochs",
        metavar="IOU",
    )
    loss_weights: str = option(
        "deepcam",
        "class weights from the class frequencies f: f^-1/2 (kurth2018), f^-1/8 (deepcam) or 1 (uniform)",
        choices=("kurth2018", "deepcam", "uniform"),
    )
    class_frequencies: str = option(
        "dataset",
        "the class frequencies of the loss weights: the dataset's stats.h5 (dataset) or the CAM5 figures (deepcam)",
        choices=("dataset", "deepcam"),
    )
    loss: str = option(
        "ce",
        "ce: weighted cross-entropy; jaccard: ClimateNet's soft IoU loss; ce+jaccard: their sum",
        choices=("ce", "jaccard", "ce+jaccard"),
    )
    init_weights: typing.Optional[str] = option(
        None,
        "starting weights, e.g. climatenet:weights.pth (with --network cgnet)",
        metavar="FORMAT:PATH",
        default_text="random",
    )
    gradient_lag: int = option(
        0,
        "1: apply each step's averaged gradient one step later, overlapping its allreduce with the next step",
        metavar="{0,1}",
        section="data parallelism (under mpirun, srun, jsrun or torchrun)",
    )
    allreduce: str = option(
        "auto",
        "gradient allreduce across processes; auto: hierarchical on several nodes",
        choices=("auto", "hierarchical", "flat"),
    )
    compression: str = option(
        "none", "gradients on the wire in this precision, summed in fp32", choices=("none", "bf16", "fp16")
    )
    bucket_mb: float = option(25.0, "gradient bucket size in MiB", metavar="MIB")
    batchnorm_group_size: int = option(
        1,
        "ranks sharing batch-norm statistics, in groups of G consecutive ranks (1: each rank its own; the ranks "
        "per node: within nodes; the world size: all)",
        metavar="G",
    )
    bn_stats_sync: str = option(
        "epoch",
        "epoch: average the running statistics over ranks at each epoch's end, "
        "before validation and checkpoints; none: rank 0's",
        choices=("epoch", "none"),
    )
    precision: str = option("auto", PRECISION_RULE, choices=("auto", "fp32", "bf16", "fp16"), section="execution")
    device: str = option("auto", "auto: the first GPU, else the CPU", metavar="{auto,cpu,cuda,cuda:N}")
    channels_last: bool = option(True, "keep tensors in NCHW instead of channels-last")
    seed: int = option(0, "random seed for weights and data order", metavar="N")
    deterministic: bool = option(False, "use deterministic algorithms only")
    out: typing.Optional[str] = option(
        None,
        "run folder for checkpoints and metrics.jsonl",
        metavar="DIR",
        default_text="runs/NETWORK-DATE-TIME",
        section="output",
    )
    resume: typing.Optional[str] = option(
        None,
        "checkpoint (or run folder) to continue exactly where it stopped",
        metavar="CHECKPOINT",
        default_text="a new run",
    )
    checkpoint_every: int = option(0, "also write last.pt every N steps; 0: at each epoch's end only", metavar="N")
    max_steps: int = option(0, "stop with a checkpoint at this global step; 0: no limit", metavar="N")
    validate_every: int = option(1, "epochs between validations (the last epoch always validates)", metavar="N")
    progress: bool = option(True, "no progress bars (bars appear on terminals only)")
    mlperf_log: typing.Optional[str] = option(
        None,
        "write an MLPerf HPC :::MLLOG log to this file (rank 0)",
        metavar="FILE",
        default_text="none",
        section="MLPerf HPC logging",
    )
    mlperf_org: str = option("climseg", "MLPerf submission_org", metavar="NAME")
    mlperf_platform: typing.Optional[str] = option(
        None, "MLPerf submission_platform", metavar="NAME", default_text="the device's name"
    )
    mlperf_division: str = option("open", "MLPerf submission_division", choices=("open", "closed"))
    mlperf_status: str = option(
        "research", "MLPerf submission_status", choices=("cloud", "onprem", "preview", "research")
    )

    def to_dict(self):
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def read_config_file(path):
    """Options from a YAML or JSON file, as a dict of TrainConfig field names."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: configuration file not found")
    try:
        with open(path) as f:
            text = f.read()
        if path.endswith(".json"):
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise many types
        raise ConfigError(f"{path}: cannot parse ({first_line(exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    options = {}
    for key, value in raw.items():
        name = _field_name(key, path)
        if name in options:
            raise ConfigError(f"{path}: option {name.replace('_', '-')!r} is given twice (once under its old name)")
        if str(key).replace("-", "_") in RENAMED:
            warnings.warn(
                f"{path}: option {key!r} is now {name.replace('_', '-')!r}; the old name goes in a later release",
                FutureWarning,
                stacklevel=2,
            )
        options[name] = value
    return options


def _field_name(key, where):
    """The TrainConfig field of an option spelled ``key`` (dashes or underscores, old names too)."""
    name = str(key).replace("-", "_")
    name = RENAMED.get(name, name)
    if name not in FIELDS:
        raise ConfigError(f"{where}: unknown option {key!r}")
    return name


def merge(*layers):
    """A TrainConfig from dicts of overrides, later layers winning; values checked."""
    values = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if v is not None:
                values[_field_name(k, "options")] = v
    cfg = TrainConfig()
    if values.get("recipe"):
        from climseg.train.recipes import recipe_options

        for k, v in recipe_options(values["recipe"]).items():
            setattr(cfg, k, _coerce(k, v))
    for k, v in values.items():
        setattr(cfg, k, _coerce(k, v))
    validate(cfg)
    return cfg


def _coerce(name, value):
    """``value`` as the field's type. Only exact values convert: ``epochs: 1.5`` or
    ``epochs: true`` is an error, not 1; ``2.0`` is 2; strings parse as on the command line."""
    default = FIELDS[name].default
    if value is None:
        return None
    try:
        if name == "channels":
            if isinstance(value, str):
                return [c for c in value.replace(",", " ").split()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
                raise ValueError(value)
            return list(value)
        if name == "milestones":
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return [_whole(v) for v in value]
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if isinstance(default, int) or name == "workers":
            return _whole(value)
        if isinstance(default, float) or name == "adam_eps":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(value)
            return float(value)
        if isinstance(value, (dict, list, tuple, bool)):
            raise ValueError(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        kind = _KIND.get(name) or (
            "a whole number"
            if isinstance(default, int) and not isinstance(default, bool)
            else "true or false"
            if isinstance(default, bool)
            else "a number"
            if isinstance(default, float)
            else "a string"
        )
        raise ConfigError(f"option {name.replace('_', '-')}: invalid value {value!r} (expected {kind})") from None


_KIND = {
    "workers": "a whole number",
    "channels": "channel names",
    "milestones": "whole numbers",
    "adam_eps": "a number",
}


def _whole(value):
    """An int from an int, an integral float (2.0) or a string of one; bools and 1.5 are refused."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, int):
        return value
    raise ValueError(value)


def validate(cfg):
    """``cfg`` if every value is one its option takes; else a :class:`ConfigError` naming the option."""
    for name, field in FIELDS.items():
        choices, value = field.metadata["choices"], getattr(cfg, name)
        if choices and value not in choices and not (value is None and field.default is None):
            raise ConfigError(f"option {name.replace('_', '-')}: {value!r} is not one of {', '.join(choices)}")
    positive = ("epochs", "batch_size", "validate_every", "accumulate", "batchnorm_group_size")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"option {name.replace('_', '-')}: must be at least 1, got {getattr(cfg, name)}")
    for name in ("lr",):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"option {name}: must be positive, got {getattr(cfg, name)}")
    if cfg.adam_eps is not None and not cfg.adam_eps > 0:
        raise ConfigError(f"option adam-eps: must be positive, got {cfg.adam_eps}")
    if not 0 <= cfg.target_iou <= 1:
        raise ConfigError(f"option target-iou: must lie in [0, 1], got {cfg.target_iou}")
    if cfg.accumulate > 1 and cfg.gradient_lag:
        raise ConfigError("option accumulate: gradient accumulation and --gradient-lag 1 cannot be combined")
    for name in ("weight_decay", "clip_grad_norm", "warmup_steps", "checkpoint_every", "max_steps"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"option {name.replace('_', '-')}: must not be negative, got {getattr(cfg, name)}")
    if cfg.gradient_lag not in (0, 1):
        raise ConfigError(f"option gradient-lag: must be 0 or 1, got {cfg.gradient_lag}")
    if cfg.gradient_lag and cfg.precision == "fp16":
        raise ConfigError("option gradient-lag: 1 works with fp32 or bf16 precision, not fp16 loss scaling")
    if not cfg.bucket_mb > 0:
        raise ConfigError(f"option bucket-mb: must be positive, got {cfg.bucket_mb}")
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"option workers: must not be negative, got {cfg.workers}")
    if cfg.device not in ("auto", "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"option device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    return cfg
