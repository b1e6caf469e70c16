"""What the static check requires of compiled kernels, and the occupancy that follows from
their resources: rows of numbers in (from :mod:`climseg.verify.triton_kernels` and
:mod:`climseg.verify.cuda_kernels`), one line per violation out.

The GPU limits are the one table of :data:`climseg.kernels.runtime.ARCHITECTURES`.
"""

from climseg.kernels.runtime import ARCHITECTURES

DENSE = ("dense_fwd", "dense_dgrad", "dense_wgrad")  # the kernels that must use tensor cores


def occupancy(arch, registers, shared_bytes, warps):
    """Resident blocks and warps per SM from registers (256-register allocation units per warp,
    a quarter of the register file per SM sub-partition) and shared memory (plus the 1 KiB
    the driver reserves per block); ``fits`` is False when one block exceeds a limit."""
    gpu = ARCHITECTURES[arch]
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    warps_by_regs = 4 * ((gpu["registers_per_sm"] // 4) // regs_per_warp)
    by_regs = warps_by_regs // warps
    by_smem = gpu["shared_per_sm"] // (shared_bytes + 1024) if shared_bytes else gpu["max_blocks_per_sm"]
    by_warps = gpu["max_warps_per_sm"] // warps
    blocks = min(gpu["max_blocks_per_sm"], by_warps, by_regs, by_smem)
    fits = shared_bytes <= gpu["shared_per_block"] and registers <= 255 and blocks >= 1
    limit = min((by_regs, "registers"), (by_smem, "shared memory"), (by_warps, "warps"))[1]
    return dict(blocks_per_sm=max(blocks, 0), warps_per_sm=max(blocks, 0) * warps, occupancy_limit=limit, fits=fits)


def triton_violations(row):
    """What fails in one Triton row: it does not compile or does not fit; it spills; a dense
    kernel in bf16/fp16 without tensor-core instructions or asynchronous copies on sm_80 and newer
    (below, Triton has none: those rows report what it does there)."""
    what = (
        f"{row['kernel']} {row['arch']} {row['dtype']} {row['block']} w{row['num_warps']} s{row['num_stages']}"
        f"{' atomic' if row.get('atomic') else ''} [{', '.join(row['layers'][:2])}]"
    )
    if not row["compiled"]:
        return [f"{what}: does not compile ({row.get('error', '')})"]
    bad = []
    if not row["fits"]:
        bad.append(f"{what}: does not fit ({row['registers']} registers, {row['shared_bytes']} B shared memory)")
    if row["spill_loads"] or row["spill_stores"] or row["local_bytes"]:
        if row.get("read_from") == "ptx":  # sm_70: ptxas's bytes, no instructions to count
            bad.append(f"{what}: spills ({row['spill_stores']} B stores, {row['spill_loads']} B loads)")
        else:
            bad.append(
                f"{what}: spills ({row['spill_stores']} STL, {row['spill_loads']} LDL, {row['local_bytes']} B local)"
            )
    if row["kernel"] in DENSE and row["dtype"] in ("bf16", "fp16") and int(row["arch"][3:]) >= 80:
        if not row["hgmma"] + row["hmma"]:
            bad.append(f"{what}: no tensor-core instructions (HMMA/HGMMA)")
        if not (row["ldgsts"] or row["utmaldg"]):
            bad.append(f"{what}: no asynchronous copies (LDGSTS/UTMALDG)")
    return bad


def cuda_violations(row):
    """What fails in one CUDA row: it does not compile; it spills (or uses local memory); a
    memory-bound kernel without 128-bit loads; an atrous convolution kernel, on an architecture its
    tensor-core family serves, without tensor-core instructions, without 128-bit loads, or (16-bit
    operands on sm_80 and newer) without asynchronous copies."""
    what = f"{row['kernel']} {row['arch']}"
    if not row["compiled"]:
        return [f"{what}: does not compile ({row.get('error', '')[-200:]})"]
    bad = []
    if row.get("spill_store_bytes") or row.get("spill_load_bytes") or row["spill_loads"] or row["spill_stores"]:
        bad.append(f"{what}: spills ({row.get('spill_store_bytes')} B stores, {row.get('spill_load_bytes')} B loads)")
    if row.get("read_from") == "ptx" and row.get("stack_bytes"):
        bad.append(f"{what}: local memory ({row['stack_bytes']} B stack frame)")
    if row["memory_bound"] and not row["ldg128"]:
        bad.append(f"{what}: memory-bound but no 128-bit loads ({row['ldg']} narrower ones)")
    if row.get("serves"):
        if not row["tensor_core"]:
            bad.append(f"{what}: no tensor-core instructions (HMMA/HGMMA, mma.sync)")
        if not row["wide_loads"]:
            bad.append(f"{what}: no 128-bit loads")
        if row["family"] == "sm80" and row["dtype"] != "f32" and not row["async_copies"]:
            bad.append(f"{what}: no asynchronous copies (cp.async / LDGSTS)")
    return bad


def violations(triton=(), cuda=()):
    """What fails the static checks, one line each, Triton rows first (see
    :func:`triton_violations` and :func:`cuda_violations`)."""
    return [v for row in triton for v in triton_violations(row)] + [v for row in cuda for v in cuda_violations(row)]
