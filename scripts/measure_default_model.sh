#!/usr/bin/env bash
# Every figure of the default model's card (accuracy, exits, DToP, bf16) and of the frame
# path (dovit-bench realisation, node overhead, keeping up with 15 Hz, threads under load),
# in one run. Run it on a quiet machine: nothing else on the cores.
#
#   scripts/measure_default_model.sh [MODEL_DIR] [OUT_DIR]      (DATA=../shared/data/camvid)
#
# Accuracy reports go to MODEL_DIR/eval/, timings to OUT_DIR (default
# docs/measurements/default_model/), with lscpu's output naming the machine.
set -euo pipefail
M=${1:-models/camvid-dovit-tiny}
OUT=${2:-docs/measurements/default_model}
DATA=${DATA:-../shared/data/camvid}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT" "$M/eval"
lscpu > "$OUT/lscpu.txt"
EVAL=("$BIN/dovit-eval" --model "$M" --dataset camvid --data-root "$DATA" --split val
      --threads 2 --no-progress)
step() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

step 'val: xi sweep and compute budget (fp32)'
"${EVAL[@]}" --thresholds 1.0,0.99,0.98,0.96,0.95,0.93,0.9,0.85,0.8,0.7 --target-gflops 7.0 \
    --json "$M/eval/camvid_val.json"
step 'val: DToP policy'
"${EVAL[@]}" --policy dtop --thresholds 0.95,0.9,0.8 --json "$M/eval/camvid_val_dtop.json"
step 'val: bf16'
"${EVAL[@]}" --precision bf16 --thresholds 1.0,0.9,0.8 --json "$M/eval/camvid_val_bf16.json"

IMG=$DATA/val/images/0016E5_07959.jpg
for p in fp32 bf16; do
    for t in 1 2; do
        step "dovit-bench $p $t thread(s)"
        "$BIN/dovit-bench" --model "$M" --image "$IMG" --threads "$t" --precision "$p" \
            --runs 20 --json > "$OUT/bench_${p}_${t}t.json"
    done
done
step 'node overhead (all outputs / labels only, 360x480 and 1024x2048)'
"$BIN/python" scripts/node_overhead.py --model "$M" --threads 2 --json "$OUT/node_overhead_2t.json"
step 'keep up with 15 Hz, every output (node default wait policy PASSIVE, then ACTIVE)'
"$BIN/python" scripts/keep_up.py --model "$M" --threads 2 --json "$OUT/keep_up_2t_passive.json"
"$BIN/python" scripts/keep_up.py --model "$M" --threads 2 --omp-wait-policy ACTIVE \
    --json "$OUT/keep_up_2t_active.json"
"$BIN/python" scripts/keep_up.py --model "$M" --threads 1 --json "$OUT/keep_up_1t.json"
step 'threads under contention'
"$BIN/python" scripts/torch_thread_bench.py --model "$M" --json "$OUT/torch_thread.json"
"$BIN/python" scripts/threads_bench.py --model "$M" --precision auto --frames 20 --json "$OUT/threads_bench.json"
step done
