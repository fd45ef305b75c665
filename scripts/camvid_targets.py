#!/usr/bin/env python3
"""The model issue's targets for a CamVid split, each met or not, from the reports that measure
them: `dovit-eval --json` (accuracy and exits) and `scripts/enet_speed.py --json` (speed).

    python scripts/camvid_targets.py --eval EVAL.json [--speed ENET.json ...] [--xi 0.8]
        [--full-miou 53] [--md OUT.md]

The targets (the issue's, for the unseen test split; ENet's 53.1 test mIoU from the
davidtvs/PyTorch-ENet README): at full tokens at least 53 mIoU; at the model's default xi no
more than 0.5 mIoU lost against full tokens, with at least 45 % fewer GFLOPs; the four thin
classes (Pole, SignSymbol, Pedestrian, Bicyclist) at least 20 IoU on average; and a frame at
the default xi at least twice as fast as ENet's on the same CPU (one row per speed report).
The default xi is the model's own (`exits.threshold` in its model.yaml) unless --xi says.
`scripts/measure_test_split.sh` makes the reports and runs this.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

FULL_MIOU = 53.0     # points, at full tokens (ENet: 53.1)
MAX_LOSS = 0.5       # points lost at the default xi against full tokens
MIN_SAVED = 45.0     # % of the full-token GFLOPs saved at the default xi
THIN = ('Pole', 'SignSymbol', 'Pedestrian', 'Bicyclist')
THIN_MEAN = 20.0     # points, mean IoU of THIN
SPEED = 2.0          # ENet's frame time over ours at the default xi
EPS = 1e-9           # a figure exactly at its bar meets it


class TargetsError(Exception):
    pass


@dataclass
class Row:
    target: str
    measured: str
    met: bool


def result_at(report: dict, xi: float) -> dict:
    """The report's result at threshold xi (threshold policy, as the node runs it)."""
    for r in report['results']:
        if abs(r['threshold'] - xi) < 1e-9 and r.get('policy', 'threshold') == 'threshold':
            return r
    have = ', '.join(str(r['threshold']) for r in report['results'])
    raise TargetsError(f'no result at xi {xi} in the report (it has {have}): run dovit-eval '
                       f'with --thresholds 1.0,{xi}')


def default_xi(report: dict) -> float:
    """The evaluated model's default xi, from the model.yaml beside its weights."""
    from dovit_ros.runtime.artifacts import ModelLoadError, read_meta
    path = Path(report['meta']['model']) / 'model.yaml'
    if not path.is_file():
        raise TargetsError(f'{path} not found: give the default xi with --xi')
    try:
        xi = read_meta(path.parent).exits.threshold
    except ModelLoadError as e:
        raise TargetsError(f'{e}: give the default xi with --xi') from None
    if not isinstance(xi, (int, float)):
        raise TargetsError(f'{path}: one xi per decision point ({xi}): give one with --xi')
    return float(xi)


def thin_ious(report: dict, result: dict) -> list[float]:
    """IoU (points) of THIN in that order."""
    names = report['meta']['class_names']
    missing = [c for c in THIN if c not in names]
    if missing:
        raise TargetsError(f'classes {missing} are not in the report ({names})')
    return [100 * result['iou_per_class'][names.index(c)] for c in THIN]


def thin_rows(where: str, ious: list[float]) -> list[Row]:
    """The test split's bar (the mean) and val's (each class)."""
    each = ', '.join(f'{c} {v:.1f}' for c, v in zip(THIN, ious))
    mean = sum(ious) / len(ious)
    return [Row(f'{where}: mean IoU of {", ".join(THIN)} >= {THIN_MEAN:g}', f'{mean:.2f}',
                mean >= THIN_MEAN - EPS),
            Row(f'{where}: each of them >= {THIN_MEAN:g} (the val target)', each,
                min(ious) >= THIN_MEAN - EPS)]


def accuracy_rows(report: dict, xi: float, full_bar: float = FULL_MIOU) -> list[Row]:
    full, dflt = result_at(report, 1.0), result_at(report, xi)
    loss = 100 * (full['miou'] - dflt['miou'])
    delta = (dflt.get('ci') or {}).get('miou_delta')
    interval = f'; change, 95 %: {100 * delta[0]:+.2f} to {100 * delta[1]:+.2f}' if delta else ''
    return [
        Row(f'full tokens: mIoU >= {full_bar:g}', f'{100 * full["miou"]:.2f}',
            100 * full['miou'] >= full_bar - EPS),
        Row(f'xi {xi:g}: mIoU lost <= {MAX_LOSS:g}',
            f'{loss:.2f} ({100 * full["miou"]:.2f} -> {100 * dflt["miou"]:.2f}{interval})',
            loss <= MAX_LOSS + EPS),
        Row(f'xi {xi:g}: GFLOPs saved >= {MIN_SAVED:g} %',
            f'{dflt["gflops_saved_pct"]:.1f} % ({dflt["gflops_mean"]:.2f} of '
            f'{dflt["gflops_full"]:.2f})', dflt['gflops_saved_pct'] >= MIN_SAVED - EPS),
        *thin_rows('full tokens', thin_ious(report, full)),
        *thin_rows(f'xi {xi:g}', thin_ious(report, dflt)),
    ]


def speed_row(speed: dict) -> Row:
    ratio = speed['enet_ms'] / speed['pruned_ms']
    return Row(f'{speed["cpu"]}, {speed["precision"]}, {speed["threads"]} thread(s): ENet / ours '
               f'at xi {speed["threshold"]:g} >= {SPEED:g}',
               f'{ratio:.2f} ({speed["enet_ms"]:.1f} / {speed["pruned_ms"]:.1f} ms)',
               ratio >= SPEED - EPS)


def table(rows: list[Row], report: dict) -> str:
    m = report['meta']
    head = (f'Targets on {m["dataset"]} {m["split"]} ({m["images"]} images), model '
            f'{m.get("model_name", m["model"])}, {m.get("precision", "fp32")}, '
            f'{m["machine"]["cpu_model"]}:\n\n| target | measured | met |\n| --- | --- | --- |\n')
    return head + ''.join(f'| {r.target} | {r.measured} | {"yes" if r.met else "**no**"} |\n'
                          for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--eval', required=True, help="dovit-eval's --json report (fp32)")
    ap.add_argument('--speed', nargs='*', default=[], help="scripts/enet_speed.py's reports")
    ap.add_argument('--xi', type=float, help="the default xi (default: the model's own)")
    ap.add_argument('--full-miou', type=float, default=FULL_MIOU,
                    help=f'the full-token mIoU bar (default {FULL_MIOU:g}, the test split\'s; '
                         f'the issue sets 60 on val)')
    ap.add_argument('--md', help='write the table here too')
    a = ap.parse_args(argv)
    try:
        report = json.loads(Path(a.eval).read_text())
        xi = a.xi if a.xi is not None else default_xi(report)
        rows = accuracy_rows(report, xi, a.full_miou)
        rows += [speed_row(json.loads(Path(s).read_text())) for s in a.speed]
    except KeyError as e:
        print(f'camvid_targets: a report lacks the field {e}: not dovit-eval\'s or '
              f'enet_speed.py\'s --json output?', file=sys.stderr)
        return 2
    except (TargetsError, OSError, ValueError) as e:
        print(f'camvid_targets: {e}', file=sys.stderr)
        return 2
    text = table(rows, report)
    print(text, end='')
    if a.md:
        Path(a.md).write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
