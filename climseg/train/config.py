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

from climseg.errors import ConfigError


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
    loss_weights: str = "deepcam"              # kurth2018 | deepcam | uniform
    loss: str = "ce"                           # ce (weighted cross-entropy) | jaccard (ClimateNet's soft IoU) | ce+jaccard
    init_weights: typing.Optional[str] = None  # FORMAT:PATH of starting weights, e.g. climatenet:weights.pth
    # data parallelism (under mpirun, srun, jsrun or torchrun)
    gradient_lag: int = 0                      # 1: apply each step's averaged gradient one step later
    allreduce: str = "auto"                    # auto (hierarchical on several nodes) | hierarchical | flat
    compression: str = "none"                  # none | bf16 | fp16 gradients on the wire
    bucket_mb: float = 25.0                    # gradient bucket size
    class_frequencies: str = "dataset"         # dataset (stats.h5) | deepcam (the CAM5 figures)
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
        raise ConfigError(f"{path}: cannot parse ({str(exc).splitlines()[0]})") from None
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
    for k, v in values.items():
        setattr(cfg, k, _coerce(k, v))
    validate(cfg)
    return cfg


def _coerce(name, value):
    default = FIELDS[name].default
    if value is None:
        return None
    try:
        if name == "channels":
            return [c for c in value.replace(",", " ").split()] if isinstance(value, str) else list(value)
        if name == "milestones":
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return [int(v) for v in value]
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int) or name == "workers":
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name.replace('_', '-')}: invalid value {value!r}") from None


def validate(cfg):
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"option {name.replace('_', '-')}: {getattr(cfg, name)!r} is not one of {', '.join(choices)}")
    positive = ("epochs", "batch_size", "validate_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"option {name.replace('_', '-')}: must be at least 1, got {getattr(cfg, name)}")
    for name in ("lr",):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"option {name}: must be positive, got {getattr(cfg, name)}")
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
