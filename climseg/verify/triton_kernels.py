"""Compiling the Triton kernels for GPUs that are not there, and reading what came out.

(sm_80 and sm_90 by default; ``--arch 75`` and ``--arch 70`` compile them for Turing and Volta too,
where Triton emits no tensor-core instructions: those rows report, they are not checked for MMA.
sm_70 takes CUDA 12's ptxas, and its rows are read from the PTX, see :mod:`climseg.verify.volta`.)

Every kernel of :mod:`climseg.kernels.atrous_dense` and :mod:`climseg.kernels.atrous_depthwise`
x every autotuning candidate x dtype (fp32 as TF32) x architecture, at the layer shapes of
:mod:`climseg.verify.layers`. Data flow:

1. the real launchers run on ``torch.device("meta")`` tensors inside
   :func:`climseg.kernels.runtime.recording`, which records each launch's arguments instead of
   launching (so every integer and pointer is exactly what a real launch passes);
2. :func:`climseg.verify.binder.specialize` (Triton's own binder) turns them into the
   specialization (types, ``tt.divisibility`` 16 attributes, integers equal to 1 made
   constants) for a ``GPUTarget`` of the wanted architecture;
3. launches with the same specialization and candidate compile once (``triton.compile``, in a
   pool of fresh processes: Triton compiles there, it does not interpret); ``cuobjdump``
   gives the SASS and the resource usage (:mod:`climseg.verify.sass` reads them), and
   :func:`climseg.verify.checks.occupancy` the resident warps per SM.

Each result is a row (a dict): kernel, arch, dtype, candidate, specialization, the layers it
serves, compiled or not, registers, spills, shared memory, instruction counts, occupancy.
"""

import concurrent.futures
import multiprocessing
import os
import time

from climseg.kernels.runtime import ARCHITECTURES
from climseg.verify.checks import occupancy
from climseg.verify.layers import layer_cases
from climseg.verify.sass import instruction_counts, resource_usage
from climseg.verify.tools import disassemble

ARCHS = (80, 90)  # the architectures checked by default (compute capability)
#: every architecture --arch takes for the Triton kernels: below 80 the rows only report (Triton emits
#: no tensor-core instructions there since it dropped MMAv1); sm_70 needs CUDA 12's ptxas (climseg[volta])
ALL_ARCHS = tuple(ARCHITECTURES)
DTYPES = ("bf16", "fp16", "fp32")
ITEMSIZE = {"bf16": 2, "fp16": 2, "fp32": 4}


def record_launches(case, dtype_name, arch):
    """The kernel launches (name, jit function, args, kwargs, fixed) of one layer's forward and
    backward, as the launchers of climseg.kernels.atrous_dense and atrous_depthwise compute them
    for a GPU of ``arch``."""
    import torch

    from climseg.kernels import atrous_dense, atrous_depthwise
    from climseg.kernels.runtime import recording

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    _, n, cin, cout, h, w, ks, ds, groups = case
    meta = torch.device("meta")
    x = torch.empty((n, h, w, cin), device=meta, dtype=dtype)
    g_channels = cout * len(ks)
    g = torch.empty((n, h, w, g_channels), device=meta, dtype=dtype)
    torch.backends.cudnn.allow_tf32 = True  # fp32 as TF32, as the launchers do by default
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
            atrous_dense.dense_forward(x, packed, table, cout, g_channels, (h, w), (1, 1))
            atrous_dense.dense_dgrad(g, packed, table, x.shape, cout, (1, 1))
            atrous_dense.dense_wgrad(x, g, job_table, offset, cout, (1, 1), deterministic=False)
            atrous_dense.dense_wgrad(x, g, job_table, offset, cout, (1, 1), deterministic=True)
        else:
            k, d = ks[0], ds[0]
            pad = d * (k - 1) // 2
            taps = torch.empty((k * k, cin), device=meta, dtype=dtype)
            atrous_depthwise.depthwise_forward(x, taps, (k, k), (1, 1), (pad, pad), (d, d), (h, w))
            atrous_depthwise.depthwise_dgrad(g, taps, x.shape, (k, k), (1, 1), (pad, pad), (d, d))
            atrous_depthwise.depthwise_wgrad(x, g, (k, k), (1, 1), (pad, pad), (d, d))
    return launches


