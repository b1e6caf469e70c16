"""Checkpoint keys of converted models: the state dict of a :func:`~climseg.nn.convert_model`
result in the original model's layout, and back.

:func:`convert_model` changes the key layout of a model in two ways: a folded batch norm becomes
an ``nn.Identity`` (its ``weight``, ``bias``, ``running_mean``, ``running_var`` and
``num_batches_tracked`` keys disappear) while its convolution gains ``scale`` and ``shift``
buffers, ``scale = weight / sqrt(var + eps)``, ``shift = bias - mean * scale``; and a replaced
third-party ASPP keeps its tensors under climseg's names (``atrous.0.conv.weight`` for
torchvision's ``convs.1.0.weight``).

Data flow: ``converted.state_dict()`` -> :func:`to_original` (a post-hook of ``state_dict``, when
``model.state_dict_layout == "original"``, the default) -> a checkpoint the plain model loads;
``converted.load_state_dict(state)`` -> :func:`from_original` (a pre-hook of ``load_state_dict``,
always) -> climseg's keys. Both layouts load; every converted module is handled independently, so
a checkpoint whose parts come from either layout loads too. The hooks edit only the keys under
the converted model's prefix, so they work when the model sits inside a wrapper
(``DistributedDataParallel``, a ``LightningModule``, ``torch.compile``).

Exactness: a folded norm's statistics are kept as loaded (or as they were when folded) and given
back unchanged as long as folding them still gives the convolution's ``scale`` and ``shift`` bit
for bit; otherwise the norm comes back as ``weight = scale``, ``bias = shift``, mean 0 and
variance ``1 - eps`` (with ``(1 - eps) + eps == 1`` exactly in float32), which folds back to the
same ``scale`` and ``shift`` bit for bit. So converted -> original -> converted is the identity
on the model's tensors, and original -> converted -> original on the state dict whenever the
folded values were not changed in between.
"""

import torch

from climseg.errors import ConfigError
from climseg.nn.aspp import ASPP
from climseg.nn.atrous import AtrousConv2d
from climseg.nn.fold import fold_values

LAYOUTS = ("original", "climseg")
NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _folded(model):
    """``(conv path, conv)`` of every convolution of ``model`` with a folded batch norm."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, AtrousConv2d) and m.scale is not None and getattr(m, "folded_norm", None)
    ]


def _renamed_asps(model):
    """``(path, {climseg name: original name})`` of every replaced third-party ASPP in ``model``."""
    return [
        (name, m.source_names)
        for name, m in model.named_modules()
        if isinstance(m, ASPP) and getattr(m, "source_names", None)
    ]


def _unit_variance(scale, eps):
    """Variances ``v`` with ``v + eps == 1`` exactly in float32 (so that folding gives ``scale``)."""
    var = torch.full_like(scale, 1.0 - eps, dtype=torch.float32)
    for _ in range(4):
        low = var + eps < 1
        high = var + eps > 1
        if not (low.any() or high.any()):
            break
        var = torch.where(low, torch.nextafter(var, torch.ones_like(var)), var)
        var = torch.where(high, torch.nextafter(var, torch.zeros_like(var)), var)
    return var.to(scale.dtype)


def norm_state(conv):
    """The original batch norm's entries (leaf -> tensor) of a convolution with a folded norm."""
    saved = dict(conv.folded_norm_state)
    eps = saved.pop("eps")
    device = conv.scale.device
    if "weight" in saved and "running_mean" in saved:
        scale, shift = fold_values(saved["running_mean"], saved["running_var"], eps, saved["weight"], saved.get("bias"))
        if torch.equal(scale.to(conv.scale), conv.scale) and torch.equal(shift.to(conv.shift), conv.shift):
            return {leaf: value.to(device) for leaf, value in saved.items()}
    return {
        "weight": conv.scale.detach().clone(),
        "bias": conv.shift.detach().clone(),
        "running_mean": torch.zeros_like(conv.scale),
        "running_var": _unit_variance(conv.scale, eps),
        "num_batches_tracked": saved.get("num_batches_tracked", torch.tensor(0)).to(device),
    }


