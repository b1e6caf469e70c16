"""Compiling the CUDA kernels of ``csrc/cuda`` for GPUs that are not there, and reading what came out.

sm_75 and newer: each ``.cu`` is compiled by nvcc to a cubin per architecture with the flags of the
setup.py build (``-O3 -std=c++17``) and ``-Xptxas -v``; :mod:`climseg.verify.sass` reads the
registers, stack and spill bytes that ptxas prints, and the instructions of each kernel's SASS.
sm_70 (Volta), which CUDA 13's nvcc no longer compiles: CUDA 12's NVRTC and ptxas from PyPI
(:mod:`climseg.verify.volta`), with the instructions read from the PTX (no disassembler for sm_70
exists on PyPI). What the rows must show (:func:`climseg.verify.checks.cuda_violations`): the
memory-bound (streaming) kernels load 128 bits per thread on aligned inputs; the atrous
convolution kernels (``atrous_<op>_<dtype>_<family>``) on the architectures their family serves
use tensor cores (HMMA/HGMMA, or ``mma.sync`` in the PTX), 128-bit loads, and, 16-bit on sm_80+,
asynchronous copies. Without nvcc (or the CUDA 12 wheels, for sm_70) there are no rows.
"""

import concurrent.futures
import glob
import os
import re
import subprocess
import tempfile

from climseg.errors import ConfigError
from climseg.verify import volta
from climseg.verify.sass import functions, instruction_counts, ptxas_usage
from climseg.verify.tools import nvcc_path, sass_of

ARCHS = (70, 75, 80, 90)  # what --arch takes for the CUDA kernels; 70 through CUDA 12's NVRTC and ptxas
#: the atrous convolution kernels: operation, dtype and tensor-core family (sm70: mma.sync m8n8k4,
#: compiled below compute capability 8.0; sm80: m16n8k16, from 8.0 on; elsewhere their body traps)
ATROUS = re.compile(r"^atrous_(fwd|dgrad|wgrad)_(f16|bf16|f32)_(sm70|sm80)$")

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
        if done.returncode != 0:  # (kernel: the source's name, as the rows of a failed NVRTC compile)
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
        row = dict(
            kernel=fname,
            source=os.path.basename(source),
            arch=f"sm_{arch}",
            compiled=True,
            read_from="sass",
            memory_bound=bool(MEMORY_BOUND.match(fname)),
            **info.get(fname, {}),
            ldg=counts["ldg"],
            ldg128=counts["ldg128"],
            spill_loads=counts["spill_loads"],
            spill_stores=counts["spill_stores"],
            atomics=counts["atomics"],
            tensor_core=counts["hmma"] + counts["hgmma"],
            async_copies=counts["ldgsts"] + counts["utmaldg"],
            wide_loads=counts["ldg128"] + counts["ldgsts128"],
        )
        rows.append(describe_atrous(row, arch))
    return rows


def _ptx_row(row, arch):
    """A row of climseg.verify.volta (PTX counts, ptxas -v) in the columns of the SASS rows."""
    if not row["compiled"]:
        return row
    row.update(
        memory_bound=bool(MEMORY_BOUND.match(row["kernel"])),
        ldg=row["ld_global"],
        ldg128=row["ld_global128"],
        spill_loads=0,  # ptxas -v's spill bytes and stack frame say it (PTX local arrays may vanish in ptxas)
        spill_stores=0,
        tensor_core=row["mma884"] + row["mma16816"] + row["wmma"],
        async_copies=row["cp_async"],
        wide_loads=row["ld_global128"],
    )
    return describe_atrous(row, arch)


def describe_atrous(row, arch):
    """Adds to an atrous kernel's row its ``family`` and whether it ``serves`` this architecture
    (the other family's body is a trap there)."""
    m = ATROUS.match(row["kernel"])
    if m:
        row["family"] = m.group(3)
        row["serves"] = (m.group(3) == "sm80") == (arch >= 80)
        row["dtype"] = m.group(2)
    return row


def cuda_rows(archs, workers=2):
    """One row per kernel of csrc/cuda and architecture, and ``notes``: why an architecture has no
    rows (no nvcc; no CUDA 12 NVRTC/ptxas for sm_70)."""
    notes = []
    sources = sorted(glob.glob(os.path.join(cuda_sources(), "*.cu")))
    nvcc = nvcc_path()
    jobs = []
    for arch in archs:
        if arch == 70:
            why = volta.problem()
            if why:
                notes.append(f"sm_70: {why}")
            else:
                jobs += [(lambda s=s: [_ptx_row(r, 70) for r in volta.compile_source(s, 70)]) for s in sources]
        elif nvcc is None:
            notes.append(f"sm_{arch}: no nvcc (CUDA_HOME, CUDA_PATH or PATH)")
        else:
            jobs += [(lambda s=s, a=arch: compile_source(nvcc, s, a)) for s in sources]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: job(), jobs))
    rows = sorted((r for rs in results for r in rs), key=lambda r: (r["kernel"], r["arch"]))
    return rows, notes


