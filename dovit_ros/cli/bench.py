"""dovit-bench: latency of the full forward and of a forward with exits, next to their FLOPs.

  dovit-bench --preset small --height 512 --width 1024 --keep 0.5,0.3,0.2 --runs 5 --json
  dovit-bench --model models/camvid_tiny --image frame.png --threshold 0.95 --policy dtop

With a preset (random weights) the exits follow a synthetic, spatially coherent pattern:
--keep gives the fraction of all tokens still active after each decision point. With --model
a trained network decides the exits itself on a real image at threshold xi.
Both forwards run at batch 1 after warm-up; the median of --runs timings is reported.
realisation = speedup / FLOPs ratio: 1.0 means the saved FLOPs turned fully into saved time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


class BenchError(ValueError):
    """Bad arguments or inputs; printed without a traceback."""


def parse_keep(text: str) -> list[float]:
    try:
        keep = [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise BenchError(f'--keep: expected comma-separated fractions, got {text!r}') from None
    if not keep or any(not 0.0 <= k <= 1.0 for k in keep):
        raise BenchError(f'--keep: fractions must be in [0, 1], got {text!r}')
    if any(b > a for a, b in zip(keep, keep[1:])):
        raise BenchError(f'--keep: fractions must be non-increasing, got {text!r}')
    return keep


def pick_device(name: str):
    from ..runtime.device import resolve_device
    try:
        return resolve_device(name)
    except ValueError as e:
        raise BenchError(f'--device: {e}') from None


def time_pair(fa, fb, runs: int, warmup: int, device) -> tuple[list[float], list[float]]:
    """Wall times in ms of `runs` calls of each of fa and fb after `warmup` calls of each.

    The calls alternate (fa, fb, fa, fb, ...) so that both see the same background load; a
    shared machine's load drifting between two separate timing loops would bias the ratio.
    CUDA work is synchronised before each clock read.
    """
    import torch
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(runs):
        for fn, out in ((fa, ta), (fb, tb)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - t0) * 1e3)
    return ta, tb


def preset_case(a, device):
    """Random-weight preset, random input, coherent exit plan from --keep."""
    import torch

    from ..model import FULL, DoViTSegmenter, ViTConfig
    from ..model.plans import coherent_plan
    from ..model.vit import grid_size
    try:
        cfg = ViTConfig.preset(a.preset, conv_stem=a.conv_stem, class_token=a.class_token,
                               exit_semantics=a.exit_semantics)
    except ValueError as e:
        raise BenchError(f'--preset: {e}') from None
    keep = parse_keep(a.keep)
    if len(keep) != len(cfg.decision_points):
        raise BenchError(f'--keep: {len(keep)} fractions given, preset {a.preset!r} has '
                         f'{len(cfg.decision_points)} decision points {cfg.decision_points}')
    torch.manual_seed(a.seed)
    model = DoViTSegmenter(cfg).eval().to(device)
    x = torch.randn(1, 3, a.height, a.width, generator=torch.Generator().manual_seed(a.seed))
    h, w = grid_size(a.height, a.width, cfg.patch_size)
    plan = [m[None].to(device) for m in coherent_plan(h, w, keep, a.seed)]
    info = {'preset': a.preset, 'model': None, 'image': None, 'policy': 'plan',
            'threshold': None, 'keep': keep}
    return model, x.to(device), FULL, plan, info


def model_case(a, device):
    """A trained model directory, a real image, exits decided at threshold xi."""
    if not a.image:
        raise BenchError('--model needs --image (a real frame to segment)')
    try:
        from ..model import fold_batchnorm
        from ..runtime.artifacts import load_model
    except ImportError as e:
        raise BenchError(f'--model: model loading is not available in this build '
                         f'(dovit_ros.runtime.artifacts.load_model: {e})') from None
    import cv2

    from ..data.base import read_image
    from ..data.transforms import to_tensor
    from ..runtime.input_scale import check_scale, scale_image
    model, meta = load_model(a.model, device)   # ModelLoadError (a ValueError) names the file
    folded = 0 if getattr(a, 'no_fold', False) else fold_batchnorm(model.eval())  # as the node
    img = read_image(a.image)
    size = (a.height, a.width) if a.height and a.width else meta.input_size
    if size is not None and tuple(img.shape[:2]) != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    img = scale_image(img, check_scale(a.input_scale))   # as the node's input_scale does
    x = to_tensor(img, meta.mean, meta.std)[None].to(device)
    exits = meta.exits.with_(policy=a.policy or meta.exits.policy)   # with_ validates
    if a.threshold is not None:
        exits = exits.with_(threshold=a.threshold)
    exits.thresholds(len(model.cfg.decision_points))   # one xi per decision point
    info = {'preset': None, 'model': str(a.model), 'image': str(a.image),
            'policy': exits.policy, 'threshold': exits.threshold, 'keep': None,
            'bn_folded': folded, 'input_scale': a.input_scale}
    return model, x, exits, None, info


def make_bench_runner(model, backend: str, device, x, model_dir: str | None = None,
                      precision: str = 'fp32', attention: str | None = None):
    """(runner(x, exits, plan), info): the model itself for eager, else the backend layer's
    staged runner, so every backend is timed the same way (compile's warm-up compiles).
    TensorRT engines are keyed like the node's: by the model directory (with its token
    statistics for the profiles) when there is one, else by the weights themselves."""
    if backend == 'eager':   # as the node runs it: channels-last convolutions on CPU and the
        # attention core Pipeline would pick (runtime/attention.py)
        from ..runtime.attention import use_attention
        core, ms = use_attention(model, attention, device, x.dtype)
        return ((model.channels_last() if device.type == 'cpu' else model),
                {'backend': 'eager', 'attention': core, 'attention_ms': ms})
    from ..runtime.backends import BackendUnavailable, make_runner
    opts = {}
    if model_dir:
        from ..runtime.artifacts import read_meta
        opts = {'model_path': model_dir, 'meta': read_meta(model_dir)}
    try:
        return make_runner(model, backend, str(device), precision,
                           image_hw=tuple(x.shape[-2:]), check_image=x[:1], **opts)
    except BackendUnavailable as e:
        raise BenchError(str(e)) from None


def run(a) -> dict:
    import torch
    if a.runs < 1 or a.warmup < 0:
        raise BenchError('--runs must be >= 1 and --warmup >= 0')
    if a.threads is not None:
        if a.threads < 1:
            raise BenchError(f'--threads must be >= 1, got {a.threads}')
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    if a.model:
        model, x, exits, plan, info = model_case(a, device)
    else:
        if a.height < 1 or a.width < 1:
            raise BenchError(f'--height/--width must be positive, got {a.height}x{a.width}')
        model, x, exits, plan, info = preset_case(a, device)

    from ..model import FULL
    if a.batch < 1:
        raise BenchError(f'--batch must be >= 1, got {a.batch}')
    if a.batch > 1:   # N frames of one pack; a synthetic plan applies to each of them
        x = x.expand(a.batch, -1, -1, -1).contiguous()
        plan = None if plan is None else [p.expand(a.batch, -1) for p in plan]
    from ..runtime.device import resolve_precision
    from ..runtime.pipeline import PRECISIONS
    try:
        precision = resolve_precision(a.precision, device)
    except ValueError as e:
        raise BenchError(f'--precision: {e}') from None
    model, x = model.to(PRECISIONS[precision]), x.to(PRECISIONS[precision])
    runner, binfo = make_bench_runner(model, a.backend, device, x, a.model, precision,
                                      a.attention)
    # each timed call is a frame's whole model work, as the node does it: the forward, then
    # labels and confidence at full resolution (work the exits cannot save)
    full_ms, pruned_ms = time_pair(lambda: runner(x, FULL).labels_confidence(),
                                   lambda: runner(x, exits, plan).labels_confidence(),
                                   a.runs, a.warmup, device)
    full, pruned = runner(x, FULL), runner(x, exits, plan)
    tps = pruned.tokens_per_stage[0].tolist()
    fm, pm = statistics.median(full_ms), statistics.median(pruned_ms)
    fg, pg = float(full.flops[0]) / 1e9, float(pruned.flops[0]) / 1e9
    speedup, ratio = fm / pm, fg / pg
    return {
        **info, 'backend': binfo.get('backend', a.backend),
        'attention': binfo.get('attention', 'sdpa'), 'attention_ms': binfo.get('attention_ms'),
        'height': int(x.shape[-2]), 'width': int(x.shape[-1]),
        'device': str(device), 'precision': precision, 'threads': torch.get_num_threads(),
        'runs': a.runs, 'warmup': a.warmup, 'batch': a.batch,
        'fps_full': 1e3 * a.batch / fm, 'fps_pruned': 1e3 * a.batch / pm,
        'full_ms': fm, 'pruned_ms': pm, 'full_ms_runs': full_ms, 'pruned_ms_runs': pruned_ms,
        'full_gflops': fg, 'pruned_gflops': pg,
        'speedup': speedup, 'flops_ratio': ratio, 'realisation': speedup / ratio,
        # median of per-pair ratios: robust to load that drifts during the measurement
        'speedup_paired': statistics.median(f / p for f, p in zip(full_ms, pruned_ms)),
        'tokens_per_stage': tps, 'kept_fraction': [n / tps[0] for n in tps[1:]],
        'torch': torch.__version__,
        'loadavg': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
    }


def table(r: dict) -> str:
    what = f'preset {r["preset"]}' if r['preset'] else f'model {r["model"]}'
    exits = (f'keep {",".join(f"{k:g}" for k in r["keep"])}' if r['keep'] is not None
             else f'policy {r["policy"]} xi {r["threshold"]}')
    head = (f'dovit-bench  {what}  {r["height"]}x{r["width"]}  {r["device"]}  '
            f'{r.get("precision", "fp32")}  attention {r.get("attention", "sdpa")}  '
            f'threads {r["threads"]}  torch {r["torch"]}  {exits}')
    rows = [f'{"":8}{"ms (median of " + str(r["runs"]) + ")":>20}{"GFLOPs":>10}',
            f'{"full":8}{r["full_ms"]:20.2f}{r["full_gflops"]:10.2f}',
            f'{"pruned":8}{r["pruned_ms"]:20.2f}{r["pruned_gflops"]:10.2f}'
            f'   tokens per stage {" ".join(map(str, r["tokens_per_stage"]))}']
    tail = (f'speedup {r["speedup"]:.2f}x   FLOPs ratio {r["flops_ratio"]:.2f}x   '
            f'realisation {r["realisation"]:.2f}')
    return '\n'.join([head, *rows, tail])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='dovit-bench', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--preset', default='tiny', help='tiny | small | base | large (random '
                    'weights; default tiny)')
    ap.add_argument('--height', type=int, default=None, help='input height (default 512; with '
                    '--model the image is resized to --height x --width when both are given)')
    ap.add_argument('--width', type=int, default=None, help='input width (default 1024)')
    ap.add_argument('--keep', default='0.5,0.3,0.2',
                    help='fraction of all tokens active after each decision point')
    ap.add_argument('--seed', type=int, default=0, help='weights, input and exit pattern')
    ap.add_argument('--conv-stem', action='store_true', help='preset with the conv stem')
    ap.add_argument('--class-token', action='store_true', help='preset with a class token')
    ap.add_argument('--exit-semantics', default='features', help='features | predictions')
    ap.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    ap.add_argument('--backend', default='eager', choices=('eager', 'compile', 'tensorrt'),
                    help='runner to time (default eager); compile compiles during warm-up')
    ap.add_argument('--runs', type=int, default=10, help='timed runs per forward (median)')
    ap.add_argument('--warmup', type=int, default=3, help='untimed runs first')
    ap.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    ap.add_argument('--precision', default='fp32', choices=('auto', 'fp32', 'fp16', 'bf16'),
                    help='compute precision (auto: bf16 on CPUs with bf16 matrix units, as '
                         'the node does by default)')
    ap.add_argument('--attention', choices=('auto', 'sdpa', 'matmul'),
                    help='eager attention core (default: DOVIT_ATTENTION, else auto = measured '
                         'at start-up, as the node does; runtime/attention.py)')
    ap.add_argument('--batch', type=int, default=1, metavar='N',
                    help='frames per forward: N copies of the input as one packed forward '
                         '(each keeps its own tokens); times are per batch, fps per frame'),
    ap.add_argument('--json', action='store_true', help='print one JSON object')
    ap.add_argument('--model', help='trained model directory (model.safetensors + model.yaml)')
    ap.add_argument('--image', help='with --model: image to segment')
    ap.add_argument('--no-fold', action='store_true',
                    help='with --model: keep its BatchNorms unfolded (as trained; the node and '
                         'dovit-eval fold them, model/fold.py)')
    ap.add_argument('--input-scale', type=float, default=1.0, metavar='S',
                    help='with --model: segment the image resized by S, as the node\'s '
                         'input_scale does (times the model at that size; default 1)')
    ap.add_argument('--threshold', type=float, help='with --model: xi (default: model.yaml)')
    ap.add_argument('--policy', choices=('none', 'threshold', 'dtop'),
                    help='with --model: exit policy (default: model.yaml)')
    a = ap.parse_args(argv)
    if not a.model:
        a.height = 512 if a.height is None else a.height
        a.width = 1024 if a.width is None else a.width
    try:
        r = run(a)
    except ValueError as e:   # BenchError, ModelLoadError, DatasetError, config errors
        print(f'dovit-bench: {e}', file=sys.stderr)
        return 2
    print(json.dumps(r) if a.json else table(r))
    return 0


if __name__ == '__main__':
    sys.exit(main())
