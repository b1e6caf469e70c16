"""Static check of the GPU kernels, without a GPU: compile every kernel for sm_80 and
sm_90 and read its machine code (SASS).

Triton kernels (``climseg.kernels.atrous``): every kernel x every autotuning candidate x
dtype (fp32 as TF32) x architecture, at the real layer shapes of ``climseg bench atrous``
(kurth2018 and deepcam at 768 x 1152, plus the fused ASPP blocks). Data flow:

1. the real launchers run on ``torch.device("meta")`` tensors inside
   :func:`climseg.kernels.atrous.recording`, which records each launch's arguments instead
   of launching (so every integer and pointer is exactly what a real launch passes);
2. Triton's own JIT binder (``create_function_from_signature`` and
   ``JITFunction._pack_args``, the code ``kernel[grid](...)`` runs) turns them into the
   specialization (types, ``tt.divisibility`` 16 attributes, integers equal to 1 made
   constants) for a :class:`triton.backends.compiler.GPUTarget` of the wanted architecture;
3. launches with the same specialization and candidate compile once (``triton.compile``,
   a pool of processes); ``cuobjdump`` (shipped in ``triton/backends/nvidia/bin``) gives
   the SASS and the resource usage: registers, spills (LDL/STL), shared memory,
   tensor-core instructions (HMMA, HGMMA), asynchronous copies (LDGSTS, UTMALDG), atomics,
   128-bit loads, and the occupancy (resident warps per SM) that follows from registers and
   shared memory on that architecture.

CUDA kernels (``csrc/cuda``): each ``.cu`` compiled by nvcc to a cubin per architecture
with the flags of the setup.py build and ``-Xptxas -v``: registers, spill bytes, and the
widths of the global loads; the memory-bound (streaming) kernels must load 128 bits per
thread (``LDG.E.128``) on aligned inputs.

:func:`violations` lists what fails the checks (``tests/test_static.py`` runs them in CI).

    climseg bench static [--arch 80,90] [--dtype bf16,fp16,fp32] [--kernels triton,cuda] [--json OUT]
"""
import argparse
import concurrent.futures
import datetime
import glob
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from climseg.bench import command_line, result_path
from climseg.errors import ConfigError
from climseg.kernels.runtime import ARCHITECTURES

ARCHS = tuple(ARCHITECTURES)       # the architectures checked (compute capability: 80, 90)

DTYPES = ("bf16", "fp16", "fp32")
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}
DENSE = ("dense_fwd", "dense_dgrad", "dense_wgrad")
# csrc/cuda kernels that stream arrays (one pass, a few flops per element): their global
# loads must be 128 bits wide on aligned inputs
MEMORY_BOUND = re.compile(r"^(bucket_flatten|bucket_unflatten|mt_sumsq|larc_adam_step|lamb_moments|lamb_step)_")


# ---------------------------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------------------------
def layer_cases():
    """(name, N, Cin, Cout, H, W, kernel sizes, dilations, groups): the layers of ``climseg
    bench atrous`` (one conv each) and the fused ASPP blocks (a 1x1 and three dilated 3x3
    branches in one launch), all at a 768 x 1152 input, batch 2."""
    from climseg.bench.atrous import layers

    cases = [(name, n, cin, cout, h, w, (k,), (d,), groups) for name, n, cin, cout, h, w, k, d, groups in layers()]
    cases.append(("kurth2018 ASPP block (fused)", 2, 2048, 256, 96, 144, (1, 3, 3, 3), (1, 12, 24, 36), 1))
    cases.append(("deepcam ASPP block (fused)", 2, 2048, 256, 48, 72, (1, 3, 3, 3), (1, 6, 12, 18), 1))
    return cases


def parse_layer(text):
    """A layer given on the command line: ``name:N,Cin,Cout,H,W,k,dilation,groups``."""
    name, _, numbers = text.rpartition(":")
    try:
        n, cin, cout, h, w, k, d, groups = (int(v) for v in numbers.split(","))
    except ValueError:
        raise ConfigError(f"--layer {text!r}: expected name:N,Cin,Cout,H,W,k,dilation,groups (integers)") from None
    if min(n, cin, cout, h, w, k, d, groups) < 1 or cin % groups or (groups > 1 and (groups != cin or cout != cin)):
        raise ConfigError(f"--layer {text!r}: sizes must be positive; groups is 1 or Cin = Cout (depthwise)")
    return (name or f"{n}x{cin}x{h}x{w}->{cout} {k}x{k} d{d}", n, cin, cout, h, w, (k,), (d,), groups)


