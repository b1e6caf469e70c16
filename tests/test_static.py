"""The static check of the GPU kernels (climseg.verify, run by climseg bench static): every Triton kernel, autotuning
candidate, dtype and architecture (sm_80, sm_90) compiled at the real layer shapes with the
JIT's own specialization, and every CUDA kernel of csrc/cuda built by nvcc, must compile
without spills; the dense convolution kernels in 16 bits must use tensor cores and
asynchronous copies; the streaming CUDA kernels must load 128 bits per thread.

Compiling needs Triton's compiler (not its interpreter, which conftest turns on): the work runs
in a pool of fresh processes. Launches with the same specialization compile once.
"""

import json
import os
import shutil
import time

import pytest

from climseg.verify import checks, tools, volta
from climseg.verify import triton_kernels as T
from climseg.verify.layers import layer_cases
from climseg.verify.sass import instruction_counts

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def pool():
    with T.compile_pool(2) as p:
        yield p


def test_specialization_is_the_jits(pool):
    """What the JIT would specialize on: channel counts divisible by 16 and aligned pointers
    get tt.divisibility, stride 1 becomes a constant, image sizes are never specialized."""
    kurth = layer_cases()[0]
    rows = pool.submit(T.plan_job, kurth, "bf16", 90).result()
    fwd = [r for r in rows if r[0] == "dense_fwd"]
    assert len(fwd) == len(pool.submit(_candidates, "dense_fwd", 90).result())
    spec = fwd[0][4]
    assert "x_ptr:*bf16/16" in spec and "Cin:i32/16" in spec and "Cout:i32/16" in spec
    assert "W:i32 " in spec and "stride_h" not in spec  # not specialized / a constant 1
    odd = ("odd", 1, 40, 24, 9, 11, (3,), (2,), 1)  # 40 channels: not a multiple of 16
    spec = [r for r in pool.submit(T.plan_job, odd, "fp16", 80).result() if r[0] == "dense_fwd"][0][4]
    assert "Cin:i32 " in spec and "Cout:i32/16" not in spec and "x_ptr:*fp16/16" in spec


def _candidates(name, arch, dtype="bf16"):
    from climseg.kernels.runtime import candidates

    return [(c.kwargs, c.num_warps, c.num_stages) for c in candidates(name, arch, T.ITEMSIZE[dtype])]


def test_sass_reading_and_occupancy():
    sass = """
        /*0100*/                   LDGSTS.E.BYPASS.LTC128B.128 [R1], desc[UR4][R2.64] ;
        /*0110*/               @!P0 LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0120*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0130*/                   STL.64 [R1], R2 ;
        /*0140*/                   LDL R6, [R1+0x10] ;
        /*0150*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5 ;
        /*0160*/                   LDG.E.U16 R7, desc[UR4][R2.64] ;
    """
    c = instruction_counts(sass)
    assert (c["ldgsts"], c["hmma"], c["spill_stores"], c["spill_loads"], c["atomics"], c["ldg"], c["ldg128"]) == (
        1,
        1,
        1,
        1,
        1,
        2,
        1,
    )
    # 128 registers x 256 threads: two blocks by registers; 100 KiB shared memory: one block on sm_80, two on sm_90
    assert checks.occupancy(80, 128, 100 * 1024, 8)["warps_per_sm"] == 8
    assert checks.occupancy(90, 128, 100 * 1024, 8)["warps_per_sm"] == 16
    assert not checks.occupancy(80, 96, 200 * 1024, 4)["fits"]
    bad = dict(
        kernel="dense_dgrad",
        arch="sm_80",
        dtype="bf16",
        block={"BLOCK_M": 64},
        num_warps=4,
        num_stages=3,
        layers=["x"],
        compiled=True,
        fits=True,
        registers=255,
        shared_bytes=0,
        spill_loads=2,
        spill_stores=2,
        local_bytes=8,
        hmma=0,
        hgmma=0,
        ldgsts=0,
        utmaldg=0,
    )
    found = checks.violations([bad])
    assert len(found) == 3 and "spills" in found[0] and "tensor-core" in found[1] and "asynchronous" in found[2]


@pytest.mark.slow
def test_the_check_catches_a_spilling_tile(pool):
    """A tile pruned for spilling (256 x 128 x 64, 8 warps, sm_80) is still caught: the check can fail."""
    kurth = layer_cases()[0]
    row = pool.submit(
        T.compile_job, kurth, "bf16", 80, 1, 0, ({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64}, 8, 3)
    ).result()
    row.update(kernel="dense_dgrad", arch="sm_80", dtype="bf16", layers=[kurth[0]])
    assert row["compiled"] and row["spill_stores"] > 0
    assert any("spills" in v for v in checks.violations([row]))


