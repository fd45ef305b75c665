#!/usr/bin/env bash
# Two models timed side by side on the same machine: dovit-bench rounds that alternate A and B
# (fp32 and bf16, 2 threads, the shipped clip's frame), so that a host's drift hits both alike.
# Use it when a machine's absolute speed differs from the recorded figures' machine.
# ARGS_A / ARGS_B: extra dovit-bench arguments for one side (the same model twice with
# ARGS_A='--attention sdpa' ARGS_B='--attention auto' is an A/B of a runtime option).
#
#   scripts/ab_bench.sh MODEL_A MODEL_B OUT_DIR [ROUNDS=4]
#
# Writes OUT_DIR/{a,b}_{fp32,bf16}_rN.json and prints each setting's median full / pruned ms.
set -euo pipefail
A=$1 B=$2 OUT=$3 ROUNDS=${4:-4}
BIN=${BIN:-.venv/bin}
IMG=${IMG:-../shared/data/camvid/val/images/0016E5_07959.jpg}
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt"
for r in $(seq 1 "$ROUNDS"); do
    for p in fp32 bf16; do
        for m in a b; do
            dir=$A extra=${ARGS_A:-}
            [ "$m" = b ] && dir=$B extra=${ARGS_B:-}
            # shellcheck disable=SC2086  # extra holds several words on purpose
            "$BIN/dovit-bench" --model "$dir" --image "$IMG" --threads 2 --precision "$p" \
                --runs 10 --json $extra > "$OUT/${m}_${p}_r$r.json"
        done
    done
done
"$BIN/python" - "$OUT" "$A" "$B" <<'PY'
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), {'a': sys.argv[2], 'b': sys.argv[3]}
for p in ('fp32', 'bf16'):
    for m, name in names.items():
        runs = [json.loads(f.read_text()) for f in sorted(out.glob(f'{m}_{p}_r*.json'))]
        full = statistics.median(r['full_ms'] for r in runs)
        pruned = statistics.median(r['pruned_ms'] for r in runs)
        core = runs[0].get('attention', 'sdpa')
        print(f'{p} {m} ({name}, attention {core}): full {full:.1f} ms, pruned {pruned:.1f} ms, '
              f'{len(runs)} rounds')
PY
