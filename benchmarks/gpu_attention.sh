#!/usr/bin/env bash
# Attention kernels on one GPU (H100/H200 with jax 0.11 preinstalled), in about 8 minutes:
#   1. the kernel tests, compiled (Triton) rather than interpreted;
#   2. benchmarks/attention.py, every kind/impl, L = 1K..16K, head dims 64 and 128, bf16;
#   3. forward-only and backward-only TFLOP/s of the flash kernel (softmax/pallas) next to
#      jax.nn.dot_product_attention's cuDNN kernel (softmax/cudnn) and the chunked linear kernel;
#   4. ALiBi inside the flash kernel against the dense bias (softmax/xla with ALiBi);
#   5. benchmarks/norms.py: LayerNorm against RMSNorm and CRMSNorm language models, bf16.
#
#   bash benchmarks/gpu_attention.sh      # from anywhere; writes under $OUT, else runs/bench/gpu
#
# Every step has its own timeout, and attention.py rewrites its JSON after each point, so a slow
# step ends early with what it measured instead of taking the later steps with it. Output, 9
# files: the log (gpu.log), a JSON per benchmark run, a PNG per step-2 and step-4 run.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-runs/bench/gpu}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu.log
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {  # step SECONDS COMMAND...: runs it under a timeout, appending its output to the log
  local secs=$1
  shift
  echo "=== $(date +%T) (timeout ${secs}s) $*" | tee -a "$LOG"
  timeout --kill-after=10 "$secs" "$@" 2>&1 | grep -v "^[IW][0-9]\{4\} " | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}  # 124: timed out
  echo "=== exit $rc" | tee -a "$LOG"
}

: >"$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 \
  | tee -a "$LOG"
# The image has jax but no network: install substrax alone, without its other dependencies
# (the kernels and this benchmark need only jax, flax, absl and matplotlib).
if ! "$PY" -c "import substrax.models.attention" 2>/dev/null; then
  step 120 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
step 30 "$PY" -c "import jax; print(jax.__version__, jax.devices())"

# 1. Kernel tests. Several pytest workers share the GPU, so none may preallocate most of it.
XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
XLA_PYTHON_CLIENT_PREALLOCATE=false step 140 "$PY" -m pytest -q $XDIST --durations=5 \
  tests/test_flash_kernel.py tests/test_linear_kernel.py

# 2. Every kind/impl against L; B*H = 32 keeps the GPU busy from L = 1K, and softmax/xla's
#    L x L scores are skipped by the memory budget where they no longer fit.
BENCH=(benchmarks/attention.py --lengths=1024,2048,4096,8192,16384 --batch=2 --heads=16
       --dtype=bfloat16 --reps=20 --time_budget_s=20)
step 90 "$PY" "${BENCH[@]}" --head_dim=64 --out="$OUT_DIR/all_d64.json"
step 80 "$PY" "${BENCH[@]}" --head_dim=128 --out="$OUT_DIR/all_d128.json"

# 3. Forward-only and backward-only (the vjp from saved residuals), for the model TFLOP/s of
#    each kernel; the fwd+bwd figures are in step 2.
SPLIT=(--series=softmax/pallas,softmax/cudnn,linear/pallas --passes=fwd,bwd)
step 60 "$PY" "${BENCH[@]}" "${SPLIT[@]}" --head_dim=128 --out="$OUT_DIR/split_d128.json"
step 40 "$PY" "${BENCH[@]}" "${SPLIT[@]}" --head_dim=64 --out="$OUT_DIR/split_d64.json"
rm -f "$OUT_DIR"/split_d*.png  # their figures are the log's tables; fewer files to fetch

# 4. ALiBi: the flash kernel computes the bias per block; softmax/xla materialises it.
step 40 "$PY" "${BENCH[@]}" --series=softmax/pallas --alibi --head_dim=64 \
  --out="$OUT_DIR/alibi_d64.json"

# 5. Norm placements: a GPT-2-small-shaped LM step, bf16 (the paper reports 1-10% gains).
step 50 "$PY" benchmarks/norms.py --width=768 --depth=12 --heads=12 --vocab=50304 \
  --length=1024 --batch=8 --dtype=bfloat16 --reps=10
echo "wrote $(ls "$OUT_DIR" | tr '\n' ' ')"
