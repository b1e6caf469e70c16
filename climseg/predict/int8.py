"""int8 inference on CPUs: post-training static quantization through PyTorch 2's export-based flow,
calibrated on the user's own data, cached beside the checkpoint.

Data flow of :func:`quantize` (the network arrives folded and fused, fp32, from
:mod:`climseg.predict.network`): for each input shape (N, C, H, W) the pipeline meets,

1. the cache: ``CHECKPOINT.int8-KEY.pt2`` beside the checkpoint (or, where that folder cannot be
   written, in ``CLIMSEG_CACHE/int8``). KEY is a SHA-256 over the network's weights and
   normalisation, the calibration batches, the shape and the versions of PyTorch and torchao,
   so a changed checkpoint, other calibration data or another PyTorch never reuse a stale file;
   it is written atomically (:func:`climseg.output.atomic_path`);
2. on a miss: ``torch.export.export`` -> torchao's ``prepare_pt2e`` with the
   ``X86InductorQuantizer`` (int8 activations per tensor, int8 weights per channel, the
   quantizer's default configuration) -> the calibration batches run through the observers ->
   ``convert_pt2e`` -> exported again and saved (``torch.export.save``);
3. ``lower_pt2e_quantized_to_x86`` (torchao): Inductor's freezing passes replace each
   dequantize -> convolution -> ReLU -> quantize pattern with one oneDNN int8 convolution.

PyTorch 2.13 no longer ships ``torch.ao.quantization.quantize_pt2e``; the same flow lives in
torchao (``pip install "climseg[int8]"``). Without it, ``--precision int8`` is one line saying so.
int8 pays where the cores have VNNI or AMX-INT8 (:func:`climseg.perf.hardware.cpu_int8_support`);
elsewhere it runs, more slowly than it would there.
"""

import contextlib
import hashlib
import io
import logging
import os
import time
import warnings

import torch

from climseg.errors import ConfigError, OutputError
from climseg.output import atomic_path

INSTALL_HINT = 'pip install "climseg[int8]" (torchao, which holds PyTorch 2\'s export-based quantization)'


def torchao_modules():
    """torchao's quantization entry points ``(X86InductorQuantizer module, prepare_pt2e,
    convert_pt2e, lower_pt2e_quantized_to_x86)``, imported quietly; ConfigError without torchao."""
    quiet = logging.getLogger("torchao")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
            from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise ConfigError(
            f"option precision: int8 needs torchao ({exc.name or 'torchao'} is missing): {INSTALL_HINT}"
        ) from None
    finally:
        quiet.setLevel(level)
    return x86, prepare_pt2e, convert_pt2e, lower_pt2e_quantized_to_x86


def cache_key(model, ckpt, batches, shape):
    """SHA-256 (hex) of what the quantized network depends on: weights and buffers, the
    normalisation, the calibration batches, the input shape, the PyTorch and torchao versions."""
    import torchao

    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{torchao.__version__}|{tuple(shape)}|{ckpt['model']['config']}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    for key in ("shift", "scale"):
        h.update(torch.as_tensor(ckpt["data"][key], dtype=torch.float32).numpy().tobytes())
    for b in batches:
        h.update(b.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_paths(ckpt, key):
    """Where a quantized network is looked for, in order: beside the checkpoint, then in the cache folder."""
    from climseg.data.cache import cache_dir

    source = str(ckpt.get("path", "checkpoint"))
    weights = ((ckpt["data"].get("source") or {}).get("weights")) if isinstance(ckpt.get("data"), dict) else None
    if not os.path.exists(source):  # FORMAT:PATH, e.g. climatenet:weights.pth
        source = weights or source.split(":", 1)[-1]
    name = f"{os.path.basename(source)}.int8-{key[:16]}.pt2"
    return [os.path.join(os.path.dirname(os.path.abspath(source)), name), os.path.join(cache_dir(), "int8", name)]


class QuantizedNetwork:
    """Callable like the network: a batch (N, C, H, W) float32 -> logits, through the int8
    program of that shape (quantized, or loaded from the cache, at the first batch of a shape).
    ``events``: what happened per shape, for the log."""

    def __init__(self, model, ckpt, calibration, log):
        self.model, self.ckpt, self.calibration, self.log = model, ckpt, calibration, log
        self.programs = {}
        self.events = []
        self.x86, self.prepare_pt2e, self.convert_pt2e, self.lower = torchao_modules()

    def __call__(self, x):
        shape = tuple(x.shape)
        if shape not in self.programs:
            self.programs[shape] = self._program(shape)
        return self.programs[shape](x)

    def _program(self, shape):
        start = time.perf_counter()
        multiple = getattr(self.model, "input_multiple", 1)
        batches = [b.contiguous(memory_format=torch.channels_last) for b in self.calibration(shape, multiple)]
        key = cache_key(self.model, self.ckpt, batches, shape)
        example = (torch.zeros(shape).contiguous(memory_format=torch.channels_last),)
        found = next((p for p in cache_paths(self.ckpt, key) if os.path.isfile(p)), None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if found:
                converted = torch.export.load(found).module()
                how = f"int8 network loaded from {found}"
            else:
                converted, saved = self._quantize(batches, example, key)
                how = f"quantized on {len(batches)} calibration batches, cached in {saved}"
            with torch.no_grad():
                lowered = self.lower(converted, example)
        self.events.append(f"{how} ({time.perf_counter() - start:.1f} s)")
        self.log(f"climseg: int8 {'x'.join(map(str, shape))}: {self.events[-1]}")
        return lowered

    def _quantize(self, batches, example, key):
        x86 = self.x86
        exported = torch.export.export(self.model, example).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = self.prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for b in batches:
                prepared(b)
        converted = self.convert_pt2e(prepared)
        program = torch.export.export(converted, example)
        saved = None
        for path in cache_paths(self.ckpt, key):
            try:
                buffer = io.BytesIO()  # torch.export.save warns about a file name not ending in .pt2
                torch.export.save(program, buffer)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    f.write(buffer.getvalue())
                saved = path
                break
            except OutputError as exc:  # a read-only checkpoint folder: the cache folder instead
                self.log(f"climseg: warning: {exc}")
        return program.module(), saved or "no cache (nowhere writable)"


def quantize(model, ckpt, calibration, log=print):
    """``(callable network, note)``: the int8 form of ``model`` (folded, fp32, eval), quantized
    per input shape at its first batch. ``calibration(shape, multiple)`` returns the calibration
    batches for that shape (each (N, C, H, W) float32, normalised and padded as the inputs are)."""
    if calibration is None:
        raise ConfigError("option precision: int8 needs calibration data (--calibrate FILES)")
    if not torch.backends.mkldnn.is_available():
        raise ConfigError("option precision: int8 needs PyTorch built with oneDNN (mkldnn), which this one is not")
    from climseg.perf.hardware import cpu_int8_support

    fast, why = cpu_int8_support()
    model = model.to(memory_format=torch.channels_last)
    network = QuantizedNetwork(model, ckpt, calibration, log)
    return network, f"int8 (x86 quantizer, {'int8 dot products: ' + why if fast else why})"
