"""The CUDA kernels of ``csrc/cuda``: where they come from and how they are launched.

Three builds of the same sources, one launch interface (``launch(name, grid, block, args)``
with the argument signature each kernel registers):

* ``climseg._cuda``: compiled by nvcc at install time (setup.py). First choice on a GPU.
* CuPy: when ``climseg._cuda`` is absent or cannot run (e.g. the driver is older than the
  toolkit it was built with) and CuPy is installed, the sources are compiled at first use
  with NVRTC through ``cupy.RawModule`` and cached by CuPy: same kernels, no build step.
* ``climseg._cuda_emulated``: g++ builds of the kernels that run on CPU threads over host
  pointers. Slow; it is how CI runs every CUDA kernel without a GPU (``backend="cuda"`` on
  CPU tensors), as the Triton interpreter is for the Triton kernels.

The ops in :mod:`climseg.ops` build the argument lists (device pointers, sizes, the current
stream); nothing here links libtorch, so a new torch build never breaks the extension.
"""

import functools
import os
import sys

import torch

SOURCES = ("cross_entropy.cu", "optimizers.cu", "buckets.cu", "normalize.cu", "atrous.cu")
FLOAT_NAMES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
LABEL_NAMES = {torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8"}


def source_dir():
    """Folder of the ``.cu`` sources: inside the installed package, else the source tree's csrc/cuda."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, "_csrc", "cuda"), os.path.join(os.path.dirname(here), "csrc", "cuda")):
        if os.path.isfile(os.path.join(candidate, "common.cuh")):
            return candidate
    return None


class _Extension:
    """Launches through a compiled module (``climseg._cuda`` or ``climseg._cuda_emulated``)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def has(self, kernel):
        """Whether this build holds ``kernel`` (an older climseg._cuda may lack newer kernels)."""
        return kernel in self.module.kernels()

    def launch(self, kernel, grid, block, args, device=None):
        if device is None or device.type == "cpu":
            stream, index = 0, 0
        else:
            index = device.index if device.index is not None else torch.cuda.current_device()
            stream = torch.cuda.current_stream(index).cuda_stream
        self.module.launch(kernel, tuple(grid), block, stream, index, args)


class _CuPy:
    """Launches kernels compiled from the same sources by NVRTC (``cupy.RawModule``)."""

    def __init__(self, cupy, folder):
        import numpy as np

        self.cupy, self.name = cupy, "cupy"
        code = "".join(f'#include "{s}"\n' for s in SOURCES)
        self.module = cupy.RawModule(code=code, options=("-std=c++17", f"-I{folder}"))
        self._converters = {"p": np.uint64, "l": np.int64, "i": np.int32, "f": np.float32}
        self.signatures = kernel_signatures()
        self._functions = {}

    def has(self, kernel):
        return kernel in self.signatures

    def launch(self, kernel, grid, block, args, device=None):
        function = self._functions.get(kernel)
        if function is None:
            function = self._functions[kernel] = self.module.get_function(kernel)
        signature = self.signatures[kernel]
        if len(args) != len(signature):
            raise ValueError(f"kernel {kernel!r} takes {len(signature)} arguments ({signature}), got {len(args)}")
        values = tuple(self._converters[kind](a) for kind, a in zip(signature, args))
        index = device.index if device.index is not None else torch.cuda.current_device()
        grid = tuple(grid) + (1,) * (3 - len(grid))
        with self.cupy.cuda.Device(index), self.cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream):
            function(grid, (block, 1, 1), values)


def kernel_signatures():
    """Every kernel of csrc/cuda and its argument signature (p pointer, i int32, l int64,
    f float32), as the sources register them; tests check it against the compiled registry."""
    floats, labels = FLOAT_NAMES.values(), LABEL_NAMES.values()
    table = {"mt_norms": "pplp"}
    for t in floats:
        table.update({f"wce_forward_{t}_{lab}": "ppplilllllppppppip" for lab in labels})
        table.update(
            {
                f"wce_finalize_{t}": "plipp",
                f"mt_sumsq_{t}": "pppp",
                f"larc_adam_step_{t}": "ppppffffffffffif",
                f"lamb_moments_{t}": "ppppffffffff",
                f"lamb_step_{t}": "ppppffffff",
                f"normalize_input_{t}": "plliipppplll",
            }
        )
        for d in floats:
            table.update({f"bucket_flatten_{t}_{d}": "ppppf", f"bucket_unflatten_{d}_{t}": "ppppfp"})
    table.update({f"wce_weight_sum_{lab}": "pplillp" for lab in labels})
    for family, dtypes in (("sm70", ("f16", "f32")), ("sm80", ("f16", "bf16", "f32"))):  # csrc/cuda/atrous.cu
        for t in dtypes:
            table[f"atrous_fwd_{t}_{family}"] = "p" * 8 + "i" * 13
            table[f"atrous_dgrad_{t}_{family}"] = "p" * 4 + "i" * 12
            table[f"atrous_wgrad_{t}_{family}"] = "p" * 4 + "i" * 12 + "l" + "i" * 3
    return table


