"""Other projects' networks, weights only: their state_dict layouts mapped onto climseg's networks.

``climatenet``: ClimateNet's ``weights.pth``, a ``CGNetModule`` state_dict. Keys are renamed by
:func:`climseg.models.cgnet.climatenet_key`; every key must be consumed and every climseg key
filled, or the import fails naming the first odd key (:func:`climatenet_model`).

``mlperf-deepcam``: the MLPerf HPC DeepCAM reference (github.com/mlcommons/hpc,
``deepcam/src/deepCam``). Its network (``architecture/deeplab_xception.py``) has the same
parameters as climseg's ``deepcam`` configuration, in the same order, under other names; its
checkpoints (``train.py``) are ``{"step", "epoch", "model", "optimizer"}`` with ``model`` the
state_dict of the DDP-wrapped network: every key starts with ``module.``, every batch norm sits
in a ``GBN`` wrapper (``....bn.weight``), and since ``utils/bnstats.py`` deletes and re-registers
``running_mean`` and ``running_var`` of every batch norm, each norm's entries come as weight,
bias, num_batches_tracked, running_mean, running_var. The image-pooling branch's affine
(``TrainableAffine``) is stored as ``weights`` and ``bias`` of shape (256, 1, 1)
(:func:`to_reference`, :func:`from_reference`, :func:`mlperf_deepcam_model`).

What comes with the weights in those projects' files (ClimateNet's ``config.json``, a dataset's
``stats.h5``) is data; whole checkpoints of other projects, weights and normalisation together,
are read and written by :mod:`climseg.data.checkpoints`. ``train --init-weights FORMAT:PATH``
needs the weights only: :func:`init_weights`.
"""

import collections
import os
import re

import torch

from climseg.errors import CheckpointError, ConfigError, first_line

WEIGHT_FORMATS = ("climatenet", "mlperf-deepcam")


