#!/usr/bin/env python3
"""Labels of the compile backend against eager on the shipped clip (goal: >= 99.5 % equal).

  python scripts/compile_vs_eager.py [--model camvid-dovit-tiny] [--bag config/demo/...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--model', default='camvid-dovit-tiny')
    ap.add_argument('--bag', default=str(ROOT / 'config' / 'demo' / 'camvid_0016E5_30f.mcap'))
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    from dovit_ros.bag.storage import BagReader
    from dovit_ros.runtime.artifacts import load_model
    from dovit_ros.runtime.backends import make_runner
    from dovit_ros.runtime.image_codec import decode_any
    from dovit_ros.runtime.pipeline import Pipeline, resolve_model_path
    torch.set_num_threads(a.threads)
    path = resolve_model_path(a.model)
    model, meta = load_model(path)
    eager = Pipeline(model, meta)
    runner, info = make_runner(model, 'compile', 'cpu', 'fp32')
    compiled = Pipeline(model, meta, runner=runner)
    with BagReader(Path(a.bag)) as bag:
        topic, _ = bag.image_topic(None)
        frames = [decode_any(m.decode()).copy() for m in bag.messages([topic])]
    t0 = time.perf_counter()
    compiled.infer(frames[0])   # compiles
    compile_s = time.perf_counter() - t0
    same, total, ms_e, ms_c = 0, 0, [], []
    for f in frames:
        re_, rc = eager.infer(f), compiled.infer(f)
        same += int((re_.labels == rc.labels).sum())
        total += re_.labels.size
        ms_e.append(re_.model_ms)
        ms_c.append(rc.model_ms)
    out = {'model': str(path), 'frames': len(frames), 'identical_label_pct': 100 * same / total,
           'compile_s': compile_s, 'eager_ms_median': float(np.median(ms_e)),
           'compile_ms_median': float(np.median(ms_c)), 'threads': a.threads,
           'graphs_per_stage': getattr(getattr(runner, 'graphs', None), 'per_stage', None)}
    print(json.dumps(out, indent=1, default=str))
    return 0 if out['identical_label_pct'] >= 99.5 else 1


if __name__ == '__main__':
    sys.exit(main())
