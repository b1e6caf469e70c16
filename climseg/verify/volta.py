"""Compiling the CUDA kernels for Volta (sm_70) without a GPU and without a CUDA 12 toolkit.

CUDA 13's nvcc starts at sm_75, so the sm_70 check takes CUDA 12's compiler pieces from PyPI:

* ``nvidia-cuda-nvrtc-cu12`` (``libnvrtc.so.12``, loaded with ctypes): compiles each ``.cu`` of
  ``csrc/cuda`` to PTX for ``compute_70`` (the sources include no CUDA header; the include folder of
  a CUDA toolkit beside ``nvcc``, when there is one, is on the include path too);
* ``nvidia-cuda-nvcc-cu12``: its wheel carries ``ptxas``, which assembles the PTX for ``sm_70`` with
  ``-v`` (registers, stack, spill bytes, shared memory per kernel: :func:`climseg.verify.sass.ptxas_usage`).

No disassembler for sm_70 exists on PyPI (the cuobjdump and nvdisasm of CUDA 13.1+, e.g. Triton's,
refuse SM70 cubins), so the instructions are read from the PTX (:func:`climseg.verify.sass.ptx_counts`:
``mma.sync.aligned.m8n8k4``, ``wmma.mma.sync``, ``cp.async``, 128-bit ``ld.global.v4``), and the
resources from ``ptxas -v``. Install both with ``pip install "climseg[volta]"``; without them there are
no sm_70 rows and the report says why.
"""

import ctypes
import glob
import os
import subprocess
import tempfile

from climseg.verify.sass import ptx_counts, ptx_entries, ptxas_usage
from climseg.verify.tools import nvcc_path

WHEELS = "pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvcc-cu12 (or climseg[volta])"


def _package_dir(name):
    try:
        module = __import__(f"nvidia.{name}", fromlist=["_"])
    except ImportError:
        return None
    paths = list(getattr(module, "__path__", []))
    return paths[0] if paths else None


def nvrtc_library():
    """Path of CUDA 12's ``libnvrtc.so.12`` (the nvidia-cuda-nvrtc-cu12 wheel), or None."""
    folder = _package_dir("cuda_nvrtc")
    found = sorted(glob.glob(os.path.join(folder, "lib", "libnvrtc.so.12*"))) if folder else []
    return found[0] if found else None


def ptxas12():
    """Path of CUDA 12's ``ptxas`` (the nvidia-cuda-nvcc-cu12 wheel), or None."""
    folder = _package_dir("cuda_nvcc")
    path = os.path.join(folder, "bin", "ptxas") if folder else None
    return path if path and os.path.exists(path) else None


def problem():
    """'' when both CUDA 12 pieces are installed, else what is missing and how to get it."""
    missing = [n for n, p in (("NVRTC 12", nvrtc_library()), ("ptxas 12", ptxas12())) if p is None]
    return f"no {' and no '.join(missing)} for sm_70: {WHEELS}" if missing else ""


def toolkit_include():
    """The include folder of the CUDA toolkit beside nvcc (for NVRTC), or None."""
    nvcc = nvcc_path()
    if nvcc is None:
        return None
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
    if not os.path.isfile(os.path.join(folder, "cuda_runtime.h")):  # a wrapper script: ask nvcc where its toolkit is
        done = subprocess.run([nvcc, "--dryrun", "-E", "-x", "cu", os.devnull], capture_output=True, text=True)
        for line in (done.stderr + done.stdout).splitlines():
            if "TOP=" in line:
                folder = os.path.normpath(os.path.join(line.split("TOP=", 1)[1].strip(), "include"))
    return folder if os.path.isfile(os.path.join(folder, "cuda_runtime.h")) else None


def nvrtc_version(library=None):
    """``12.9`` from NVRTC itself."""
    lib = ctypes.CDLL(library or nvrtc_library())
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def nvrtc_ptx(source, arch, library=None):
    """``(ptx or None, log)``: ``source`` (a .cu path) compiled by NVRTC 12 for ``compute_<arch>``."""
    lib = ctypes.CDLL(library or nvrtc_library())
    with open(source, "rb") as f:
        text = f.read()
    program = ctypes.c_void_p()
    status = lib.nvrtcCreateProgram(ctypes.byref(program), text, os.path.basename(source).encode(), 0, None, None)
    if status != 0:
        return None, f"nvrtcCreateProgram failed ({status})"
    options = [f"--gpu-architecture=compute_{arch}", "-std=c++17", f"-I{os.path.dirname(source)}"]
    include = toolkit_include()
    if include:
        options.append(f"-I{include}")
    array = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    try:
        status = lib.nvrtcCompileProgram(program, len(options), array)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, log)
        if status != 0:
            return None, log.value.decode(errors="replace")
        lib.nvrtcGetPTXSize(program, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetPTX(program, ptx)
        return ptx.value.decode(), log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


def compile_source(source, arch=70):
    """One .cu for sm_<arch> through NVRTC 12 and ptxas 12 -v: one row per kernel, with the PTX's
    instruction counts and ptxas's resources."""
    name = os.path.basename(source)
    ptx, log = nvrtc_ptx(source, arch)
    if ptx is None:
        return [dict(kernel=name, arch=f"sm_{arch}", compiled=False, error=f"NVRTC: {log[-500:]}")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run(
            [ptxas12(), "-v", f"-arch=sm_{arch}", "-O3", path, "-o", os.path.join(tmp, "m.cubin")],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        return [dict(kernel=name, arch=f"sm_{arch}", compiled=False, error=f"ptxas: {done.stderr[-500:]}")]
    usage = ptxas_usage(done.stderr + done.stdout)
    rows = []
    for kernel, counts in ptx_entries(ptx).items():
        rows.append(dict(kernel=kernel, source=name, arch=f"sm_{arch}", compiled=True, read_from="ptx", **counts))
        rows[-1].update(usage.get(kernel, {}))
    return rows


def ptx_row(ptx, arch=70):
    """What the static check reads of one compiled kernel, from its PTX and ``ptxas -v`` (CUDA 12's
    ptxas) where no disassembler can read the cubin: registers, spill bytes (as ``spill_*``), local
    bytes, static shared memory, and the instruction counts in the SASS rows' names (``hmma``: any
    ``mma.sync``/``wmma.mma``; ``ldgsts``: ``cp.async``; ``ldg``/``ldg128``: global loads)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run(
            [ptxas12(), "-v", f"-arch=sm_{arch}", path, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    if done.returncode != 0:
        raise RuntimeError(f"ptxas 12 for sm_{arch}: {done.stderr[-300:]}")
    usage = next(iter(ptxas_usage(done.stderr + done.stdout).values()), {})
    counts = ptx_counts(ptx)
    return dict(
        registers=usage.get("registers", 0),
        stack_bytes=usage.get("stack_bytes", 0),
        local_bytes=usage.get("stack_bytes", 0),
        static_shared=usage.get("shared_bytes", 0),
        spill_stores=usage.get("spill_store_bytes", 0),
        spill_loads=usage.get("spill_load_bytes", 0),
        instructions=0,
        hmma=counts["mma884"] + counts["mma16816"] + counts["wmma"],
        hgmma=0,
        ldgsts=counts["cp_async"],
        utmaldg=0,
        atomics=counts["atomics"],
        ldg=counts["ld_global"],
        ldg128=counts["ld_global128"],
        read_from="ptx",
    )
