#!/usr/bin/env bash
# One lease of a lent GPU, used twice over: the default model trains (phase 1, then phase 2
# from its best checkpoint) while scripts/device_check.py checks the CUDA path; the training is
# stopped (SIGSTOP to its process group) during the check's timed parts.
#
#   bash scripts/device_session.sh OUT [SECONDS] [DATA]      # on the device, ~SECONDS in all
#   DEVICE=cpu CHECK_ARGS='--device cpu --quick' EXTRA='steps=4 eval_every=2 data.workers=0' \
#       bash scripts/device_session.sh /tmp/dry 240 ../shared/data/camvid   # a dry run here
#
# DATA is a CamVid root (train/, val/); the device gets only the repository, so copy
# ../shared/data/camvid to the git-ignored .carry/camvid and carry it (37 MB).
# OUT receives at most 5 flat files, within what the device tool brings back (8 files of at
# most 16 MiB): each phase's best model weights in 15 MiB parts (p1.safetensors.part-00, ...)
# and session.tar.gz with everything else (model.yaml files, metrics.csv, logs, the device
# check's summary). Here: cat p1.safetensors.part-* > DIR/model.safetensors, with DIR/model.yaml
# from the tarball.
set -u
OUT=$(realpath -m "${1:-.device/out}"); TOTAL=${2:-540}; DATA=${3:-.carry/camvid}
DEVICE=${DEVICE:-cuda}; CHECK_ARGS=${CHECK_ARGS:---device cuda}; CHECK_S=${CHECK_S:-300}
P1=${P1:-config/train/camvid_tiny_phase1_gpu.yaml}; P2=${P2:-config/train/camvid_tiny_phase2.yaml}
P2_S=${P2_S:-150}   # seconds kept for phase 2
EXTRA=${EXTRA:-}; PY=${PYTHON:-python3}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
mins() { printf '%d.%02d' $(($1 / 60)) $(($1 % 60 * 100 / 60)); }   # seconds -> minutes
W=$(mktemp -d); mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export DATA DEVICE EXTRA PY W P1 P2
export DOVIT_TEST_FRAMES=${DOVIT_TEST_FRAMES:-$DATA/val/images}   # test_cuda without rosbags

# the training job, in its own process group (the check stops and continues it as a whole)
P1_MIN=$(mins $(( $(left) - P2_S - 40 )))
P2_END=$(( T0 + TOTAL - 40 ))
setsid bash -c '
  set -u
  $PY -m dovit_ros.cli.train --config $P1 --out $W/p1 --device $DEVICE --no-progress \
      --time-budget '"$P1_MIN"' --set data.root=$DATA $EXTRA > $W/p1.log 2>&1
  echo "phase 1 exit $?" >> $W/p1.log
  if [ -f $W/p1/best/model.safetensors ]; then
    S=$(( '"$P2_END"' - $(date +%s) ))
    M=$(printf "%d.%02d" $((S / 60)) $((S % 60 * 100 / 60)))
    $PY -m dovit_ros.cli.train --config $P2 --out $W/p2 --device $DEVICE --no-progress \
        --time-budget $M --set data.root=$DATA init_from=$W/p1/best teacher=$W/p1/best \
        checkpoint_every=500 data.workers=12 $EXTRA > $W/p2.log 2>&1
    echo "phase 2 exit $?" >> $W/p2.log
  fi' &
PG=$!
echo "device_session: training in process group $PG (phase 1 budget $P1_MIN min)"

$PY scripts/device_check.py $CHECK_ARGS --out "$W/check" --budget-s "$CHECK_S" \
    --pause-pgid "$PG" --data "$DATA"
echo "device_check exit $?"
kill -CONT -"$PG" 2>/dev/null
while kill -0 "$PG" 2>/dev/null && [ "$(left)" -gt 20 ]; do sleep 2; done
if kill -0 "$PG" 2>/dev/null; then
  echo "device_session: training still running at the deadline: stopped"
  kill -TERM -"$PG"; sleep 3
fi

for run in p1 p2; do
  if [ -f "$W/$run/best/model.safetensors" ]; then
    split -b 15M -d "$W/$run/best/model.safetensors" "$OUT/$run.safetensors.part-"
  fi
  tail -n 4 "$W/$run.log" 2>/dev/null | sed "s/^/$run: /"
done
cat "$W/check/summary.md" 2>/dev/null
(cd "$W" && tar czf "$OUT/session.tar.gz" --exclude='*.safetensors' --exclude='ckpt-*' \
    --exclude='check/demo' ./*)
ls -la "$OUT"