@pytest.mark.slow
def test_every_triton_candidate_compiles_clean_for_sm80_and_sm90():
    """The whole matrix: kernels x candidates x bf16/fp16/fp32 x sm_80/sm_90 at the layer shapes
    of climseg bench atrous, one compilation per distinct specialization (Triton's cache, e.g.
    ~/.triton/cache, keeps them between runs). CLIMSEG_STATIC_DTYPES narrows the dtypes (the CI
    step with the oldest Triton)."""
    dtypes = tuple(os.environ.get("CLIMSEG_STATIC_DTYPES", ",".join(T.DTYPES)).split(","))
    start = time.perf_counter()
    rows = T.triton_rows(dtypes=dtypes, progress=False)
    seconds = time.perf_counter() - start
    seen = {(r["kernel"], r["arch"], r["dtype"]) for r in rows}
    kernels = ("dense_fwd", "dense_dgrad", "dense_wgrad", "dw_fwd", "dw_dgrad", "dw_wgrad")
    assert seen == {(k, f"sm_{a}", d) for k in kernels for a in T.ARCHS for d in dtypes}
    for name in kernels:  # every candidate of every kernel, per architecture and dtype
        for arch in T.ARCHS:
            for dtype in dtypes:
                n = len(_candidates(name, arch, dtype))
                got = {
                    r["candidate"] for r in rows if (r["kernel"], r["arch"], r["dtype"]) == (name, f"sm_{arch}", dtype)
                }
                assert got == set(range(n)), (name, arch, dtype, got)
    found = checks.violations(rows)
    assert not found, "\n".join(found)
    print(f"\nstatic check: {len(rows)} Triton compilations in {seconds:.0f} s")


@pytest.mark.slow
@pytest.mark.skipif(tools.nvcc_path() is None, reason="needs nvcc (CI has CUDA 13.0)")
def test_cuda_kernels_compile_clean_with_128_bit_loads(tmp_path):
    from climseg.cli import main

    out = tmp_path / "static.json"
    assert main(["bench", "static", "--json", str(out), "--", "--kernels", "cuda", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["meta"]["nvcc"] and not report["meta"]["violations"]
    streaming = [r for r in rows if r["memory_bound"]]
    assert len(streaming) >= 2 * 30 and all(r["ldg128"] > 0 for r in streaming)
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    assert all(r["compiled"] and not r.get("spill_store_bytes") for r in rows)
    assert "| larc_adam_step_bf16 | sm_90 |" in (tmp_path / "static.md").read_text()
    # the atrous kernels: tensor cores, 128-bit loads, cp.async in 16 bits, at every real dense layer
    atrous = [r for r in rows if r["kernel"].startswith("atrous_") and r["serves"]]
    assert {(r["kernel"], r["arch"]) for r in atrous} == {
        (f"atrous_{op}_{t}_sm80", f"sm_{a}")
        for op in ("fwd", "dgrad", "wgrad")
        for t in ("f16", "bf16", "f32")
        for a in (80, 90)
    }
    assert all(r["tensor_core"] > 0 and r["wide_loads"] > 0 for r in atrous)
    assert all(r["async_copies"] > 0 for r in atrous if r["dtype"] != "f32")
    layers = report["meta"]["cuda_layers"]
    assert len({r["layer"] for r in layers}) == 9 and all(r["vec"] and r["blocks_per_sm"] >= 1 for r in layers)


@pytest.mark.slow
@pytest.mark.skipif(volta.problem() != "", reason="needs CUDA 12's NVRTC and ptxas (pip install climseg[volta])")
def test_cuda_kernels_for_volta_through_nvrtc_12(tmp_path):
    """sm_70: every CUDA kernel through NVRTC 12 and ptxas 12 -v, read from the PTX (no sm_70
    disassembler exists on PyPI): the atrous kernels of the sm70 family use mma.sync.m8n8k4, load 128
    bits, and neither spill nor use local memory; registers and shared memory are reported."""
    from climseg.cli import main

    out = tmp_path / "static.json"
    assert (
        main(["bench", "static", "--json", str(out), "--", "--kernels", "cuda", "--arch", "70", "--no-progress"]) == 0
    )
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {r["arch"] for r in rows} == {"sm_70"} and all(r["read_from"] == "ptx" for r in rows)
    volta_rows = [r for r in rows if r["kernel"].startswith("atrous_") and r["serves"]]
    assert {r["kernel"] for r in volta_rows} == {
        f"atrous_{op}_{t}_sm70" for op in ("fwd", "dgrad", "wgrad") for t in ("f16", "f32")
    }
    for r in volta_rows:
        assert r["mma884"] > 0 and r["ld_global128"] > 0 and r["registers"] > 0 and r["shared_bytes"] > 0
        assert r["spill_store_bytes"] == r["spill_load_bytes"] == r["stack_bytes"] == 0
    assert report["meta"]["nvrtc_sm70"].startswith("12.")
    assert all(r["arch"] == "sm_70" and r["vec"] for r in report["meta"]["cuda_layers"])


def test_user_errors_are_one_line(capsys):
    from climseg.cli import main

    assert main(["bench", "static", "--", "--arch", "60"]) == 2
    assert main(["bench", "static", "--", "--kernels", "triton", "--arch", "72"]) == 2
    assert main(["bench", "static", "--", "--layer", "x:1,2,3"]) == 2
    err = capsys.readouterr().err
    assert "--arch" in err and "--layer" in err and "Traceback" not in err


def test_tools_are_found():
    assert shutil.which(tools.tool("cuobjdump"))
