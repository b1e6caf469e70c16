"""Import time of climseg on top of ``import torch``: what a user pays for ``import climseg.nn``.

Each run is a fresh interpreter that times ``import torch`` and then ``import <module>`` with
``time.perf_counter`` (wall clock), and a second fresh interpreter under ``python -X importtime``
whose self-reported cumulative times give the same difference (``climseg.nn`` minus ``torch``).
Median (and min/max) of ``--runs`` runs. ``--tree`` points at another checkout (e.g. an older
commit exported with ``git archive``, with its compiled extensions copied in) to compare before
and after; each tree gets a label.

    python benchmarks/bench_import.py --runs 7 --tree before=/tmp/climseg-before --tree after=.

Writes ``benchmarks/results/import-cpu-<date>.json`` and ``.md`` (``--out`` to change the folder).
"""

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

TIMED = """
import time, sys
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import {module}
t2 = time.perf_counter()
heavy = sorted(m for m in ("torch._dynamo", "triton", "scipy") if m in sys.modules)
print(t1 - t0, t2 - t1, ",".join(heavy))
"""


def _env(tree):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.abspath(tree)
    env.pop("TRITON_INTERPRET", None)
    return env


def one_run(tree, module):
    """(torch seconds, added seconds, heavy modules loaded, importtime added seconds)."""
    done = subprocess.run(
        [sys.executable, "-c", TIMED.format(module=module)],
        capture_output=True,
        text=True,
        env=_env(tree),
        cwd=os.path.abspath(tree),
        check=True,
    )
    torch_s, added_s, heavy = (done.stdout.split() + [""])[:3]
    traced = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import torch; import {module}"],
        capture_output=True,
        text=True,
        env=_env(tree),
        cwd=os.path.abspath(tree),
        check=True,
    )
    cumulative = {}
    for line in traced.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)$", line)
        if match and len(match.group(2)) == 1:  # top-level imports only (one space of indent)
            cumulative[match.group(3)] = int(match.group(1)) / 1e6
    return float(torch_s), float(added_s), heavy, cumulative.get(module, float("nan"))


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--module", default="climseg.nn")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a source tree to measure (repeatable); default: this checkout as 'current'",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree] or [
        ["current", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    ]
    import torch

    rows = []
    for label, path in trees:
        runs = [one_run(path, args.module) for _ in range(args.runs)]
        rows.append(
            {
                "tree": label,
                "path": os.path.abspath(path),
                "module": args.module,
                "runs": args.runs,
                "import_torch_s": summary([r[0] for r in runs]),
                "added_s": summary([r[1] for r in runs]),
                "added_importtime_s": summary([r[3] for r in runs]),
                "heavy_modules_loaded": runs[-1][2].split(",") if runs[-1][2] else [],
            }
        )
        row = rows[-1]
        print(
            f"{label}: import torch {row['import_torch_s']['median']:.3f} s, import {args.module} adds "
            f"{row['added_s']['median']:.3f} s (median of {args.runs}; -X importtime: "
            f"{row['added_importtime_s']['median']:.3f} s); heavy: {', '.join(row['heavy_modules_loaded']) or 'none'}"
        )
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores visible, {platform.system()}"
    result = {
        "benchmark": "import",
        "date": date,
        "machine": machine,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": "python benchmarks/bench_import.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"import-cpu-{date}")
    with open(stem + ".json.tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    lines = [
        f"# Import time of `{args.module}` on top of `import torch`",
        "",
        f"{date}, {machine}, Python {result['python']}, torch {result['torch']}. "
        f"Command: `{result['command']}`. Median (min-max) of {args.runs} fresh interpreters.",
        "",
        "| tree | import torch (s) | adds, wall clock (s) | adds, -X importtime (s) | heavy modules loaded |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        a, b, c = row["import_torch_s"], row["added_s"], row["added_importtime_s"]
        lines.append(
            f"| {row['tree']} | {a['median']:.3f} ({a['min']:.2f}-{a['max']:.2f}) | {b['median']:.3f} "
            f"({b['min']:.2f}-{b['max']:.2f}) | {c['median']:.3f} ({c['min']:.2f}-{c['max']:.2f}) | "
            f"{', '.join(row['heavy_modules_loaded']) or 'none'} |"
        )
    with open(stem + ".md.tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(stem + ".md.tmp", stem + ".md")
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
