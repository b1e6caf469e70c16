"""Other projects' checkpoints in and out, weights and normalisation together, as tables keyed by
format name.

``IMPORTERS[name](path, **options)`` reads another project's files and returns a climseg
checkpoint payload (the dict :func:`climseg.models.checkpoint.save_checkpoint` writes: ``model``
and ``data`` sections); ``EXPORTERS[name](checkpoint, out, **options)`` writes a loaded climseg
checkpoint in another layout. :func:`convert_checkpoint` (``climseg convert --from NAME SOURCE
OUT`` and ``--to NAME CHECKPOINT OUT``) and ``climseg predict FORMAT:PATH`` look them up here.
The weights' layouts are :mod:`climseg.models.layouts`; this module adds what those projects
keep beside the weights:

``climatenet``: ClimateNet's ``weights.pth`` with its ``config.json`` (found beside the weights
unless given; read by :func:`climseg.data.climatenet.read_climatenet_config`): ``fields``
{name: {mean, std}} in the order the network reads them, and ``labels``. Normalisation becomes
``zscore`` with shift = mean and scale = 1 / std, as ClimateNet's loader applies.

``mlperf-deepcam``: the MLPerf HPC DeepCAM reference's checkpoint, or a bare state_dict of its
network. The normalisation the reference trained with is not in its checkpoint: it comes from
the dataset's ``stats.h5`` (``--stats``) and the reference's min-max scaling.
"""

import os

import torch

from climseg.constants import CHANNELS, CLASS_NAMES
from climseg.data.climatenet import read_climatenet_config
from climseg.data.stats import read_stats
from climseg.errors import CheckpointError, ConfigError, MissingFileError
from climseg.models.checkpoint import load_checkpoint, save_checkpoint
from climseg.models.layouts import climatenet_model, mlperf_deepcam_model, to_reference
from climseg.output import RunLock, atomic_path, check_output_location


def import_climatenet(path, config=None):
    """A climseg checkpoint payload from ClimateNet's ``weights.pth`` and ``config.json``
    (``config``; default: ``config.json`` in the weights' folder)."""
    config = config or os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config):
        raise ConfigError(
            f"{config}: ClimateNet config.json not found (its 'fields' block gives the channels "
            f"and their mean/std); name it with --climatenet-config"
        )
    channels, mean, std, labels = read_climatenet_config(config)
    _, section = climatenet_model(path)
    if section["in_channels"] != len(channels):
        raise CheckpointError(
            f"{path}: the network reads {section['in_channels']} channels but {config} lists {len(channels)} fields"
        )
    if len(labels) != section["num_classes"]:
        raise CheckpointError(
            f"{path}: the network has {section['num_classes']} classes but {config} lists {len(labels)} labels"
        )
    data = dict(
        channels=channels,
        normalization="zscore",
        shift=torch.from_numpy(mean),
        scale=torch.from_numpy(1.0 / std),
        class_names=list(CLASS_NAMES[: len(labels)]),
        source=dict(format="climatenet", weights=os.path.abspath(path), config=os.path.abspath(config), labels=labels),
    )
    return dict(model=section, data=data)


def import_mlperf_deepcam(path, stats=None, normalization="minmax", channels=None):
    """A climseg checkpoint payload from a reference checkpoint or bare state_dict.
    ``stats``: the dataset's ``stats.h5`` (normalisation); ``channels``: channel names (default:
    the 16 in climseg's order, as the reference's ``--channels 0..15``)."""
    section, progress = mlperf_deepcam_model(path)
    in_channels = section["in_channels"]
    channels = list(channels) if channels else list(CHANNELS[:in_channels])
    if len(channels) != in_channels:
        raise CheckpointError(f"{path}: the network reads {in_channels} channels, {len(channels)} were named")
    if stats is None:
        raise CheckpointError(
            f"{path}: give the dataset's statistics (--stats stats.h5): the reference's "
            f"checkpoint does not hold its input normalisation"
        )
    table = read_stats(stats)
    index = [list(CHANNELS).index(c) for c in channels]
    shift, scale = table.normalization(normalization, index)
    return dict(
        model=section,
        data=dict(
            channels=channels,
            normalization=normalization,
            shift=torch.as_tensor(shift).reshape(-1),
            scale=torch.as_tensor(scale).reshape(-1),
            class_names=list(CLASS_NAMES)[: section["num_classes"]],
        ),
        imported=dict(format="mlperf-deepcam", source=os.path.abspath(path), **progress),
    )


