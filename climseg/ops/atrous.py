"""``atrous_conv2d`` and ``aspp_conv``: (dilated) 2-D convolutions with a fused epilogue.

    y = activation((conv(x, weight) + bias) * scale + shift + residual)

scale and shift are per output channel (a folded batch norm or its affine
part); every term is optional; activation is None or "relu". The output has
the input's dtype; accumulation is float32 in the Triton kernels, as in
cuDNN. ``aspp_conv`` computes several convolutions of one input (the 1x1 and
dilated 3x3 branches of ASPP) into the channel slices of one output, in one
kernel launch, with the same epilogue over the concatenated channels.

Data flow: public function -> argument checks and backend choice
(:mod:`climseg.ops.backend`) -> either the PyTorch reference below (the specification, and
the CPU path) or the custom op ``climseg::conv_branches`` of :mod:`climseg.ops.conv_branches`
(registered with ``torch.library``: fake implementation for ``torch.compile``, autograd;
weight packing) with the kernels of the chosen backend: ``"triton"``, the launchers of
``climseg.kernels.atrous_dense`` (NHWC implicit-GEMM kernels for groups = 1) and
``climseg.kernels.atrous_depthwise`` (direct kernels for depthwise); ``"cuda"``, the
implicit-GEMM kernels of ``csrc/cuda/atrous.cu`` (:mod:`climseg.ops.atrous_cuda`; groups = 1,
tensor cores from Volta on). The epilogue's backward (ReLU mask, scale, sums for
bias/scale/shift/residual) is a few elementwise PyTorch ops; the input and weight gradients
are kernels of the same backend.

``backend="auto"`` takes the CUDA kernels first on GPUs of compute capability below 8.0
(Triton emits no tensor-core instructions there since its 3.x releases dropped MMAv1) and
where Triton is not installed, else the Triton kernels.
"""

import os
import sys
import warnings

import torch
import torch.nn.functional as F

from climseg.errors import ConfigError
from climseg.ops import backend as _backend
from climseg.ops import conv_branches  # noqa: F401  registers torch.ops.climseg.conv_branches, called below

ACTIVATIONS = (None, "relu")


# ---------------------------------------------------------------------------------------------
# reference
# ---------------------------------------------------------------------------------------------
def atrous_conv2d_reference(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    scale=None,
    shift=None,
    activation=None,
    residual=None,
):
    """Plain PyTorch: ``F.conv2d`` followed by the epilogue, term by term."""
    y = _at_caller(F.conv2d, x, weight, bias, stride, padding, dilation, groups)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1).to(y.dtype)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1).to(y.dtype)
    if residual is not None:
        y = y + residual
    if activation == "relu":
        y = torch.relu(y)
    return y


def aspp_conv_reference(x, weights, dilations, *, bias=None, scale=None, shift=None, activation=None, pooled=None):
    """``concat[conv_b(x) for each branch b] -> epilogue``, then the broadcast ``pooled`` (N, C)
    appended as the last channels. Branch b has padding ``dilation_b * (k_b - 1) // 2``."""
    y = torch.cat(
        [_at_caller(F.conv2d, x, w, None, 1, d * (w.shape[-1] - 1) // 2, d) for w, d in zip(weights, dilations)], 1
    )
    y = atrous_conv2d_reference_epilogue(y, bias, scale, shift, activation)
    if pooled is not None:
        y = torch.cat([y, pooled[:, :, None, None].to(y.dtype).expand(-1, -1, y.shape[2], y.shape[3])], 1)
    return y


_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules["climseg"], torch))


def _at_caller(function, *args):
    """``function(*args)``, with the warnings it raises issued at the first frame outside climseg and
    torch. PyTorch's C++ code warns at the Python frame that called it (stack level 1): without this,
    ATen's own warnings (e.g. padding='same' with an even kernel) would seem to come from this file,
    and filters on the user's module would not apply. Traced code (torch.compile) calls it plainly.
    (``warnings.catch_warnings`` is process-wide: a warning another thread raises meanwhile is
    issued at this caller's line too, never lost.)"""
    if torch.compiler.is_compiling():
        return function(*args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = function(*args)
    if caught:
        frame = sys._getframe(1)
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OWN_DIRS):
            frame = frame.f_back
        where = frame.f_globals if frame is not None else {}
        for w in caught:
            warnings.warn_explicit(
                w.message,
                w.category,
                frame.f_code.co_filename if frame else w.filename,
                frame.f_lineno if frame else w.lineno,
                module=where.get("__name__"),
                registry=where.setdefault("__warningregistry__", {}),
            )
    return out


