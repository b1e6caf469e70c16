"""The network as it runs for inference: loaded once, batch norms folded, ASPP fused, channels_last,
in the precision the hardware computes fast, optionally compiled.

Data flow of :func:`prepare_network`: the checkpoint's network (:func:`climseg.models.checkpoint.
build_model`; DeepLabv3+ or CGNet, ``climatenet:WEIGHTS.pth`` included) in eval mode ->
:func:`climseg.nn.convert_model` (``fold_bn=True, fuse_aspp=True``: every convolution -> batch
norm [-> ReLU] becomes one :class:`~climseg.nn.AtrousConv2d` with a per-channel epilogue) ->
:func:`fold_epilogues` (that epilogue's scale and shift multiplied into the convolution's weight
and bias: one convolution with a bias and a ReLU, nothing per pixel left over) -> the precision
(:func:`climseg.perf.hardware.choose_precision`; bf16/fp16: weights cast once, inputs arrive in
that dtype; int8: :mod:`climseg.predict.int8`) -> ``channels_last`` -> ``torch.compile`` when
asked (the compile time is measured on the first batch and reported; compiled code is cached by
Inductor's FX graph cache in ``CLIMSEG_CACHE/inductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` names
another folder, so a second run compiles in a fraction of the time).

:class:`InferenceNetwork` then maps a normalised, padded batch (N, C, H, W) to class indices
(N, H, W) uint8: ``segment(x)``.
"""

import os
import time

import torch
import torch.nn as nn

from climseg.errors import ConfigError
from climseg.models.checkpoint import build_model
from climseg.nn import AtrousConv2d, convert_model
from climseg.perf.hardware import choose_precision

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def fold_epilogues(model):
    """Multiply every :class:`~climseg.nn.AtrousConv2d`'s folded scale and shift into its weight
    and bias (``w' = w * scale``, ``b' = b * scale + shift``, per output channel, in float32);
    the ReLU stays. Returns the number of convolutions changed."""
    changed = 0
    for m in model.modules():
        if not isinstance(m, AtrousConv2d) or m.scale is None:
            continue
        scale, shift = m.scale.float(), m.shift.float()
        weight = m.weight.detach().float() * scale.view(-1, *([1] * (m.weight.dim() - 1)))
        bias = m.bias.detach().float() if m.bias is not None else torch.zeros_like(scale)
        m.weight = nn.Parameter(weight.to(m.weight.dtype), requires_grad=False)
        m.bias = nn.Parameter((bias * scale + shift).to(m.weight.dtype), requires_grad=False)
        m.scale = m.shift = None
        changed += 1
    return changed


class InferenceNetwork:
    """A prepared network: ``segment(x)`` maps a batch (N, C, H, W) in :attr:`input_dtype`,
    ``channels_last``, to class indices (N, H, W) uint8.

    Attributes: ``precision`` (fp32, bf16, fp16, int8) and ``why`` (the reason), ``device``,
    ``input_multiple`` (height and width must be multiples of it), ``input_dtype``, ``compiled``,
    ``compile_seconds`` (time of the first call when compiled, else None), ``notes`` (what the
    preparation did, one phrase each), ``config`` (the network's name)."""

    def __init__(self, module, precision, why, device, input_multiple, config, notes, compiled=False):
        self.module, self.precision, self.why, self.device = module, precision, why, device
        self.input_multiple, self.config, self.notes, self.compiled = input_multiple, config, notes, compiled
        self.input_dtype = DTYPES[precision]
        self.compile_seconds = None
        self.calls = 0

    def segment(self, x):
        """Class indices (N, H, W) uint8 of the batch ``x``."""
        start = time.perf_counter()
        with torch.inference_mode():
            classes = self.module(x).argmax(1).to(torch.uint8)
        if self.calls == 0 and self.compiled:
            self.compile_seconds = time.perf_counter() - start
        self.calls += 1
        return classes

    def describe(self):
        """One line: the network, precision and why, and what the preparation did."""
        return f"{self.config} network in {self.precision} ({self.why}) on {self.device}; " + ", ".join(self.notes)


def prepare_network(ckpt, device, precision="auto", compile=False, calibration=None, log=print):
    """The :class:`InferenceNetwork` of a loaded checkpoint ``ckpt`` on ``device``.

    ``precision``: one of :data:`PRECISIONS`; ``auto`` follows
    :data:`climseg.perf.hardware.PRECISION_RULE`. ``compile``: ``torch.compile`` the network
    (the first batch pays the compile time). ``calibration``: for int8, a callable returning the
    calibration batches (normalised, padded (N, C, H, W) float32 tensors), called only when the
    quantized network is not in its cache (:mod:`climseg.predict.int8`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"option precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    chosen, why = choose_precision(precision, device)
    if chosen == "int8" and device.type != "cpu":
        raise ConfigError(
            f"option precision: int8 runs on CPUs (PyTorch's x86 quantization); on {device} use bf16 or fp16"
        )
    if chosen == "fp16" and device.type == "cpu":
        raise ConfigError("option precision: fp16 is a GPU precision; on a CPU use bf16 (or fp32)")
    model = build_model(ckpt, "cpu").eval()
    input_multiple = getattr(model, "input_multiple", 1)
    config = ckpt["model"]["config"]
    for p in model.parameters():
        p.requires_grad_(False)
    model = convert_model(model, fold_bn=True, fuse_aspp=True, inplace=True)
    report = model.conversion_report
    notes = [f"folded {len(report.folded)} of {report.norms} batch norms into the convolutions"]
    if report.aspp_replaced or any(m.__class__.__name__ == "ASPP" for m in model.modules()):
        notes.append("fused ASPP")
    fold_epilogues(model)
    compiled = bool(compile)
    if chosen == "int8":
        from climseg.predict.int8 import quantize

        module, note = quantize(model, ckpt, calibration, log)
        notes += ["channels_last", note]
        compiled = True  # the quantized graph runs only through Inductor
    else:
        model = model.to(device=device, dtype=DTYPES[chosen], memory_format=torch.channels_last)
        notes.append("channels_last")
        module = model
        if compile:
            module = torch.compile(model, dynamic=False)
            notes.append(f"torch.compile (Inductor cache: {configure_compile_cache()})")
    return InferenceNetwork(module, chosen, why, device, input_multiple, config, notes, compiled)


def configure_compile_cache():
    """Inductor's cache folder: ``TORCHINDUCTOR_CACHE_DIR`` if set, else ``CLIMSEG_CACHE/inductor``
    (set here, so compiled code outlives the process and a second run finds it)."""
    from climseg.data.cache import cache_dir

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_dir(), "inductor"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]
