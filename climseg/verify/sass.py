"""Reading the text the CUDA tools print about compiled GPU code: pure functions, text in,
numbers out (no files, no processes; :mod:`climseg.verify.tools` runs the tools).

* :func:`instruction_counts`: a SASS listing (``cuobjdump -sass`` or ``nvdisasm``) -> how many
  instructions of each kind that matters here: tensor-core MMAs (HMMA on sm_80, HGMMA on sm_90),
  asynchronous copies (LDGSTS: cp.async; UTMALDG: TMA), atomics, register spills (STL stores,
  LDL loads of local memory) and global loads, of which 128 bits wide (LDG.E.128).
* :func:`functions`: a ``cuobjdump -sass`` listing of several kernels -> one listing per kernel.
* :func:`resource_usage`: ``cuobjdump -res-usage`` -> registers, stack, static shared memory
  and local (spill) bytes per kernel.
* :func:`ptxas_usage`: what ``ptxas -v`` (``nvcc -Xptxas -v``) prints -> registers, stack
  frame, spill bytes and shared memory per kernel.
* :func:`ptx_entries`: a PTX module -> per kernel the counts that stand in for SASS where no
  disassembler exists (sm_70: :mod:`climseg.verify.volta`): warp-level MMAs (``mma.sync`` by shape,
  ``wmma.mma.sync``), ``cp.async``, global loads and those 128 bits wide, local memory, atomics.
"""

import re

# one instruction of a listing: "/*0120*/  [@P0 | @!P0 | @UP0 ...]  OPCODE.MODIFIERS operands ;"
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_ATOMICS = ("RED", "ATOM", "ATOMG", "REDG", "UTMAREDG")
_RESOURCES = re.compile(r"Function ([\w$.]+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def opcodes(sass):
    """The opcodes (with their modifiers, e.g. ``LDG.E.128``) of a SASS listing, in order."""
    return _INSTRUCTION.findall(sass)


def instruction_counts(sass):
    """Instruction counts of a SASS listing (one function): ``instructions`` in all, ``hmma``,
    ``hgmma`` (tensor cores), ``ldgsts``, ``utmaldg`` (asynchronous copies), ``atomics`` (RED,
    ATOM and their global and TMA forms), ``spill_loads`` (LDL), ``spill_stores`` (STL), ``ldg``
    (global loads; not LDGSTS or LDGDEPBAR), ``ldg128`` (those 128 or 256 bits wide) and
    ``ldgsts128`` (asynchronous copies of 128 bits)."""
    ops = opcodes(sass)

    def count(pred):
        return sum(1 for op in ops if pred(op))

    loads = [op for op in ops if re.match(r"LDG(\.|$)", op)]
    return dict(
        instructions=len(ops),
        hmma=count(lambda op: op.startswith("HMMA")),
        hgmma=count(lambda op: op.startswith("HGMMA")),
        ldgsts=count(lambda op: op.startswith("LDGSTS")),
        utmaldg=count(lambda op: op.startswith("UTMALDG")),
        atomics=count(lambda op: op.split(".")[0] in _ATOMICS),
        spill_loads=count(lambda op: op.startswith("LDL")),
        spill_stores=count(lambda op: op.startswith("STL")),
        ldg=len(loads),
        ldg128=sum(1 for op in loads if re.search(r"\.(128|256)\b", op)),
        ldgsts128=count(lambda op: op.startswith("LDGSTS") and op.endswith(".128")),
    )


def functions(sass):
    """``{kernel name: its listing}`` of a ``cuobjdump -sass`` listing, in the listing's order."""
    sections = re.split(r"\n\s*Function : (\w+)\n", sass)
    return dict(zip(sections[1::2], sections[2::2]))


def resource_usage(text):
    """``{kernel name: usage}`` of ``cuobjdump -res-usage`` output, where usage holds
    ``registers``, ``stack_bytes``, ``static_shared`` (bytes of static shared memory) and
    ``local_bytes`` (local memory: spills and local arrays). Empty when no line matches."""
    return {
        m.group(1): dict(
            registers=int(m.group(2)),
            stack_bytes=int(m.group(3)),
            static_shared=int(m.group(4)),
            local_bytes=int(m.group(5)),
        )
        for m in _RESOURCES.finditer(text)
    }


def ptxas_usage(text):
    """``{kernel name: usage}`` of what ``ptxas -v`` prints, where usage holds ``registers``,
    ``stack_bytes``, ``spill_store_bytes`` and ``spill_load_bytes`` (those it reported)."""
    info = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'|Function properties for (\w+)", line)
        if m:
            current = m.group(1) or m.group(2)
            info.setdefault(current, {})
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            info[current].update(
                stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)), spill_load_bytes=int(m.group(3))
            )
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            info[current]["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m and current:
            info[current]["shared_bytes"] = int(m.group(1))
    return info


_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(")


def ptx_counts(ptx):
    """Instruction counts of one PTX function: ``mma884`` (``mma.sync.aligned.m8n8k4``: Volta's
    tensor cores), ``mma16816`` (``mma.sync.aligned.m16n8k16``), ``wmma`` (``wmma.mma.sync``),
    ``cp_async`` (``cp.async`` copies), ``ld_global`` and ``ld_global128`` (``.v4`` of 32-bit words
    or ``.v2`` of 64-bit ones), ``local`` (``ld.local``/``st.local``) and ``atomics``
    (``atom``/``red`` on global memory)."""
    lines = [line.strip() for line in ptx.splitlines()]
    ops = [line.split()[0] for line in lines if line and not line.startswith(("//", ".", "{", "}", "$"))]
    ops = [op for op in ops if not op.startswith("@")] + [
        line.split()[1] for line in lines if line.startswith("@") and len(line.split()) > 1
    ]
    loads = [op for op in ops if op.startswith("ld.global")]
    return dict(
        mma884=sum(op.startswith("mma.sync.aligned.m8n8k4") for op in ops),
        mma16816=sum(op.startswith("mma.sync.aligned.m16n8k16") for op in ops),
        wmma=sum(op.startswith("wmma.mma.sync") for op in ops),
        cp_async=sum(op.startswith("cp.async.c") for op in ops),
        ld_global=len(loads),
        ld_global128=sum(bool(re.search(r"\.v4\.(u|b|s|f)32$|\.v2\.(u|b|s|f)64$", op)) for op in loads),
        local=sum(op.startswith(("ld.local", "st.local")) for op in ops),
        atomics=sum(op.startswith(("atom.global", "red.global", "atom.add", "red.add")) for op in ops),
    )


def ptx_entries(ptx):
    """``{kernel name: ptx_counts(its body)}`` of a PTX module, in the module's order."""
    parts = _PTX_ENTRY.split(ptx)
    return {name: ptx_counts(body) for name, body in zip(parts[1::2], parts[2::2])}
