"""dovit-compare: is model B better than model A on these images? Paired bootstrap intervals.

  dovit-eval --model A --dataset camvid ... --thresholds 1.0,0.8 --json a.json \\
      --save-matrices a.safetensors            # the same for B, on the same split
  dovit-compare a.safetensors b.safetensors [--json diff.json] [--markdown diff.md]

Two models' mIoU intervals on one small validation set overlap even when one is better on
nearly every resample, because the images move both figures together. This resamples the images
of both evaluations with the same draws and reports B - A: mIoU and per-class IoU, each with
its percentile interval (default 95 %, 1000 resamples), for every setting (policy and xi, or the
budget controller's target) both files have. The two files must cover the same images and
classes; settings only one of them has are listed and skipped. Like dovit-eval's own intervals,
these cover the choice of images from the same source only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..train.matrices_file import EvalMatrices, MatricesFileError, load_matrices, row_label
from ..train.metrics import paired_difference, resample_counts
from .eval_report import finite


def aligned(a: EvalMatrices, b: EvalMatrices) -> EvalMatrices:
    """B with its images in A's order; ValueError when the two do not cover the same images
    and classes."""
    if a.class_names != b.class_names:
        raise ValueError(f'the class names differ: {a.class_names} against {b.class_names}')
    if sorted(a.images) != sorted(b.images) or len(set(a.images)) != len(a.images):
        only = sorted(set(a.images) ^ set(b.images))
        raise ValueError(f'the two evaluations are not of the same images ({len(a.images)} '
                         f'against {len(b.images)}; in one only: {only[:5]})')
    position = {name: i for i, name in enumerate(b.images)}
    order = [position[name] for name in a.images]
    return EvalMatrices(b.rows, [m[order] for m in b.matrices], list(a.images),
                        b.class_names, b.source)


def compare(a: EvalMatrices, b: EvalMatrices, resamples: int = 1000, level: float = 0.95
            ) -> dict:
    """Report of B - A for every setting both have (mIoU and IoU as fractions)."""
    b = aligned(a, b)
    counts = resample_counts(len(a.images), resamples)
    in_b = {row_label(r): m for r, m in zip(b.rows, b.matrices)}
    rows, skipped = [], sorted(set(in_b) - {row_label(r) for r in a.rows})
    for r, m in zip(a.rows, a.matrices):
        label = row_label(r)
        if label not in in_b:
            skipped.append(label)
            continue
        d = paired_difference(m, in_b[label], counts, level)
        rows.append({'setting': label, **d.to_dict()})
    if not rows:
        raise ValueError('the two evaluations have no setting in common: '
                         f'{[row_label(r) for r in a.rows]} against {list(in_b)}')
    return {'a': a.source, 'b': b.source, 'images': len(a.images),
            'class_names': a.class_names, 'rows': rows, 'skipped': skipped}


def _pct(v) -> str:
    return '' if v is None else f'{100 * v:.2f}'


def _delta(v, interval) -> str:
    if v is None:
        return ''
    lo, hi = interval
    if lo is None:   # present in both over all images, but in no resample of both
        return f'{100 * v:+.2f}'
    return f'{100 * v:+.2f} ({100 * lo:+.2f} to {100 * hi:+.2f})'


def markdown(report: dict, a_name: str, b_name: str) -> str:
    """Two tables: mIoU per setting, then each class's IoU change per setting (points)."""
    rows = report['rows']
    pct = round(100 * rows[0]['level'])
    out = [f'# B - A on {report["images"]} images', '',
           f'A: {a_name}', f'B: {b_name}', '',
           f'| setting | mIoU A | mIoU B | B - A ({pct} %) |', '| --- | --- | --- | --- |']
    out += [f'| {r["setting"]} | {_pct(r["miou_a"])} | {_pct(r["miou_b"])} | '
            f'{_delta(r["miou"], r["miou_interval"])} |' for r in rows]
    out += ['', 'IoU change per class, B - A (points, {} % interval):'.format(pct), '',
            '| class | ' + ' | '.join(r['setting'] for r in rows) + ' |',
            '| --- |' + ' --- |' * len(rows)]
    for c, name in enumerate(report['class_names']):
        out.append(f'| {name} | ' + ' | '.join(
            _delta(r['iou_per_class'][c], r['iou_intervals'][c]) for r in rows) + ' |')
    if report['skipped']:
        out += ['', f'In one file only (skipped): {", ".join(report["skipped"])}']
    out += ['', f'{rows[0]["resamples"]} paired resamples of the images; they cover the choice '
            'of images from this set only.']
    return '\n'.join(out) + '\n'


def describe(path: Path, em: EvalMatrices) -> str:
    s = em.source
    sha = (s.get('weights_sha256') or '')[:8]
    return (f'`{path}`: {s.get("model", "?")} (weights {sha or "?"}…), {s.get("dataset", "?")} '
            f'{s.get("split", "?")}, {s.get("precision", "?")}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='dovit-compare', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('a', type=Path, help='matrices of A (dovit-eval --save-matrices)')
    ap.add_argument('b', type=Path, help='matrices of B, the same images')
    ap.add_argument('--resamples', type=int, default=1000)
    ap.add_argument('--level', type=float, default=0.95, help='interval level (default 0.95)')
    ap.add_argument('--json', type=Path, metavar='OUT', help='also write the report as JSON')
    ap.add_argument('--markdown', type=Path, metavar='OUT.md',
                    help='also write the tables (they are printed either way)')
    args = ap.parse_args(argv)

    def fail(msg: str) -> int:
        print(f'dovit-compare: {msg}', file=sys.stderr)
        return 2

    if args.resamples < 1:
        return fail('--resamples must be >= 1')
    if not 0 < args.level < 1:
        return fail('--level must be in (0, 1)')
    try:
        a, b = load_matrices(args.a), load_matrices(args.b)
        report = compare(a, b, args.resamples, args.level)
    except (MatricesFileError, ValueError) as e:
        return fail(str(e))
    report = finite(report)
    text = markdown(report, describe(args.a, a), describe(args.b, b))
    sys.stdout.write(text)
    for path, content in ((args.json, json.dumps(report, indent=1) + '\n'),
                          (args.markdown, text)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    return 0


if __name__ == '__main__':
    sys.exit(main())