def record_launches(case, dtype_name, arch):
    """The kernel launches (name, jit function, args, kwargs, fixed) of one layer's forward and
    backward, as the launchers of climseg.kernels.atrous compute them for a GPU of ``arch``."""
    import torch

    from climseg.kernels import atrous as K
    from climseg.kernels.runtime import recording

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    _, n, cin, cout, h, w, ks, ds, groups = case
    meta = torch.device("meta")
    x = torch.empty((n, h, w, cin), device=meta, dtype=dtype)
    g_channels = cout * len(ks)
    g = torch.empty((n, h, w, g_channels), device=meta, dtype=dtype)
    torch.backends.cudnn.allow_tf32 = True         # fp32 as TF32, as the launchers do by default
    with recording(ARCHITECTURES[arch]["sm_count"]) as launches:
        if groups == 1:
            rows, jobs, offset = [], [], 0
            for i, (k, d) in enumerate(zip(ks, ds)):
                pad = d * (k - 1) // 2
                rows.append([offset, k, k, d, d, pad, pad, i * cout])
                for t in range(k * k):
                    jobs.append([offset + t * cin * cout, t // k, t % k, d, d, pad, pad, i * cout])
                offset += k * k * cin * cout
            table = torch.empty((len(rows), 8), device=meta, dtype=torch.int32)
            job_table = torch.empty((len(jobs), 8), device=meta, dtype=torch.int32)
            packed = torch.empty(offset, device=meta, dtype=dtype)
            K.dense_forward(x, packed, table, cout, g_channels, (h, w), (1, 1))
            K.dense_dgrad(g, packed, table, x.shape, cout, (1, 1))
            K.dense_wgrad(x, g, job_table, offset, cout, (1, 1), deterministic=False)
            K.dense_wgrad(x, g, job_table, offset, cout, (1, 1), deterministic=True)
        else:
            k, d = ks[0], ds[0]
            pad = d * (k - 1) // 2
            taps = torch.empty((k * k, cin), device=meta, dtype=dtype)
            K.depthwise_forward(x, taps, (k, k), (1, 1), (pad, pad), (d, d), (h, w))
            K.depthwise_dgrad(g, taps, x.shape, (k, k), (1, 1), (pad, pad), (d, d))
            K.depthwise_wgrad(x, g, (k, k), (1, 1), (pad, pad), (d, d))
    return launches


def specialize(fn, arch, args, kwargs, config):
    """Triton's own specialization of ``fn[grid](*args, **kwargs, **config)`` for ``sm_<arch>``:
    (signature, constexprs, attrs, options), what ``JITFunction.run`` hands to ``triton.compile``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kw = dict(kwargs, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages, debug=False)
    bound, specialization, options = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, specialization, options)
    return signature, constexprs, attrs, options


def _freeze(obj):
    if isinstance(obj, dict):
        return tuple(sorted((repr(k), _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(_freeze(v) for v in obj)
    return repr(obj)


def _spec_text(signature, attrs):
    """``g_ptr:*bf16/16 H:i32/16 NB:i32 stride_h=1 ...``: types, divisibility 16, constants."""
    out = []
    for i, (name, ty) in enumerate(signature.items()):
        if ty == "constexpr":
            continue
        div = any(a[0] == "tt.divisibility" for a in attrs.get((i,), []))
        out.append(f"{name}:{ty}{'/16' if div else ''}")
    return " ".join(out)


# ---------------------------------------------------------------------------------------------
# worker side (a fresh process: Triton compiles, not interprets)
# ---------------------------------------------------------------------------------------------
def _worker_init():
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9's default, stated (silences a warning)


def plan_job(case, dtype_name, arch):
    """Worker: every (kernel, candidate) of one layer, dtype and architecture with its
    specialization key: [(kernel, launch index, candidate index, key, spec text, atomic)]."""
    from climseg.kernels.runtime import candidates

    out = []
    for index, (name, fn, args, kwargs, fixed) in enumerate(record_launches(case, dtype_name, arch)):
        configs = candidates(name, arch, ITEMSIZE[dtype_name])
        if fixed:
            configs = configs[:1]       # deterministic mode runs the first candidate only
        for ci, config in enumerate(configs):
            signature, constexprs, attrs, options = specialize(fn, arch, args, kwargs, config)
            key = (name, arch, _freeze(signature), _freeze(constexprs), _freeze(attrs), _freeze(options.__dict__))
            out.append((name, index, ci, key, _spec_text(signature, attrs), bool(kwargs.get("ATOMIC", False)),
                        fixed))
    return out


def compile_job(case, dtype_name, arch, index, ci, block=None):
    """Worker: compile launch ``index`` of a layer with candidate ``ci`` (or the block shape
    ``block`` = (meta-parameters, warps, stages), e.g. a pruned one) and read its SASS."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from climseg.kernels.runtime import candidates

    name, fn, args, kwargs, _ = record_launches(case, dtype_name, arch)[index]
    config = candidates(name, arch, ITEMSIZE[dtype_name])[ci] if block is None else triton.Config(block[0], num_warps=block[1],
                                                                                      num_stages=block[2])
    signature, constexprs, attrs, options = specialize(fn, arch, args, kwargs, config)
    row = dict(block=config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    start = time.perf_counter()
    try:
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                                options=options.__dict__)
    except Exception as exc:    # a candidate that does not compile is a finding, not a crash of the report
        row.update(compiled=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}",
                   compile_s=round(time.perf_counter() - start, 2))
        return row
    row["compile_s"] = round(time.perf_counter() - start, 2)
    row.update(compiled=True, **read_cubin(kernel.asm["cubin"], arch))
    row["shared_bytes"] = max(row.pop("static_shared"), int(kernel.metadata.shared))
    row.update(occupancy(arch, row["registers"], row["shared_bytes"], config.num_warps))
    return row


# ---------------------------------------------------------------------------------------------
# reading machine code
# ---------------------------------------------------------------------------------------------
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


def sass_counts(sass):
    """Instruction counts of a SASS listing (one function)."""
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    count = lambda pred: sum(1 for op in ops if pred(op))  # noqa: E731
    loads = [op for op in ops if re.match(r"LDG(\.|$)", op)]     # global loads (not LDGSTS, LDGDEPBAR)
    return dict(
        instructions=len(ops),
        hmma=count(lambda op: op.startswith("HMMA")),
        hgmma=count(lambda op: op.startswith("HGMMA")),
        ldgsts=count(lambda op: op.startswith("LDGSTS")),
        utmaldg=count(lambda op: op.startswith("UTMALDG")),
        atomics=count(lambda op: op.split(".")[0] in ("RED", "ATOM", "ATOMG", "REDG", "UTMAREDG")),
        spill_loads=count(lambda op: op.startswith("LDL")),
        spill_stores=count(lambda op: op.startswith("STL")),
        ldg=len(loads),
        ldg128=sum(1 for op in loads if re.search(r"\.(128|256)\b", op)),
    )


def read_cubin(cubin, arch):
    """Registers, local (spill) bytes, static shared memory and instruction counts of a cubin
    holding one kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([tool("cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
    res = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    if not res:
        raise RuntimeError(f"cuobjdump -res-usage gave no resource line for sm_{arch}: {usage[:300]}")
    regs, stack, shared, local = (int(v) for v in res.groups())
    return dict(registers=regs, stack_bytes=stack, local_bytes=local, static_shared=shared, **sass_counts(sass))


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


# ---------------------------------------------------------------------------------------------
# the Triton report
# ---------------------------------------------------------------------------------------------
def _pool(workers):
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_worker_init)


def triton_rows(archs=ARCHS, dtypes=DTYPES, cases=None, workers=2, progress=True):
    """One row per distinct (kernel, architecture, dtype, candidate, specialization), with the
    layers it serves: compiled or not, registers, spills, shared memory, instruction counts,
    occupancy."""
    from climseg.progress import progress_bar

    cases = layer_cases() if cases is None else cases
    plans = [(case, dt, arch) for case in cases for dt in dtypes for arch in archs]
    unique = {}
    with _pool(workers) as pool:
        for (case, dt, arch), entries in zip(plans, pool.map(plan_job, *zip(*plans))):
            for name, index, ci, key, spec, atomic, fixed in entries:
                entry = unique.setdefault(key + (dt, ci), dict(kernel=name, arch=f"sm_{arch}", dtype=dt,
                                                               candidate=ci, atomic=atomic, specialization=spec,
                                                               layers=[], job=(case, dt, arch, index, ci)))
                entry["deterministic_only"] = entry.get("deterministic_only", True) and fixed
                if case[0] not in entry["layers"]:
                    entry["layers"].append(case[0])
        rows = list(unique.values())
        with progress_bar(total=len(rows), desc="compiling", unit="kernel", disable=not progress) as bar:
            futures = {pool.submit(compile_job, *row["job"]): row for row in rows}
            for future in concurrent.futures.as_completed(futures):
                futures[future].update(future.result())
                bar.update(1)
    for row in rows:
        del row["job"]
    rows.sort(key=lambda r: (r["kernel"], r["arch"], r["dtype"], r["specialization"], r["atomic"], r["candidate"]))
    return rows


# ---------------------------------------------------------------------------------------------
# the CUDA report
# ---------------------------------------------------------------------------------------------
def cuda_sources():
    """The csrc/cuda folder: the source tree's, else the one installed with climseg."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (os.path.join(os.path.dirname(here), "csrc", "cuda"), os.path.join(here, "_csrc", "cuda")):
        if glob.glob(os.path.join(folder, "*.cu")):
            return folder
    raise ConfigError("climseg bench static: no csrc/cuda sources found (run from a source tree)")


def nvcc_path():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    return nvcc if nvcc and os.path.exists(nvcc) else None


def _nvcc_job(nvcc, source, arch):
    """Compile one .cu for sm_<arch> as setup.py does (-O3 -std=c++17) with -Xptxas -v; per kernel:
    registers, stack and spill bytes, and the load widths from the SASS."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "m.cubin")
        done = subprocess.run([nvcc, "-O3", "-std=c++17", f"-I{os.path.dirname(source)}", "-cubin",
                               f"-arch=sm_{arch}", "-Xptxas", "-v", source, "-o", cubin], capture_output=True, text=True)
        if done.returncode != 0:
            return [dict(kernel=os.path.basename(source), arch=f"sm_{arch}", compiled=False,
                         error=(done.stderr or done.stdout)[-500:])]
        sass = subprocess.run([tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    info = {}
    current = None
    for line in done.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'|Function properties for (\w+)", line)
        if m:
            current = m.group(1) or m.group(2)
            info.setdefault(current, {})
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            info[current].update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)),
                                 spill_load_bytes=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            info[current]["registers"] = int(m.group(1))
    sections = re.split(r"\n\s*Function : (\w+)\n", sass)
    rows = []
    for fname, body in zip(sections[1::2], sections[2::2]):
        counts = sass_counts(body)
        rows.append(dict(kernel=fname, source=os.path.basename(source), arch=f"sm_{arch}", compiled=True,
                         memory_bound=bool(MEMORY_BOUND.match(fname)), **info.get(fname, {}),
                         ldg=counts["ldg"], ldg128=counts["ldg128"], spill_loads=counts["spill_loads"],
                         spill_stores=counts["spill_stores"], atomics=counts["atomics"]))
    return rows


def cuda_rows(archs=ARCHS, workers=2):
    """One row per kernel of csrc/cuda and architecture (empty without nvcc)."""
    nvcc = nvcc_path()
    if nvcc is None:
        return []
    sources = sorted(glob.glob(os.path.join(cuda_sources(), "*.cu")))
    jobs = [(s, a) for s in sources for a in archs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: _nvcc_job(nvcc, *job), jobs))
    return sorted((r for rs in results for r in rs), key=lambda r: (r["kernel"], r["arch"]))


# ---------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------
def violations(triton=(), cuda=()):
    """What fails the static checks, one line each: a candidate that does not compile or does
    not fit; spills (Triton or CUDA); a dense kernel in bf16/fp16 without tensor-core
    instructions or asynchronous copies; a memory-bound CUDA kernel without 128-bit loads."""
    bad = []
    for r in triton:
        what = (f"{r['kernel']} {r['arch']} {r['dtype']} {r['block']} w{r['num_warps']} s{r['num_stages']}"
                f"{' atomic' if r.get('atomic') else ''} [{', '.join(r['layers'][:2])}]")
        if not r["compiled"]:
            bad.append(f"{what}: does not compile ({r.get('error', '')})")
            continue
        if not r["fits"]:
            bad.append(f"{what}: does not fit ({r['registers']} registers, {r['shared_bytes']} B shared memory)")
        if r["spill_loads"] or r["spill_stores"] or r["local_bytes"]:
            bad.append(f"{what}: spills ({r['spill_stores']} STL, {r['spill_loads']} LDL, {r['local_bytes']} B local)")
        if r["kernel"] in DENSE and r["dtype"] in ("bf16", "fp16"):
            mma = r["hgmma"] + r["hmma"]
            if not mma:
                bad.append(f"{what}: no tensor-core instructions (HMMA/HGMMA)")
            if not (r["ldgsts"] or r["utmaldg"]):
                bad.append(f"{what}: no asynchronous copies (LDGSTS/UTMALDG)")
    for r in cuda:
        what = f"{r['kernel']} {r['arch']}"
        if not r["compiled"]:
            bad.append(f"{what}: does not compile ({r.get('error', '')[-200:]})")
            continue
        if r.get("spill_store_bytes") or r.get("spill_load_bytes") or r["spill_loads"] or r["spill_stores"]:
            bad.append(f"{what}: spills ({r.get('spill_store_bytes')} B stores, {r.get('spill_load_bytes')} B loads)")
        if r["memory_bound"] and not r["ldg128"]:
            bad.append(f"{what}: memory-bound but no 128-bit loads ({r['ldg']} narrower ones)")
    return bad


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def environment(argv=None, archs=ARCHS):
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    nvcc = nvcc_path()
    nvcc_version = None
    if nvcc:
        m = re.search(r"release ([\d.]+), V([\d.]+)", subprocess.run([nvcc, "--version"], capture_output=True,
                                                                   text=True).stdout)
        nvcc_version = m.group(2) if m else "unknown"
    return dict(triton=triton_version, torch=torch.__version__, nvcc=nvcc_version, archs=[f"sm_{a}" for a in archs],
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU needed", python=platform.python_version(),
                date=datetime.date.today().isoformat(), command=command_line(argv))


def _block(r):
    b = r["block"]
    return "x".join(str(v) for v in b.values()) + f" w{r['num_warps']}" + (f" s{r['num_stages']}" if r["kernel"].startswith("dense") else "")


def write(triton, cuda, meta, path):
    """JSON (meta + rows) and the markdown tables beside it."""
    from climseg.output import atomic_path, write_json

    write_json(path, dict(meta=meta, rows=triton + cuda))
    lines = [f"# Static check of the GPU kernels ({meta['date']})", "",
             f"Triton {meta['triton']}, nvcc {meta['nvcc']}, torch {meta['torch']}; {', '.join(meta['archs'])}; "
             f"compiled on {meta['machine']} in {meta['seconds']:.0f} s (kernels already in Triton's cache are "
             "not compiled again)", "", f"Command: `{meta['command']}`", "",
             f"Checks: {'all pass' if not meta['violations'] else str(len(meta['violations'])) + ' violations'}", ""]
    lines += [f"- {v}" for v in meta["violations"]]
    if triton:
        lines += ["", "## Triton kernels", "",
                  "One row per kernel, architecture, dtype, candidate and specialization (`/16`: the JIT's "
                  "divisibility-by-16 attribute); MMA: HMMA (sm_80) or HGMMA (sm_90) instructions; async: LDGSTS "
                  "(cp.async) + UTMALDG (TMA) instructions; warps/SM: resident warps per SM (limit).", "",
                  "| kernel | arch | dtype | block w stages | layers | regs | spills (STL/LDL) | smem KiB | MMA |"
                  " async | LDG.128 / LDG | atomics | warps/SM |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in triton:
            name = r["kernel"] + (" (atomic)" if r.get("atomic") else "") + (" (det.)" if r.get("deterministic_only") else "")
            if not r["compiled"]:
                lines.append(f"| {name} | {r['arch']} | {r['dtype']} | {_block(r)} | {len(r['layers'])} | "
                             f"does not compile: {r['error'][:80]} ||||||||")
                continue
            lines.append(f"| {name} | {r['arch']} | {r['dtype']} | {_block(r)} | {len(r['layers'])} | {r['registers']} | "
                         f"{r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes'] / 1024:.0f} | "
                         f"{r['hmma'] + r['hgmma']} | {r['ldgsts'] + r['utmaldg']} | {r['ldg128']}/{r['ldg']} | "
                         f"{r['atomics']} | {r['warps_per_sm']} ({r['occupancy_limit']}) |")
        specs = sorted({(r["kernel"], r["specialization"], tuple(r["layers"])) for r in triton})
        lines += ["", "Specializations (the JIT's, per kernel) and the layers they serve:", ""]
        lines += [f"- {k}: `{s}` ({'; '.join(layers)})" for k, s, layers in specs]
    if cuda:
        lines += ["", "## CUDA kernels (csrc/cuda, nvcc -O3)", "",
                  "| kernel | arch | regs | stack B | spill stores/loads B | LDG.128 / LDG | memory-bound |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for r in cuda:
            if not r["compiled"]:
                lines.append(f"| {r['kernel']} | {r['arch']} | does not compile ||||||")
                continue
            lines.append(f"| {r['kernel']} | {r['arch']} | {r.get('registers', '?')} | {r.get('stack_bytes', 0)} | "
                         f"{r.get('spill_store_bytes', 0)}/{r.get('spill_load_bytes', 0)} | {r['ldg128']}/{r['ldg']} | "
                         f"{'yes' if r['memory_bound'] else ''} |")
    with atomic_path(os.path.splitext(path)[0] + ".md") as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")


def _list(text, allowed, what, convert=str):
    items = [v.strip() for v in text.split(",") if v.strip()]
    for v in items:
        if v not in allowed:
            raise ConfigError(f"--{what} {text!r}: {v!r} is not one of {', '.join(allowed)}")
    return [convert(v) for v in items]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="80,90", help="architectures, comma-separated (80, 90)")
    parser.add_argument("--dtype", default="bf16,fp16,fp32", help="dtypes of the Triton kernels (fp32 runs as TF32)")
    parser.add_argument("--kernels", default="triton,cuda", help="which kernels: triton, cuda or both")
    parser.add_argument("--layer", action="append", default=None,
                        help="a layer name:N,Cin,Cout,H,W,k,dilation,groups instead of the built-in list (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="compiling processes")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/static-<date>.json)")
    args = parser.parse_args(argv)
    archs = _list(args.arch, [str(a) for a in ARCHS], "arch", int)
    dtypes = _list(args.dtype, DTYPES, "dtype")
    which = _list(args.kernels, ("triton", "cuda"), "kernels")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cases = [parse_layer(t) for t in args.layer] if args.layer else None
    if "triton" in which:
        try:
            import triton  # noqa: F401
        except ImportError:
            raise ConfigError("climseg bench static: Triton is not installed (pip install 'climseg[triton]'), "
                              "or check only the CUDA kernels with --kernels cuda") from None
    start = time.perf_counter()
    triton = triton_rows(archs, dtypes, cases, args.workers, not args.no_progress) if "triton" in which else []
    cuda = cuda_rows(archs, args.workers) if "cuda" in which else []
    meta = environment(argv, archs)
    meta.update(seconds=round(time.perf_counter() - start, 1), triton_rows=len(triton), cuda_rows=len(cuda),
                violations=violations(triton, cuda))
    if "cuda" in which and not cuda:
        meta["cuda_note"] = "no nvcc: the CUDA kernels were not checked"
    path = result_path(f"static-{meta['date']}.json", args.json)
    write(triton, cuda, meta, path)
    print(f"{len(triton)} Triton and {len(cuda)} CUDA kernel builds in {meta['seconds']:.0f} s; "
          f"{len(meta['violations'])} violations")
    for v in meta["violations"]:
        print(f"  {v}")
    print(f"wrote {path}")
    return 1 if meta["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
