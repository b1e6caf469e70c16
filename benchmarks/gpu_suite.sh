#!/usr/bin/env bash
# climseg's GPU suite: every GPU number of the project comes from one run of this script.
#
#   benchmarks/gpu_suite.sh [OUT_DIR]        # default: $OUT, else benchmarks/results/gpu-suite-<date>
#
# On a single-GPU machine with no network (PyTorch, Triton, nvcc there) it
#   1. installs climseg from this tree into the current Python (no downloads, CUDA build when
#      the tree has CUDA sources and nvcc is found),
#   2. runs the `gpu`-marked tests,
#   3. the atrous/ASPP kernel benchmark (bf16, forward+backward, against cuDNN),
#   4. the CUDA-kernel benchmark (when the build has CUDA kernels),
#   5. the training step of kurth2018 and deepcam at 768x1152, bf16, batch 2: climseg's path
#      against the same model on plain PyTorch ops (cuDNN, channels_last, AMP), with MFU,
# and prints a short table last. Full JSON and markdown go to OUT_DIR; a log of everything is
# OUT_DIR/suite.log. Budget: under 8 minutes (each step has its own time limit).
# Without a GPU it checks its own steps (imports, options, the CPU dry run of each benchmark),
# says so, and exits 0 (non-zero only if a dry-run step failed). CLIMSEG_SUITE_SKIP_INSTALL=1
# skips step 1 (the tests use it).
set -uo pipefail
cd "$(dirname "$0")/.."
date_tag=$(date +%Y-%m-%d)
out=${1:-${OUT:-benchmarks/results/gpu-suite-$date_tag}}
mkdir -p "$out"
log="$out/suite.log"
: > "$log"
py=${PYTHON:-python}
status=0

say() { echo "[gpu_suite $(date +%H:%M:%S)] $*" | tee -a "$log"; }
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    say "$name: $*"
    local t0=$(date +%s)
    timeout --signal=INT "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    say "$name: exit $rc after $(( $(date +%s) - t0 )) s"
    [ "$rc" -eq 0 ] || status=1
    return $rc
}

gpu=$($py -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
say "output folder $out; GPU present: $gpu"
$py - >> "$log" 2>&1 <<'PY'
import platform, subprocess, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB")
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
PY

# 1. install from the tree, nothing downloaded (build isolation would fetch setuptools/pybind11)
if [ "${CLIMSEG_SUITE_SKIP_INSTALL:-0}" = "1" ]; then
    say "install: skipped (CLIMSEG_SUITE_SKIP_INSTALL=1)"
else
    step install 240 $py -m pip install --no-build-isolation --no-deps --no-index -e . || \
        say "install failed: using the tree on PYTHONPATH instead"
fi
if ! $py -c "import climseg" 2>/dev/null; then   # not installed: run from the tree (without climseg.kernels)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    say "climseg is not installed: running from the source tree; the Triton kernels need an installed climseg"
fi
$py -m climseg info >> "$log" 2>&1

if [ "$gpu" != "1" ]; then
    say "no CUDA device: dry run of the suite's own steps (no GPU numbers)"
    step dry-imports 120 $py -c "import climseg.bench.atrous, climseg.bench.step, climseg.bench.scaling, climseg.kernels.atrous"
    step dry-atrous 60 $py -m climseg.bench.atrous --quick --json "$out/atrous.json"
    step dry-step 300 $py -m climseg.bench.step --device cpu --configs tiny --height 64 --width 96 --batch-size 2 \
        --warmup 1 --repeats 2 --json "$out/dry-step-cpu.json"
    step dry-scaling 60 $py -m climseg.bench.scaling --preset summit-kurth2018 --json "$out/scaling-summit.json"
    say "dry run finished (status $status); run this script on a GPU machine for GPU figures"
    exit $status
fi

# 2. gpu-marked tests
step gpu-tests 150 $py -m pytest -q -m gpu tests -p no:cacheprovider
# 3. atrous / ASPP kernels against cuDNN
step atrous 200 $py -m climseg.bench.atrous --quick --json "$out/atrous.json"
# 4. CUDA kernels of csrc/ (none in this version)
if $py -c "import climseg._cuda" 2>/dev/null; then
    step cuda-kernels 60 $py -m climseg bench cuda-kernels --json "$out/cuda-kernels.json"
else
    say "cuda-kernels: climseg._cuda not built in this version (no csrc/cuda kernels yet): skipped"
fi
# 5. training step, both anchors, ours against plain PyTorch
step train-step 200 $py -m climseg.bench.step --device cuda --configs kurth2018,deepcam --height 768 --width 1152 \
    --batch-size 2 --precision bf16 --warmup 3 --repeats 10 --backends auto,torch --json "$out/train_step.json"

say "summary (full tables in $out/*.md)"
$py - "$out" <<'PY' | tee -a "$log"
import glob, json, os, sys
out = sys.argv[1]
path = os.path.join(out, "train_step.json")
if os.path.exists(path):
    d = json.load(open(path))
    print(f"training step on {d['meta']['device']}, bf16, 2x16x768x1152 (MFU against {d['meta']['peak_tflops']:.0f} TFLOP/s)")
    for r in d["rows"]:
        path_name = "plain PyTorch" if r["backend"] == "torch" else "climseg"
        vs = f"{r['vs_plain']:.2f}x plain" if "vs_plain" in r else ""
        print(f"  {r['config']:10s} {path_name:14s} {r['ms_median']:8.1f} ms  {r['samples_per_s']:6.2f} samples/s  "
              f"{r['tflops_per_s']:7.1f} TFLOP/s  MFU {100 * r['mfu']:5.1f}%  {vs}")
path = os.path.join(out, "atrous.json")
if os.path.exists(path):
    d = json.load(open(path))
    print("atrous kernels (bf16, forward+backward):")
    for r in d["rows"]:
        ratio = f"{r['vs_cudnn']:.2f}x cuDNN" if "vs_cudnn" in r else f"{r.get('vs_unfused', float('nan')):.2f}x unfused"
        det = f" det. {r['vs_torch_deterministic']:.1f}x torch det." if "vs_torch_deterministic" in r else ""
        print(f"  {r['layer']:42s} {r['ms']:8.3f} ms  {ratio}{det}")
PY
say "suite finished with status $status"
exit $status