def freeze(obj):
    """A hashable, order-independent form of nested dicts, lists and values (a cache key)."""
    if isinstance(obj, dict):
        return tuple(sorted((repr(k), freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return tuple(freeze(v) for v in obj)
    return repr(obj)


def spec_text(signature, attrs):
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
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences a warning)


def compile_pool(workers):
    """A pool of ``workers`` fresh processes that compile (``TRITON_INTERPRET=0`` there, whatever
    this process runs)."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )


def plan_job(case, dtype_name, arch):
    """Worker: every (kernel, candidate) of one layer, dtype and architecture with its
    specialization key: [(kernel, launch index, candidate index, key, spec text, atomic, fixed)]."""
    from climseg.kernels.runtime import candidates
    from climseg.verify.binder import specialize

    out = []
    for index, (name, fn, args, kwargs, fixed) in enumerate(record_launches(case, dtype_name, arch)):
        configs = candidates(name, arch, ITEMSIZE[dtype_name])
        if fixed:
            configs = configs[:1]  # deterministic mode runs the first candidate only
        for ci, config in enumerate(configs):
            signature, constexprs, attrs, options = specialize(fn, arch, args, kwargs, config)
            key = (name, arch, freeze(signature), freeze(constexprs), freeze(attrs), freeze(options.__dict__))
            out.append((name, index, ci, key, spec_text(signature, attrs), bool(kwargs.get("ATOMIC", False)), fixed))
    return out


def read_cubin(cubin, arch):
    """Registers, stack, local (spill) bytes, static shared memory and instruction counts of a
    cubin holding one kernel."""
    usage, sass = disassemble(cubin)
    found = resource_usage(usage)
    if not found:
        raise RuntimeError(f"cuobjdump -res-usage gave no resource line for sm_{arch}: {usage[:300]}")
    res = next(iter(found.values()))
    return dict(
        registers=res["registers"],
        stack_bytes=res["stack_bytes"],
        local_bytes=res["local_bytes"],
        static_shared=res["static_shared"],
        **instruction_counts(sass),
    )


def compile_job(case, dtype_name, arch, index, ci, block=None):
    """Worker: compile launch ``index`` of a layer with candidate ``ci`` (or the block shape
    ``block`` = (meta-parameters, warps, stages), e.g. a pruned one) and read its SASS."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from climseg.kernels.runtime import candidates
    from climseg.verify.binder import specialize

    if arch == 70:  # CUDA 13's ptxas (Triton's) no longer assembles sm_70: CUDA 12's from PyPI
        from climseg.verify.volta import ptxas12

        os.environ["TRITON_PTXAS_PATH"] = ptxas12() or ""
    name, fn, args, kwargs, _ = record_launches(case, dtype_name, arch)[index]
    if block is None:
        config = candidates(name, arch, ITEMSIZE[dtype_name])[ci]
    else:
        config = triton.Config(block[0], num_warps=block[1], num_stages=block[2])
    signature, constexprs, attrs, options = specialize(fn, arch, args, kwargs, config)
    row = dict(block=config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    start = time.perf_counter()
    try:
        kernel = triton.compile(
            ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options.__dict__
        )
    except Exception as exc:  # a candidate that does not compile is a finding, not a crash of the report
        message = str(exc).strip()
        row.update(
            compiled=False,
            error=f"{type(exc).__name__}: {message.splitlines()[-1][:300] if message else ''}",
            compile_s=round(time.perf_counter() - start, 2),
        )
        return row
    row["compile_s"] = round(time.perf_counter() - start, 2)
    if arch == 70:  # no disassembler reads sm_70: the PTX, and CUDA 12's ptxas -v
        from climseg.verify.volta import ptx_row

        row.update(compiled=True, **ptx_row(kernel.asm["ptx"], arch))
    else:
        row.update(compiled=True, **read_cubin(kernel.asm["cubin"], arch))
    row["shared_bytes"] = max(row.pop("static_shared"), int(kernel.metadata.shared))
    row.update(occupancy(arch, row["registers"], row["shared_bytes"], config.num_warps))
    return row


# ---------------------------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------------------------
def triton_rows(archs=ARCHS, dtypes=DTYPES, cases=None, workers=2, progress=True):
    """One row per distinct (kernel, architecture, dtype, candidate, specialization), with the
    layers it serves: compiled or not, registers, spills, shared memory, instruction counts,
    occupancy."""
    from climseg.progress import progress_bar

    cases = layer_cases() if cases is None else cases
    plans = [(case, dt, arch) for case in cases for dt in dtypes for arch in archs]
    unique = {}
    with compile_pool(workers) as pool:
        for (case, dt, arch), entries in zip(plans, pool.map(plan_job, *zip(*plans))):
            for name, index, ci, key, spec, atomic, fixed in entries:
                entry = unique.setdefault(
                    key + (dt, ci),
                    dict(
                        kernel=name,
                        arch=f"sm_{arch}",
                        dtype=dt,
                        candidate=ci,
                        atomic=atomic,
                        specialization=spec,
                        layers=[],
                        job=(case, dt, arch, index, ci),
                    ),
                )
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
