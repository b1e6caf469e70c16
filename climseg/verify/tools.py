"""The CUDA tools the static check runs, found and run: ``cuobjdump`` and ``nvdisasm`` (the ones
shipped in Triton's wheel, else a CUDA toolkit's on ``PATH``) and ``nvcc`` (``CUDA_HOME``,
``CUDA_PATH`` or ``PATH``). What they print is read by :mod:`climseg.verify.sass`.
"""

import os
import re
import shutil
import subprocess
import tempfile

from climseg.errors import ConfigError


def tool(name):
    """cuobjdump / nvdisasm: the ones shipped with Triton, else a CUDA toolkit's on PATH."""
    try:
        import triton

        shipped = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(shipped):
            return shipped
    except ImportError:
        pass
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"climseg bench static: {name} not found (install triton, or a CUDA toolkit on PATH)")
    return found


def nvcc_path():
    """The nvcc of ``CUDA_HOME`` or ``CUDA_PATH``, else the one on PATH; None when there is none."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    return nvcc if nvcc and os.path.exists(nvcc) else None


def nvcc_version(nvcc):
    """``13.0.88`` from ``nvcc --version`` (``unknown`` when it says no version)."""
    m = re.search(
        r"release ([\d.]+), V([\d.]+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    )
    return m.group(2) if m else "unknown"


def sass_of(cubin_path):
    """The SASS listing of a cubin file (``cuobjdump -sass``)."""
    return subprocess.run([tool("cuobjdump"), "-sass", cubin_path], capture_output=True, text=True).stdout


def disassemble(cubin):
    """``(resource usage, SASS)`` texts of a cubin given as bytes (``cuobjdump -res-usage`` and
    ``cuobjdump -sass``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        return usage, sass_of(path)
