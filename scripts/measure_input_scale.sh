#!/usr/bin/env bash
# What the node's input_scale buys and costs, on a quiet machine: accuracy on CamVid val at each
# scale (bf16, the node's precision on CPUs with bf16 units; paired against scale 1 with
# dovit-compare), the model's time per frame (dovit-bench, bf16 and fp32, 2 threads) and whether
# the node keeps up with a 15 Hz camera (scripts/keep_up.py, every output).
#
#   scripts/measure_input_scale.sh [MODEL_DIR] [OUT_DIR] [SCALES]     (DATA=../shared/data/camvid)
set -euo pipefail
M=${1:-models/camvid-dovit-tiny}
OUT=${2:-docs/measurements/input_scale}
SCALES=${3:-"1.0 0.875 0.75"}   # as ROS parameters: 1.0, not 1 (an integer)
DATA=${DATA:-../shared/data/camvid}
BIN=${BIN:-.venv/bin}
MX=$(mktemp -d)
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt"
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }
for s in $SCALES; do
  step "val at scale $s"
  "$BIN/dovit-eval" --model "$M" --dataset camvid --data-root "$DATA" --split val --threads 2 \
      --no-progress --precision bf16 --thresholds 1.0,0.8 --input-scale "$s" \
      --json "$OUT/val_bf16_s$s.json" --save-matrices "$MX/s$s.safetensors"
done
first=${SCALES%% *}
for s in $SCALES; do
  [ "$s" = "$first" ] && continue
  "$BIN/dovit-compare" "$MX/s$first.safetensors" "$MX/s$s.safetensors" \
      --json "$OUT/s${s}_minus_s$first.json" --markdown "$OUT/s${s}_minus_s$first.md" > /dev/null
done
IMG=$DATA/val/images/0016E5_07959.jpg
for p in bf16 fp32; do
  for s in $SCALES; do
    step "dovit-bench $p at scale $s"
    "$BIN/dovit-bench" --model "$M" --image "$IMG" --threads 2 --precision "$p" --runs 20 \
        --input-scale "$s" --json > "$OUT/bench_${p}_s$s.json"
  done
done
for s in $SCALES; do
  step "keep up with 15 Hz at scale $s"
  "$BIN/python" scripts/keep_up.py --model "$M" --threads 2 --param "input_scale:=$s" \
      --json "$OUT/keep_up_2t_s$s.json"
done
rm -rf "$MX"
step done
