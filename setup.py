"""Build of climseg: the Python package, with the Triton kernels of ``kernels/``
installed as the subpackage ``climseg.kernels``; the C++ extension ``climseg._C``
(pybind11, CPU) from ``csrc/cpu``; ``climseg._cuda_emulated``, the CPU emulation of the
CUDA kernels (tests); and ``climseg._cuda``, the CUDA kernels of ``csrc/cuda`` compiled by
nvcc when a CUDA toolkit is found. The ``.cu`` sources are also installed (in
``climseg/_csrc/cuda``) so that CuPy can compile them at run time where ``_cuda`` is absent.

Environment variables (all optional):

    CLIMSEG_SKIP_CUDA_BUILD=1   do not build climseg._cuda even if nvcc is there
    CLIMSEG_FORCE_CUDA_BUILD=1  a failed (or impossible) climseg._cuda build is an error
    CLIMSEG_CUDA_ARCHS="80;90"  GPU architectures (default: the visible GPUs', else 80;90); "70;80;90"
                                needs a CUDA 12 toolkit (CUDA 13 starts at sm_75)
    CLIMSEG_FORCE_CPP_BUILD=1   a failed C++ build (any extension) is an error
    CUDA_HOME                   the toolkit to use (default: nvcc on PATH)

Dependencies are declared here; build requirements and tool settings live in
pyproject.toml. Install PyTorch first (see README): an unpinned ``torch``
requirement resolved by pip alone pulls a multi-GB CUDA build.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py as _build_py

try:  # a build requirement (pyproject.toml); missing only when building without isolation
    from pybind11.setup_helpers import Pybind11Extension
    from pybind11.setup_helpers import build_ext as _build_ext
except ImportError:
    Pybind11Extension = None
    from setuptools.command.build_ext import build_ext as _build_ext

    print("WARNING: climseg: pybind11 is not installed; building without the C++ extension climseg._C", file=sys.stderr)

packages = find_packages(include=["climseg", "climseg.*"]) + ["climseg.kernels"]

# name -> (sources, extra compile flags): always built
EXTENSIONS = {
    "climseg._C": (sorted(glob.glob("csrc/cpu/*.cpp")), ["-O3", "-ffp-contract=off", "-pthread"]),
    "climseg._cuda_emulated": (["csrc/cuda/emulated.cpp"], ["-O2", "-pthread", "-Icsrc/cuda"]),
}
CUDA_EXTENSION = "climseg._cuda"  # nvcc: csrc/cuda/*.cu + csrc/cuda/module.cpp
CUDA_SOURCES = ("csrc/cuda/*.cu", "csrc/cuda/*.cuh", "csrc/cuda/*.h", "csrc/cuda/*.cpp")


def cuda_build_plan():
    """(nvcc command or None, architectures, why): the one place that decides about climseg._cuda."""
    if os.environ.get("CLIMSEG_SKIP_CUDA_BUILD", "0") == "1":
        return None, [], "CLIMSEG_SKIP_CUDA_BUILD=1"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None, [], "no nvcc (set CUDA_HOME or put nvcc on PATH)"
    version = re.search(
        r"release (\d+)\.(\d+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    )
    major = int(version.group(1)) if version else 0
    wanted = os.environ.get("CLIMSEG_CUDA_ARCHS", "").replace(",", ";")
    if not wanted:
        smi = shutil.which("nvidia-smi")
        caps = (
            subprocess.run(
                [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.split()
            if smi
            else []
        )
        wanted = ";".join(sorted({c.replace(".", "") for c in caps if re.fullmatch(r"\d+\.\d+", c)})) or "80;90"
    archs = [a.strip() for a in wanted.split(";") if a.strip()]
    if any(not re.fullmatch(r"\d+[af]?", a) for a in archs):
        return None, [], f"CLIMSEG_CUDA_ARCHS={wanted!r} is not a list like '80;90'"
    if major >= 13 and any(int(re.match(r"\d+", a).group()) < 75 for a in archs):
        return (
            None,
            [],
            (
                f"CUDA {major} cannot compile for {wanted} (sm_70 Volta needs a CUDA 12 toolkit or older; "
                "CUDA 13 starts at sm_75)"
            ),
        )
    return nvcc, archs, f"nvcc {version.group(0) if version else '?'} for sm_{', sm_'.join(archs)}"


def nvcc_build(build, ext, nvcc, archs):
    """Compile csrc/cuda with nvcc (kernels for every architecture, PTX for the newest so that newer
    GPUs JIT it) and link climseg._cuda against the static CUDA runtime: no libtorch."""
    import pybind11

    tmp = os.path.join(build.build_temp, "cuda")
    os.makedirs(tmp, exist_ok=True)
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    common = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Icsrc/cuda"]
    jobs = []
    for source in sorted(glob.glob("csrc/cuda/*.cu")):
        jobs.append(common + gencode + ["-c", source, "-o", os.path.join(tmp, os.path.basename(source) + ".o")])
    jobs.append(
        common
        + [
            f"-I{pybind11.get_include()}",
            f"-I{sysconfig.get_paths()['include']}",
            f'-DCLIMSEG_CUDA_ARCHS="{";".join(archs)}"',
            "-c",
            "csrc/cuda/module.cpp",
            "-o",
            os.path.join(tmp, "module.cpp.o"),
        ]
    )

    def run(cmd):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}\n{done.stdout}{done.stderr}")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(run, jobs))
    target = build.get_ext_fullpath(ext.name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    run(
        [nvcc, "-shared", "-cudart", "static", "-o", target]
        + [cmd[cmd.index("-o") + 1] for cmd in jobs]
        + ["-lrt", "-ldl", "-lpthread"]
    )


class build_ext(_build_ext):
    """A compiled extension that fails to build is a warning, not a failed install: climseg
    then runs the same work through its NumPy/PyTorch paths (``climseg info`` says which).
    ``CLIMSEG_FORCE_CPP_BUILD=1`` makes such a failure an error."""

    def build_extension(self, ext):
        if ext.name == CUDA_EXTENSION:
            return self.build_cuda(ext)
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler missing or failing: any of distutils' error types
            if os.environ.get("CLIMSEG_FORCE_CPP_BUILD", "0") == "1":
                raise
            print(
                f"WARNING: climseg: building {ext.name} failed ({exc}); installing without it, "
                "the pure-Python paths will be used",
                file=sys.stderr,
            )

    def build_cuda(self, ext):
        force = os.environ.get("CLIMSEG_FORCE_CUDA_BUILD", "0") == "1"
        nvcc, archs, why = cuda_build_plan()
        if nvcc is None:
            if force:
                raise RuntimeError(f"climseg: CLIMSEG_FORCE_CUDA_BUILD=1 but {CUDA_EXTENSION} cannot be built: {why}")
            print(f"climseg: not building {CUDA_EXTENSION}: {why}", file=sys.stderr)
            return
        print(f"climseg: building {CUDA_EXTENSION} with {why}", file=sys.stderr)
        try:
            nvcc_build(self, ext, nvcc, archs)
        except Exception as exc:
            if force:
                raise
            print(
                f"WARNING: climseg: building {CUDA_EXTENSION} failed ({str(exc)[-2000:]}); installing without it: "
                "CuPy (if installed) or the PyTorch references will run instead",
                file=sys.stderr,
            )


class build_py(_build_py):
    """Also installs the csrc/cuda sources as climseg/_csrc/cuda, for CuPy's run-time compilation."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "climseg", "_csrc", "cuda")
        os.makedirs(target, exist_ok=True)
        for pattern in CUDA_SOURCES:
            for source in glob.glob(pattern):
                shutil.copy2(source, target)


