"""dovit-train: train or fine-tune a DoViT segmenter from a YAML config.

  dovit-train --config config/train/camvid_tiny_phase1.yaml --out runs/camvid_p1
  dovit-train ... --resume --time-budget 30      # continue; stop cleanly after 30 minutes
  (Ctrl-C or SIGTERM also stops cleanly, after the current step, with a checkpoint; Ctrl-C
  twice: at once)
  torchrun --nproc-per-node 2 -m dovit_ros.cli.train --config ...   # DDP (nccl / gloo)
"""
from __future__ import annotations

import argparse
import json
import sys

from ..train.config import load_train_config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='dovit-train', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', required=True, help='training YAML (see config/train/)')
    ap.add_argument('--out', help='run folder (default runs/<name>)')
    ap.add_argument('--resume', action='store_true', help='continue from the run folder')
    ap.add_argument('--time-budget', type=float, metavar='MINUTES',
                    help='stop at a checkpoint once this much time has passed')
    ap.add_argument('--device', default='auto', help='auto | cpu | cuda')
    ap.add_argument('--threads', type=int, help='torch CPU threads')
    ap.add_argument('--no-progress', action='store_true')
    ap.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                    help='override config fields, e.g. steps=100 data.workers=0')
    a = ap.parse_args(argv)
    try:
        cfg = load_train_config(a.config, a.set)
    except ValueError as e:
        print(f'dovit-train: {e}', file=sys.stderr)
        return 2
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from ..data import DatasetError
    from ..runtime.artifacts import ModelLoadError
    from ..train.loop import train
    from ..train.run_folder import RunFolderError
    try:
        summary = train(cfg, a.out or f'runs/{cfg.name}', resume=a.resume,
                        time_budget_min=a.time_budget, device=a.device,
                        progress=not a.no_progress)
    # missing data, bad init_from/teacher model, a new run pointed at a folder in use
    except (DatasetError, ModelLoadError, RunFolderError) as e:
        print(f'dovit-train: {e}', file=sys.stderr)
        return 2
    # one write() of one line: under torchrun every rank prints its summary to the same pipe,
    # and print()'s separate newline write let two ranks' lines interleave
    sys.stdout.write(json.dumps(summary) + '\n')
    sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
