"""dovit-export: a training checkpoint -> the model directory the node loads.

  dovit-export runs/camvid_p2 --out models/camvid-dovit-tiny       # its best/, else latest ckpt
  dovit-export runs/camvid_p2/ckpt-0002400 --out M --threshold 0.96 --policy dtop --name tiny
  dovit-export runs/camvid_p2 --out M --metrics reports/camvid_test.json   # dovit-eval figures
  dovit-export M --out M --stages M/stages     # also torch.export programs of the stages

SOURCE is a checkpoint folder (runs/X/ckpt-NNNNNNN), a run's best/ folder, a run folder (its
best/ if there is one, else the checkpoint named in its `latest`), or a model directory. The
output is model.safetensors (weights and BN statistics only; optimiser state and RNG states
are dropped) + model.yaml: architecture (decision points, exit semantics), classes and palette,
normalisation mean/std, input size (--input-size, else the source's, else the size the position
embeddings were learned at), default exit policy, xi and k (flags, else the training config's),
the training recipe (train config, source checkpoint and step) and measured metrics (training's
validation mIoU, plus a dovit-eval JSON merged under metrics.eval["<dataset>/<split>"]).
Nothing is pickled; the result loads with `dovit_ros.runtime.artifacts.load_model`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import yaml

from ..model import EXIT_POLICIES, ExitConfig
from ..runtime.artifacts import META, WEIGHTS, ModelLoadError, ModelMeta
from ..train.checkpoint import STATE_Y, latest_checkpoint

EVAL_FIELDS = ('threshold', 'policy', 'topk_per_class', 'miou', 'pixel_acc', 'mean_acc',
               'iou_per_class', 'gflops_mean', 'gflops_full', 'gflops_saved_pct', 'ms_mean',
               'tokens_active', 'images')


def resolve_source(src: Path) -> Path:
    """The folder holding model.safetensors + model.yaml that `src` stands for."""
    if (src / META).is_file():
        return src
    if (src / 'best' / META).is_file():
        return src / 'best'
    if src.is_dir():
        ck = latest_checkpoint(src)
        if ck is not None:
            return ck
    raise ModelLoadError(f'{src}: not a checkpoint, model directory or run folder (no {META}, '
                         'no best/, no latest)')


def source_step(folder: Path, meta: ModelMeta) -> int | None:
    """Training step of a checkpoint (train_state.yaml) or of a best/ model (its metrics)."""
    f = folder / STATE_Y
    if f.is_file():
        try:
            step = (yaml.safe_load(f.read_text()) or {}).get('step')
        except (OSError, yaml.YAMLError) as e:
            raise ModelLoadError(f'{f}: unreadable ({e})') from None
        return step if isinstance(step, int) else None
    step = meta.metrics.get('step')
    return step if isinstance(step, int) else None


def read_eval_report(path: Path) -> dict:
    """A dovit-eval JSON, checked for the fields that are merged."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f'{path}: cannot read dovit-eval JSON ({e})') from None
    if not (isinstance(d, dict) and isinstance(d.get('meta'), dict)
            and isinstance(d.get('results'), list) and d['results']):
        raise ValueError(f'{path}: expected a dovit-eval report {{"meta": {{...}}, '
                         f'"results": [...]}}')
    for key in ('dataset', 'split'):
        if not isinstance(d['meta'].get(key), str):
            raise ValueError(f'{path}: meta.{key} missing or not a string')
    for i, r in enumerate(d['results']):
        missing = [k for k in ('threshold', 'miou', 'gflops_mean') if k not in r]
        if not isinstance(r, dict) or missing:
            raise ValueError(f'{path}: results[{i}] lacks {", ".join(missing) or "fields"}')
    return d


def merge_eval(metrics: dict, report: dict, meta: ModelMeta, weights_sha: str,
               path: Path) -> dict:
    """metrics with report's results under eval["<dataset>/<split>"]; warns on a mismatch of
    classes or weights (figures measured on another model)."""
    m = report['meta']
    names = m.get('class_names')
    if names is not None and list(names) != list(meta.classes.names):
        print(f'dovit-export: warning: {path} was measured with other class names',
              file=sys.stderr)
    if m.get('weights_sha256') not in (None, weights_sha):
        print(f'dovit-export: warning: {path} was measured on other weights '
              f'(sha256 {str(m["weights_sha256"])[:12]}..., exporting {weights_sha[:12]}...)',
              file=sys.stderr)
    entry = {k: m[k] for k in ('images', 'policy', 'topk_per_class', 'device', 'torch',
                               'machine', 'created') if k in m}
    entry['results'] = [{k: r[k] for k in EVAL_FIELDS if k in r} for r in report['results']]
    out = dict(metrics)
    out['eval'] = {**out.get('eval', {}), f'{m["dataset"]}/{m["split"]}': entry}
    return out