setup(
    name="climseg",
    version="0.1.0",
    description="DeepLabv3+ segmentation of tropical cyclones and atmospheric rivers "
    "in climate simulation data, from a laptop CPU to thousands of GPUs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=packages,
    package_dir={"climseg.kernels": "kernels"},
    ext_modules=(
        [
            Pybind11Extension(
                name,
                sources,
                cxx_std=17,
                extra_compile_args=flags,
                extra_link_args=["-pthread"],
                depends=sorted(glob.glob("csrc/cuda/*.cu*") + glob.glob("csrc/cuda/*.h") + ["csrc/cuda/module.cpp"]),
            )
            for name, (sources, flags) in EXTENSIONS.items()
        ]
        + [Pybind11Extension(CUDA_EXTENSION, sorted(glob.glob("csrc/cuda/*.cpp")))]
    )
    if Pybind11Extension is not None
    else [],
    cmdclass={"build_ext": build_ext, "build_py": build_py},
    install_requires=[
        "torch>=2.3",
        "numpy>=1.22",
        "scipy>=1.9",
        "h5py>=3.6",
        "netCDF4>=1.6",
        "matplotlib>=3.5",
        "tqdm>=4.60",
        "pyyaml>=5.4",
        "cftime>=1.5",  # CF time axes of climseg track (also a netCDF4 dependency)
        "global-land-mask>=1.0",  # coastlines of climseg analyze's maps: ships its land mask, no download
    ],
    extras_require={
        # Triton: from 3.6 (what PyTorch 2.11's CUDA wheels pin) to 3.9, both ends tested in CI (.ci/run);
        # the kernels' tests run in Triton's CPU interpreter, `climseg bench static` compiles them for sm_80/sm_90;
        # the MLPerf log is checked by mlperf-logging's compliance checker; the layers by import-linter;
        # predict's int8 path by torchao; CUDA 12's NVRTC and ptxas (volta, below) let the tests compile
        # the CUDA kernels for sm_70 too
        "test": [
            "pytest>=7",
            "triton>=3.6,<3.10",
            "mlperf-logging>=4.1",
            "import-linter>=2.1",
            "torchao>=0.18",
            "nvidia-cuda-nvrtc-cu12>=12.4,<13",
            "nvidia-cuda-nvcc-cu12>=12.4,<13",
        ],
        # `ruff check`, `ruff format --check` (pinned: formatting must not change under the code) and `lint-imports`
        "lint": ["ruff==0.17.6", "import-linter>=2.1"],
        "mlperf": ["mlperf-logging>=4.1"],  # --mlperf-log (MLPerf HPC :::MLLOG logs)
        "triton": ["triton>=3.6,<3.10"],
        "mpi": ["mpi4py>=3.1"],  # plus an MPI: the system's, or `pip install mpich`
        "cuda": ["cupy-cuda12x>=13"],
        # `climseg bench static --arch 70`: Volta through CUDA 12's NVRTC and ptxas (CUDA 13 starts at sm_75)
        "volta": ["nvidia-cuda-nvrtc-cu12>=12.4,<13", "nvidia-cuda-nvcc-cu12>=12.4,<13"],
        "docs": ["mkdocs>=1.5", "mkdocs-material>=9", "mkdocstrings[python]>=0.24"],  # mkdocs build --strict
        "parquet": ["pyarrow>=12"],  # climseg track also writes its tables as Parquet
        "trainers": ["pytorch-lightning>=2.4", "accelerate>=1.0"],  # tests/test_trainers.py, docs/trainers.md
        # predict --precision int8: PyTorch 2's export-based quantization (x86 quantizer), which left torch.ao
        "int8": ["torchao>=0.18"],
    },
    entry_points={"console_scripts": ["climseg=climseg.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: C++",
        "Topic :: Scientific/Engineering :: Atmospheric Science",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
