"""climseg bench, MFU peaks, the weak-scaling model and the GPU suite's dry run."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from climseg.cli import main
from climseg.perf import scaling as S
from climseg.perf.peaks import device_peak, table_peak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_step_cpu_writes_rate_flops_and_device(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert (
        main(
            [
                "bench",
                "step",
                "--device",
                "cpu",
                "--config",
                "tiny",
                "--json",
                str(out),
                "--",
                "--height",
                "32",
                "--width",
                "48",
                "--batch-size",
                "2",
                "--warmup",
                "1",
                "--repeats",
                "2",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    row = data["rows"][0]
    assert row["config"] == "tiny" and row["samples_per_s"] > 0 and row["tflops_per_s"] > 0 and 0 < row["mfu"] < 1
    assert data["meta"]["device_type"] == "cpu" and "CPU" in data["meta"]["device"]
    assert data["meta"]["command"].startswith("climseg bench step") and data["meta"]["date"]
    assert (tmp_path / "step.md").read_text().count("| tiny |") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the benchmark would run")
def test_bench_cuda_kernels_without_cuda_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "ck.json"
    assert main(["bench", "cuda-kernels", "--json", str(out), "--", "--quick"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("climseg: error: ") and "no CUDA device" in lines[0], captured.err
    assert captured.out == "" and not out.exists()
    # the script wrapper says the same, with the same status
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_cuda_kernels.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.strip() == lines[0], proc.stdout + proc.stderr


def test_bench_cuda_kernels_cpu_smoke_runs_every_row(tmp_path):
    """The benchmark's own code paths, on CPU through the emulated kernels (tiny sizes)."""
    from climseg.bench import cuda_kernels
    from climseg.ops import cuda

    if not cuda.probe(torch.empty(0))[0]:
        pytest.skip("climseg._cuda_emulated is not built")
    out = tmp_path / "smoke.json"
    assert cuda_kernels.main(["--cpu-smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    kernels = {r["kernel"] for r in data["rows"]}
    assert kernels == {
        "copy",
        "loss+counts",
        "larc_adam_step",
        "lamb_step",
        "flatten_gradients",
        "unflatten_gradients",
        "normalize_input",
    }
    assert data["meta"]["kernels"] == "climseg._cuda_emulated" and data["meta"]["date"] and data["meta"]["command"]
    for r in data["rows"]:
        assert r["ms"] > 0 and r["bytes"] > 0 and r["gbps"] > 0 and ("vs_torch" in r) == (r["kernel"] != "copy"), r
        if r["kernel"] == "loss+counts":
            assert r["counts_agree"] and r["loss_rel_diff"] < 1e-3, r
    assert len([r for r in data["rows"] if r["kernel"] == "loss+counts"]) == 2 * 2 * 2 * 3
    assert (tmp_path / "smoke.md").read_text().count("| loss+counts |") == 24


def test_peak_table_and_measured_ceiling():
    assert table_peak("NVIDIA H100 80GB HBM3") == 989.0 and table_peak("Tesla V100-SXM2-16GB") == 125.0
    assert table_peak("NVIDIA H100 PCIe") == 756.0 and table_peak("Some Future GPU") is None
    peak, source = device_peak("cpu", torch.float32)
    assert peak > 0 and "measured" in source


def test_ring_and_hierarchical_formulas_by_hand():
    system = S.System(
        "toy", gpus_per_node=4, intra_bandwidth=100.0, intra_latency=1.0, net_bandwidth=10.0, net_latency=2.0
    )
    # flat over 8 ranks, bottleneck the network: 2*7*2 + 2*7/8*80/10
    assert S.allreduce_time(80, 2, system, "flat") == pytest.approx(28 + 14)
    # hierarchical: intra 2*(3*1 + 3/4*80/100), across 2 nodes 2*1*2 + 2*1/2*80/10
    assert S.allreduce_time(80, 2, system, "hierarchical") == pytest.approx(2 * (3 + 0.6) + 4 + 8)
    assert S.allreduce_time(80, 1, system, "flat") == pytest.approx(2 * 3 * 1 + 2 * 3 / 4 * 80 / 100)


def test_step_model_lag_jitter_and_efficiency():
    system = S.System("toy", 4, 1e11, 1e-6, 1e10, 1e-6)
    work = S.Workload(
        "toy", flops_per_sample=1e12, batch_per_gpu=2, gradient_bytes=4e8, rate_per_gpu=1e13, bucket_bytes=1e8
    )
    one = S.step(work, system, 1)
    t_c = 0.2
    assert one["compute_s"] == pytest.approx(t_c)
    big = S.step(work, system, 1000)
    assert big["exposed_s"] > 0 and big["efficiency"] < one["efficiency"]
    lagged = S.step(S.Workload(**{**work.__dict__, "gradient_lag": 1}), system, 1000)
    assert lagged["exposed_s"] == pytest.approx(max(0.0, lagged["allreduce_s"] - t_c))
    jitter = S.step(S.Workload(**{**work.__dict__, "jitter_cv": 0.02, "gradient_lag": 1}), system, 1000)
    assert jitter["jitter_s"] == pytest.approx(t_c * 0.02 * math.sqrt(2 * math.log(4000)))
    assert jitter["sustained_flops"] == pytest.approx(4000 * 2e12 / jitter["step_s"])
    flat = S.step(work, system, 1000, "flat")
    assert flat["allreduce_s"] > big["allreduce_s"]  # 2(P-1) latencies against 2(N-1)


def test_bench_scaling_summit_preset_is_labelled_model_output(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert (
        main(["bench", "scaling", "--preset", "summit-kurth2018", "--json", str(out), "--", "--nodes", "1,4560"]) == 0
    )
    data = json.loads(out.read_text())
    assert data["meta"]["kind"].startswith("model output") and data["meta"]["paper"]["efficiency_fp32"] == 0.907
    rows = [r for r in data["rows"] if r["nodes"] == 4560 and r["precision"] == "fp32" and r["jitter_cv"] == 0]
    assert {r["gpus"] for r in rows} == {27360}
    assert "MODEL OUTPUT" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_suite_dry_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the suite would run for real")
    env = dict(os.environ, CLIMSEG_SUITE_SKIP_INSTALL="1", PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), str(tmp_path / "suite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device: dry run" in proc.stdout
    for name in ("dry-step-cpu.json", "scaling-summit.json", "suite.log"):
        assert (tmp_path / "suite" / name).exists(), name
