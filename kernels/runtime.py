"""What runs around the Triton kernels, not in them: the GPU architecture table, Triton's CPU
interpreter, launch recording for the static check, and the autotuner with its candidate
block shapes.

Data flow: a launcher (:mod:`climseg.kernels.atrous_dense`, :mod:`climseg.kernels.atrous_depthwise`)
asks :func:`tuned` for a kernel wrapped in an autotuner for its device (:func:`architecture`)
and operand size, then calls it with the grid and the arguments. The autotuner (keyed on the
problem shape) times the candidates of :func:`candidates` once per key and launches the
fastest; in deterministic mode it launches the first. Inside :func:`recording` nothing is
launched: every launch is appended to a list instead (``climseg.verify`` compiles those
launches for sm_80 and sm_90 without a GPU). In the interpreter (``TRITON_INTERPRET=1``, tests
on CPU) one small block shape stands in for the candidates. The arithmetic every launcher does
alike (grid sizes, the autotuning key's pixel bucket, the dot's precision, buffers, the split of
a reduction over pixels) is here too, at the end.

:data:`ARCHITECTURES` is the one table of GPU limits, keyed by compute capability as an integer
(80: A100, 90: H100); the candidates, the recorded SM count and the static check's occupancy
all read it. This module imports Triton only where it builds block shapes, times them or patches
the interpreter, so that the table and the recording are there without it (and a process that
compiles for a GPU may import it before it turns the interpreter off).
"""

import contextlib
import functools
import os

import torch

# ---------------------------------------------------------------------------------------------
# the GPU architectures
# ---------------------------------------------------------------------------------------------
#: Per compute capability (70: V100 SXM2, 75: T4, 80: A100 SXM, 90: H100 SXM): SMs (the weight gradient's split follows
#: them), shared memory per SM and the most one block may take (bytes; each resident block also
#: takes 1 KiB the driver reserves), registers per SM, resident warps and blocks per SM.
ARCHITECTURES = {
    70: dict(  # V100 SXM2 (Volta): Triton has no tensor cores here; climseg's CUDA kernels do
        sm_count=80,
        shared_per_sm=96 * 1024,
        shared_per_block=96 * 1024,
        registers_per_sm=65536,
        max_warps_per_sm=64,
        max_blocks_per_sm=32,
    ),
    75: dict(  # T4 (Turing): the same
        sm_count=40,
        shared_per_sm=64 * 1024,
        shared_per_block=64 * 1024,
        registers_per_sm=65536,
        max_warps_per_sm=32,
        max_blocks_per_sm=16,
    ),
    80: dict(
        sm_count=108,
        shared_per_sm=164 * 1024,
        shared_per_block=163 * 1024,
        registers_per_sm=65536,
        max_warps_per_sm=64,
        max_blocks_per_sm=32,
    ),
    90: dict(
        sm_count=132,
        shared_per_sm=228 * 1024,
        shared_per_block=227 * 1024,
        registers_per_sm=65536,
        max_warps_per_sm=64,
        max_blocks_per_sm=32,
    ),
}
#: The shared memory assumed for a block on an architecture the table does not list (99 KiB, what
#: the smaller Ampere and Ada parts, sm_86 and sm_89, have); a GPU that is present reports its own.
SMALL_SHARED_PER_BLOCK = 99 * 1024

_RECORDING = None  # while recording launches (see recording()): {"launches": [...], "sm_count": int}


def shared_memory_limit(arch):
    """The most shared memory (bytes) one block may take on compute capability ``arch``: the
    current GPU's own limit when there is one (and no recording), else the table's."""
    if _RECORDING is None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        optin = getattr(props, "shared_memory_per_block_optin", 0)
        if optin:
            return optin
    return ARCHITECTURES.get(arch, {}).get("shared_per_block", SMALL_SHARED_PER_BLOCK)


def architecture(device):
    """What the autotuner keys its candidates on: ``("recording",)`` inside :func:`recording`, the
    compute capability ``(major, minor)`` of a CUDA device, else ``("interpreter",)``."""
    if _RECORDING is not None:
        return ("recording",)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)
    return ("interpreter",)