def export_mlperf_deepcam(ckpt, path):
    """Write a climseg ``deepcam`` checkpoint as the reference writes its own:
    ``{"step", "epoch", "model"}`` (no optimizer state: the reference's LAMB is apex's). Every
    entry of the deepcam network must be there, in its shape: a checkpoint missing one is refused,
    not written short."""
    from climseg.models import DeepLabV3Plus

    where = ckpt.get("path", "checkpoint")
    spec = ckpt["model"]
    if not isinstance(spec, dict) or not isinstance(spec.get("state_dict"), dict):
        raise CheckpointError(f"{where}: its model section holds no state_dict")
    if spec.get("config") != "deepcam" or spec.get("norm", "batch") != "batch":
        raise CheckpointError(
            f"{where}: holds a {spec.get('config')!r} network; only the "
            f"deepcam configuration has the MLPerf reference's layout"
        )
    try:
        expected = DeepLabV3Plus(
            "deepcam", in_channels=int(spec["in_channels"]), num_classes=int(spec["num_classes"])
        ).state_dict()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: its model section does not describe a deepcam network ({exc})") from None
    state = spec["state_dict"]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected entry {unexpected[0]}"
        raise CheckpointError(f"{where}: {what} ({len(missing)} missing, {len(unexpected)} unexpected); not exported")
    for k, v in expected.items():
        if not torch.is_tensor(state[k]) or tuple(state[k].shape) != tuple(v.shape):
            shape = tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__
            raise CheckpointError(f"{where}: {k} is {shape}; the deepcam network's is {tuple(v.shape)}")
    check_finite(state, where)
    progress = (ckpt.get("train") or {}).get("progress", {})
    payload = dict(step=int(progress.get("step", 0)), epoch=int(progress.get("epoch", 0)), model=to_reference(state))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def check_finite(state, where):
    """CheckpointError naming the first floating-point entry of ``state`` that holds NaN or Inf."""
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: {k} holds NaN or Inf")


IMPORTERS = {"climatenet": import_climatenet, "mlperf-deepcam": import_mlperf_deepcam}
EXPORTERS = {"mlperf-deepcam": export_mlperf_deepcam}
#: keyword options of each importer (None or absent: not given)
OPTIONS = {"climatenet": ("config",), "mlperf-deepcam": ("stats", "normalization", "channels")}


def load_any_checkpoint(spec):
    """A climseg checkpoint (file or run folder), or another project's files named ``FORMAT:PATH``
    (imported on the fly, e.g. ``climatenet:weights.pth`` with ``config.json`` beside them)."""
    fmt, sep, path = str(spec).partition(":")
    if sep and fmt in IMPORTERS and not os.path.exists(str(spec)):
        return dict(IMPORTERS[fmt](path), path=str(spec))
    return load_checkpoint(spec)


def convert_checkpoint(source, out, from_format=None, to_format=None, **options):
    """Convert ``source`` to ``out``: ``from_format`` imports another project's weights into a climseg
    checkpoint; ``to_format`` exports a climseg checkpoint. The output is checked before the work
    (a writable place, none of the files read), locked against a second ``convert`` into it, and
    written whole or not at all. Returns a one-line description."""
    if (from_format is None) == (to_format is None):
        raise ConfigError("convert: give exactly one of --from FORMAT or --to FORMAT")
    given = sorted(k for k, v in options.items() if v is not None)
    allowed = OPTIONS.get(from_format, ()) if from_format is not None else ()
    for name in given:
        if name not in allowed:
            where = [f for f, names in OPTIONS.items() if name in names]
            flag = "--" + ("climatenet-config" if name == "config" else name.replace("_", "-"))
            raise ConfigError(
                f"convert: {flag} goes with --from {where[0]}" if where else f"convert: unknown option {name!r}"
            )
    options = {k: v for k, v in options.items() if v is not None}
    if from_format is not None and from_format not in IMPORTERS:
        raise ConfigError(f"convert: unknown format {from_format!r} for --from (choose from {', '.join(IMPORTERS)})")
    if to_format is not None and to_format not in EXPORTERS:
        raise ConfigError(
            f"convert: unknown format {to_format!r} for --to (choose from {', '.join(EXPORTERS) or 'none'})"
        )
    source, out = os.fspath(source), os.fspath(out)
    check_output_location(out, kind="file")
    reads = [source] + [os.fspath(options[k]) for k in ("config", "stats") if k in options]
    if from_format == "climatenet" and "config" not in options:
        reads.append(os.path.join(os.path.dirname(os.path.abspath(source)), "config.json"))
    for path in reads:
        if os.path.realpath(path) == os.path.realpath(out):
            raise ConfigError(f"{out}: is also a file this conversion reads ({path}); choose another output file")
    if not os.path.exists(source):
        raise MissingFileError(f"{source}: no such file")
    if os.path.isdir(source):
        raise CheckpointError(f"{source}: is a folder, not a weights file")
    if os.path.isfile(source) and os.path.getsize(source) == 0:
        raise CheckpointError(f"{source}: is empty (0 bytes; a copy cut short, e.g. on a full disk?)")
    folder, name = os.path.split(os.path.abspath(out))
    with RunLock(folder, name=f".{name}.climseg-lock"):
        if from_format is not None:
            payload = IMPORTERS[from_format](source, **options)
            check_finite(payload["model"]["state_dict"], source)
            save_checkpoint(out, payload)
            m = payload["model"]
            return (
                f"{source} ({from_format}) -> {out}: {m['config']} model, {m['in_channels']} channels "
                f"({', '.join(payload['data']['channels'])}), {m['num_classes']} classes"
            )
        EXPORTERS[to_format](load_checkpoint(source), out)
    return f"{source} -> {out} ({to_format})"