def to_original(model, state, prefix=""):
    """Rewrite, in place, the entries of ``state`` under ``prefix`` (``model``'s own, in climseg's
    layout) into the original model's layout; entries already in it are left alone. A folded
    norm's entries follow its convolution's. Returns ``state``."""
    edits = {}  # key after which to insert -> entries
    drop = set()
    for name, conv in _folded(model):
        base = f"{prefix}{name}."
        if base + "scale" not in state:
            continue
        drop.update((base + "scale", base + "shift"))
        anchor = base + ("bias" if base + "bias" in state else "weight")
        norm = f"{prefix}{conv.folded_norm}."
        edits[anchor] = {norm + leaf: value for leaf, value in norm_state(conv).items()}
    renames = []
    for name, names in _renamed_asps(model):
        base = f"{prefix}{name}." if name else prefix
        renames += [(base + new + ".", base + old + ".") for new, old in names.items()]
    if not edits and not drop and not any(k.startswith(new) for k in state for new, _ in renames):
        return state
    entries = [(k, state.pop(k)) for k in [k for k in state if k.startswith(prefix)]]
    for key, value in entries:
        if key not in drop:
            state[_rename(key, renames)] = value
        for extra_key, extra in edits.get(key, {}).items():
            state[_rename(extra_key, renames)] = extra
    return state


def _rename(key, renames):
    for new, old in renames:
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def from_original(model, state, prefix=""):
    """Rewrite, in place, the entries of ``state`` under ``prefix`` that are in the original
    model's layout into climseg's (the inverse of :func:`to_original`): third-party ASPP names
    back to climseg's, and each folded norm's entries folded into its convolution's ``scale`` and
    ``shift`` (the norm's values are kept on the convolution, to be given back unchanged).
    Entries in climseg's layout are left alone. Returns ``state``."""
    renames = []
    for name, names in _renamed_asps(model):
        base = f"{prefix}{name}." if name else prefix
        renames += [(base + old + ".", base + new + ".") for new, old in names.items()]
    if renames:
        for key in [k for k in state if k.startswith(prefix)]:
            new_key = _rename(key, renames)
            if new_key != key and new_key not in state:
                state[new_key] = state.pop(key)
    for name, conv in _folded(model):
        base, norm = f"{prefix}{name}.", f"{prefix}{conv.folded_norm}."  # renamed above
        if base + "scale" in state or norm + "running_mean" not in state:
            continue
        values = {leaf: state.pop(norm + leaf) for leaf in NORM_KEYS if norm + leaf in state}
        if "running_var" not in values:
            raise ConfigError(f"{norm}running_mean is in the state dict without {norm}running_var")
        eps = conv.folded_norm_state["eps"]
        scale, shift = fold_values(
            values["running_mean"], values["running_var"], eps, values.get("weight"), values.get("bias")
        )
        state[base + "scale"], state[base + "shift"] = scale.to(conv.scale), shift.to(conv.shift)
        conv.folded_norm_state = {leaf: v.detach().clone() for leaf, v in values.items()} | {"eps": eps}
    return state


def _save_hook(module, state, prefix, local_metadata):
    if getattr(module, "state_dict_layout", "original") == "original":
        to_original(module, state, prefix)


def _load_hook(module, state, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    from_original(module, state, prefix)


def use_layout(model, layout="original"):
    """Give ``model`` (a :func:`~climseg.nn.convert_model` result) the state-dict layout
    ``layout``: ``"original"`` (``state_dict()`` in the original model's keys) or ``"climseg"``
    (climseg's own keys). Either way ``load_state_dict`` takes both. Sets
    ``model.state_dict_layout`` (which may be changed later) and registers the two hooks once."""
    if layout not in LAYOUTS:
        raise ConfigError(f"state_dict_layout must be 'original' or 'climseg', not {layout!r}")
    model.state_dict_layout = layout
    if not getattr(model, "_climseg_layout_hooks", False):
        model.register_state_dict_post_hook(_save_hook)
        model.register_load_state_dict_pre_hook(_load_hook)
        model._climseg_layout_hooks = True
    return model


def unfold_state_dict(model):
    """The state dict of a :func:`~climseg.nn.convert_model` result in the original layout: folded
    batch norms back as ``BatchNorm2d`` entries (their saved values while the folded scale and
    shift still equal them, else a norm with weight = scale, bias = shift, mean 0 and variance
    1 - eps), no ``scale``/``shift`` buffers, and a replaced ASPP's keys under the third-party
    names. ``original_model.load_state_dict(unfold_state_dict(converted))`` then gives the
    original model the converted one's weights. (With ``state_dict_layout="original"``, the
    default of ``convert_model``, ``converted.state_dict()`` gives the same.)"""
    for name, m in model.named_modules():
        if isinstance(m, AtrousConv2d) and m.scale is not None and getattr(m, "folded_norm", None) is None:
            raise ConfigError(f"{name}: its scale and shift do not come from a folded batch norm")
    previous = model.__dict__.get("state_dict_layout")
    model.state_dict_layout = "climseg"  # the hook, if any, leaves the keys alone for this call
    try:
        state = model.state_dict()
    finally:
        if previous is None:
            del model.state_dict_layout
        else:
            model.state_dict_layout = previous
    return to_original(model, state)


__all__ = ["LAYOUTS", "from_original", "norm_state", "to_original", "unfold_state_dict", "use_layout"]
