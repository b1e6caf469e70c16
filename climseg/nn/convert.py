"""``convert_model``: put climseg's fused modules into someone else's model, and
``unfold_state_dict``: take the weights back out in the original layout.

What ``convert_model`` does, in order:

1. ``fuse_aspp=True``: every ASPP shaped like torchvision's
   (``torchvision.models.segmentation.deeplabv3.ASPP``) or segmentation-models-pytorch's
   (``decoders/deeplabv3/decoder.py``) -- a ``convs`` ModuleList of a 1x1 conv-BN-ReLU, one
   dilated 3x3 conv-BN-ReLU per rate and an image-pooling branch, then a ``project``
   1x1 conv-BN-ReLU(-Dropout) -- becomes a :class:`climseg.nn.ASPP` holding the same
   parameter tensors (the same outputs in train and eval mode; the four convolution
   branches run as one launch on GPUs). Recognised by structure, not by class name.
2. Every ``nn.Conv2d`` (or only the dilated ones) becomes an :class:`climseg.nn.AtrousConv2d`
   sharing its parameters; ``backend`` is set on every climseg module (convolutions and ASPPs).
3. ``fold_bn=True`` (eval mode): every ``BatchNorm2d`` whose input is a convolution's output
   and nothing else uses that output, in the data flow that ``torch.fx`` traces, folds into the
   convolution's epilogue (with a ReLU module that only it feeds); the norm (and the ReLU)
   become ``nn.Identity``. Where a module does not trace (Python control flow on tensor
   values or shapes), its children are traced one by one, and among the children of the
   untraceable module the structural rule applies: a norm that is the next module after a
   convolution in an ``nn.Sequential``, or the norm of a climseg ``ConvNormAct``.

The result carries ``conversion_report`` (a :class:`ConversionReport`: what was folded,
what was not and why, which ASPPs were replaced), also logged on the ``climseg.nn.convert``
logger. Its state dict keeps the original model's key layout by default (plain ``nn.Conv2d``
and ``BatchNorm2d`` keys, the third-party ASPP's key names: state-dict hooks of
:mod:`climseg.nn.state_layout`), and it loads state dicts of either layout, so checkpoints move
freely between the converted and the plain model; ``state_dict_layout="climseg"`` keeps
climseg's keys. :func:`unfold_state_dict` returns the original layout explicitly.
"""

import collections
import copy
import dataclasses
import logging

import torch
import torch.fx
import torch.nn as nn

from climseg.errors import ConfigError
from climseg.nn.aspp import ASPP
from climseg.nn.atrous import AtrousConv2d
from climseg.nn.fold import fold_batchnorm, is_foldable_batchnorm
from climseg.nn.layers import ConvNormAct
from climseg.nn.state_layout import unfold_state_dict, use_layout