def read_state_dict(path):
    """A bare state_dict (names to tensors) from a PyTorch weights file; a ``{"state_dict": ...}`` wrapper
    and DDP's ``module.`` prefix are taken off. CheckpointError names the file otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle and truncation errors come in many types
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({first_line(exc, 120)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a state_dict (names to tensors)")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def climatenet_model(path):
    """A :class:`~climseg.models.CGNet` holding ClimateNet weights from ``path`` (a ``weights.pth``),
    and its ``model`` checkpoint section. Raises CheckpointError unless the weights fill the
    network exactly."""
    from climseg.models.cgnet import CGNet, from_climatenet_state

    try:
        state, shape = from_climatenet_state(read_state_dict(path))
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
    section = dict(
        config="cgnet",
        in_channels=shape["in_channels"],
        num_classes=shape["num_classes"],
        norm="batch",
        options=options,
        state_dict=model.state_dict(),
    )
    return model, section


# ----------------------------------------------------------------------------- mlperf-deepcam


# climseg module path -> reference module path (applied in order; the first match wins)
_MODULE_RULES = [
    (r"encoder\.conv(\d)$", r"xception_features.conv\1"),
    (r"encoder\.norm(\d)$", r"xception_features.bn\1.bn"),
    (r"encoder\.block(\d)\.skip$", r"xception_features.block\1.skip"),
    (r"encoder\.block(\d)\.skip_norm$", r"xception_features.block\1.skipbn.bn"),
    (r"encoder\.block(\d)\.rep\.(\d+)\.depthwise$", r"xception_features.block\1.rep.\2.conv1"),
    (r"encoder\.block(\d)\.rep\.(\d+)\.pointwise$", r"xception_features.block\1.rep.\2.pointwise"),
    (r"encoder\.block(\d)\.rep\.(\d+)$", r"xception_features.block\1.rep.\2.bn"),
    (
        r"encoder\.middle\.(\d+)\.rep\.(\d+)\.depthwise$",
        lambda m: f"xception_features.block{int(m[1]) + 4}.rep.{m[2]}.conv1",
    ),
    (
        r"encoder\.middle\.(\d+)\.rep\.(\d+)\.pointwise$",
        lambda m: f"xception_features.block{int(m[1]) + 4}.rep.{m[2]}.pointwise",
    ),
    (r"encoder\.middle\.(\d+)\.rep\.(\d+)$", lambda m: f"xception_features.block{int(m[1]) + 4}.rep.{m[2]}.bn"),
    (r"encoder\.exit_block\.skip$", "xception_features.block20.skip"),
    (r"encoder\.exit_block\.skip_norm$", "xception_features.block20.skipbn.bn"),
    (r"encoder\.exit_block\.rep\.(\d+)\.depthwise$", r"xception_features.block20.rep.\1.conv1"),
    (r"encoder\.exit_block\.rep\.(\d+)\.pointwise$", r"xception_features.block20.rep.\1.pointwise"),
    (r"encoder\.exit_block\.rep\.(\d+)$", r"xception_features.block20.rep.\1.bn"),
    (r"encoder\.exit\.(\d+)\.depthwise$", lambda m: f"xception_features.conv{3 + int(m[1]) // 3}.conv1"),
    (r"encoder\.exit\.(\d+)\.pointwise$", lambda m: f"xception_features.conv{3 + int(m[1]) // 3}.pointwise"),
    (r"encoder\.exit\.(\d+)$", lambda m: f"xception_features.bn{3 + int(m[1]) // 3}.bn"),
    (r"aspp\.conv1x1\.conv$", "bottleneck.aspp1.atrous_convolution"),
    (r"aspp\.conv1x1\.norm$", "bottleneck.aspp1.bn.bn"),
    (r"aspp\.atrous\.(\d)\.conv$", lambda m: f"bottleneck.aspp{int(m[1]) + 2}.atrous_convolution"),
    (r"aspp\.atrous\.(\d)\.norm$", lambda m: f"bottleneck.aspp{int(m[1]) + 2}.bn.bn"),
    (r"aspp\.pool\.(\d)$", r"bottleneck.global_avg_pool.global_average_pool.\1"),
    (r"aspp\.project\.conv$", "bottleneck.conv"),
    (r"aspp\.project\.norm$", "bottleneck.bn.bn"),
    (r"decoder\.low_level\.conv$", "conv2"),
    (r"decoder\.low_level\.norm$", "bn2.bn"),
    (r"decoder\.up1\.([03])$", r"upsample.deconv1.\1"),
    (r"decoder\.up1\.([14])$", r"upsample.deconv1.\1.bn"),
    (r"decoder\.fuse\.(\d)\.conv$", lambda m: f"upsample.conv1.{3 * int(m[1])}"),
    (r"decoder\.fuse\.(\d)\.norm$", lambda m: f"upsample.conv1.{3 * int(m[1]) + 1}.bn"),
    (r"decoder\.fuse\.2$", "upsample.conv1.6"),
    (r"decoder\.up2\.0$", "upsample.deconv2.0"),
    (r"decoder\.up2\.1$", "upsample.deconv2.1.bn"),
    (r"decoder\.classifier$", "upsample.last_deconv.0"),
]
_POOL_AFFINE = "aspp.pool.2"  # climseg ChannelAffine: weight, bias of shape (C,)
_BN_ORDER = ("weight", "bias", "num_batches_tracked", "running_mean", "running_var")  # after bnstats.py
PREFIX = "module."


def _reference_module(path):
    for pattern, target in _MODULE_RULES:
        m = re.fullmatch(pattern, path)
        if m:
            return target(m) if callable(target) else m.expand(target)
    raise KeyError(path)


def _reference_key(key):
    module, _, leaf = key.rpartition(".")
    if module == _POOL_AFFINE and leaf == "weight":
        leaf = "weights"
    return f"{_reference_module(module)}.{leaf}"


def to_reference(state_dict, prefix=PREFIX):
    """A climseg ``deepcam`` state_dict in the reference's layout: reference names with ``prefix``,
    each batch norm's entries in the order ``bnstats.py`` leaves them, the pooled affine (C, 1, 1)."""
    out = collections.OrderedDict()
    modules = collections.OrderedDict()
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        modules.setdefault(module, collections.OrderedDict())[leaf] = value
    for module, leaves in modules.items():
        order = _BN_ORDER if "running_mean" in leaves else tuple(leaves)
        for leaf in order:
            value = leaves[leaf].detach().clone()
            if module == _POOL_AFFINE:
                value = value.reshape(-1, 1, 1)
            out[prefix + _reference_key(f"{module}.{leaf}")] = value
    return out


