"""Allreduce benchmark in the style of nccl-tests: flat against hierarchical.

For each message size: median time over repeats after warm-up, algorithm
bandwidth algbw = bytes / time, and bus bandwidth busbw = algbw * 2 (n - 1) / n
(NCCL's convention: the per-link rate a ring would need). Rows:

* ``flat``: torch.distributed's own allreduce over the world (gloo or NCCL);
* ``hierarchical``: climseg's intra-node reduce-scatter, cross-node
  allreduce, intra-node allgather, cross-node step over the same transport;
* ``hierarchical-mpi``: the same with the cross-node step over MPI (under mpiexec).

Every result is checked against the exact sum. Run under a launcher, or let
the script start one:

    python benchmarks/bench_allreduce.py --procs 4 --local-size 2     # 2 simulated nodes x 2
    mpiexec -n 8 python benchmarks/bench_allreduce.py                 # real nodes
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from climseg.bench import command_line, result_path


def sizes_from(args):
    out, size = [], args.min_bytes
    while size <= args.max_bytes:
        out.append(size)
        size *= args.step
    return out


def time_one(fn, tensor, reference, warmup, repeats, device):
    for _ in range(warmup):
        tensor.copy_(reference)
        fn(tensor)
    times = []
    for _ in range(repeats):
        tensor.copy_(reference)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dist.barrier()
        t = time.perf_counter()
        fn(tensor)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    worst = torch.tensor([statistics.median(times)], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the slowest rank's median
    return float(worst.item())


def run(args):
    import climseg.distributed as cd

    topo = cd.init()
    n = topo.world_size
    device = topo.device
    rows = []
    candidates = [
        ("flat", lambda t: dist.all_reduce(t)),
        ("hierarchical", lambda t: cd.hierarchical_all_reduce(t, transport="torch")),
    ]
    if topo.mpi_cross is not None:
        candidates.append(("hierarchical-mpi", lambda t: cd.hierarchical_all_reduce(t, transport="mpi")))
    for nbytes in sizes_from(args):
        count = max(1, nbytes // 4)
        mine = (torch.arange(count, device=device) % 7 + topo.rank).float()
        expected = sum((torch.arange(count, device=device) % 7 + k).double() for k in range(n))
        repeats = args.repeats if nbytes < (8 << 20) else max(3, args.repeats // 4)
        for name, fn in candidates:
            work = mine.clone()
            seconds = time_one(fn, work, mine, args.warmup, repeats, device)
            exact = bool(torch.equal(work.double(), expected))
            algbw = count * 4 / seconds / 1e9
            rows.append(
                dict(
                    algorithm=name,
                    bytes=count * 4,
                    elements=count,
                    time_us=seconds * 1e6,
                    algbw_gbs=algbw,
                    busbw_gbs=algbw * 2 * (n - 1) / n,
                    exact=exact,
                )
            )
            if topo.rank == 0:
                r = rows[-1]
                print(
                    f"{r['bytes']:>12d} {r['elements']:>11d} {name:>17s} {r['time_us']:>12.1f} "
                    f"{r['algbw_gbs']:>8.3f} {r['busbw_gbs']:>8.3f}  {'ok' if exact else 'WRONG'}",
                    flush=True,
                )
            if not exact:
                raise SystemExit(f"rank {topo.rank}: {name} gave a wrong sum at {nbytes} bytes")
    if topo.rank == 0:
        meta = dict(
            benchmark="allreduce",
            ranks=n,
            nodes=topo.num_nodes,
            local_size=topo.local_size,
            simulated_nodes=bool(os.environ.get("CLIMSEG_LOCAL_SIZE")),
            backend=topo.backend,
            device=str(device),
            cpu=platform.processor() or platform.machine(),
            cores=os.cpu_count(),
            torch=torch.__version__,
            date=datetime.date.today().isoformat(),
            command=command_line(),
        )
        path = result_path(f"allreduce-{topo.backend}-{n}x-{meta['date']}.json", args.json)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=2)
        write_markdown(os.path.splitext(path)[0] + ".md", meta, rows)
        print(f"wrote {path}")
    cd.shutdown()


def write_markdown(path, meta, rows):
    with open(path, "w") as f:
        f.write(
            f"# Allreduce, {meta['ranks']} ranks as {meta['nodes']} node(s) x {meta['local_size']} "
            f"({'simulated' if meta['simulated_nodes'] else 'real'} nodes), {meta['backend']} on {meta['device']}\n\n"
        )
        f.write(
            f"{meta['date']}, CPU {meta['cpu']} ({meta['cores']} cores), torch {meta['torch']}\n\n"
            f"Command: `{meta['command']}`\n\n"
        )
        f.write("| bytes | elements | algorithm | time (us, median) | algbw (GB/s) | busbw (GB/s) | exact |\n")
        f.write("|---:|---:|---|---:|---:|---:|---|\n")
        for r in rows:
            f.write(
                f"| {r['bytes']} | {r['elements']} | {r['algorithm']} | {r['time_us']:.1f} | {r['algbw_gbs']:.3f} | "
                f"{r['busbw_gbs']:.3f} | {'yes' if r['exact'] else 'NO'} |\n"
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=None, help="start this many processes (mpiexec, else torchrun)")
    parser.add_argument("--local-size", type=int, default=None, help="ranks per simulated node (CLIMSEG_LOCAL_SIZE)")
    parser.add_argument("--min-bytes", type=int, default=1 << 10)
    parser.add_argument("--max-bytes", type=int, default=64 << 20)
    parser.add_argument("--step", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from climseg.distributed import is_launched

    if args.procs and not is_launched():
        env = dict(os.environ, CLIMSEG_BENCH_COMMAND=command_line(argv))
        if args.local_size:
            env["CLIMSEG_LOCAL_SIZE"] = str(args.local_size)
        env.setdefault("OMP_NUM_THREADS", "1")
        rest = list(sys.argv[1:] if argv is None else argv)
        if shutil.which("mpiexec"):
            cmd = ["mpiexec", "-n", str(args.procs), sys.executable, "-m", "climseg.bench.allreduce", *rest]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(args.procs),
                "-m",
                "climseg.bench.allreduce",
                *rest,
            ]
        return subprocess.call(cmd, env=env)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
