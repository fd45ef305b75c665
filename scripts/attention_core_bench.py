#!/usr/bin/env python3
"""The attention core on this CPU: PyTorch's fused scaled_dot_product_attention against the
same softmax(QK^T)V written out as matmuls (model/vit.py, ATTENTION_CORES).

  python scripts/attention_core_bench.py [--model DIR] [--image FRAME] [--threads 2]
      [--precision fp32,bf16] [--rounds 4] [--frames 10] [--tokens 140,300,500,691,800,1000]
      [--json OUT]

Two parts, each alternating the cores so that a drifting host hits both alike:
- one attention call on (1, heads, N, head_dim) at each N of --tokens (the default model's
  full frame has 691 tokens; after its exits, ~100-140);
- the whole frame (Pipeline.infer on a real frame: full tokens and the model's default exits),
  with the agreement of the two cores' labels.
Medians over rounds of each round's median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dovit_ros.data.base import read_image  # noqa: E402
from dovit_ros.model import FULL  # noqa: E402
from dovit_ros.model.vit import ATTENTION_CORES  # noqa: E402
from dovit_ros.runtime.device import cpu_model_name  # noqa: E402
from dovit_ros.runtime.pipeline import PRECISIONS, Pipeline  # noqa: E402


def time_ms(fn, n: int) -> float:
    """Median wall time of n calls, in ms."""
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


@torch.inference_mode()
def kernel_rows(tokens: list[int], heads: int, head_dim: int, dtype, rounds: int) -> list[dict]:
    rows = []
    for n in tokens:
        q, k, v = (torch.randn(1, heads, n, head_dim, dtype=dtype) for _ in range(3))
        ms: dict[str, list[float]] = {c: [] for c in ATTENTION_CORES}
        for _ in range(rounds):
            for core, fn in ATTENTION_CORES.items():
                fn(q, k, v)   # warm-up
                ms[core].append(time_ms(lambda: fn(q, k, v), 20))
        rows.append({'tokens': n, **{f'{c}_ms': statistics.median(m) for c, m in ms.items()}})
    return rows


def frame_rows(pipe: Pipeline, image: np.ndarray, rounds: int, frames: int) -> dict:
    out = {}
    for name, exits in (('full', FULL), ('default_exits', None)):
        ms: dict[str, list[float]] = {c: [] for c in ATTENTION_CORES}
        labels = {}
        for _ in range(rounds):
            for core in ATTENTION_CORES:
                pipe.model.attention_core(core)
                pipe.infer(image, exits)   # warm-up
                ms[core].append(statistics.median(
                    pipe.infer(image, exits).model_ms for _ in range(frames)))
                labels[core] = pipe.infer(image, exits).labels
        a, b = labels.values()
        out[name] = {**{f'{c}_ms': statistics.median(m) for c, m in ms.items()},
                     'label_agreement': float((a == b).mean())}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--image', default='../shared/data/camvid/val/images/0016E5_07959.jpg')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--precision', default='fp32,bf16')
    ap.add_argument('--rounds', type=int, default=4)
    ap.add_argument('--frames', type=int, default=10)
    ap.add_argument('--tokens', default='140,300,500,691,800,1000')
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    image = read_image(a.image)
    report = {'cpu': cpu_model_name(), 'threads': a.threads, 'torch': torch.__version__,
              'precisions': {}}
    for prec in a.precision.split(','):
        pipe = Pipeline.from_path(a.model, precision=prec)
        cfg = pipe.model.cfg
        kern = kernel_rows([int(n) for n in a.tokens.split(',')], cfg.heads,
                           cfg.dim // cfg.heads, PRECISIONS[prec], a.rounds)
        frame = frame_rows(pipe, image, a.rounds, a.frames)
        report['precisions'][prec] = {'kernel': kern, 'frame': frame}
        for r in kern:
            print(f"{prec} N={r['tokens']:5d}: sdpa {r['sdpa_ms']:.2f} ms, "
                  f"matmul {r['matmul_ms']:.2f} ms")
        for name, r in frame.items():
            print(f"{prec} frame {name}: sdpa {r['sdpa_ms']:.1f} ms, matmul {r['matmul_ms']:.1f}"
                  f" ms, labels agree {100 * r['label_agreement']:.2f} %")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
