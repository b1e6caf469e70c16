"""The parser of the static check (climseg.verify.sass) on real tool output: SASS listings of
cuobjdump and nvdisasm, cuobjdump's resource usage and what ptxas -v prints (tests/fixtures/static,
see its README for how each file was made). Every count the checks use is checked, with a
spilling kernel, a kernel without tensor cores and a listing of two kernels. No Triton, no GPU,
no tools needed: text in, numbers out.
"""

import os

import pytest

from climseg.verify import checks
from climseg.verify.sass import functions, instruction_counts, opcodes, ptx_entries, ptxas_usage, resource_usage

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "static")
COUNTED = (
    "instructions",
    "hmma",
    "hgmma",
    "ldgsts",
    "utmaldg",
    "atomics",
    "spill_loads",
    "spill_stores",
    "ldg",
    "ldg128",
    "ldgsts128",
)


def _read(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def _counts(**nonzero):
    return {key: nonzero.get(key, 0) for key in COUNTED}


@pytest.mark.parametrize(
    "name, expected",
    [
        # MOV S2R LDGSTS LDGSTS LDGDEPBAR BAR LDSM @!P0 BRA HMMA HMMA @!PT LDS MEMBAR ATOMG NOP
        ("mma_sm80.sass", _counts(instructions=14, hmma=2, ldgsts=2, ldgsts128=2, atomics=1)),
        # LDGSTS x2, WARPGROUP.ARRIVE, HGMMA x3, WARPGROUP.DEPBAR, ATOMG (F32x4)
        ("mma_sm90.sass", _counts(instructions=8, hgmma=3, ldgsts=2, ldgsts128=2, atomics=1)),
        # UTMACCTL UTMACMDFLUSH @UP1 UTMALDG @UP1 UTMASTG UTMACMDFLUSH: one TMA load, the store is no load
        ("tma_sm90.sass", _counts(instructions=5, utmaldg=1)),
        # STL STL STL.64 LDL.LU LDL.LU.64 HMMA
        ("spill_sm80.sass", _counts(instructions=6, hmma=1, spill_stores=3, spill_loads=2)),
        # the whole kernel (32 instructions, 8 NOPs of padding): two predicated LDG.E.128, no MMA (HFMA2.MMA is a
        # half-precision FMA, not a tensor core)
        ("stream_sm80.sass", _counts(instructions=40, ldg=2, ldg128=2)),
        ("stream_sm80.nvdisasm", _counts(instructions=40, ldg=2, ldg128=2)),
    ],
)
def test_instruction_counts(name, expected):
    assert instruction_counts(_read(name)) == expected


def test_opcodes_keep_modifiers_and_drop_predicates():
    ops = opcodes(_read("stream_sm80.sass"))
    assert ops[:3] == ["MOV", "S2R", "CS2R"]
    assert ops.count("LDG.E.128") == 2 and ops.count("STG.E.128") == 2 and "HFMA2.MMA" in ops
    assert ops == opcodes(_read("stream_sm80.nvdisasm"))  # both tools list the same code


def test_a_listing_of_two_kernels_is_split_per_kernel():
    listing = functions(_read("two_kernels_sm80.sass"))
    assert list(listing) == ["_Z5heavyPKfPfi", "_Z11stream_copyPK6float4PS_i"]
    heavy, stream = (instruction_counts(body) for body in listing.values())
    # LDG.E.CONSTANT STL LDL.LU RED EXIT
    assert heavy == _counts(instructions=5, ldg=1, spill_stores=1, spill_loads=1, atomics=1)
    # MOV S2R S2R IMAD ISETP @P0 EXIT HFMA2.MMA ULDC IMAD.WIDE LDG.E.128.CONSTANT IMAD.WIDE STG.E.128 EXIT BRA,
    # then 10 NOPs of padding
    assert stream == _counts(instructions=24, ldg=1, ldg128=1)


def test_resource_usage():
    assert resource_usage(_read("mma_sm80.res-usage")) == {
        "mm": dict(registers=93, stack_bytes=0, static_shared=0, local_bytes=0)
    }
    assert resource_usage(_read("spill_sm80.res-usage")) == {
        "mm": dict(registers=32, stack_bytes=11536, static_shared=0, local_bytes=0)
    }
    assert resource_usage(_read("two_kernels_sm80.res-usage")) == {
        "_Z5heavyPKfPfi": dict(registers=24, stack_bytes=1448, static_shared=0, local_bytes=0),
        "_Z11stream_copyPK6float4PS_i": dict(registers=10, stack_bytes=0, static_shared=0, local_bytes=0),
    }
    assert resource_usage("cuobjdump: no such file") == {}


def test_ptxas_usage_with_a_spill():
    assert ptxas_usage(_read("two_kernels_sm80.ptxas")) == {
        "_Z5heavyPKfPfi": dict(registers=24, stack_bytes=1448, spill_store_bytes=1452, spill_load_bytes=2948),
        "_Z11stream_copyPK6float4PS_i": dict(registers=10, stack_bytes=0, spill_store_bytes=0, spill_load_bytes=0),
    }


def _triton_row(kernel, sass, **extra):
    row = dict(
        kernel=kernel,
        arch="sm_80",
        dtype="bf16",
        block={"BLOCK_M": 64},
        num_warps=4,
        num_stages=3,
        layers=["fixture"],
        compiled=True,
        fits=True,
        registers=93,
        shared_bytes=0,
        local_bytes=0,
    )
    row.update(instruction_counts(_read(sass)), **extra)
    return row


def test_the_checks_on_parsed_code():
    """A clean dense kernel passes; a spill and a missing MMA (and missing async copies) fail."""
    assert checks.violations([_triton_row("dense_fwd", "mma_sm80.sass")]) == []
    spilled = checks.violations([_triton_row("dense_fwd", "spill_sm80.sass")])
    assert len(spilled) == 2 and "spills (3 STL, 2 LDL, 0 B local)" in spilled[0]
    assert "no asynchronous copies" in spilled[1]
    no_mma = checks.violations([_triton_row("dense_dgrad", "stream_sm80.sass")])
    assert len(no_mma) == 2 and "no tensor-core instructions" in no_mma[0] and "no asynchronous" in no_mma[1]
    assert checks.violations([_triton_row("dw_fwd", "stream_sm80.sass")]) == []  # depthwise: no MMA needed


def test_the_cuda_checks_on_parsed_code():
    info = ptxas_usage(_read("two_kernels_sm80.ptxas"))
    rows = []
    for name, body in functions(_read("two_kernels_sm80.sass")).items():
        counts = instruction_counts(body)
        rows.append(
            dict(
                kernel=name,
                arch="sm_80",
                compiled=True,
                memory_bound=True,
                **info[name],
                **{k: counts[k] for k in ("ldg", "ldg128", "spill_loads", "spill_stores", "atomics")},
            )
        )
    found = checks.violations(cuda=rows)
    assert found == [
        "_Z5heavyPKfPfi sm_80: spills (1452 B stores, 2948 B loads)",
        "_Z5heavyPKfPfi sm_80: memory-bound but no 128-bit loads (1 narrower ones)",
    ]


def test_ptx_of_sm70_and_ptxas_12():
    """sm_70 has no disassembler on PyPI: the PTX (NVRTC 12) and ptxas 12 -v are what is read."""
    entries = ptx_entries(_read("volta_two_kernels_sm70.ptx"))
    assert list(entries) == ["mma884", "scattered"]
    assert entries["mma884"] == dict(
        mma884=1, mma16816=0, wmma=0, cp_async=0, ld_global=1, ld_global128=1, local=0, atomics=8
    )
    scattered = entries["scattered"]
    assert scattered["mma884"] == 0 and scattered["ld_global128"] == 0 and scattered["local"] > 0
    assert ptxas_usage(_read("volta_two_kernels_sm70.ptxas")) == {
        "scattered": dict(registers=30, stack_bytes=0, spill_store_bytes=0, spill_load_bytes=0),
        "mma884": dict(registers=22, stack_bytes=0, spill_store_bytes=0, spill_load_bytes=0),
    }


def _atrous_row(**extra):
    row = dict(
        kernel="atrous_fwd_f16_sm80",
        arch="sm_80",
        compiled=True,
        memory_bound=False,
        ldg=4,
        ldg128=0,
        spill_loads=0,
        spill_stores=0,
        family="sm80",
        serves=True,
        dtype="f16",
        tensor_core=32,
        async_copies=12,
        wide_loads=12,
    )
    row.update(extra)
    return row


def test_the_cuda_atrous_checks():
    """Where its family serves, an atrous kernel needs tensor cores, 128-bit loads and (16 bits, sm_80+)
    cp.async; where it does not (its body traps there), nothing is asked of it."""
    assert checks.violations(cuda=[_atrous_row()]) == []
    found = checks.violations(cuda=[_atrous_row(tensor_core=0, async_copies=0, wide_loads=0)])
    assert [v.split(": ", 1)[1] for v in found] == [
        "no tensor-core instructions (HMMA/HGMMA, mma.sync)",
        "no 128-bit loads",
        "no asynchronous copies (cp.async / LDGSTS)",
    ]
    fp32 = _atrous_row(kernel="atrous_fwd_f32_sm80", dtype="f32", async_copies=0)
    volta = _atrous_row(kernel="atrous_fwd_f16_sm70", arch="sm_70", family="sm70", async_copies=0, read_from="ptx")
    trap = _atrous_row(serves=False, tensor_core=0, async_copies=0, wide_loads=0)
    assert checks.violations(cuda=[fp32, volta, trap]) == []
    assert "local memory" in checks.violations(cuda=[_atrous_row(read_from="ptx", stack_bytes=256)])[0]
