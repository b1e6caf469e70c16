"""Checkpoint converters between climseg and other projects' layouts (``climseg convert``).

``FORMATS`` is a table keyed by format name; each entry gives an ``import_checkpoint(path,
**options)`` returning a climseg checkpoint payload and, where the format can be written, an
``export_checkpoint(ckpt, path)``.

``mlperf-deepcam``: the MLPerf HPC DeepCAM reference (github.com/mlcommons/hpc,
``deepcam/src/deepCam``). Its network (``architecture/deeplab_xception.py``) has the same
parameters as climseg's ``deepcam`` configuration, in the same order, under other names; its
checkpoints (``train.py``) are ``{"step", "epoch", "model", "optimizer"}`` with ``model`` the
state_dict of the DDP-wrapped network: every key starts with ``module.``, every batch norm sits
in a ``GBN`` wrapper (``....bn.weight``), and since ``utils/bnstats.py`` deletes and re-registers
``running_mean`` and ``running_var`` of every batch norm, each norm's entries come as weight,
bias, num_batches_tracked, running_mean, running_var. The image-pooling branch's affine
(``TrainableAffine``) is stored as ``weights`` and ``bias`` of shape (256, 1, 1).

Import takes such a checkpoint, or a bare state_dict of the network (with or without
``module.``); anything else is refused (:class:`~climseg.errors.CheckpointError`). The
normalisation the reference trained with is not in its checkpoint: it comes from the dataset's
``stats.h5`` (``--stats``) and the reference's min-max scaling.
"""
import collections
import os
import re

import torch

from climseg.errors import CheckpointError

# climseg module path -> reference module path (applied in order; the first match wins)
_MODULE_RULES = [
    (r"encoder\.conv(\d)$", r"xception_features.conv\1"),
    (r"encoder\.norm(\d)$", r"xception_features.bn\1.bn"),
    (r"encoder\.block(\d)\.skip$", r"xception_features.block\1.skip"),
    (r"encoder\.block(\d)\.skip_norm$", r"xception_features.block\1.skipbn.bn"),
    (r"encoder\.block(\d)\.rep\.(\d+)\.depthwise$", r"xception_features.block\1.rep.\2.conv1"),
    (r"encoder\.block(\d)\.rep\.(\d+)\.pointwise$", r"xception_features.block\1.rep.\2.pointwise"),
    (r"encoder\.block(\d)\.rep\.(\d+)$", r"xception_features.block\1.rep.\2.bn"),
    (r"encoder\.middle\.(\d+)\.rep\.(\d+)\.depthwise$", lambda m: f"xception_features.block{int(m[1]) + 4}.rep.{m[2]}.conv1"),
    (r"encoder\.middle\.(\d+)\.rep\.(\d+)\.pointwise$", lambda m: f"xception_features.block{int(m[1]) + 4}.rep.{m[2]}.pointwise"),
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
_POOL_AFFINE = "aspp.pool.2"                 # climseg ChannelAffine: weight, bias of shape (C,)
_BN_ORDER = ("weight", "bias", "num_batches_tracked", "running_mean", "running_var")   # after bnstats.py
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
        state_dict = {k[len(PREFIX):]: v for k, v in state_dict.items()}
    model = DeepLabV3Plus("deepcam", in_channels=in_channels, num_classes=num_classes)
    ours = model.state_dict()
    names = {_reference_key(k): k for k in ours}
    missing = [n for n in names if n not in state_dict]
    unexpected = [k for k in state_dict if k not in names]
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unexpected entry {unexpected[0]}"
        raise CheckpointError(f"{where}: not an MLPerf DeepCAM state_dict ({what}; "
                              f"{len(missing)} missing, {len(unexpected)} unexpected)")
    out = collections.OrderedDict()
    for ref_name, key in names.items():
        value = state_dict[ref_name]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {ref_name} is not a tensor")
        if key.startswith(_POOL_AFFINE + "."):
            value = value.reshape(-1)
        if value.shape != ours[key].shape:
            raise CheckpointError(f"{where}: {ref_name} has shape {tuple(value.shape)}, the deepcam network's is "
                                  f"{tuple(ours[key].shape)}")
        out[key] = value.to(ours[key].dtype)
    return out


def _read(path):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many exception types from a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:120]})") from None


def import_mlperf_deepcam(path, stats=None, normalization="minmax", channels=None):
    """A climseg checkpoint payload (weights only) from a reference checkpoint or bare state_dict.
    ``stats``: the dataset's ``stats.h5`` (normalisation); ``channels``: channel names (default:
    the 16 in climseg's order, as the reference's ``--channels 0..15``)."""
    from climseg.constants import CHANNELS, CLASS_NAMES
    from climseg.data import read_stats

    raw = _read(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not an MLPerf DeepCAM checkpoint or state_dict")
    state = raw.get("model") if isinstance(raw.get("model"), dict) else raw
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not an MLPerf DeepCAM checkpoint or state_dict")
    first = next((k for k in state if k.endswith("xception_features.conv1.weight")), None)
    last = next((k for k in state if k.endswith("upsample.last_deconv.0.weight")), None)
    if first is None or last is None:
        raise CheckpointError(f"{path}: not an MLPerf DeepCAM state_dict (no xception_features.conv1 / "
                              f"upsample.last_deconv.0 weights)")
    in_channels, num_classes = state[first].shape[1], state[last].shape[1]
    channels = list(channels) if channels else list(CHANNELS[:in_channels])
    if len(channels) != in_channels:
        raise CheckpointError(f"{path}: the network reads {in_channels} channels, {len(channels)} were named")
    if stats is None:
        raise CheckpointError(f"{path}: give the dataset's statistics (--stats stats.h5): the reference's "
                              f"checkpoint does not hold its input normalisation")
    table = read_stats(stats)
    index = [list(CHANNELS).index(c) for c in channels]
    shift, scale = table.normalization(normalization, index)
    state_dict = from_reference(state, path, in_channels, num_classes)
    step = raw.get("step") if isinstance(raw.get("step"), int) else None
    return dict(
        model=dict(config="deepcam", in_channels=in_channels, num_classes=num_classes, norm="batch",
                   state_dict=state_dict),
        data=dict(channels=channels, normalization=normalization, shift=torch.as_tensor(shift).reshape(-1),
                  scale=torch.as_tensor(scale).reshape(-1), class_names=list(CLASS_NAMES)[:num_classes]),
        imported=dict(format="mlperf-deepcam", source=os.path.abspath(path), step=step,
                      epoch=raw.get("epoch") if isinstance(raw.get("epoch"), int) else None),
    )


def export_mlperf_deepcam(ckpt, path):
    """Write a climseg ``deepcam`` checkpoint as the reference writes its own:
    ``{"step", "epoch", "model"}`` (no optimizer state: the reference's LAMB is apex's)."""
    from climseg.io import atomic_path

    spec = ckpt["model"]
    if spec["config"] != "deepcam" or spec.get("norm", "batch") != "batch":
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: holds a {spec['config']!r} network; only the "
                              f"deepcam configuration has the MLPerf reference's layout")
    progress = (ckpt.get("train") or {}).get("progress", {})
    payload = dict(step=int(progress.get("step", 0)), epoch=int(progress.get("epoch", 0)),
                   model=to_reference(spec["state_dict"]))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


FORMATS = {
    "mlperf-deepcam": dict(import_checkpoint=import_mlperf_deepcam, export_checkpoint=export_mlperf_deepcam,
                           description="MLPerf HPC DeepCAM reference (mlcommons/hpc deepcam)"),
}
