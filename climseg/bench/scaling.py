"""Weak-scaling predictions from :mod:`climseg.perf.scaling` (model output, not measurements).

    climseg bench scaling --preset summit-kurth2018
    climseg bench scaling --preset h100-kurth2018 --rate-per-gpu 400     # TFLOP/s one H100 sustains

``summit-kurth2018`` puts the SC18 network on Summit's published hardware figures and
prints the predicted efficiency and rates at 4,560 nodes beside the paper's (90.7% FP32,
325.8 PF/s; 999.0 PF/s sustained and 1.13 EF/s peak FP16), flat ring against
hierarchical, with and without gradient lag, and what step-time jitter would cost.
``h100-kurth2018`` predicts 1,000-4,000 nodes of 8 H100s from a given per-GPU rate.
"""

import argparse
import datetime
import json
import sys

from climseg.bench import command_line, result_path
from climseg.perf import scaling as S


def _row(r, extra):
    return dict(r, **extra)


def summit(args):
    rows = []
    for precision in ("fp32", "fp16"):
        for cv in args.jitter_cv:
            for lag in (0, 1):
                w = S.summit_kurth2018(precision, jitter_cv=cv, gradient_lag=lag)
                for algorithm in ("flat", "hierarchical"):
                    for nodes in args.nodes or [1, 16, 256, 1024, 4560]:
                        rows.append(
                            _row(
                                S.step(w, S.SUMMIT, nodes, algorithm),
                                dict(precision=precision, jitter_cv=cv, gradient_lag=lag),
                            )
                        )
    return rows, S.SUMMIT, S.summit_kurth2018("fp32").sources


def h100(args):
    if not args.rate_per_gpu:
        raise SystemExit(
            "climseg bench scaling --preset h100-kurth2018 needs --rate-per-gpu TFLOPS (measure it with "
            "`climseg bench step --device cuda --config kurth2018`)"
        )
    rows = []
    for cv in args.jitter_cv:
        for lag in (0, 1):
            w = S.h100_kurth2018(args.rate_per_gpu * 1e12, jitter_cv=cv, gradient_lag=lag)
            for algorithm in ("flat", "hierarchical"):
                for nodes in args.nodes or [1, 1000, 2000, 4000]:
                    rows.append(
                        _row(
                            S.step(w, S.H100_NODE, nodes, algorithm),
                            dict(precision="bf16", jitter_cv=cv, gradient_lag=lag),
                        )
                    )
    return rows, S.H100_NODE, dict(rate_per_gpu=f"{args.rate_per_gpu} TFLOP/s per GPU (given)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="summit-kurth2018", choices=sorted(S.PRESETS))
    parser.add_argument(
        "--nodes", type=lambda v: [int(x) for x in v.split(",")], default=None, help="comma-separated node counts"
    )
    parser.add_argument(
        "--jitter-cv",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[0.0, 0.01, 0.02],
        help="coefficients of variation of one GPU's step time (default 0,0.01,0.02)",
    )
    parser.add_argument("--rate-per-gpu", type=float, default=None, help="TFLOP/s of one GPU (h100 preset)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows, system, sources = summit(args) if args.preset == "summit-kurth2018" else h100(args)
    meta = dict(
        benchmark="scaling",
        kind="model output (not a measurement)",
        preset=args.preset,
        system=system.name,
        system_sources=system.sources,
        workload_sources=sources,
        date=datetime.date.today().isoformat(),
        command=command_line(argv),
    )
    print(f"{args.preset}: MODEL OUTPUT, not measurements ({system.name})")
    print(
        f"{'prec':5s} {'cv':>5s} {'lag':>3s} {'algorithm':12s} {'nodes':>6s} {'GPUs':>6s} {'step s':>8s} "
        f"{'allreduce ms':>12s} {'exposed ms':>10s} {'jitter ms':>9s} {'eff.':>6s} {'PF/s':>8s}"
    )
    for r in rows:
        print(
            f"{r['precision']:5s} {r['jitter_cv']:5.3f} {r['gradient_lag']:3d} {r['algorithm']:12s} {r['nodes']:6d} "
            f"{r['gpus']:6d} {r['step_s']:8.3f} {1e3 * r['allreduce_s']:12.1f} {1e3 * r['exposed_s']:10.1f} "
            f"{1e3 * r['jitter_s']:9.1f} {100 * r['efficiency']:5.1f}% {r['sustained_flops'] / 1e15:8.1f}"
        )
    if args.preset == "summit-kurth2018":
        paper = S.PAPER
        print(
            f"\nSC18 paper at {paper['gpus']:,} GPUs: FP32 {100 * paper['efficiency_fp32']:.1f}% efficiency, "
            f"{paper['sustained_fp32'] / 1e15:.1f} PF/s; FP16 {paper['sustained_fp16'] / 1e15:.1f} PF/s sustained, "
            f"{paper['peak_fp16'] / 1e18:.2f} EF/s peak"
        )
        meta["paper"] = paper
    path = result_path(f"scaling-{args.preset}-{meta['date']}.json", args.json)
    with open(path, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
