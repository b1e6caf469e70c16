"""The row of ``climseg bench cuda-kernels`` (:mod:`climseg.bench.cuda_kernels`) that every kernel
family's rows share: :func:`make_row` turns the timings of a kernel (and of the PyTorch sequence
it replaces) and the bytes it must move into a dict (ms with percentiles, host ms, GB/s, the
fraction of the copy bandwidth, ``vs_torch``), :func:`say` prints one as a line; names for
dtypes and sizes in the rows' ``case`` text.
"""

import torch


def make_row(kernel, case, mode, ours, nbytes, formula, copy_gbps, torch_times=None, reference=None):
    gbps = nbytes / (ours[0] * 1e-3) / 1e9
    row = dict(
        kernel=kernel,
        case=case,
        mode=mode,
        ms=ours[0],
        ms_p20=ours[1],
        ms_p80=ours[2],
        host_ms=ours[3],
        bytes=int(nbytes),
        bytes_formula=formula,
        gbps=gbps,
        copy_fraction=gbps / copy_gbps if copy_gbps else float("nan"),
    )
    if torch_times is not None:
        row.update(
            torch_ms=torch_times[0],
            torch_ms_p20=torch_times[1],
            torch_ms_p80=torch_times[2],
            torch_host_ms=torch_times[3],
            vs_torch=torch_times[0] / ours[0],
            torch_reference=reference,
        )
    return row


def say(row):
    vs = f"{row['vs_torch']:6.2f}x torch" if "vs_torch" in row else ""
    print(
        f"{row['kernel']:20s} {row['case']:34s} {row['mode']:17s} {row['ms']:9.3f} ms "
        f"[{row['ms_p20']:.3f}, {row['ms_p80']:.3f}] host {row['host_ms']:7.3f} ms {row['gbps']:8.1f} GB/s "
        f"{100 * row['copy_fraction']:5.1f}% copy "
        f"{vs}",
        flush=True,
    )


def nbytes(t):
    return t.numel() * t.element_size()


def dtype_name(dtype):
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def size_name(size):
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"