def _record(case, arch, dtype_name):
    """The launches of one layer's forward and backward on the CUDA kernels for ``arch``: what the
    launchers of :mod:`climseg.ops.atrous_cuda` compute (meta tensors, nothing runs)."""
    import torch

    from climseg.kernels.runtime import ARCHITECTURES
    from climseg.ops import atrous_cuda

    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    _, n, cin, cout, h, w, ks, ds, _ = case
    meta = torch.device("meta")
    x = torch.empty((n, h, w, cin), device=meta, dtype=dtype)
    g = torch.empty((n, h, w, cout * len(ks)), device=meta, dtype=dtype)
    rows, jobs, offset = [], [], 0
    for i, (k, d) in enumerate(zip(ks, ds)):
        pad = d * (k - 1) // 2
        rows.append([offset, k, k, d, d, pad, pad, i * cout])
        jobs += [[offset + t * cin * cout, t // k, t % k, d, d, pad, pad, i * cout] for t in range(k * k)]
        offset += k * k * cin * cout
    table = torch.empty((len(rows), 8), device=meta, dtype=torch.int32)
    job_table = torch.empty((len(jobs), 8), device=meta, dtype=torch.int32)
    packed = torch.empty(offset, device=meta, dtype=dtype)
    family = "sm70" if arch < 80 else "sm80"
    with atrous_cuda.recording(family, ARCHITECTURES[arch]["sm_count"]) as launches:
        atrous_cuda.dense_forward(x, packed, table, cout, cout * len(ks), (h, w), (1, 1))
        atrous_cuda.dense_dgrad(g, packed, table, x.shape, cout, (1, 1))
        atrous_cuda.dense_wgrad(x, g, job_table, offset, cout, (1, 1), deterministic=False)
    return launches


VEC_ARG = {"fwd": 19, "dgrad": 15, "wgrad": 18}  # where each kernel takes `vec` (16-byte loads)


def layer_rows(cases, kernel_rows):
    """The CUDA atrous kernels at the real layer shapes (the dense layers of both anchor networks and
    their fused ASPP blocks): per layer, architecture and kernel the grid the launcher computes,
    whether it takes the 16-byte path, and the resident blocks per SM from the compiled kernel's
    registers and shared memory. The kernels take every size at run time (no specialization), so
    one build per architecture serves every layer."""
    from climseg.verify.checks import occupancy

    compiled = {(r["kernel"], r["arch"]): r for r in kernel_rows if r.get("compiled") and r.get("serves")}
    out = []
    for arch in sorted({int(a[3:]) for _, a in compiled}):
        for case in cases:
            if case[-1] != 1:
                continue  # depthwise: Triton only
            for dtype_name in ("f16", "bf16") if arch >= 80 else ("f16",):
                for name, grid, args in _record(case, arch, dtype_name):
                    kernel = compiled.get((name, f"sm_{arch}"))
                    row = dict(layer=case[0], arch=f"sm_{arch}", kernel=name, grid=list(grid))
                    row.update(blocks=grid[0] * grid[1], vec=bool(args[VEC_ARG[name.split("_")[1]]]))
                    if kernel is None:
                        row.update(compiled=False)
                    else:
                        fit = occupancy(arch, kernel["registers"], kernel.get("shared_bytes", 0), 4)
                        row.update(compiled=True, blocks_per_sm=fit["blocks_per_sm"], fits=fit["fits"])
                    out.append(row)
    return out


def layer_violations(rows):
    """A real layer that does not take the 16-byte path, whose kernel is missing, or does not fit."""
    bad = []
    for r in rows:
        what = f"{r['kernel']} {r['arch']} [{r['layer']}]"
        if not r["compiled"]:
            bad.append(f"{what}: no compiled kernel serves it")
        elif not r["fits"] or not r["blocks_per_sm"]:
            bad.append(f"{what}: one block does not fit an SM")
        if not r["vec"]:
            bad.append(f"{what}: element-wise loads (channels not multiples of 8)")
    return bad
