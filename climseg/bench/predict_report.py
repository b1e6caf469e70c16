"""The report of ``climseg bench predict`` (:mod:`climseg.bench.predict`): JSON and a markdown table."""

import os

from climseg.output import atomic_path, write_json


def write_report(path, result):
    """Write ``result`` to ``path`` (JSON) and its markdown beside it (``.md``)."""
    write_json(path, result)
    o = result["options"]
    lines = [
        f"# climseg predict: end-to-end inference speed ({result['date']})",
        "",
        f"Machine: {result['machine']}; PyTorch {result['torch']}, {result['threads']} threads, device "
        f"{result['device']}; load average (1, 5, 15 min) {result['load_before']} before, "
        f"{result['load_after']} after. Command: `{result['command']}`.",
        "",
        f"Series: {o['steps']} steps of {o['height']}x{o['width']} (`climseg generate --timesteps`, netCDF); "
        f"climseg predict with batch {o['batch_size']}, precision {o['precision']} "
        f"(auto here: {result['auto_precision']}); random weights (speed does not depend on them).",
        "",
        "| network | loop | steps/s | s/step | vs (a) | read s | compute s | network waited s | write s | maps s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for network, rows in result["networks"].items():
        base = next((r["steps_per_second"] for k, r in rows.items() if k.startswith("(a)")), None)
        for name, r in rows.items():
            s = r.get("stages") or {}
            ratio = f"{r['steps_per_second'] / base:.2f}x" if base else ""
            lines.append(
                f"| {network} | {name} | {r['steps_per_second']:.3f} | {1 / r['steps_per_second']:.2f} | {ratio} | "
                + " | ".join(_f(s.get(k)) for k in ("read", "compute", "compute_waited", "write", "maps"))
                + " |"
            )
    a = result.get("agreement")
    if a:
        lines += [
            "",
            f"Agreement of the masks with fp32's, {a['steps']} steps of {a['grid']}, network: {a['checkpoint']} "
            f"(fp32 class shares: background {a['fp32_fractions'][0]:.4f}, cyclone {a['fp32_fractions'][1]:.4f}, "
            f"river {a['fp32_fractions'][2]:.4f}):",
            "",
            "| precision | pixels equal to fp32 |",
            "|---|---:|",
        ]
        for k, v in a.items():
            if k in ("bf16", "fp16", "int8"):
                lines.append(f"| {k} | {v:.5f} |" if isinstance(v, float) else f"| {k} | {v} |")
    with atomic_path(os.path.splitext(path)[0] + ".md") as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")


def _f(v):
    return "" if v is None else f"{v:.2f}"
