#!/usr/bin/env python3
"""The validation curve of a model trained in several runs (phases, machines, resumed slices).

  python scripts/val_curve.py --run runs/a/metrics.csv "phase 1 (H200)" 16 0 \
      --run runs/b/metrics.csv "phase 1 cont. (CPU)" 8 4000 ... --out curve.png [--md out.md]

Each --run is a training run's metrics.csv, its label, its batch size, and the step of the
previous run whose weights it started from (0 for the first). The x axis is training images
seen (step x batch), so runs with different batch sizes line up; each run starts where its
starting weights were taken, not where the previous run stopped. Plotted: val mIoU (full
tokens) at each evaluation, and val at the default exits where the run measured it (phase 2
with `select_best: default`, dashed); held-out mIoU is kept in the points and the table.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_evals(path: Path) -> list[tuple[int, float, float | None, float | None]]:
    """(step, val mIoU %, held-out mIoU % or None, val mIoU % at the default exits or None)
    of each evaluation row."""
    def pct(v):
        return 100 * float(v) if v else None
    with open(path, newline='') as f:
        return [(int(r['step']), pct(r['val_miou']), pct(r.get('holdout_miou')),
                 pct(r.get('val_miou_default'))) for r in csv.DictReader(f) if r.get('val_miou')]


def chain(runs: list[tuple[Path, str, int, int]]) -> list[dict]:
    """Each run's evaluations at images seen, offset by where its starting weights were."""
    out, base, prev_batch = [], 0, None
    for path, label, batch, start_step in runs:
        if prev_batch is not None:
            base += start_step * prev_batch
        for step, val, held, at_default in read_evals(path):
            out.append({'run': label, 'step': step, 'images': base + step * batch,
                        'val': val, 'heldout': held, 'default': at_default})
        prev_batch = batch
    return out


def plot(points: list[dict], out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label in dict.fromkeys(p['run'] for p in points):
        ps = [p for p in points if p['run'] == label]
        line, = ax.plot([p['images'] / 1e3 for p in ps], [p['val'] for p in ps], 'o-',
                        label=label)
        ds = [p for p in ps if p['default'] is not None]
        if ds:
            ax.plot([p['images'] / 1e3 for p in ds], [p['default'] for p in ds], 's--',
                    color=line.get_color(), label=f'{label}, at the default exits')
    ax.set_xlabel('training images seen (thousands)')
    ax.set_ylabel('CamVid val mIoU (%)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def markdown(points: list[dict]) -> str:
    def cell(v):
        return '' if v is None else f'{v:.2f}'
    lines = ['| run | step | images seen | val mIoU, full tokens | val mIoU, default exits |',
             '| --- | --- | --- | --- | --- |']
    lines += [f'| {p["run"]} | {p["step"]} | {p["images"]} | {cell(p["val"])} | '
              f'{cell(p["default"])} |' for p in points]
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--run', nargs=4, action='append', required=True,
                    metavar=('METRICS_CSV', 'LABEL', 'BATCH', 'FROM_STEP'))
    ap.add_argument('--out', type=Path, required=True, help='PNG')
    ap.add_argument('--md', type=Path, help='also write the points as a markdown table')
    a = ap.parse_args(argv)
    try:
        runs = [(Path(p), label, int(b), int(s)) for p, label, b, s in a.run]
    except ValueError as e:
        ap.error(f'--run: BATCH and FROM_STEP must be integers ({e})')
    points = chain(runs)
    if not points:
        print('no evaluation rows in the given metrics files', file=sys.stderr)
        return 1
    plot(points, a.out)
    table = markdown(points)
    print(table, end='')
    if a.md:
        a.md.write_text(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