def sm_count(device):
    """The number of SMs the launches are for: the recorded GPU's, the CUDA device's, or None
    (the interpreter)."""
    if _RECORDING is not None:
        return _RECORDING["sm_count"]
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return None


# ---------------------------------------------------------------------------------------------
# Triton's CPU interpreter
# ---------------------------------------------------------------------------------------------
def interpreting():
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``), unless
    launches are being recorded for a GPU (:func:`recording`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and _RECORDING is None


def install_interpreter_compatibility():
    """Let Triton's interpreter take a scalar as a ``range()`` bound under NumPy >= 2.4; returns
    True when the conversion is in place (installed now or before), False when this Triton's
    interpreter has no such hook.

    The interpreter holds every scalar (a program id, a loaded table entry) as a one-element
    array. Triton 3.9 converts one to a Python int with ``int(data.squeeze())``; Triton 3.6
    (PyTorch 2.11's pin) with ``int(data)``, which NumPy 2.4 refuses for a 1-d array ("only
    0-dimensional arrays can be converted to Python scalars"), so every kernel whose loop bound
    is such a scalar failed there. This installs Triton 3.9's conversion in whichever Triton
    runs, through the interpreter's private ``_patch_lang_tensor`` (the one place here that
    touches it): interpreter only, compiled kernels are untouched. The kernel modules call it
    when they are imported in the interpreter."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None:
        return False
    if getattr(patch, "climseg_index", False):
        return True

    def patched(tensor, scope, *rest, **kwargs):
        patch(tensor, scope, *rest, **kwargs)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.climseg_index = True
    interpreter._patch_lang_tensor = patched
    return True


# ---------------------------------------------------------------------------------------------
# recording launches instead of running them (static analysis: climseg.verify)
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording(sm_count):
    """Within this block the launchers compute every argument exactly as for a real launch
    (``torch.device("meta")`` tensors stand in for the data) but append
    ``(name, jit function, args, kwargs, fixed)`` to the yielded list instead of launching
    (``fixed``: the first candidate runs, untuned, as in deterministic mode);
    ``sm_count`` is the GPU's number of SMs (it sets the weight gradient's split; see
    :data:`ARCHITECTURES`)."""
    global _RECORDING
    if _RECORDING is not None:
        raise RuntimeError("climseg.kernels.runtime.recording() does not nest")
    _RECORDING = {"launches": [], "sm_count": int(sm_count)}
    try:
        yield _RECORDING["launches"]
    finally:
        _RECORDING = None


def record(name, kernel, args, kwargs, fixed):
    """Append a launch to the recording in progress and return True; False when nothing is being
    recorded (then the caller launches)."""
    if _RECORDING is None:
        return False
    _RECORDING["launches"].append((name, kernel, args, kwargs, fixed))
    return True


# ---------------------------------------------------------------------------------------------
# candidate block shapes: autotuned per problem shape on GPUs, one fixed shape in the interpreter
# ---------------------------------------------------------------------------------------------
# (kernel, architecture, operand bytes) -> block shapes that spill registers there (the SASS of
# climseg bench static at the real layer shapes): the input gradient keeps a row of destination
# offsets per tap step, and in fp32 (TF32) the operands take twice the registers
_SPILLING = {
    ("dense_dgrad", 80, 2): {(128, 128, 64, 8, 3)},  # with Triton 3.6 (not 3.9)
    ("dense_dgrad", 80, 4): {(128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4)},
    ("dense_dgrad", 90, 4): {(128, 128, 64, 8, 3)},
}


def _gemm_configs(arch=None, itemsize=2, kernel=None):
    """Candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of the dense kernels for compute
    capability ``arch`` (default: the current GPU's, else 80) and operands of ``itemsize`` bytes:
    the shapes whose pipeline buffers (stages x (BLOCK_M + BLOCK_N) x BLOCK_K operands) fit the
    architecture's shared memory, less those that spill registers in ``kernel``.

    Pruned with ``climseg bench static`` (the SASS of every candidate for sm_80 and sm_90 at
    the real layer shapes): every candidate here compiles without register spills, and with
    tensor-core instructions and asynchronous copies in all three dense kernels. Removed:
    256 x 128 x 64 and 128 x 256 x 64 (8 warps), which spilled in all three kernels on sm_80
    and mostly on sm_90, and took 128 KiB of shared memory in the weight gradient; 64 x 64 x 64
    and 128 x 32 x 32, which added nothing another shape does not cover (and the first spilled
    in the input gradient)."""
    import triton

    if arch is None:
        arch = 10 * torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 80
    major = arch // 10
    shapes = [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 64, 32, 4, 4),
        (128, 128, 64, 8, 3),
        (32, 64, 32, 4, 4),
    ]
    if major >= 9:  # Hopper and newer: a deeper pipeline pays off
        shapes += [(128, 128, 64, 8, 4)]
    limit = shared_memory_limit(10 * major)
    spilling = _SPILLING.get((kernel, 10 * min(major, 9), itemsize), set())
    fitting = [s for s in shapes if s[4] * (s[0] + s[1]) * s[2] * itemsize <= limit and s not in spilling]
    fitting = fitting or shapes[-1:]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
        for m, n, k, w, st in fitting
    ]


def _dw_configs(arch=None, itemsize=2):
    """Candidate (BLOCK_P, BLOCK_C, warps) of the depthwise forward and input gradient (128 x 64
    and 256 x 32 with 8 warps were pruned: the first spilled in the fp16 input gradient on sm_80)."""
    import triton

    del arch, itemsize  # the same on every architecture and dtype
    return [
        triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
        for p, c, w in [(64, 64, 4), (128, 32, 4), (32, 128, 4)]
    ]


def _dw_wgrad_configs(arch=None, itemsize=2):
    """The one block shape of the depthwise weight gradient (not tuned: its grid is per tap)."""
    import triton

    del arch, itemsize
    return [triton.Config({"BLOCK_P": 128, "BLOCK_C": 64}, num_warps=4)]


def _interpreter_configs(name):
    """The interpreter's (tests on CPU) one small block shape, whatever the GPU candidates."""
    import triton

    if name.startswith("dense"):
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_P": 64, "BLOCK_C": 32}, num_warps=4)]


_GEMM_KEY = ["M_KEY", "Cin", "Cout", "TAPS_KEY"]
#: kernel name -> (candidate configs of (arch, itemsize), autotuning key, buffer zeroed between trials)
TUNING = {
    "dense_fwd": (functools.partial(_gemm_configs, kernel="dense_fwd"), _GEMM_KEY, None),
    "dense_dgrad": (functools.partial(_gemm_configs, kernel="dense_dgrad"), _GEMM_KEY, None),
    "dense_wgrad": (functools.partial(_gemm_configs, kernel="dense_wgrad"), _GEMM_KEY + ["ATOMIC"], "dw_ptr"),
    "dw_fwd": (_dw_configs, ["M_KEY", "C", "TAPS_KEY"], None),
    "dw_dgrad": (_dw_configs, ["M_KEY", "C", "TAPS_KEY"], None),
    "dw_wgrad": (_dw_wgrad_configs, [], None),
}


def candidates(name, arch, itemsize=2):
    """The autotuning candidates (``triton.Config``) of kernel ``name`` (a key of :data:`TUNING`)
    on compute capability ``arch`` (80: Ampere, 90: Hopper) for operands of ``itemsize`` bytes."""
    return TUNING[name][0](arch, itemsize)


def launch_configs(name, arch, itemsize=2):
    """The configs a launch of kernel ``name`` chooses from: in the interpreter one small block
    shape; else the candidates for ``arch`` (an :func:`architecture`: a capability pair, or a
    label when there is none, then the current GPU's candidates, else sm_80's)."""
    if interpreting():
        return _interpreter_configs(name)
    return candidates(name, 10 * arch[0] if isinstance(arch[0], int) else None, itemsize)


# ---------------------------------------------------------------------------------------------
# the autotuner
# ---------------------------------------------------------------------------------------------
@functools.cache
def tuned(name, kernel, arch, itemsize):
    """The jit function ``kernel`` (named ``name`` in :data:`TUNING`) wrapped in an autotuner for
    this :func:`architecture` and operand size (cached per shape key). Call it as
    ``tuned(...)(grid, *args, M_KEY=..., TAPS_KEY=..., FIXED=deterministic, **constexprs)``."""
    _, key, reset = TUNING[name]
    return _KeyedKernel(name, kernel, launch_configs(name, arch, itemsize), key, reset)


class _KeyedKernel:
    """Autotuning keyed on the problem shape: ``M_KEY`` and ``TAPS_KEY`` are passed by the
    launchers only to key the cache (bucketed pixel count, number of taps). ``FIXED=True``
    (deterministic mode) skips tuning and takes the first config: a tuned choice may differ
    between processes, and another block shape sums in another order."""

    def __init__(self, name, kernel, configs, key, reset):
        self.name = name
        self.configs = configs
        self.key = key
        self.kernel = kernel
        self.cache = {}
        self.reset = reset

    def __call__(self, grid, *args, M_KEY, TAPS_KEY, FIXED=False, **kwargs):
        if record(self.name, self.kernel, args, kwargs, FIXED or len(self.configs) == 1):
            return
        if FIXED or len(self.configs) == 1:  # deterministic mode: the same config in every process
            self._launch(self.configs[0], grid, args, kwargs)
            return
        names = self.kernel.arg_names
        bound = dict(zip(names, args))
        bound.update(kwargs)
        bound["M_KEY"], bound["TAPS_KEY"] = M_KEY, TAPS_KEY
        key = tuple(bound.get(k) for k in self.key) + tuple(str(a.dtype) for a in args if hasattr(a, "dtype"))
        config = self.cache.get(key)
        if config is None:
            config = self._tune(grid, args, kwargs)
            self.cache[key] = config
        self._launch(config, grid, args, kwargs)

    def _launch(self, config, grid, args, kwargs):
        meta = dict(kwargs, **config.kwargs)
        self.kernel[grid(meta)](*args, num_warps=config.num_warps, num_stages=config.num_stages, **meta)

    def _tune(self, grid, args, kwargs):
        import triton.testing

        reset = None
        if self.reset is not None:
            reset = args[self.kernel.arg_names.index(self.reset)]
        best, best_ms = None, float("inf")
        for config in self.configs:

            def run(config=config):
                if reset is not None:
                    reset.zero_()
                self._launch(config, grid, args, kwargs)

            try:
                ms = triton.testing.do_bench(run, warmup=5, rep=20)
            except Exception:  # a config that does not fit this GPU (shared memory, registers)
                continue
            if ms < best_ms:
                best, best_ms = config, ms
        if reset is not None:
            reset.zero_()
        if best is None:
            raise RuntimeError("no kernel configuration could run on this device")
        return best


# ---------------------------------------------------------------------------------------------
# what every launcher computes alike
# ---------------------------------------------------------------------------------------------
def empty(shape, device, dtype):
    """Every buffer the launchers allocate (tests replace this to poison them with NaN)."""
    return torch.empty(shape, device=device, dtype=dtype)


def cdiv(a, b):
    """``ceil(a / b)`` for positive integers: grid sizes and block counts."""
    return (a + b - 1) // b


def pixel_key(m):
    """Pixel counts bucketed to powers of two for the autotuning cache (a launch's ``M_KEY``)."""
    return 1 << max(0, int(m) - 1).bit_length()


def dot_precision(dtype):
    """``tl.dot``'s ``input_precision`` for operands of ``dtype``: "tf32" for fp32 when
    ``torch.backends.cudnn.allow_tf32`` is set (as ``F.conv2d`` follows it) and a GPU runs, else "ieee"."""
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreting()
    return "tf32" if tf32 else "ieee"


def upcast_operands(dtype):
    """True where the dot's operands go to fp32 first: bf16 in the interpreter, whose dot is wrong for bf16."""
    return dtype == torch.bfloat16 and interpreting()


def reduction_splits(tiles, pixels, device, block):
    """How many parts a weight gradient's reduction over ``pixels`` is cut into: enough programs
    (``tiles`` per part) to fill the GPU (about four waves), each part at least four blocks of
    ``block`` pixels long."""
    sms = sm_count(device)
    target = 4 * sms if sms else 64  # the interpreter: split too, so that tests see the split paths
    return max(1, min(cdiv(target, max(1, tiles)), cdiv(pixels, 4 * block)))
