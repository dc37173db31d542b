#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and driver (it cannot run on this project's CPU-only
# machines). In one go, within a time budget (GPU_CHECK_BUDGET_S, default 480 s):
#   1. installs into the venv what the GPU paths need: the CUDA build of the pinned torch (index chosen from
#      the driver's CUDA version, see bench/gpu_check.py; TORCH_INDEX_URL overrides), onnxruntime-gpu instead
#      of onnxruntime, faiss-gpu instead of faiss-cpu where PyPI has it, and tensorrt (TENSORRT_SPEC);
#   2. runs every test that skips without CUDA/TensorRT (pytest -m gpu) and fails if any of them fails or skips;
#   3. exports ViT-B/14 at 224 px to ONNX and builds and verifies a TensorRT fp16 engine from it;
#   4. prints one table: ms per image of torch fp32/fp16, onnxruntime CUDA and TensorRT fp16 at 224 and 322 px,
#      batch 1 and 8, and the flat GPU keyframe index's single-query search time.
# Exit status: 0 all passed; 1 a check failed; 3 no NVIDIA GPU; 4 over the time budget. Outputs go to
# GPU_CHECK_OUT (default out/gpu_check). It swaps packages in the venv (SALAD_VENV, default .venv): point
# SALAD_VENV at another folder to keep .venv CPU-only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
budget="${GPU_CHECK_BUDGET_S:-480}"
out="${GPU_CHECK_OUT:-$root/out/gpu_check}"
export SALAD_VENV="${SALAD_VENV:-$root/.venv}"
py="$SALAD_VENV/bin/python"
current="start"
SECONDS=0

say() { echo "[gpu_check $(printf '%3d' "$SECONDS") s] $*"; }
step() { current="$1"; say "== $1"; }
on_error() { say "FAILED during: $current" >&2; }
trap on_error ERR
within_budget() {
  if (( SECONDS > budget )); then
    say "over the time budget: ${SECONDS} s > ${budget} s (during: $current)" >&2
    exit 4
  fi
}
pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }
has() { "$py" -c "$1" > /dev/null 2>&1; }

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
  echo "gpu_check: no working nvidia-smi: this check needs an NVIDIA GPU and driver" >&2
  exit 3
fi
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt"
say "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"

step "venv"
"$root/scripts/setup.sh"
source "$root/scripts/ros_env.sh"
cd "$root"

step "install the GPU packages"
if ! has 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  index="${TORCH_INDEX_URL:-$("$py" bench/gpu_check.py torch-index "$out/nvidia-smi.txt")}"
  version="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
  say "torch $version from $index"
  pip_install --force-reinstall "torch==$version" --index-url "$index"
  has 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { say "torch $version from $index does not see the GPU" >&2; exit 1; }
fi
if ! has 'import sys, onnxruntime as o; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
  version="$("$py" -c 'import onnxruntime; print(onnxruntime.__version__)')"
  say "onnxruntime-gpu $version (replaces onnxruntime: both provide the same module)"
  "$py" -m pip uninstall --quiet -y onnxruntime
  pip_install "onnxruntime-gpu[cuda,cudnn]==$version"
fi
search_skipped=""
if ! has 'import sys, faiss; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)'; then
  version="$("$py" -c 'import faiss; print(faiss.__version__)')"
  say "faiss-gpu $version (replaces faiss-cpu: both provide the same module)"
  "$py" -m pip uninstall --quiet -y faiss-cpu
  if ! pip_install "faiss-gpu==$version" || ! has 'import sys, faiss; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)'; then
    search_skipped="faiss-gpu $version is not installable or sees no GPU here"
    say "$search_skipped: keeping faiss-cpu, no GPU index timing" >&2
    "$py" -m pip uninstall --quiet -y faiss-gpu || true
    pip_install "faiss-cpu==$version"
  fi
fi
if ! has 'import tensorrt'; then
  spec="${TENSORRT_SPEC:-tensorrt==10.16.1.11}"
  say "$spec"
  pip_install "$spec"
fi
"$py" -c 'import torch, onnxruntime, tensorrt, faiss
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), onnxruntime {onnxruntime.__version__}, "
      f"tensorrt {tensorrt.__version__}, faiss {faiss.__version__} ({faiss.get_num_gpus()} GPUs)")'
within_budget

step "the tests that skip without CUDA/TensorRT (pytest -m gpu)"
"$py" -m pytest -m gpu -q -rs --junitxml="$out/gpu_tests.xml" || true  # judged from the report next
"$py" bench/gpu_check.py junit "$out/gpu_tests.xml"
within_budget

step "export ViT-B/14 at 224 px and build + verify a TensorRT fp16 engine"
work="$out/models"
mkdir -p "$work"
"$py" -m export.onnx --random-weights --backbone dinov2_vitb14 --image-size 224 \
  --out "$work/dinov2_vitb14_224.onnx" --verify-count 2 --quiet
"$py" -m export.tensorrt --onnx "$work/dinov2_vitb14_224.onnx" --precision fp16 \
  --out "$work/dinov2_vitb14_224.engine" --quiet
within_budget

step "inference timings (ViT-B/14, 224 and 322 px, batch 1 and 8)"
# Same folder and batch profile as above: the 224 px ONNX and engine are reused (engine cache hit).
"$py" bench/bench_inference.py --backbones dinov2_vitb14 --sizes 224,322 --batches 1,8 \
  --paths torch-fp32-cuda,torch-fp16-cuda,onnxruntime-fp32-cuda,tensorrt-fp16 \
  --repeats 10 --warmup 3 --frames 32 --work-dir "$work" --json "$out/inference.json" --quiet
within_budget

search_args=(--search-skipped "$search_skipped")
if [ -z "$search_skipped" ]; then
  step "flat GPU keyframe index search"
  "$py" bench/gpu_check.py search --keyframes 10000 --json "$out/search.json"
  search_args=(--search "$out/search.json")
  within_budget
fi

step "table"
"$py" bench/gpu_check.py table --inference "$out/inference.json" "${search_args[@]}" | tee "$out/table.md"
within_budget
say "all GPU checks passed in ${SECONDS} s (budget ${budget} s); outputs in $out"
