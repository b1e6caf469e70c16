"""Checkpoint converters between climseg and other projects' layouts, as tables keyed by format name.

``IMPORTERS[name](path, **options)`` reads another project's weights and returns a climseg
checkpoint payload (the dict :func:`climseg.train.checkpoint.save_checkpoint` writes: ``model``
and ``data`` sections); ``EXPORTERS[name](checkpoint, out, **options)`` writes a loaded climseg
checkpoint in another layout. ``climseg convert --from NAME SOURCE OUT`` and
``--to NAME CHECKPOINT OUT`` look them up here; ``--init-weights NAME:PATH`` of train and predict
uses the importer's ``model`` section.

``climatenet``: ClimateNet's ``weights.pth`` (a ``CGNetModule`` state_dict) with its
``config.json`` (found beside the weights unless given): ``fields`` {name: {mean, std}} in the
order the network reads them, and ``labels``. Keys are renamed by
:func:`climseg.models.cgnet.climatenet_key`; every key must be consumed and every climseg key
filled, or the import fails naming the first odd key. Normalisation becomes ``zscore`` with
shift = mean and scale = 1 / std, as ClimateNet's loader applies.
"""
import json
import os

import numpy as np
import torch

from climseg.constants import CHANNELS, CLASS_NAMES
from climseg.errors import CheckpointError, ConfigError


def read_climatenet_config(path):
    """``(channels, mean, std, labels)`` from a ClimateNet ``config.json``."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ClimateNet config ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    fields = raw.get("fields") if isinstance(raw, dict) else None
    if not isinstance(fields, dict) or not fields:
        raise ConfigError(f"{path}: no 'fields' block of {{variable: {{mean, std}}}} (ClimateNet config.json)")
    channels, mean, std = [], [], []
    for name, stats in fields.items():
        if name not in CHANNELS:
            raise ConfigError(f"{path}: field {name!r} is not one of climseg's channels ({', '.join(CHANNELS)})")
        try:
            m, s = float(stats["mean"]), float(stats["std"])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"{path}: field {name!r} needs numeric 'mean' and 'std'") from None
        if not (np.isfinite(m) and np.isfinite(s) and s > 0):
            raise ConfigError(f"{path}: field {name!r} has mean {m} and std {s}; std must be positive and finite")
        channels.append(name)
        mean.append(m)
        std.append(s)
    labels = raw.get("labels", list(CLASS_NAMES))
    return channels, np.array(mean, np.float32), np.array(std, np.float32), list(labels)


def _load_state_dict(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and truncation errors come in many types
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({str(exc).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (names to tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def climatenet_model(path):
    """A :class:`~climseg.models.CGNet` holding ClimateNet weights from ``path`` (a ``weights.pth``),
    and its ``model`` checkpoint section. Raises CheckpointError unless the weights fill the
    network exactly."""
    from climseg.models.cgnet import CGNet, from_climatenet_state

    try:
        state, shape = from_climatenet_state(_load_state_dict(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = CGNet(**shape)
    mine = model.state_dict()
    unused = [k for k in state if k not in mine]
    missing = [k for k in mine if k not in state]
    if unused or missing:
        what = f"unmapped key {unused[0]!r}" if unused else f"no weights for {missing[0]!r}"
        raise CheckpointError(f"{path}: does not fit ClimateNet's CGNetModule ({what})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(mine[k].shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, CGNet expects {tuple(mine[k].shape)}")
    model.load_state_dict(state)
    options = {k: shape[k] for k in ("blocks_stage2", "blocks_stage3", "dropout")}
    section = dict(config="cgnet", in_channels=shape["in_channels"], num_classes=shape["num_classes"], norm="batch",
                   options=options, state_dict=model.state_dict())
    return model, section


def import_climatenet(path, config=None):
    """A climseg checkpoint payload from ClimateNet's ``weights.pth`` and ``config.json``
    (``config``; default: ``config.json`` in the weights' folder)."""
    config = config or os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config):
        raise ConfigError(f"{config}: ClimateNet config.json not found (its 'fields' block gives the channels "
                          f"and their mean/std); name it with --climatenet-config")
    channels, mean, std, labels = read_climatenet_config(config)
    _, section = climatenet_model(path)
    if section["in_channels"] != len(channels):
        raise CheckpointError(f"{path}: the network reads {section['in_channels']} channels but {config} lists "
                              f"{len(channels)} fields")
    if len(labels) != section["num_classes"]:
        raise CheckpointError(f"{path}: the network has {section['num_classes']} classes but {config} lists "
                              f"{len(labels)} labels")
    data = dict(channels=channels, normalization="zscore", shift=torch.from_numpy(mean),
                scale=torch.from_numpy(1.0 / std), class_names=list(CLASS_NAMES[:len(labels)]),
                source=dict(format="climatenet", weights=os.path.abspath(path), config=os.path.abspath(config),
                            labels=labels))
    return dict(model=section, data=data)


IMPORTERS = {"climatenet": import_climatenet}
EXPORTERS = {}


def convert(source, out, from_format=None, to_format=None, **options):
    """Convert ``source`` to ``out``: ``from_format`` imports another project's weights into a climseg
    checkpoint; ``to_format`` exports a climseg checkpoint. Returns a one-line description."""
    from climseg.train.checkpoint import load_checkpoint, save_checkpoint

    if (from_format is None) == (to_format is None):
        raise ConfigError("convert: give exactly one of --from FORMAT or --to FORMAT")
    if from_format is not None:
        if from_format not in IMPORTERS:
            raise ConfigError(f"convert: unknown --from format {from_format!r} (choose from {', '.join(IMPORTERS)})")
        payload = IMPORTERS[from_format](source, **options)
        save_checkpoint(out, payload)
        m = payload["model"]
        return (f"{source} ({from_format}) -> {out}: {m['config']} model, {m['in_channels']} channels "
                f"({', '.join(payload['data']['channels'])}), {m['num_classes']} classes")
    if to_format not in EXPORTERS:
        raise ConfigError(f"convert: unknown --to format {to_format!r} (choose from {', '.join(EXPORTERS) or 'none'})")
    EXPORTERS[to_format](load_checkpoint(source), out, **options)
    return f"{source} -> {out} ({to_format})"


def init_weights(spec, model):
    """Load ``spec`` (``FORMAT:PATH``, e.g. ``climatenet:weights.pth``) into ``model`` (the network a
    run trains); the shapes must match. Returns the imported ``model`` section."""
    fmt, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise ConfigError(f"option init-weights: expected FORMAT:PATH (e.g. climatenet:weights.pth), got {spec!r}")
    if fmt == "climatenet":
        _, section = climatenet_model(path)
    elif fmt in IMPORTERS:
        section = IMPORTERS[fmt](path)["model"]
    else:
        raise ConfigError(f"option init-weights: unknown format {fmt!r} (choose from {', '.join(IMPORTERS)})")
    name = getattr(model, "config_name", type(model).__name__)
    if section["config"] != name:
        raise CheckpointError(f"{path}: holds a {section['config']} network but this run builds {name}")
    from climseg.train.checkpoint import load_model_state

    load_model_state(model, section["state_dict"], path, name)
    return section
