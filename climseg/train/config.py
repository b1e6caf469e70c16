"""Training options: one dataclass, filled from defaults < a YAML/JSON file <
a resumed checkpoint's options < the command line.

Every field is documented here and in the README's reference table; the
command line spells them with dashes (``--batch-size``), files with either
dashes or underscores.
"""
import dataclasses
import json
import os
import typing

from climseg.errors import ConfigError, first_line


@dataclasses.dataclass
class TrainConfig:
    # data
    data: typing.Optional[str] = None          # folder with train/, validation/, stats.h5; None: the cached synthetic set
    channels: typing.Optional[typing.List[str]] = None  # channel names; None: all 16
    normalization: str = "minmax"              # minmax | zscore
    loader: str = "fast"                       # fast (FastLoader, C++ reader) | torch (DataLoader over DeepCAMDataset)
    workers: typing.Optional[int] = None       # reader threads (fast) or DataLoader processes (torch); None: automatic
    on_bad_sample: str = "error"               # error | skip (fast loader)
    # model
    config: str = "tiny"                       # kurth2018 | deepcam | tiny | cgnet (ClimateNet's CGNet)
    norm: str = "batch"                        # batch | none
    # optimisation
    epochs: int = 6
    batch_size: int = 8
    optimizer: str = "adamw"                   # adam | adamw | lamb | larc-adam
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"                # cosine | multistep | constant
    warmup_steps: int = 30
    milestones: typing.List[int] = dataclasses.field(default_factory=list)  # multistep: steps where lr *= lr_decay
    lr_decay: float = 0.1
    clip_grad_norm: float = 0.0                # 0: no clipping
    adam_eps: typing.Optional[float] = None    # epsilon of the Adam-type optimizers; None: theirs (Adam 1e-8, LAMB 1e-6)
    accumulate: int = 1                        # micro-batches whose gradients make one optimizer step
    recipe: typing.Optional[str] = None        # mlperf-deepcam | sc18-kurth2018: a hyperparameter set beneath the options
    target_iou: float = 0.0                    # stop when the validation DeepCAM IoU reaches this (0: train all epochs)
    loss_weights: str = "deepcam"              # kurth2018 | deepcam | uniform
    loss: str = "ce"                           # ce (weighted cross-entropy) | jaccard (ClimateNet's soft IoU) | ce+jaccard
    init_weights: typing.Optional[str] = None  # FORMAT:PATH of starting weights, e.g. climatenet:weights.pth
    # data parallelism (under mpirun, srun, jsrun or torchrun)
    gradient_lag: int = 0                      # 1: apply each step's averaged gradient one step later
    allreduce: str = "auto"                    # auto (hierarchical on several nodes) | hierarchical | flat
    compression: str = "none"                  # none | bf16 | fp16 gradients on the wire
    bucket_mb: float = 25.0                    # gradient bucket size
    class_frequencies: str = "dataset"         # dataset (stats.h5) | deepcam (the CAM5 figures)
    batchnorm_group_size: int = 1              # ranks sharing batch-norm statistics (consecutive ranks)
    bn_stats_sync: str = "epoch"               # epoch (average running statistics over ranks) | none
    # execution
    precision: str = "auto"                    # auto | fp32 | bf16 | fp16
    device: str = "auto"                       # auto | cpu | cuda | cuda:N
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    # output
    out: typing.Optional[str] = None           # run folder; None: runs/<config>-<date>-<time>
    resume: typing.Optional[str] = None        # checkpoint (or run folder) to continue from
    checkpoint_every: int = 0                  # also checkpoint every N steps (0: at each epoch's end only)
    max_steps: int = 0                         # stop (with a checkpoint) at this global step; 0: no limit
    validate_every: int = 1                    # epochs between validations (the last epoch always validates)
    progress: bool = True                      # progress bars
    # MLPerf HPC logging (climseg.train.mlperf_log)
    mlperf_log: typing.Optional[str] = None    # :::MLLOG file written by rank 0; None: no MLPerf log
    mlperf_org: str = "climseg"                # submission_org
    mlperf_platform: typing.Optional[str] = None  # submission_platform; None: the device's name
    mlperf_division: str = "open"              # open | closed
    mlperf_status: str = "research"            # cloud | onprem | preview | research

    def to_dict(self):
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
CHOICES = {
    "normalization": ("minmax", "zscore"),
    "loader": ("fast", "torch"),
    "on_bad_sample": ("error", "skip"),
    "config": ("kurth2018", "deepcam", "tiny", "cgnet"),
    "norm": ("batch", "none"),
    "optimizer": ("adam", "adamw", "lamb", "larc-adam"),
    "allreduce": ("auto", "hierarchical", "flat"),
    "compression": ("none", "bf16", "fp16"),
    "lr_schedule": ("cosine", "multistep", "constant"),
    "loss_weights": ("kurth2018", "deepcam", "uniform"),
    "loss": ("ce", "jaccard", "ce+jaccard"),
    "class_frequencies": ("dataset", "deepcam"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "bn_stats_sync": ("epoch", "none"),
    "mlperf_division": ("open", "closed"),
    "mlperf_status": ("cloud", "onprem", "preview", "research"),
}


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
    return {_field_name(k, path): v for k, v in raw.items()}


def _field_name(key, where):
    name = str(key).replace("-", "_")
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
        kind = _KIND.get(name) or ("a whole number" if isinstance(default, int) and not isinstance(default, bool)
                                   else "true or false" if isinstance(default, bool)
                                   else "a number" if isinstance(default, float) else "a string")
        raise ConfigError(f"option {name.replace('_', '-')}: invalid value {value!r} (expected {kind})") from None


_KIND = {"workers": "a whole number", "channels": "channel names", "milestones": "whole numbers", "adam_eps": "a number"}


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
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"option {name.replace('_', '-')}: {getattr(cfg, name)!r} is not one of {', '.join(choices)}")
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
