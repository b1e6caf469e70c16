#!/usr/bin/env bash
# climseg's GPU suite: every GPU number of the project comes from one run of this script.
#
#   benchmarks/gpu_suite.sh [OUT_DIR]        # default: $OUT, else benchmarks/results/gpu-suite-<date>
#
# On a single-GPU machine with no network (PyTorch, Triton, nvcc there) it
#   1. installs climseg from this tree into the current Python (no downloads); where nvcc is
#      found (CUDA_HOME/CUDA_PATH, else PATH) with CLIMSEG_FORCE_CUDA_BUILD=1, so that a failed
#      climseg._cuda build shows as a failed step (then it installs without climseg._cuda and
#      the CUDA kernels come from CuPy, NVRTC, if installed); without nvcc: CuPy only,
#   2. runs the `gpu`-marked tests,
#   3. the atrous/ASPP kernel benchmark (forward+backward, against cuDNN): Triton and the CUDA
#      kernels of csrc/cuda side by side, bf16 and fp16 (channels_last); on Volta/Turing (compute
#      capability < 8.0) the Volta section instead: fp16 only, the CUDA kernels (climseg's tensor-core
#      path there) against cuDNN and against Triton (which has no tensor cores below sm_80),
#   4. the CUDA-kernel benchmark (--quick: loss + IoU counts, LARC-Adam/LAMB steps, gradient
#      buckets, input conversion against the PyTorch sequences they replace, and the copy
#      bandwidth), a failed step if neither climseg._cuda nor CuPy provides the kernels,
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
    nvcc=""
    for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}"; do
        if [ -n "$home" ] && [ -x "$home/bin/nvcc" ]; then nvcc="$home/bin/nvcc"; break; fi
    done
    [ -n "$nvcc" ] || nvcc=$(command -v nvcc 2>/dev/null || true)
    install=($py -m pip install --no-build-isolation --no-deps --no-index -e .)
    if [ -n "$nvcc" ]; then
        say "install: nvcc at $nvcc: building climseg._cuda (CLIMSEG_FORCE_CUDA_BUILD=1)"
        if ! step install 240 env CLIMSEG_FORCE_CUDA_BUILD=1 "${install[@]}"; then
            say "install: the climseg._cuda build failed (see $log); installing without it (CUDA kernels from CuPy)"
            step install-without-cuda 180 env CLIMSEG_SKIP_CUDA_BUILD=1 "${install[@]}" || \
                say "install failed: using the tree on PYTHONPATH instead"
        fi
    else
        say "install: no nvcc (CUDA_HOME, CUDA_PATH, PATH): no climseg._cuda; the CUDA kernels come from CuPy if installed"
        step install 240 "${install[@]}" || say "install failed: using the tree on PYTHONPATH instead"
    fi
fi
if ! $py -c "import climseg" 2>/dev/null; then   # not installed: run from the tree (without climseg.kernels)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    say "climseg is not installed: running from the source tree; the Triton kernels need an installed climseg"
fi
$py -m climseg info >> "$log" 2>&1

if [ "$gpu" != "1" ]; then
    say "no CUDA device: dry run of the suite's own steps (no GPU numbers)"
    step dry-imports 120 $py -c "import climseg.bench.atrous, climseg.bench.step, climseg.bench.scaling, climseg.kernels.atrous_dense, climseg.kernels.atrous_depthwise, climseg.bench.cuda_kernels"
    step dry-atrous 60 $py -m climseg.bench.atrous --quick --backend triton,cuda --dtype fp16 --json "$out/atrous.json"
    # without CUDA the CUDA-kernel benchmark must refuse in one line with status 2 ...
    say "dry-cuda-kernels: $py -m climseg bench cuda-kernels --quick (expects exit 2 and one error line)"
    msg=$($py -m climseg bench cuda-kernels --quick --json "$out/cuda-kernels.json" 2>&1)
    rc=$?
    echo "$msg" >> "$log"
    last=$(printf '%s\n' "$msg" | tail -n 1)
    if [ "$rc" -eq 2 ] && [[ "$last" == "climseg: error: "* ]]; then
        say "dry-cuda-kernels: exit 2 without CUDA, as it should: $last"
    else
        say "dry-cuda-kernels: expected exit 2 and a climseg: error: line without CUDA, got exit $rc"
        status=1
    fi
    # ... and its code paths run on CPU through the emulated kernels (tiny sizes, no numbers)
    if $py -c "import climseg._cuda_emulated" 2>/dev/null; then
        step dry-cuda-kernels-smoke 240 $py -m climseg.bench.cuda_kernels --cpu-smoke \
            --out "$out/cuda-kernels-cpu-smoke.json"
    else
        say "dry-cuda-kernels-smoke: climseg._cuda_emulated not built here: skipped"
    fi
    step dry-step 300 $py -m climseg.bench.step --device cpu --configs tiny --height 64 --width 96 --batch-size 2 \
        --warmup 1 --repeats 2 --json "$out/dry-step-cpu.json"
    step dry-scaling 60 $py -m climseg.bench.scaling --preset summit-kurth2018 --json "$out/scaling-summit.json"
    say "dry run finished (status $status); run this script on a GPU machine for GPU figures"
    exit $status