__all__ = ["ConversionReport", "convert_model", "unfold_state_dict"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert_model` did. Names are module paths in the converted model."""

    convs: int = 0  # convolutions running on climseg.ops
    norms: int = 0  # BatchNorm2d before folding
    folded: list = dataclasses.field(default_factory=list)  # (conv, norm, relu or None)
    not_folded: list = dataclasses.field(default_factory=list)  # (norm, reason)
    aspp_replaced: list = dataclasses.field(default_factory=list)  # module paths
    aspp_not_replaced: list = dataclasses.field(default_factory=list)  # (path, reason)
    traced: list = dataclasses.field(default_factory=list)  # modules traced whole by torch.fx
    untraced: list = dataclasses.field(default_factory=list)  # (module, why torch.fx could not)

    def summary(self):
        """One line: ``"18 convolutions on climseg.ops; folded 59 of 60 batch norms; ..."``."""
        parts = [f"{self.convs} convolutions on climseg.ops"]
        if self.folded or self.not_folded:
            parts.append(f"folded {len(self.folded)} of {self.norms} batch norms")
        if self.aspp_replaced or self.aspp_not_replaced:
            parts.append(
                f"replaced {len(self.aspp_replaced)} of "
                f"{len(self.aspp_replaced) + len(self.aspp_not_replaced)} ASPP modules"
            )
        return "; ".join(parts)


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _set(root, path, module):
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


# ---------------------------------------------------------------------------------------------
# third-party ASPP -> climseg.nn.ASPP
# ---------------------------------------------------------------------------------------------
def _conv_bn_relu(seq, kernel, dilation=1, pooled=False):
    """The (conv, norm, relu) of ``seq`` if it is [AdaptiveAvgPool2d(1)], Conv2d(kernel, dilation,
    padding keeping the size), BatchNorm2d, ReLU; else a reason."""
    mods = list(seq.children()) if isinstance(seq, nn.Sequential) else []
    if pooled:
        if not mods or not isinstance(mods[0], nn.AdaptiveAvgPool2d) or mods[0].output_size not in (1, (1, 1)):
            return "the image-pooling branch does not start with AdaptiveAvgPool2d(1)"
        mods = mods[1:]
    if (
        len(mods) != 3
        or type(mods[0]) not in (nn.Conv2d, AtrousConv2d)
        or not isinstance(mods[1], nn.BatchNorm2d)
        or not isinstance(mods[2], nn.ReLU)
    ):
        kinds = ", ".join(type(m).__name__ for m in mods)
        return f"a branch is [{kinds}], not Conv2d, BatchNorm2d, ReLU (separable convolutions are not fused)"
    conv = mods[0]
    if (
        conv.kernel_size != (kernel, kernel)
        or conv.stride != (1, 1)
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or conv.dilation != (dilation, dilation)
        or conv.padding != (dilation * (kernel - 1) // 2,) * 2
    ):
        return f"a branch convolution is {conv} (expected {kernel}x{kernel}, dilation {dilation}, same size)"
    if isinstance(conv, AtrousConv2d) and (conv.scale is not None or conv.activation is not None):
        return "a branch convolution already has a fused epilogue"
    return mods


def _third_party_aspp(module):
    """A :class:`climseg.nn.ASPP` with ``module``'s parameters if ``module`` has the structure of
    torchvision's / smp's ASPP, else ``(None, reason)``; ``(None, None)`` when it is no ASPP at all."""
    convs, project = getattr(module, "convs", None), getattr(module, "project", None)
    if isinstance(module, ASPP) or not isinstance(convs, nn.ModuleList) or not isinstance(project, nn.Sequential):
        return None, None
    if len(convs) < 3:
        return None, f"{len(convs)} branches (expected a 1x1, dilated 3x3 ones and image pooling)"
    first = _conv_bn_relu(convs[0], 1)
    if isinstance(first, str):
        return None, first
    in_channels, out_channels = first[0].in_channels, first[0].out_channels
    atrous, rates = [], []
    for branch in list(convs)[1:-1]:
        seq = list(branch.children()) if isinstance(branch, nn.Sequential) else []
        rate = seq[0].dilation[0] if seq and isinstance(seq[0], nn.Conv2d) else 1
        found = _conv_bn_relu(branch, 3, rate)
        if isinstance(found, str):
            return None, found
        atrous.append(found)
        rates.append(rate)
    pool = _conv_bn_relu(convs[-1], 1, pooled=True)
    if isinstance(pool, str):
        return None, pool
    proj = list(project.children())
    dropout = proj[3] if len(proj) == 4 and isinstance(proj[3], nn.Dropout) else None
    if len(proj) not in (3, 4) or (len(proj) == 4 and dropout is None):
        return None, "project is not Conv2d, BatchNorm2d, ReLU[, Dropout]"
    proj_found = _conv_bn_relu(nn.Sequential(*proj[:3]), 1)
    if isinstance(proj_found, str):
        return None, "project: " + proj_found
    if proj_found[0].in_channels != out_channels * len(convs) or proj_found[0].out_channels != out_channels:
        return None, f"project maps {proj_found[0].in_channels} channels, the branches give {out_channels * len(convs)}"
    for conv, *_ in atrous + [pool, proj_found]:
        if conv.out_channels != out_channels or (conv is not proj_found[0] and conv.in_channels != in_channels):
            return None, "the branches differ in their channel counts"
    with torch.device("meta"):
        new = ASPP(in_channels, out_channels, rates, norm="batch", dropout=0.5 if dropout is not None else 0.0)
    if dropout is not None:
        new.dropout = dropout
    for target, (conv, norm, relu) in zip(
        [new.conv1x1] + list(new.atrous) + [new.project], [first] + atrous + [proj_found]
    ):
        target.conv = conv if isinstance(conv, AtrousConv2d) else AtrousConv2d.from_conv(conv)
        target.norm, target.act = norm, relu
    new.pool = nn.Sequential(list(convs[-1].children())[0], *pool)
    new.train(module.training)
    if any(t.is_meta for t in list(new.parameters()) + list(new.buffers())):
        return None, "a parameter was left on the meta device (unexpected structure)"
    n = len(convs)
    # climseg name -> the third-party name (for unfold_state_dict)
    new.source_names = {
        "conv1x1.conv": "convs.0.0",
        "conv1x1.norm": "convs.0.1",
        **{f"atrous.{i}.conv": f"convs.{i + 1}.0" for i in range(n - 2)},
        **{f"atrous.{i}.norm": f"convs.{i + 1}.1" for i in range(n - 2)},
        "pool.1": f"convs.{n - 1}.1",
        "pool.2": f"convs.{n - 1}.2",
        "project.conv": "project.0",
        "project.norm": "project.1",
    }
    return new, None


# ---------------------------------------------------------------------------------------------
# folding
# ---------------------------------------------------------------------------------------------
class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with climseg's convolutions and ASPPs as leaves (they pick a backend
    from the tensor at run time, which a symbolic trace cannot)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (AtrousConv2d, ASPP)) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        # A module built inside forward (``nn.Sequential(self.conv1, self.bn1)``, ``nn.Identity()``)
        # is not in the model's tree; with no parameters or buffers of its own, trace through it.
        try:
            self.path_of_module(m)
        except NameError:
            if next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None:
                return forward(*args, **kwargs)
            raise
        return super().call_module(m, forward, args, kwargs)


class _Folder:
    def __init__(self, model, backend, report):
        self.model, self.backend, self.report = model, backend, report
        self.reasons = {}

    def fold(self, conv_path, norm_path, act_path):
        """Fold the norm at ``norm_path`` (and the ReLU at ``act_path``) into the conv; paths are
        from the model's root."""
        conv, norm = self.model.get_submodule(conv_path), self.model.get_submodule(norm_path)
        if type(conv) is nn.Conv2d:  # left out by dilated_only: it needs the epilogue now
            conv = AtrousConv2d.from_conv(conv, backend=self.backend)
            _set(self.model, conv_path, conv)
            self.report.convs += 1
        conv.fuse_affine(*fold_batchnorm(norm), "relu" if act_path else None)
        conv.folded_norm = norm_path
        conv.folded_norm_state = {k: v.detach().clone() for k, v in norm.state_dict().items()}
        conv.folded_norm_state["eps"] = norm.eps
        _set(self.model, norm_path, nn.Identity())
        if act_path:
            _set(self.model, act_path, nn.Identity())
        self.report.folded.append((conv_path, norm_path, act_path))

    def why_not(self, conv, norm, conv_path):
        if not isinstance(conv, nn.Conv2d) or type(conv) not in (nn.Conv2d, AtrousConv2d):
            return f"follows {conv_path} (a {type(conv).__name__}), not a convolution"
        if isinstance(conv, AtrousConv2d) and (conv.scale is not None or conv.activation is not None):
            return "its convolution already has a fused epilogue"
        if not is_foldable_batchnorm(norm):
            return "no running statistics (track_running_stats=False)"
        if norm.num_features != conv.out_channels:
            return f"{norm.num_features} channels after a convolution with {conv.out_channels}"
        return ""

    # -- torch.fx ------------------------------------------------------------------------------
    def traced(self, root, prefix):
        if isinstance(root, ASPP):  # picks its path at run time; its structure is known
            for sub, inner in root.named_modules():
                self.structural(inner, _join(prefix, sub))
            return
        try:
            graph = _Tracer().trace(root)
        except Exception as exc:  # any Python the tracer cannot follow: fall back below
            self.report.untraced.append(
                (prefix or "(model)", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}")
            )
            self.structural(root, prefix)
            for name, child in root.named_children():
                if any(True for _ in child.children()):
                    self.traced(child, _join(prefix, name))
            return
        self.report.traced.append(prefix or "(model)")
        calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
        for node in list(graph.nodes):
            if node.op != "call_module" or not isinstance(root.get_submodule(node.target), nn.BatchNorm2d):
                continue
            norm_path = _join(prefix, node.target)
            source = node.args[0] if node.args else None
            if not isinstance(source, torch.fx.Node) or source.op != "call_module":
                what = source.target if isinstance(source, torch.fx.Node) else source
                self.reasons[norm_path] = f"its input is {getattr(what, '__name__', what)}, not a convolution"
                continue
            conv = root.get_submodule(source.target)
            reason = self.why_not(conv, root.get_submodule(node.target), _join(prefix, source.target))
            if not reason and calls[node.target] > 1:
                reason = f"the norm is called {calls[node.target]} times"
            if not reason and calls[source.target] > 1:
                reason = f"its convolution is called {calls[source.target]} times"
            if not reason and len(source.users) > 1:
                others = ", ".join(str(u.target) for u in source.users if u is not node)
                reason = f"the convolution's output is also used by {others}"
            if reason:
                self.reasons[norm_path] = reason
                continue
            users = list(node.users)
            act = None
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and calls[users[0].target] == 1
                and isinstance(root.get_submodule(users[0].target), nn.ReLU)
            ):
                act = _join(prefix, users[0].target)
            self.fold(_join(prefix, source.target), norm_path, act)
        for name, m in root.named_modules():
            if isinstance(m, ASPP):  # a leaf to the tracer: its own structure is known
                for sub, inner in m.named_modules():
                    self.structural(inner, _join(_join(prefix, name), sub))

    # -- module structure ----------------------------------------------------------------------
    def structural(self, parent, prefix):
        """Pairs among ``parent``'s children: conv -> norm [-> ReLU] in an nn.Sequential, or a
        climseg ConvNormAct's conv, norm, act."""
        if isinstance(parent, ConvNormAct):
            triples = [("conv", "norm", "act")]
        elif isinstance(parent, nn.Sequential):
            names = [n for n, _ in parent.named_children()]
            triples = list(zip(names, names[1:], names[2:] + [None]))
        else:
            return
        for conv_name, norm_name, act_name in triples:
            conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
            if not isinstance(norm, nn.BatchNorm2d):
                continue
            reason = self.why_not(conv, norm, _join(prefix, conv_name))
            if reason:
                self.reasons.setdefault(_join(prefix, norm_name), reason)
                continue
            act = getattr(parent, act_name) if act_name is not None else None
            self.fold(
                _join(prefix, conv_name),
                _join(prefix, norm_name),
                _join(prefix, act_name) if isinstance(act, nn.ReLU) else None,
            )


def convert_model(
    model,
    *,
    fold_bn=False,
    dilated_only=False,
    backend="auto",
    inplace=False,
    fuse_aspp=False,
    state_dict_layout="original",
):
    """The model with climseg's fused modules in it (see the module documentation).

    Args:
        model: any ``nn.Module``.
        fold_bn: fold batch norms (and ReLUs) into the convolutions (inference: the model
            must be in eval mode). Every conv -> norm pair of the traced data flow folds,
            whatever the module structure.
        dilated_only: replace only convolutions with dilation > 1 (a convolution followed by
            a batch norm to fold is replaced anyway).
        backend: ``"auto"``, ``"triton"``, ``"cuda"`` or ``"torch"``, set on every climseg
            module of the result (convolutions and ASPPs).
        inplace: convert ``model`` itself instead of a deep copy.
        fuse_aspp: replace torchvision's / segmentation-models-pytorch's ASPP with
            :class:`climseg.nn.ASPP` (same weights, same outputs).
        state_dict_layout: ``"original"`` (default): ``state_dict()`` gives the original model's
            keys (folded norms unfolded, third-party ASPP names), so checkpoints move freely
            between the converted and the plain model; ``"climseg"``: climseg's own keys.
            ``load_state_dict`` takes both layouts either way (:mod:`climseg.nn.state_layout`);
            ``model.state_dict_layout`` may be changed later.

    Returns:
        The converted model, with ``conversion_report`` (a :class:`ConversionReport`) set.
    """
    if fold_bn and model.training:
        raise ConfigError("convert_model(fold_bn=True) folds running statistics: call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport(norms=sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()))

    def wanted(m):
        return type(m) is nn.Conv2d and (not dilated_only or any(d > 1 for d in m.dilation))

    def convert(parent, prefix):
        for name, child in list(parent.named_children()):
            path = _join(prefix, name)
            if fuse_aspp:
                new, reason = _third_party_aspp(child)
                if reason:
                    report.aspp_not_replaced.append((path, reason))
                if new is not None:
                    setattr(parent, name, new)
                    report.aspp_replaced.append(path)
                    child = new
            if wanted(child):
                setattr(parent, name, AtrousConv2d.from_conv(child, backend=backend))
                report.convs += 1
                continue
            if isinstance(child, AtrousConv2d):
                child.backend = backend
                report.convs += 1
            if isinstance(child, ASPP):
                child.backend = backend
            convert(child, path)

    if fuse_aspp:
        new, reason = _third_party_aspp(model)
        if reason:
            report.aspp_not_replaced.append(("(model)", reason))
        if new is not None:
            model = new
            report.aspp_replaced.append("(model)")
    if isinstance(model, ASPP):
        model.backend = backend
    convert(model, "")
    if fold_bn:
        folder = _Folder(model, backend, report)
        folder.traced(model, "")
        report.not_folded = [
            (name, folder.reasons.get(name, "not directly after a convolution"))
            for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
    model.conversion_report = report
    use_layout(model, state_dict_layout)
    logger.info("convert_model: %s", report.summary())
    for path, reason in report.aspp_not_replaced:
        logger.warning("convert_model: ASPP-like module %s kept: %s", path, reason)
    for name, reason in report.not_folded:
        logger.info("convert_model: batch norm %s not folded: %s", name, reason)
    return model