def from_reference(state_dict, where, in_channels, num_classes):
    """The climseg ``deepcam`` state_dict of a reference state_dict (``module.`` prefix optional)."""
    from climseg.models import DeepLabV3Plus

    if state_dict and all(k.startswith(PREFIX) for k in state_dict):
        state_dict = {k[len(PREFIX) :]: v for k, v in state_dict.items()}
    model = DeepLabV3Plus("deepcam", in_channels=in_channels, num_classes=num_classes)
    ours = model.state_dict()
    names = {_reference_key(k): k for k in ours}
    missing = [n for n in names if n not in state_dict]
    unexpected = [k for k in state_dict if k not in names]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected entry {unexpected[0]}"
        raise CheckpointError(
            f"{where}: not an MLPerf DeepCAM state_dict ({what}; {len(missing)} missing, {len(unexpected)} unexpected)"
        )
    out = collections.OrderedDict()
    for ref_name, key in names.items():
        value = state_dict[ref_name]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {ref_name} is not a tensor")
        if key.startswith(_POOL_AFFINE + "."):
            value = value.reshape(-1)
        if value.shape != ours[key].shape:
            raise CheckpointError(
                f"{where}: {ref_name} has shape {tuple(value.shape)}, the deepcam network's is {tuple(ours[key].shape)}"
            )
        out[key] = value.to(ours[key].dtype)
    return out


def read_checkpoint_file(path):
    """Whatever ``torch.load`` finds in ``path`` (weights only); CheckpointError names the file otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many exception types from a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(exc, 120)})") from None


def mlperf_deepcam_model(path):
    """The ``model`` section of a climseg checkpoint (a ``deepcam`` network) from an MLPerf DeepCAM
    reference checkpoint or bare state_dict (with or without ``module.``), and the reference's
    ``{"step", "epoch"}`` where it has them."""
    raw = read_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not an MLPerf DeepCAM checkpoint or state_dict")
    state = raw.get("model") if isinstance(raw.get("model"), dict) else raw
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not an MLPerf DeepCAM checkpoint or state_dict")
    first = next((k for k in state if k.endswith("xception_features.conv1.weight")), None)
    last = next((k for k in state if k.endswith("upsample.last_deconv.0.weight")), None)
    if first is None or last is None:
        raise CheckpointError(
            f"{path}: not an MLPerf DeepCAM state_dict (no xception_features.conv1 / upsample.last_deconv.0 weights)"
        )
    in_channels, num_classes = state[first].shape[1], state[last].shape[1]
    section = dict(
        config="deepcam",
        in_channels=in_channels,
        num_classes=num_classes,
        norm="batch",
        state_dict=from_reference(state, path, in_channels, num_classes),
    )
    progress = {k: raw.get(k) if isinstance(raw.get(k), int) else None for k in ("step", "epoch")}
    return section, progress


def init_weights(spec, model):
    """Load ``spec`` (``FORMAT:PATH``, e.g. ``climatenet:weights.pth``) into ``model`` (the network a
    run trains); the shapes must match. Returns the imported ``model`` section."""
    fmt, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise ConfigError(f"option init-weights: expected FORMAT:PATH (e.g. climatenet:weights.pth), got {spec!r}")
    if fmt == "climatenet":
        _, section = climatenet_model(path)
    elif fmt == "mlperf-deepcam":
        section, _ = mlperf_deepcam_model(path)
    else:
        raise ConfigError(f"option init-weights: unknown format {fmt!r} (choose from {', '.join(WEIGHT_FORMATS)})")
    name = getattr(model, "config_name", type(model).__name__)
    if section["config"] != name:
        raise CheckpointError(f"{path}: holds a {section['config']} network but this run builds {name}")
    from climseg.models.checkpoint import load_model_state

    load_model_state(model, section["state_dict"], path, name)
    return section
