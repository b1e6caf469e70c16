"""The static check's report: the environment it ran in (``meta``), then the rows and the
violations written as JSON (``meta`` + ``rows``) and as markdown tables beside it, through
:mod:`climseg.output` (atomic writes).
"""

import datetime
import os
import platform

from climseg.verify.tools import nvcc_path, nvcc_version


def environment(command, archs):
    """Versions (Triton, torch, nvcc, Python), architectures, machine, date and ``command``."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from climseg.verify import volta

    nvcc = nvcc_path()
    return dict(
        triton=triton_version,
        torch=torch.__version__,
        nvcc=nvcc_version(nvcc) if nvcc else None,
        nvrtc_sm70=None if volta.problem() else volta.nvrtc_version(),
        archs=[f"sm_{a}" for a in archs],
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU needed",
        python=platform.python_version(),
        date=datetime.date.today().isoformat(),
        command=command,
    )


def _block(r):
    b = r["block"]
    stages = f" s{r['num_stages']}" if r["kernel"].startswith("dense") else ""
    return "x".join(str(v) for v in b.values()) + f" w{r['num_warps']}" + stages


def _triton_table(triton):
    lines = [
        "",
        "## Triton kernels",
        "",
        "One row per kernel, architecture, dtype, candidate and specialization (`/16`: the JIT's "
        "divisibility-by-16 attribute); MMA: HMMA (sm_80) or HGMMA (sm_90) instructions; async: LDGSTS "
        "(cp.async) + UTMALDG (TMA) instructions; warps/SM: resident warps per SM (limit). On sm_70 (read from the "
        "PTX: no disassembler) the spills are ptxas's bytes (`B`), not instructions.",
        "",
        "| kernel | arch | dtype | block w stages | layers | regs | spills (STL/LDL) | smem KiB | MMA |"
        " async | LDG.128 / LDG | atomics | warps/SM |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in triton:
        name = r["kernel"] + (" (atomic)" if r.get("atomic") else "")
        name += " (det.)" if r.get("deterministic_only") else ""
        if not r["compiled"]:
            lines.append(
                f"| {name} | {r['arch']} | {r['dtype']} | {_block(r)} | {len(r['layers'])} | "
                f"does not compile: {r['error'][:80]} ||||||||"
            )
            continue
        lines.append(
            f"| {name} | {r['arch']} | {r['dtype']} | {_block(r)} | {len(r['layers'])} | {r['registers']} | "
            f"{r['spill_stores']}/{r['spill_loads']}{' B' if r.get('read_from') == 'ptx' else ''} | "
            f"{r['shared_bytes'] / 1024:.0f} | "
            f"{r['hmma'] + r['hgmma']} | {r['ldgsts'] + r['utmaldg']} | {r['ldg128']}/{r['ldg']} | "
            f"{r['atomics']} | {r['warps_per_sm']} ({r['occupancy_limit']}) |"
        )
    specs = sorted({(r["kernel"], r["specialization"], tuple(r["layers"])) for r in triton})
    lines += ["", "Specializations (the JIT's, per kernel) and the layers they serve:", ""]
    lines += [f"- {k}: `{s}` ({'; '.join(layers)})" for k, s, layers in specs]
    return lines


def _cuda_table(cuda):
    lines = [
        "",
        "## CUDA kernels (csrc/cuda; nvcc -O3, sm_70: NVRTC 12 + ptxas 12)",
        "",
        "Read from the SASS, or on sm_70 from the PTX (`ptx`: no disassembler for sm_70 exists on PyPI): "
        "MMA: HMMA/HGMMA instructions, or `mma.sync` in the PTX; async: LDGSTS, or `cp.async`; 128-bit: "
        "LDG.E.128 + LDGSTS.128, or `ld.global.v4`. Atrous kernels of a tensor-core family that does not "
        "serve the architecture are a trap there (`—`).",
        "",
        "| kernel | arch | regs | stack B | spill stores/loads B | smem B | LDG.128 / LDG | MMA | async | 128-bit |"
        " memory-bound | read from |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in cuda:
        if not r["compiled"]:
            lines.append(f"| {r['kernel']} | {r['arch']} | does not compile ||||||||||")
            continue
        gated = "family" in r and not r["serves"]
        mma = "—" if gated else r.get("tensor_core", 0)
        lines.append(
            f"| {r['kernel']} | {r['arch']} | {r.get('registers', '?')} | {r.get('stack_bytes', 0)} | "
            f"{r.get('spill_store_bytes', 0)}/{r.get('spill_load_bytes', 0)} | {r.get('shared_bytes', '')} | "
            f"{r['ldg128']}/{r['ldg']} | {mma} | {'—' if gated else r.get('async_copies', 0)} | "
            f"{'—' if gated else r.get('wide_loads', 0)} | {'yes' if r['memory_bound'] else ''} | "
            f"{r.get('read_from', 'sass')} |"
        )
    return lines


def _layer_table(layers):
    lines = [
        "",
        "## CUDA atrous kernels at the real layers",
        "",
        "The launch each layer gets (batch 2 at a 768 x 1152 input; `climseg.ops.atrous_cuda` run on meta "
        "tensors): grid (blocks), 16-byte loads, resident blocks per SM from the kernel's registers and shared "
        "memory (128 threads each).",
        "",
        "| layer | arch | kernel | grid | blocks | 16-byte loads | blocks/SM |",
        "|---|---|---|---|---:|---|---:|",
    ]
    for r in layers:
        lines.append(
            f"| {r['layer']} | {r['arch']} | {r['kernel']} | {' x '.join(map(str, r['grid']))} | {r['blocks']} | "
            f"{'yes' if r['vec'] else 'no'} | {r.get('blocks_per_sm', '-')} |"
        )
    return lines


def markdown(triton, cuda, meta):
    """The report as markdown: environment, violations, the Triton and the CUDA table."""
    lines = [
        f"# Static check of the GPU kernels ({meta['date']})",
        "",
        f"Triton {meta['triton']}, nvcc {meta['nvcc']}, NVRTC/ptxas {meta.get('nvrtc_sm70')} (sm_70), "
        f"torch {meta['torch']}; {', '.join(meta['archs'])}; "
        f"compiled on {meta['machine']} in {meta['seconds']:.0f} s (kernels already in Triton's cache are "
        "not compiled again)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Checks: {'all pass' if not meta['violations'] else str(len(meta['violations'])) + ' violations'}",
        "",
    ]
    lines += [f"- {v}" for v in meta["violations"]]
    if meta.get("cuda_note"):
        lines += ["", f"Not checked: {meta['cuda_note']}"]
    if triton:
        lines += _triton_table(triton)
    if cuda:
        lines += _cuda_table(cuda)
    if meta.get("cuda_layers"):
        lines += _layer_table(meta["cuda_layers"])
    return "\n".join(lines) + "\n"


def write(triton, cuda, meta, path):
    """JSON (meta + rows) at ``path`` and the markdown tables beside it (``.md``)."""
    from climseg.output import atomic_path, write_json

    write_json(path, dict(meta=meta, rows=triton + cuda))
    with atomic_path(os.path.splitext(path)[0] + ".md") as tmp, open(tmp, "w") as f:
        f.write(markdown(triton, cuda, meta))