@functools.cache
def _compiled():
    """(launcher or None, why not) for the nvcc build."""
    try:
        from climseg import _cuda
    except ImportError as exc:
        return None, f"climseg._cuda is not built ({exc}); install with nvcc on PATH or CUDA_HOME set"
    problem = _cuda.device_problem()
    if problem:
        return None, f"climseg._cuda: {problem}"
    return _Extension(_cuda, "climseg._cuda"), ""


@functools.cache
def _cupy():
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed"
    folder = source_dir()
    if folder is None:
        return None, "the csrc/cuda sources are not installed"
    try:
        return _CuPy(cupy, folder), ""
    except Exception as exc:  # NVRTC or driver problems: report, fall back to the reference
        return None, f"CuPy could not compile csrc/cuda ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


@functools.cache
def _emulated():
    try:
        from climseg import _cuda_emulated
    except ImportError as exc:
        return None, f"climseg._cuda_emulated is not built ({exc})"
    return _Extension(_cuda_emulated, "climseg._cuda_emulated"), ""


def launcher(device):
    """The launcher for tensors on ``device`` (CUDA: the nvcc build, else CuPy; CPU: the
    emulation), or raise RuntimeError saying why there is none."""
    if device.type == "cpu":
        found, why = _emulated()
        if found is None:
            raise RuntimeError(why)
        return found
    found, why_compiled = _compiled()
    if found is not None:
        return found
    found, why_cupy = _cupy()
    if found is not None:
        return found
    raise RuntimeError(f"no CUDA kernels: {why_compiled}; {why_cupy}")


def probe(tensor):
    """(ok, why not) for the ``"cuda"`` backend of climseg.ops.backend."""
    return _available("cuda" if tensor is None else tensor.device.type)


def _available(device_type):
    """(ok, why not) for tensors of ``device_type``; a constant to torch.compile, which
    therefore never traces the module loading below."""
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        for get in (_compiled, _cupy):
            found, _ = get()
            if found is not None:
                return True, ""
        return False, f"{_compiled()[1]}; {_cupy()[1]}"
    if device_type == "cpu":
        found, why = _emulated()
        return (True, "") if found is not None else (False, why)
    return False, f"no CUDA kernels for {device_type} tensors"


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing ``torch._dynamo`` (a second
    of import time) when nothing has imported it yet. The decorator only sets the attribute that
    Dynamo reads when it meets ``fn`` (``torch/_dynamo/decorators.py``); tests check that the two
    stay the same, and the torch.compile(fullgraph=True) tests that Dynamo honours it."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


_available = _assume_constant_result(_available)


def describe():
    """One line for ``climseg info``: which build of the CUDA kernels is live, and why."""
    parts = []
    try:
        from climseg import _cuda

        version = _cuda.runtime_version()
        built = f"climseg._cuda built for sm {_cuda.architectures} (CUDA {version // 1000}.{version % 1000 // 10})"
    except ImportError:
        built = None
    compiled, why = _compiled()
    if compiled is not None:
        parts.append(built + ": in use")
    else:
        parts.append(f"{built}: not usable here ({why.split(': ', 1)[-1]})" if built else why)
        if torch.cuda.is_available():
            cupy, why_cupy = _cupy()
            parts.append("CuPy (NVRTC) build of the same sources: in use" if cupy is not None else why_cupy)
    emulated, why_emulated = _emulated()
    parts.append(
        "CPU emulation (climseg._cuda_emulated, for tests): available" if emulated is not None else why_emulated
    )
    return "; ".join(parts)


def grid_blocks(items, per_block, cap):
    """Blocks for a grid-stride loop over ``items``: enough to cover them, at most ``cap``."""
    return max(1, min(-(-items // per_block), cap))


def resident_blocks(device, per_sm=8):
    """A grid that fills ``device``: ``per_sm`` blocks per multiprocessor; 2 when emulated."""
    if device.type == "cpu":
        return 2
    return per_sm * torch.cuda.get_device_properties(device).multi_processor_count


def pointer(tensor):
    """Device address of ``tensor``'s first element; 0 for None."""
    return 0 if tensor is None else tensor.data_ptr()