class StagesUnavailable(RuntimeError):
    """The stage exporter (dovit_ros.runtime.backends.export) is not installed."""


def export_stage_programs(model, out_dir: Path, input_size: tuple[int, int],
                          metrics: dict | None = None) -> None:
    """torch.export programs of the stages at the model's input size, each with the profile a
    TensorRT engine of it gets (token ranges; opt from the token statistics in `metrics`,
    model.yaml's), from dovit_ros.runtime.backends, imported lazily."""
    try:
        from ..runtime.backends.export import export_stages
    except ModuleNotFoundError as e:
        if not (e.name or '').startswith('dovit_ros.runtime.backends'):
            raise
        raise StagesUnavailable('--stages needs dovit_ros.runtime.backends.export (torch.export'
                                ' programs of the stages), which this installation does not '
                                'have yet') from None
    from ..runtime.backends.profiles import token_stats_from_metrics
    from ..runtime.backends.stages import full_tokens
    stats = token_stats_from_metrics(metrics, model.cfg.num_stages,
                                     full_tokens(model, input_size)[1])
    export_stages(model, out_dir, example_hw=tuple(input_size), token_stats=stats)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='dovit-export', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('source', type=Path, help='checkpoint folder, best/, run folder or model dir')
    ap.add_argument('--out', required=True, type=Path, help='model directory to write')
    ap.add_argument('--threshold', type=float, help='default xi written to model.yaml')
    ap.add_argument('--policy', choices=EXIT_POLICIES, help='default exit policy')
    ap.add_argument('--topk', type=int, metavar='K', help='default dtop tokens kept per class')
    ap.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'),
                    help='input size the node should expect')
    ap.add_argument('--name', help='model name (default: the training run name)')
    ap.add_argument('--metrics', type=Path, metavar='JSON', help='dovit-eval report to merge')
    ap.add_argument('--stages', type=Path, metavar='DIR',
                    help='also write torch.export programs of the stages (dynamic token count)')
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)

    from ..runtime.artifacts import load_model, save_model_dir, write_meta
    from .eval import file_sha256

    def fail(msg: str) -> int:
        print(f'dovit-export: {msg}', file=sys.stderr)
        return 2

    try:
        src = resolve_source(a.source)
        model, meta = load_model(src)
        report = read_eval_report(a.metrics) if a.metrics else None
        ex = meta.exits
        exits = ExitConfig(a.policy or ex.policy,
                           ex.threshold if a.threshold is None else a.threshold,
                           ex.topk_per_class if a.topk is None else a.topk)
        exits.thresholds(len(meta.architecture.decision_points))
        size = tuple(a.input_size or meta.input_size or meta.architecture.img_size)
        if min(size) < 1:
            raise ValueError(f'--input-size must be positive, got {size}')
        step = source_step(src, meta)
    except (ModelLoadError, ValueError) as e:
        return fail(str(e))
    recipe = dict(meta.recipe)
    if step is not None or 'export' not in recipe:   # re-exporting a model keeps its origin
        recipe['export'] = {'source': str(src), 'step': step}
    new = dataclasses.replace(meta, exits=exits, input_size=size, recipe=recipe,
                              name=a.name or meta.name)
    save_model_dir(a.out, model, new)
    if report is not None:   # after the weights, whose hash tells a report of other weights
        new.metrics = merge_eval(meta.metrics, report, meta, file_sha256(a.out / WEIGHTS),
                                 a.metrics)
        write_meta(a.out, new)
    if a.stages is not None:
        try:
            export_stage_programs(model, a.stages, size, new.metrics)
        except StagesUnavailable as e:
            return fail(str(e))
    print(json.dumps({'out': str(a.out), 'source': str(src), 'step': step,
                      'policy': exits.policy, 'threshold': new.to_dict()['exits']['threshold'],
                      'input_size': list(size), 'name': new.name}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
