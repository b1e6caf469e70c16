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
from climseg.errors import CheckpointError, ConfigError
from climseg.models.checkpoint import load_checkpoint, save_checkpoint
from climseg.models.layouts import climatenet_model, mlperf_deepcam_model, to_reference
from climseg.output import atomic_path, check_output_location


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
    ``{"step", "epoch", "model"}`` (no optimizer state: the reference's LAMB is apex's)."""
    spec = ckpt["model"]
    if spec["config"] != "deepcam" or spec.get("norm", "batch") != "batch":
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: holds a {spec['config']!r} network; only the "
            f"deepcam configuration has the MLPerf reference's layout"
        )
    progress = (ckpt.get("train") or {}).get("progress", {})
    payload = dict(
        step=int(progress.get("step", 0)), epoch=int(progress.get("epoch", 0)), model=to_reference(spec["state_dict"])
    )
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


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
    checkpoint; ``to_format`` exports a climseg checkpoint. Returns a one-line description."""
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
    check_output_location(out, kind="file")
    if from_format is not None:
        if from_format not in IMPORTERS:
            raise ConfigError(
                f"convert: unknown format {from_format!r} for --from (choose from {', '.join(IMPORTERS)})"
            )
        payload = IMPORTERS[from_format](source, **options)
        save_checkpoint(out, payload)
        m = payload["model"]
        return (
            f"{source} ({from_format}) -> {out}: {m['config']} model, {m['in_channels']} channels "
            f"({', '.join(payload['data']['channels'])}), {m['num_classes']} classes"
        )
    if to_format not in EXPORTERS:
        raise ConfigError(
            f"convert: unknown format {to_format!r} for --to (choose from {', '.join(EXPORTERS) or 'none'})"
        )
    EXPORTERS[to_format](load_checkpoint(source), out)
    return f"{source} -> {out} ({to_format})"
