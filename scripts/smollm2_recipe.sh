#!/usr/bin/env bash
# SCoRe on SmolLM2-135M-Instruct (configs/smollm2-arithmetic.yaml): evaluate the base model once,
# then train + evaluate one run per seed, each timed; prints where the results are.
#   bash scripts/smollm2_recipe.sh [seeds...]      (default: 0 1 2; about 30 min per seed on 2 CPU cores)
# The table: .venv/bin/python scripts/recipe_table.py runs/smollm2-recipe
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${*:-0 1 2}"
OUT=runs/smollm2-recipe
CFG=configs/smollm2-arithmetic.yaml
SC=.venv/bin/selfcorrect
mkdir -p "$OUT"
if [ -z "$(find "$OUT/base" -name metrics.json 2>/dev/null)" ]; then
  $SC eval --config "$CFG" --output "$OUT/base" --run.progress false
fi
for seed in $SEEDS; do
  start=$(date +%s)
  $SC train --config "$CFG" --seed "$seed" --output "$OUT/seed$seed/train" --run.overwrite true --run.progress false
  $SC eval --config "$CFG" --model "$OUT/seed$seed/train/final" --output "$OUT/seed$seed" --run.overwrite true --run.progress false
  echo "seed $seed: train + eval took $(( $(date +%s) - start )) s" | tee "$OUT/seed$seed/seconds.txt"
done
