#!/usr/bin/env bash
# The GPU checks of issue 16 as one script (about 8 minutes on one H100/H200), run where a GPU is:
#   1. the scorer at 0.5B scale: mergeqa-hf vs lm-eval's hf, items/s and agreement;
#   2. a Qwen2.5-0.5B-shaped family (bench/shaped_family.py), merged with mergekit cuda=True;
#   3. the full gate on it end to end, one xdist worker per GPU (pinned), with its wall time.
# On a lent device machine (see ../shared/gpu/wheels.sh for the wheels it lacks):
#   ../shared/gpu/wheels.sh                                   # once, here: .whl/
#   MERGEQA_CACHE_DIR=$PWD/.gpu-cache .venv/bin/python -c \
#     "from mergeqa.family import build_family; build_family()"   # the tiny family, to carry
#   device run: carry [".whl", ".gpu-cache"], command "bash bench/gpu_checks.sh", timeout 540
# Figures go to $OUT (default /tmp/mergeqa-gpu): scorer.md, gate.txt, junit.xml, merges.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export MERGEQA_CACHE_DIR=${MERGEQA_CACHE_DIR:-$PWD/.gpu-cache} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=${OUT:-/tmp/mergeqa-gpu}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/gpus.txt"
GPUS=$(nvidia-smi -L | grep -c '^GPU ')

echo "== 1. scorer, qwen2.5-0.5b shape (target: >= 4x lm-eval's items/s, same answers)"
$PY bench/bench_scorer.py --device cuda --dtype both --shape qwen2.5-0.5b | tee "$OUT/scorer.md"

echo "== 2. a 0.5B-shaped family, bf16"
FAM=/tmp/mergeqa-fam05b
$PY bench/shaped_family.py --shape qwen2.5-0.5b --out "$FAM" --dtype bfloat16

echo "== 3. the full gate end to end: merges (cuda=True), lint, sanity, retention, probing; -n $GPUS"
start=$(date +%s)
set +e
$PY -m pytest --merge-config "$FAM"/configs/*.yaml --parents "$FAM/arithmetic" "$FAM/lists" \
  --base "$FAM/base" --device cuda --dtype bfloat16 -n "$GPUS" -p no:cacheprovider \
  --junitxml "$OUT/junit.xml" -o junit_family=xunit1 --report-dir "$OUT/report" -q 2>&1 | tail -25 | tee "$OUT/gate.txt"
set -e
echo "gate wall time: $(( $(date +%s) - start )) s on $GPUS GPU(s)" | tee -a "$OUT/gate.txt"
grep '"merge_built"' "$MERGEQA_CACHE_DIR/events.jsonl" | tail -5 | tee "$OUT/merges.txt"
