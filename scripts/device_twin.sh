#!/usr/bin/env bash
# The held-out twin chain of the default recipe (docs/training.md item 20) on a lent GPU, in one
# call of the device tool (at most 10 minutes a command; a warm machine keeps runs/ between
# calls, so a second call resumes the chain). Brings back the best weights of the last finished
# run in 15 MiB parts and twin.tar.gz: every run's metrics.csv, log and best/model.yaml.
#
#   bash scripts/device_twin.sh OUT [MINUTES] [DATA]     # on the device; DATA .carry/camvid
#   PYTHON=.venv/bin/python DEVICE=cpu WORKERS=0 CONFIGS=config/train/holdout/balanced_strong.yaml \
#       EXTRA='name=dry_twin steps=2 eval_every=2 checkpoint_every=2' \
#       bash scripts/device_twin.sh /tmp/dry 3 ../shared/data/camvid   # a dry run here (its
#                                                       # own run name: runs/ is shared)
#
# Here afterwards: cat OUT/<run>.safetensors.part-* > DIR/model.safetensors, DIR/model.yaml
# from the tarball; then dovit-eval DIR on val and on 0006R0 (model card, "Held-out drive").
set -u
OUT=$(realpath -m "${1:-.device/out}"); MIN=${2:-9}; DATA=${3:-.carry/camvid}
H=config/train/holdout
CONFIGS=${CONFIGS:-"$H/balanced_strong.yaml $H/balanced_strong_cont.yaml $H/deep_phase1.yaml
  $H/deep2_phase1.yaml $H/scale_probe.yaml $H/scale_phase2.yaml $H/strip_phase1.yaml
  $H/strip_phase2_full2.yaml"}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" runs
# shellcheck disable=SC2086  # CONFIGS and EXTRA are word lists
$PY scripts/train_chain.py --minutes "$MIN" --margin 0.5 --min-slice 0.5 \
    --device "${DEVICE:-cuda}" $CONFIGS --set data.root="$DATA" data.workers="${WORKERS:-12}" \
    ${EXTRA:-} 2>&1 | tee -a runs/twin_chain_device.log
last=""; files=(runs/twin_chain_device.log)
for c in $CONFIGS; do
  name=$($PY -c "from dovit_ros.train.config import load_train_config as l
print(l('$c', '${EXTRA:-}'.split()).name)")
  [ -f "runs/$name/best/model.safetensors" ] && last=$name
  for f in "runs/$name.log" "runs/$name/metrics.csv" "runs/$name/best/model.yaml"; do
    [ -f "$f" ] && files+=("$f")
  done
done
if [ -n "$last" ]; then
  split -b 15M -d "runs/$last/best/model.safetensors" "$OUT/$last.safetensors.part-"
  echo "device_twin: weights of runs/$last/best in $OUT/$last.safetensors.part-*"
fi
tar czf "$OUT/twin.tar.gz" "${files[@]}"
ls -la "$OUT"
