#!/usr/bin/env bash
# SCoRe on SmolLM2-135M-Instruct (configs/smollm2-arithmetic.yaml): evaluate the base model once,
# then train + evaluate one run per seed, each timed; prints where the results are.
#   bash scripts/smollm2_recipe.sh [seeds...]      (default: 0 1 2; 6-30 min per seed on 2 CPU cores)
# A variant of the recipe in its own folder (the base evaluation is shared with the recipe's):
#   RECIPE_OUT=runs/recipe-pps8 RECIPE_ARGS="--optim.problems_per_step 8" bash scripts/smollm2_recipe.sh
# The table: .venv/bin/python scripts/recipe_table.py runs/smollm2-recipe (or the variant's folder)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="${*:-0 1 2}"
OUT="${RECIPE_OUT:-runs/smollm2-recipe}"
BASE=runs/smollm2-recipe/base
CFG=configs/smollm2-arithmetic.yaml
SC=.venv/bin/selfcorrect
read -r -a EXTRA <<< "${RECIPE_ARGS:-}"
mkdir -p "$OUT"
if [ -z "$(find "$BASE" -name metrics.json 2>/dev/null)" ]; then
  $SC eval --config "$CFG" --output "$BASE" --run.progress false
fi
[ -e "$OUT/base" ] || ln -s "$(realpath "$BASE")" "$OUT/base"
for seed in $SEEDS; do
  start=$(date +%s)
  $SC train --config "$CFG" --seed "$seed" --output "$OUT/seed$seed/train" --run.overwrite true --run.progress false \
    ${EXTRA[@]+"${EXTRA[@]}"}
  $SC eval --config "$CFG" --model "$OUT/seed$seed/train/final" --output "$OUT/seed$seed" --run.overwrite true --run.progress false
  echo "seed $seed: train + eval took $(( $(date +%s) - start )) s" | tee "$OUT/seed$seed/seconds.txt"
done
