"""dovit-eval: accuracy and compute of a model on a dataset split, for several exit thresholds.

  dovit-eval --model models/camvid-dovit-tiny --dataset camvid --data-root ../shared/data/camvid \\
      --split test --thresholds 1.0,0.99,0.98,0.96 --json reports/camvid_test.json
  dovit-eval ... --policy dtop --topk 5 --limit 50 --device cuda
  dovit-eval --model M --dataset cityscapes --data-root $CITYSCAPES_DATASET --split val \\
      --thresholds 0.98 --json cs.json --save-predictions results
  CITYSCAPES_DATASET=... CITYSCAPES_RESULTS=results/xi_0.98 csEvalPixelLevelSemanticLabeling

Each xi is one `dovit_ros.train.evaluate.evaluate` pass at batch 1 (each image keeps its own
tokens); GFLOPs are the analytic count of what each image's forward executed, at the image's
own size. xi >= 1 exits nothing but still runs the aux heads, so it costs slightly more than the
plain model (gflops_full).

Outputs (--markdown and --plot default to the JSON's path with .md and .png):
  JSON      {"meta": {...}, "results": [...]} (strict JSON: NaN is written as null).
            meta: model (path), model_name, weights_sha256, dataset, data_root, split, images,
            policy, topk_per_class, class_names, device, torch, python, machine {processor,
            machine, system, cpu_count, torch_threads, gpu}, created (UTC, ISO 8601).
            results, one per xi: threshold, policy, topk_per_class, miou, pixel_acc, mean_acc,
            iou_per_class (null: class absent from ground truth and prediction),
            acc_per_class (recall, the share of each class's pixels found; null: class absent
            from the ground truth), gflops_mean,
            gflops_full, gflops_saved_pct, ms_mean (model forward per image), tokens_active
            (per stage: mean fraction of the tokens its blocks ran on), images, and
            predictions (folder) with --save-predictions, and ci (with --bootstrap R > 0,
            the default): level, resamples, miou [lo, hi], iou_per_class [[lo, hi], ...],
            miou_delta [lo, hi] (this xi's mIoU minus the first xi's, paired; null for the
            first), 95 % percentile-bootstrap intervals over the images. Accuracies are
            fractions in [0, 1].
  Markdown  one table row per xi (accuracies in %), with the mIoU intervals.
  PNG       mIoU against mean GFLOPs, one point per xi.
  --save-matrices OUT.safetensors: each image's confusion matrix per xi, with the image names
            (train/matrices_file.py), for `dovit-compare A B`: paired intervals of how a second
            model or setting differs from the first on the same images.

--save-predictions DIR writes one subfolder per xi (DIR/xi_1, DIR/xi_0.98, ...) holding one
single-channel PNG per image: class (train) ids named <image stem>.png, except for Cityscapes,
which gets the official result format: labelIds (cityscapesscripts' trainId -> id table) named
<city>_<seq>_<frame>_pred_labelIds.png, the files cityscapesscripts'
evalPixelLevelSemanticLabeling finds by searching CITYSCAPES_RESULTS for <city>_<seq>_<frame>*.png
(exactly one per ground-truth image, so point it at one xi folder). Note: cityscapesscripts
up to 2.3.0 calls np.in1d, which NumPy 2.4 removed (mcordts/cityscapesScripts PR #196); with
NumPy >= 2.4 set `np.in1d` to `np.isin(...).ravel()` before running it (test/test_eval.py does).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

from ..optional import MissingExtra, require
from ..runtime.budget import THRESHOLD_MIN
from .eval_report import add_intervals, finite, fixed_xi_miou_at, write_markdown, write_plot

CS_IMAGE_SUFFIX = '_leftImg8bit.png'


def parse_thresholds(text: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}')
    if not out or any(not math.isfinite(t) or t < 0 for t in out):
        raise argparse.ArgumentTypeError(f'thresholds must be numbers >= 0, got {text!r}')
    return out


def file_sha256(path: Path) -> str:
    from ..runtime.files import sha256_files
    return sha256_files(path)


def machine_info(device) -> dict:
    import torch
    gpu = torch.cuda.get_device_name(device) if device.type == 'cuda' else None
    from ..runtime.device import cpu_model_name
    return {'processor': platform.processor() or platform.machine(),
            'cpu_model': cpu_model_name(),
            'machine': platform.machine(), 'system': platform.system(),
            'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'gpu': gpu}


def xi_tag(t: float) -> str:
    return f'xi_{t:g}'


class PredictionWriter:
    """`on_prediction` callback of `evaluate`: one label PNG per image into `folder`."""

    def __init__(self, dataset, folder: Path):
        self.dataset, self.folder = dataset, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lut = None
        if dataset.name == 'cityscapes':
            require('cityscapesscripts', 'Cityscapes predictions')
            from cityscapesscripts.helpers.labels import trainId2label
            self.lut = np.zeros(256, np.uint8)
            for t in range(dataset.classes.num_classes):
                self.lut[t] = trainId2label[t].id

    def name(self, i: int) -> str:
        img = self.dataset.image_path(i).name
        if self.lut is not None and img.endswith(CS_IMAGE_SUFFIX):
            return img[:-len(CS_IMAGE_SUFFIX)] + '_pred_labelIds.png'
        return Path(img).stem + '.png'

    def __call__(self, i: int, labels: np.ndarray) -> None:
        import cv2
        out = labels if self.lut is None else self.lut[labels]
        path = self.folder / self.name(i)
        if not cv2.imwrite(str(path), np.ascontiguousarray(out, np.uint8)):
            raise OSError(f'cannot write prediction {path}')


def controller_hooks(args, base):
    """(choose_exits, observe, controller) for a --target-gflops run of `evaluate`.

    The same BudgetController the node uses: choose_exits(i) gives image i the controller's
    current xi, observe(out, ms) feeds back that image's real GFLOPs.
    """
    from ..runtime.budget import BudgetConfig, BudgetController
    ctrl = BudgetController(BudgetConfig(target=args.target_gflops, kind='gflops',
                                         threshold_min=args.threshold_min,
                                         threshold_max=args.threshold_max))

    def choose(i):
        return base.with_(threshold=ctrl.threshold)

    def observe(out, ms):
        ctrl.observe(float(out.flops[0]) / 1e9)

    return choose, observe, ctrl


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='dovit-eval', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', required=True, help='model directory or installed model name')
    ap.add_argument('--dataset', required=True, help='cityscapes | camvid | folder')
    ap.add_argument('--data-root', required=True, help='dataset root folder')
    ap.add_argument('--split', default='val', help='split name (default val)')
    ap.add_argument('--classes-yaml', help="class file of a 'folder' dataset "
                    '(default <data-root>/classes.yaml)')
    ap.add_argument('--thresholds', type=parse_thresholds, default=[1.0],
                    help='comma-separated xi values, e.g. 1.0,0.99,0.98,0.96 (default 1.0)')
    ap.add_argument('--policy', choices=('threshold', 'dtop'),
                    help="exit policy (default: the model's)")
    ap.add_argument('--topk', type=int, metavar='K',
                    help="dtop: tokens kept per predicted class (default: the model's)")
    ap.add_argument('--limit', type=int, metavar='N', help='only the first N images')
    ap.add_argument('--only', metavar='PREFIX',
                    help='only the images whose file name starts with PREFIX (one drive, e.g. '
                         "the held-out 0006R0 of CamVid's train split)")
    ap.add_argument('--device', default='auto', help='auto | cpu | cuda[:i] (default auto)')
    ap.add_argument('--threads', type=int, help='torch CPU threads')
    ap.add_argument('--attention', choices=('auto', 'sdpa', 'matmul'),
                    help='attention core (default: DOVIT_ATTENTION, else auto = measured at '
                         'start-up, as the node does; runtime/attention.py)')
    ap.add_argument('--precision', default='fp32', choices=('auto', 'fp32', 'bf16', 'fp16'),
                    help='compute precision of the model (bf16: fast on CPUs with AMX / '
                         'AVX512-BF16 and on CUDA; auto: what the node runs by default; '
                         'default fp32)')
    ap.add_argument('--batch-size', type=int, default=1, metavar='N',
                    help='images per packed forward (each keeps its own tokens; the results '
                         'equal batch 1, ms per image become batched; default 1)')
    ap.add_argument('--json', required=True, type=Path, metavar='OUT', help='report file')
    ap.add_argument('--markdown', type=Path, metavar='OUT.md', help='default: JSON path .md')
    ap.add_argument('--plot', type=Path, metavar='OUT.png', help='default: JSON path .png')
    ap.add_argument('--save-predictions', type=Path, metavar='DIR',
                    help='label PNGs per image, one subfolder per xi (Cityscapes: official '
                    'result format, <city>_<seq>_<frame>_pred_labelIds.png with labelIds)')
    ap.add_argument('--target-gflops', type=float, metavar='G',
                    help='also run with the compute-budget controller steering xi per image '
                         'to hold G GFLOPs per image; reported next to the fixed-xi sweep '
                         '(its mIoU interpolated at the same mean GFLOPs)')
    ap.add_argument('--threshold-min', type=float, default=THRESHOLD_MIN,
                    help=f'lower bound of xi for --target-gflops (default {THRESHOLD_MIN})')
    ap.add_argument('--threshold-max', type=float, default=1.0,
                    help='upper bound of xi for --target-gflops (default 1.0)')
    ap.add_argument('--bootstrap', type=int, default=1000, metavar='R',
                    help='resamples of the images for 95 %% intervals of mIoU, per-class IoU '
                         'and each xi\'s mIoU change against the first xi (paired); 0: none '
                         '(default 1000)')
    ap.add_argument('--input-scale', type=float, default=1.0, metavar='S',
                    help='segment each image resized by S and compare its labels, resized back, '
                         'with the ground truth: the accuracy the node\'s input_scale costs '
                         '(default 1)')
    ap.add_argument('--save-matrices', type=Path, metavar='OUT.safetensors',
                    help='also write each image\'s confusion matrix per xi, for a paired '
                         'comparison with another evaluation of the same images (dovit-compare)')
    ap.add_argument('--no-progress', action='store_true')
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    import torch

    from ..data import DatasetError, load_dataset
    from ..data.transforms import to_tensor
    from ..model import ExitConfig, fold_batchnorm
    from ..runtime.artifacts import WEIGHTS, ModelLoadError, load_model
    from ..runtime.attention import use_attention
    from ..runtime.pipeline import PRECISIONS, resolve_device, resolve_model_path
    from ..runtime.device import resolve_precision
    from ..train.evaluate import evaluate
    from ..runtime.input_scale import check_scale
    from ..train.matrices_file import EvalMatrices, save_matrices

    def fail(msg: str) -> int:
        print(f'dovit-eval: {msg}', file=sys.stderr)
        return 2

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.limit is not None and a.limit < 1:
        return fail('--limit must be >= 1')
    if a.batch_size < 1:
        return fail('--batch-size must be >= 1')
    if a.bootstrap < 0:
        return fail('--bootstrap must be >= 0')
    try:
        check_scale(a.input_scale)
    except ValueError as e:
        return fail(str(e))
    try:
        device = torch.device(resolve_device(a.device))
        path = resolve_model_path(a.model)
        model, meta = load_model(path, device)
        fold_batchnorm(model.eval())   # as the node runs it (runtime/pipeline.py)
        a.precision = resolve_precision(a.precision, device)
        dtype = PRECISIONS[a.precision]
        model = model.to(dtype)
        # the attention core the node would run (runtime/attention.py): results in bf16 can
        # move by a few pixels between the two, so the report names it
        attention, _ = use_attention(model, a.attention, device, dtype)
        ds = load_dataset(a.dataset, a.data_root, a.split, a.classes_yaml)
        if a.only:
            ds = ds.select(a.only, keep=True)
    except (ModelLoadError, DatasetError, ValueError, MissingExtra) as e:
        return fail(str(e))
    if ds.classes.num_classes != meta.classes.num_classes:
        return fail(f'{path} predicts {meta.classes.num_classes} classes but {a.dataset} has '
                    f'{ds.classes.num_classes}')
    if ds.classes.names != meta.classes.names:
        print(f'dovit-eval: warning: class names of {path} differ from {a.dataset}\'s; '
              'comparing by class index', file=sys.stderr)
    try:
        base = ExitConfig(a.policy or meta.exits.policy, 1.0,
                          meta.exits.topk_per_class if a.topk is None else a.topk)
        if base.policy == 'none':   # a model whose default is "no exits": sweep with threshold
            base = base.with_(policy='threshold')
    except ValueError as e:
        return fail(str(e))
    if a.target_gflops is not None:
        try:
            controller_hooks(a, base)
        except ValueError as e:
            return fail(str(e))
    n = len(ds) if a.limit is None else min(a.limit, len(ds))

    # One untimed forward so that the first xi's ms_mean carries no one-off start-up cost.
    image, _ = ds[0]
    model(to_tensor(image, meta.mean, meta.std)[None].to(device, dtype),
          base.with_(threshold=1.0))

    results, matrices = [], []
    for t in a.thresholds:
        ex = base.with_(threshold=t)
        writer = None
        if a.save_predictions is not None:
            writer = PredictionWriter(ds, a.save_predictions / xi_tag(t))
        try:
            r = evaluate(model, ds, ex, meta.mean, meta.std, device, limit=a.limit,
                         on_prediction=writer, progress=not a.no_progress,
                         batch_size=a.batch_size, dtype=dtype, input_scale=a.input_scale)
        except DatasetError as e:
            return fail(str(e))
        d = r.to_dict()
        if writer is not None:
            d['predictions'] = str(writer.folder)
        results.append(d)
        matrices.append(r.image_matrices)
        if not a.no_progress:
            print(f'xi={t:g}: mIoU {100 * r.miou:.2f}  {r.gflops_mean:.4g} GFLOPs '
                  f'({d["gflops_saved_pct"]:.1f} % saved)  {r.ms_mean:.1f} ms', file=sys.stderr)

    if a.target_gflops is not None:
        choose, observe, ctrl = controller_hooks(a, base)
        r = evaluate(model, ds, base, meta.mean, meta.std, device, limit=a.limit,
                     choose_exits=choose, observe=observe, progress=not a.no_progress,
                     dtype=dtype, input_scale=a.input_scale)
        d = r.to_dict()
        matrices.append(r.image_matrices)
        used = [float(t) for t in r.thresholds_used]
        d.update({'controller': True, 'target_gflops': a.target_gflops,
                  'threshold': float(np.mean(used)), 'threshold_min_used': min(used),
                  'threshold_max_used': max(used),
                  'gflops_vs_target': r.gflops_mean / a.target_gflops,
                  'fixed_xi_miou_at_equal_gflops': fixed_xi_miou_at(results, r.gflops_mean),
                  'budget': ctrl.report()})
        results.append(d)
        if not a.no_progress:
            print(f'target {a.target_gflops:g} GFLOPs: mIoU {100 * r.miou:.2f} at '
                  f'{r.gflops_mean:.4g} GFLOPs (mean xi {d["threshold"]:.4f})', file=sys.stderr)

    if a.bootstrap:
        add_intervals(results, matrices, a.bootstrap)
    source = {'model': str(path), 'model_name': meta.name,
              'weights_sha256': file_sha256(path / WEIGHTS), 'dataset': ds.name,
              'split': a.split, 'precision': a.precision, 'input_scale': a.input_scale}
    if a.save_matrices is not None:
        rows = [{k: r.get(k) for k in ('policy', 'threshold', 'controller', 'target_gflops')}
                for r in results]
        save_matrices(a.save_matrices, EvalMatrices(
            rows, matrices, [ds.image_path(i).name for i in range(n)],
            list(meta.classes.names), source))
    report = finite({
        'meta': {
            **source, 'data_root': str(a.data_root), 'images': n,
            'policy': base.policy, 'topk_per_class': base.topk_per_class,
            'class_names': list(meta.classes.names),
            'device': str(device), 'attention': attention,
            'batch_size': a.batch_size,
            'torch': torch.__version__,
            'python': platform.python_version(), 'machine': machine_info(device),
            'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'),
        },
        'results': results,
    })
    md, png = a.markdown or a.json.with_suffix('.md'), a.plot or a.json.with_suffix('.png')
    for p in (a.json, md, png):
        p.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=1, allow_nan=False) + '\n')
    write_markdown(report, md)
    try:
        write_plot(report, png)
    except MissingExtra as e:   # the results are written; say what is missing, exit 2
        return fail(f'{a.json} and {md} written, {png} not: {e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