def atrous_conv2d_reference_epilogue(y, bias=None, scale=None, shift=None, activation=None):
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1).to(y.dtype)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1).to(y.dtype)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1).to(y.dtype)
    if activation == "relu":
        y = torch.relu(y)
    return y


# ---------------------------------------------------------------------------------------------
# argument handling and backend choice
# ---------------------------------------------------------------------------------------------
def _pair(v, name):
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) != 2 or not all(isinstance(i, int) for i in v):
        raise ConfigError(f"atrous_conv2d: {name} must be an int or a pair of ints, not {v!r}")
    return v


def _padding(padding, weight, dilation, stride):
    """Padding as a pair, or None when 'same' needs uneven padding (even kernel sizes)."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0]
        if padding != "same":
            raise ConfigError(f"atrous_conv2d: padding must be an int, a pair, 'same' or 'valid', not {padding!r}")
        total = [d * (k - 1) for d, k in zip(dilation, weight.shape[-2:])]
        if any(t % 2 for t in total):
            return None
        return [t // 2 for t in total]
    return _pair(padding, "padding")


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_probe(tensor):
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "Triton is not installed (pip install triton)"
    if tensor is not None and tensor.device.type == "cpu" and not _interpreting():
        return False, "CPU tensors run Triton kernels only in the interpreter (TRITON_INTERPRET=1)"
    if tensor is not None and tensor.device.type not in ("cpu", "cuda"):
        return False, f"no Triton kernels for {tensor.device.type} tensors"
    return True, ""


def _cuda_probe(tensor):
    from climseg.ops import cuda

    ok, why = cuda.probe(tensor)
    if not ok:
        return ok, why
    device = tensor.device if tensor is not None else torch.device("cuda")
    if not cuda.launcher(device).has("atrous_fwd_f16_sm80"):
        return False, "this build of the CUDA kernels has no atrous kernels (reinstall climseg)"
    return True, ""


def _cuda_preferred(tensor):
    """Why auto takes the CUDA kernels before Triton for ``tensor`` ('' when it does not)."""
    if tensor is None or tensor.device.type != "cuda":
        return ""
    major, minor = torch.cuda.get_device_capability(tensor.device)
    if major < 8:
        return f"sm_{major}{minor}: Triton has no tensor cores below sm_80, these kernels do"
    return "" if _triton_probe(tensor)[0] else "Triton is not installed"


_cuda_preferred.policy = "CUDA kernels first below sm_80 (no tensor cores in Triton there) or without Triton"

_backend.register("atrous_conv2d", "triton", _triton_probe)
_backend.register("aspp_conv", "triton", _triton_probe)
_backend.register("atrous_conv2d", "cuda", _cuda_probe, prefer=_cuda_preferred)
_backend.register("aspp_conv", "cuda", _cuda_probe, prefer=_cuda_preferred)


def _unsupported(x, weight, groups):
    """Why the Triton kernels cannot take this convolution, or '' when they can."""
    if x.dim() != 4 or weight.dim() != 4:
        return "input and weight must be 4-D (N, C, H, W)"
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {x.dtype} (fp16, bf16 and fp32 only)"
    cin, cout = x.shape[1], weight.shape[0]
    if groups == 1:
        return "" if weight.shape[1] == cin else f"weight expects {weight.shape[1]} input channels, input has {cin}"
    if groups == cin == cout and weight.shape[1] == 1:
        return ""
    return f"groups={groups} (only 1 and depthwise, groups = in = out channels)"


def _cuda_unsupported(x, groups):
    """Why the CUDA kernels cannot take this convolution (beyond :func:`_unsupported`), or ''."""
    from climseg.ops import atrous_cuda

    if groups != 1:
        return f"groups={groups} (the CUDA kernels are dense, groups = 1)"
    if x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "fp32 with torch.backends.cudnn.allow_tf32 off (the CUDA kernels multiply fp32 as fp16 operands)"
    return atrous_cuda.unsupported(x.dtype, x.device)


def _choose(op, backend, x, why_not):
    """'triton', 'cuda' or 'torch'; an explicit fast backend that cannot run is an error.
    ``why_not(chosen)`` says why the chosen kernels cannot compute this input ('' when they can)."""
    chosen = _backend.resolve(op, backend, x)
    return _backend.choose(op, backend, x, lambda: why_not(chosen))


def _autocast(x, residual):
    """Under autocast, compute in the autocast dtype as F.conv2d would (weights are cast inside)."""
    if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        dtype = torch.get_autocast_dtype("cuda")
        x = x.to(dtype)
        residual = residual.to(dtype) if residual is not None else None
    return x, residual


def _deterministic(flag):
    return bool(flag) or torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
def atrous_conv2d(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    scale=None,
    shift=None,
    activation=None,
    residual=None,
    deterministic=False,
    backend="auto",
):
    """Dilated convolution with fused bias / per-channel scale and shift / residual / ReLU.

    Args follow ``torch.nn.functional.conv2d``; ``stride``, ``padding`` and
    ``dilation`` take an int or a pair (``padding`` also ``"same"``/``"valid"``).
    ``deterministic=True`` (or ``torch.use_deterministic_algorithms(True)``): no atomics,
    bitwise repeatable outputs and gradients. ``backend``: ``"auto"`` (default, or
    ``CLIMSEG_BACKEND``) takes, for CUDA tensors, the CUDA kernels of ``csrc/cuda`` on GPUs
    below compute capability 8.0 or without Triton, the Triton kernels otherwise, and the
    PyTorch reference where neither can; ``"triton"`` (also on CPU tensors under
    ``TRITON_INTERPRET=1``), ``"cuda"`` (groups = 1; fp32 is multiplied as fp16 operands, and
    only while ``torch.backends.cudnn.allow_tf32`` allows reduced-precision products; on CPU
    tensors the kernels' emulation, for tests), ``"torch"``.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"atrous_conv2d: activation must be None or 'relu', not {activation!r}")
    stride_p, dilation_p = _pair(stride, "stride"), _pair(dilation, "dilation")
    pad = _padding(padding, weight, dilation_p, stride_p) if torch.is_tensor(weight) else None

    def why_not(chosen):
        if pad is None:
            return "uneven 'same' padding (even kernel size)"
        if isinstance(padding, str) and padding == "same" and stride_p != [1, 1]:
            return "padding='same' with stride > 1"
        return _unsupported(x, weight, groups) or (_cuda_unsupported(x, groups) if chosen == "cuda" else "")

    choice = _choose("atrous_conv2d", backend, x, why_not)
    if choice == "torch":
        return atrous_conv2d_reference(
            x,
            weight,
            bias,
            stride,
            padding,
            dilation,
            groups,
            scale=scale,
            shift=shift,
            activation=activation,
            residual=residual,
        )
    x, residual = _autocast(x, residual)
    return torch.ops.climseg.conv_branches(
        x,
        [weight],
        stride_p,
        pad,
        dilation_p,
        groups,
        bias,
        scale,
        shift,
        residual,
        None,
        activation == "relu",
        _deterministic(deterministic),
        choice,
    )


def aspp_conv(
    x,
    weights,
    dilations,
    *,
    bias=None,
    scale=None,
    shift=None,
    activation=None,
    pooled=None,
    deterministic=False,
    backend="auto",
):
    """The convolution branches of ASPP in one launch: ``concat[conv_b(x)]`` with the epilogue
    over the concatenated channels, then ``pooled`` (N, C) broadcast into the last channels.

    ``weights``: one (Cout, Cin, k, k) tensor per branch (odd k; the same Cout), e.g. a 1x1
    and three 3x3; ``dilations``: one int per branch; padding keeps the spatial size.
    bias/scale/shift: per channel of the branches together (len = branches x Cout)."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"aspp_conv: activation must be None or 'relu', not {activation!r}")
    weights, dilations = list(weights), [int(d) for d in dilations]
    if len(weights) != len(dilations) or not weights:
        raise ConfigError("aspp_conv: give one dilation per weight")

    def why_not(chosen):
        for w in weights:
            reason = _unsupported(x, w, 1)
            if reason:
                return reason
            if w.shape[-1] % 2 == 0 or w.shape[-1] != w.shape[-2] or w.shape[0] != weights[0].shape[0]:
                return "branches need square odd kernels and the same number of output channels"
        return _cuda_unsupported(x, 1) if chosen == "cuda" else ""

    choice = _choose("aspp_conv", backend, x, why_not)
    if choice == "torch":
        return aspp_conv_reference(
            x, weights, dilations, bias=bias, scale=scale, shift=shift, activation=activation, pooled=pooled
        )
    pads = [d * (w.shape[-1] - 1) // 2 for w, d in zip(weights, dilations)]
    x, _ = _autocast(x, None)
    return torch.ops.climseg.conv_branches(
        x,
        weights,
        [1, 1],
        [p for p in pads for _ in range(2)],
        [d for d in dilations for _ in range(2)],
        1,
        bias,
        scale,
        shift,
        None,
        pooled,
        activation == "relu",
        _deterministic(deterministic),
        choice,
    )
