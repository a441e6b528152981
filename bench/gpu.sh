#!/usr/bin/env bash
# GPU checks for the sparse-attention kernels (issue 6): fp16/bf16 correctness against the fp32
# reference, then the Triton block-sparse kernel against SDPA (FlashAttention backend) at long
# lengths. Budget: under 8 minutes on one H100/H200-class GPU. Run from the repository root:
#
#     bash bench/gpu.sh            # results under ${OUT:-bench-work/gpu}
#
# Needs a Python with torch (CUDA build), triton, pytest and pydantic; nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-work/gpu}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
unset TRITON_INTERPRET  # compile for the GPU, never interpret
export HF_HUB_OFFLINE=1

"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
PYEOF
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device"; exit 1; }

status=0
# 1. Correctness: fp16/bf16 Triton vs fp32 reference (rel. RMSE < 5e-3), plus every default test
#    of the kernels on CUDA tensors where they apply (about 1-2 minutes with compilation).
timeout 240 "$PY" -m pytest tests/kernels -m gpu -q -s -p no:cacheprovider 2>&1 | tee "$OUT/pytest_gpu.txt" || status=1

# 2. Speed: Triton block-sparse vs SDPA, bf16, GQA shapes of Llama-8B, Gemma 3 and Qwen2.5 heads,
#    8k / 32k / 128k tokens, two block budgets per query block (do_bench medians).
timeout 300 "$PY" -m bench.attention gpu --lengths 8192 32768 131072 --budgets 32 128 \
    --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.txt" || status=1

echo "results in $OUT (exit $status)"
exit $status
