"""dovit-eval's report: bootstrap intervals added to the results, the markdown table and the
mIoU-against-GFLOPs plot, all from the JSON-ready results."""
from __future__ import annotations

import math
from pathlib import Path

from ..optional import require


def fixed_xi_miou_at(results: list[dict], gflops: float) -> float | None:
    """mIoU of the fixed-xi sweep linearly interpolated at a mean cost (None outside it)."""
    pts = sorted((r['gflops_mean'], r['miou']) for r in results
                 if r.get('miou') is not None and not r.get('controller'))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= gflops <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (gflops - x0) / (x1 - x0)
    return None


def add_intervals(results: list[dict], matrices: list, resamples: int) -> None:
    """Each result gets `ci`: bootstrap intervals over the images (train/metrics.py), the
    same draws for every result, so that `miou_delta` (against the first result, paired) is
    free of the noise the runs share."""
    from ..train.metrics import bootstrap_intervals, resample_counts
    counts = resample_counts(len(matrices[0]), resamples)
    for i, (r, m) in enumerate(zip(results, matrices)):
        ci = bootstrap_intervals(m, counts, reference=matrices[0] if i else None)
        r['ci'] = ci.to_dict()


def finite(v):
    """JSON-safe copy: NaN/Inf -> None (null), tuples -> lists."""
    if isinstance(v, dict):
        return {k: finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _pct(v) -> str:
    return '–' if v is None else f'{100 * v:.2f}'


def _interval(ci: list | None) -> str:
    return '' if not ci or None in ci else f'{100 * ci[0]:.2f} to {100 * ci[1]:.2f}'


def write_markdown(report: dict, path: Path) -> None:
    m = report['meta']
    with_ci = 'ci' in report['results'][0]
    lines = [f'# {m["model_name"] or m["model"]} on {m["dataset"]} / {m["split"]}', '',
             f'{m["images"]} images, policy {m["policy"]} (k = {m["topk_per_class"]}), '
             f'device {m["device"]}, torch {m["torch"]}'
             + (f', images segmented at scale {m["input_scale"]:g} of their size'
                if m.get('input_scale', 1) != 1 else '') + '.', '',
             '| ξ | mIoU | pixel acc | mean acc | GFLOPs mean | GFLOPs saved % '
             '| tokens active per stage | ms |' + (' mIoU 95 % | change vs first 95 % |'
                                                   if with_ci else ''),
             '|---|---|---|---|---|---|---|---|' + ('---|---|' if with_ci else '')]
    notes = []
    for r in report['results']:
        thr = r['threshold']
        thr = '/'.join(f'{t:g}' for t in thr) if isinstance(thr, list) else f'{thr:g}'
        if r.get('controller'):
            thr = f'budget {r["target_gflops"]:g} GFLOPs (mean ξ {r["threshold"]:.4f})'
            fx = r.get('fixed_xi_miou_at_equal_gflops')
            notes.append(f'Budget controller: mIoU {_pct(r["miou"])} at {r["gflops_mean"]:.4g} '
                         f'GFLOPs mean ({100 * r["gflops_vs_target"]:.1f} % of the target); '
                         'the fixed-ξ sweep interpolated at the same mean GFLOPs: '
                         + (f'{_pct(fx)}.' if fx is not None else 'outside the sweep.'))
        tokens = '/'.join(f'{100 * a:.0f}' for a in r['tokens_active']) + ' %'
        lines.append(f'| {thr} | {_pct(r["miou"])} | {_pct(r["pixel_acc"])} '
                     f'| {_pct(r["mean_acc"])} | {r["gflops_mean"]:.4g} '
                     f'| {r["gflops_saved_pct"]:.1f} | {tokens} | {r["ms_mean"]:.1f} |'
                     + (f' {_interval(r["ci"]["miou"])} | {_interval(r["ci"]["miou_delta"])} |'
                        if with_ci else ''))
    lines += ['', f'Full model: {report["results"][0]["gflops_full"]:.4g} GFLOPs per image. '
              'mIoU, accuracies and tokens in %.', ''] + [n + '\n' for n in notes]
    if with_ci:
        ci = report['results'][0]['ci']
        lines += [f'Intervals: {100 * ci["level"]:.0f} % percentile bootstrap over the images '
                  f'({ci["resamples"]} resamples, the same for every row; per class in the '
                  'JSON). They cover the choice of images from this set only: frames of one '
                  'drive are not independent, another drive can differ by more.', '']
    path.write_text('\n'.join(lines))


def write_plot(report: dict, path: Path) -> None:
    # Figure + its own Agg canvas: no pyplot, no global backend, no display needed.
    require('matplotlib', 'the mIoU/GFLOPs plot (--plot)')
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    m, rs = report['meta'], report['results']
    fig = Figure(figsize=(6, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = [(r['gflops_mean'], 100 * r['miou'], r['threshold']) for r in rs
           if r['miou'] is not None and not r.get('controller')]
    for r in rs:
        if r.get('controller') and r['miou'] is not None:
            ax.plot([r['gflops_mean']], [100 * r['miou']], '*', ms=12, color='tab:red',
                    label=f'budget {r["target_gflops"]:g} GFLOPs')
    if pts:
        xs, ys, ts = zip(*pts)
        ax.plot(xs, ys, 'o-', color='tab:blue', label=f'{m["policy"]} exits')
        cis = [r['ci']['miou'] for r in rs if r.get('ci') and not r.get('controller')
               and r['miou'] is not None]
        if len(cis) == len(pts) and all(None not in c for c in cis):   # 95 % intervals
            err = [[y - 100 * c[0] for y, c in zip(ys, cis)],
                   [100 * c[1] - y for y, c in zip(ys, cis)]]
            ax.errorbar(xs, ys, yerr=err, fmt='none', ecolor='tab:blue', alpha=0.5, capsize=3,
                        label='95 % interval over the images')
        for x, y, t in pts:
            lab = '/'.join(f'{v:g}' for v in t) if isinstance(t, list) else f'{t:g}'
            ax.annotate(f'ξ={lab}', (x, y), textcoords='offset points', xytext=(4, 4),
                        fontsize=8)
    ax.axvline(rs[0]['gflops_full'], color='gray', ls='--', lw=1, label='full model')
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.margins(x=0.1, y=0.15)   # room for the xi labels
    ax.set_xlabel('GFLOPs per image (mean)')
    ax.set_ylabel('mIoU (%)')
    ax.set_title(f'{m["model_name"] or Path(m["model"]).name}: {m["dataset"]} {m["split"]}',
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
