"""Compiling the CUDA kernels of ``csrc/cuda`` with nvcc for GPUs that are not there, and reading
what came out.

Each ``.cu`` is compiled to a cubin per architecture with the flags of the setup.py build
(``-O3 -std=c++17``) and ``-Xptxas -v``; :mod:`climseg.verify.sass` reads the registers, stack
and spill bytes that ptxas prints, and the global loads of each kernel's SASS. The
memory-bound (streaming) kernels must load 128 bits per thread (``LDG.E.128``) on aligned
inputs. Without nvcc there are no rows.
"""

import concurrent.futures
import glob
import os
import re
import subprocess
import tempfile

from climseg.errors import ConfigError
from climseg.verify.sass import functions, instruction_counts, ptxas_usage
from climseg.verify.tools import nvcc_path, sass_of

# csrc/cuda kernels that stream arrays (one pass, a few flops per element): their global
# loads must be 128 bits wide on aligned inputs
MEMORY_BOUND = re.compile(r"^(bucket_flatten|bucket_unflatten|mt_sumsq|larc_adam_step|lamb_moments|lamb_step)_")


def cuda_sources():
    """The csrc/cuda folder: the source tree's, else the one installed with climseg."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (os.path.join(os.path.dirname(here), "csrc", "cuda"), os.path.join(here, "_csrc", "cuda")):
        if glob.glob(os.path.join(folder, "*.cu")):
            return folder
    raise ConfigError("climseg bench static: no csrc/cuda sources found (run from a source tree)")


def compile_source(nvcc, source, arch):
    """Compile one .cu for sm_<arch> as setup.py does (-O3 -std=c++17) with -Xptxas -v; one row
    per kernel: registers, stack and spill bytes, and the load widths from the SASS."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "m.cubin")
        command = [
            nvcc,
            "-O3",
            "-std=c++17",
            f"-I{os.path.dirname(source)}",
            "-cubin",
            f"-arch=sm_{arch}",
            "-Xptxas",
            "-v",
            source,
            "-o",
            cubin,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            return [
                dict(
                    kernel=os.path.basename(source),
                    arch=f"sm_{arch}",
                    compiled=False,
                    error=(done.stderr or done.stdout)[-500:],
                )
            ]
        sass = sass_of(cubin)
    info = ptxas_usage(done.stderr)
    rows = []
    for fname, body in functions(sass).items():
        counts = instruction_counts(body)
        rows.append(
            dict(
                kernel=fname,
                source=os.path.basename(source),
                arch=f"sm_{arch}",
                compiled=True,
                memory_bound=bool(MEMORY_BOUND.match(fname)),
                **info.get(fname, {}),
                ldg=counts["ldg"],
                ldg128=counts["ldg128"],
                spill_loads=counts["spill_loads"],
                spill_stores=counts["spill_stores"],
                atomics=counts["atomics"],
            )
        )
    return rows


def cuda_rows(archs, workers=2):
    """One row per kernel of csrc/cuda and architecture (empty without nvcc)."""
    nvcc = nvcc_path()
    if nvcc is None:
        return []
    sources = sorted(glob.glob(os.path.join(cuda_sources(), "*.cu")))
    jobs = [(s, a) for s in sources for a in archs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: compile_source(nvcc, *job), jobs))
    return sorted((r for rs in results for r in rs), key=lambda r: (r["kernel"], r["arch"]))