fi

# 2. gpu-marked tests
step gpu-tests 150 $py -m pytest -q -m gpu tests -p no:cacheprovider
# 3. atrous / ASPP kernels against cuDNN: Triton and the CUDA kernels (csrc/cuda/atrous.cu)
cap=$($py -c "import torch; print('%d%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 0)
if [ "$cap" -lt 80 ]; then
    # Volta section (V100, sm_70; also Turing): Triton emits no tensor-core instructions here, so the
    # CUDA kernels are climseg's tensor-core path; targets: every dilated layer >= 1.0x cuDNN fp16
    # channels_last, the fused ASPP >= 1.3x the unfused one
    say "Volta section: sm_$cap, fp16, CUDA kernels against cuDNN and Triton"
    step atrous-volta-tests 120 $py -m pytest -q -m gpu tests/test_cuda_atrous.py -p no:cacheprovider
    step atrous 300 $py -m climseg.bench.atrous --quick --backend cuda,triton --dtype fp16 --json "$out/atrous.json"
else
    step atrous 300 $py -m climseg.bench.atrous --quick --backend triton,cuda --dtype bf16,fp16 \
        --json "$out/atrous.json"
fi
# 4. CUDA kernels of csrc/cuda against the PyTorch sequences they replace (climseg._cuda, else CuPy)
why=$($py -c "import sys, torch; from climseg.ops import cuda
ok, why = cuda.probe(torch.empty(0, device='cuda'))
print(cuda.describe() if ok else why); sys.exit(0 if ok else 1)" 2>&1)
if [ $? -eq 0 ]; then
    say "cuda-kernels: $why"
    step cuda-kernels 120 $py -m climseg bench cuda-kernels --quick --json "$out/cuda-kernels.json"
else
    say "cuda-kernels: no CUDA kernels to time (neither climseg._cuda nor CuPy): $why"
    status=1
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
    print("atrous kernels (forward+backward):")
    for r in d["rows"]:
        ratio = f"{r['vs_cudnn']:.2f}x cuDNN" if "vs_cudnn" in r else f"{r.get('vs_unfused', float('nan')):.2f}x unfused"
        det = f" det. {r['vs_torch_deterministic']:.1f}x torch det." if "vs_torch_deterministic" in r else ""
        tri = f" {r['vs_triton']:.2f}x Triton" if "vs_triton" in r else ""
        print(f"  {r['layer']:42s} {r.get('backend', 'triton'):6s} {r['dtype']:8s} {r['ms']:8.3f} ms  {ratio}{det}{tri}")
path = os.path.join(out, "cuda-kernels.json")
if os.path.exists(path):
    d = json.load(open(path))
    m = d["meta"]
    print(f"CUDA kernels ({m['kernels']}) against PyTorch; copy bandwidth {m['copy_gbps']:.0f} GB/s:")
    for r in d["rows"]:
        if r["kernel"] == "copy":
            continue
        vs = f"{r['vs_torch']:5.2f}x torch" if "vs_torch" in r else ""
        print(f"  {r['kernel']:19s} {r['case'][:38]:38s} {r['mode']:16s} {r['ms']:8.3f} ms {r['gbps']:7.0f} GB/s "
              f"{100 * r['copy_fraction']:4.0f}% copy  {vs}")
PY
say "suite finished with status $status"
exit $status
