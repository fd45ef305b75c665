"""The shape profile of every stage: one source of truth for the torch.export programs and the
TensorRT engines built from them.

Torch-TensorRT's dynamo path takes each engine's optimisation profile from the exported
program itself: a symbolic dimension's (min, max) is the program's range constraint and its opt
is the value the program was traced with (`construct_submodule_inputs` /
`extract_var_range_info` in Torch-TensorRT), not the `Input` objects passed beside it. So
`export_stages` traces every stage at the `opt_shape` given here, with `Dim(min=, max=)` exactly
where min != max and static shapes elsewhere; `program_profile` reads a program's profile back
the way Torch-TensorRT does, and the build refuses a program whose profile is not the intended
one.

A spec: {'name', 'min_shape', 'opt_shape', 'max_shape', 'dtype'}; `name` is the stage module's
forward argument, which the exported placeholder and the engine's input binding are named after.
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch

from ...model import DoViTSegmenter, ExitConfig
from ...model.config import stem_widths
from ...model.vit import grid_size
from .stages import MIN_TOKENS, full_tokens, min_tokens

PRECISIONS = ('fp32', 'fp16')
STAGE_KINDS = ('embed', 'block', 'decoder')
OPT_MULTIPLE = 8                # tensor-core friendly opt token count
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16}


def opt_tokens(token_stats: Sequence[float] | None, low: int, high: int, nc: int = 0) -> int:
    """opt of a token profile: nc + the median observed kept patch-token count, rounded to a
    multiple of 8, clamped to [low, high]; the worst case (high) without statistics."""
    stats = [float(v) for v in (token_stats or []) if v is not None and math.isfinite(float(v))]
    if not stats:
        return high
    med = nc + statistics.median(stats)
    return int(min(high, max(low, OPT_MULTIPLE * round(med / OPT_MULTIPLE))))


def _spec(name: str, lo: tuple, opt: tuple, hi: tuple, dtype: torch.dtype) -> dict:
    return dict(name=name, min_shape=lo, opt_shape=opt, max_shape=hi, dtype=dtype)


def trt_input_specs(stage_kind: str, token_stats: Sequence[float] | None, full_tokens: int,
                    dim: int, precision: str, *, low: int = MIN_TOKENS, nc: int = 0,
                    image_hw: tuple[int, int] | None = None) -> list[dict]:
    """The input specs of one stage, one per input.

    stage_kind: 'embed' (static image, needs image_hw), 'block' or 'decoder' (tokens, C=dim).
    token_stats: observed kept patch-token counts of this stage (their median gives opt).
    full_tokens: the longest input (nc + N for blocks, N for the decoder); low: the shortest
    (low == full_tokens makes a static profile, e.g. the first stage or a 'features' decoder).
    """
    if stage_kind not in STAGE_KINDS:
        raise ValueError(f'stage_kind must be one of {STAGE_KINDS}, got {stage_kind!r}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    dtype = DTYPES[precision]
    if stage_kind == 'embed':
        if image_hw is None:
            raise ValueError("stage_kind 'embed' needs image_hw=(H, W)")
        shape = (1, 3, int(image_hw[0]), int(image_hw[1]))
        return [_spec('x', shape, shape, shape, dtype)]
    if not MIN_TOKENS <= low <= full_tokens:
        raise ValueError(f'token range must satisfy {MIN_TOKENS} <= low <= full, got low={low}, '
                         f'full={full_tokens}')
    opt = opt_tokens(token_stats, low, full_tokens, nc)
    name = 't' if stage_kind == 'block' else 'f'
    return [_spec(name, (1, low, dim), (1, opt, dim), (1, full_tokens, dim), dtype)]


def refine_specs(model: DoViTSegmenter, image_hw: tuple[int, int], precision: str
                 ) -> list[dict]:
    """Static specs of the refine decoder at (H, W): grid logits g (1, K, h, w), the stem's
    stride-4 and stride-8 features s4 (1, c4, 4h, 4w), s8 (1, c8, 2h, 2w)."""
    h, w = grid_size(*image_hw, model.cfg.patch_size)
    c = stem_widths(model.cfg.dim)
    dtype = DTYPES[precision]
    shapes = {'g': (1, model.cfg.num_classes, h, w), 's4': (1, c[1], 4 * h, 4 * w),
              's8': (1, c[2], 2 * h, 2 * w)}
    return [_spec(n, s, s, s, dtype) for n, s in shapes.items()]


def token_stats_from_metrics(metrics: dict | None, num_stages: int, patch_tokens: int,
                             exits: ExitConfig | None = None) -> list[list[float] | None]:
    """Per stage, the kept patch-token counts implied by model.yaml metrics: an entry with
    `tokens_active` (mean fraction of tokens active in each stage) at the top level or nested
    (dovit-export merges evaluations as metrics.eval[<dataset/split>].results[...]); the entry
    whose policy and threshold match `exits` is preferred. None per stage without data."""
    found = []

    def walk(d, depth=0):
        if depth > 5:
            return
        if isinstance(d, list):
            for v in d:
                walk(v, depth + 1)
        elif isinstance(d, dict):
            v = d.get('tokens_active')
            if isinstance(v, list) and len(v) == num_stages:
                found.append(d)
            for sub in d.values():
                if isinstance(sub, (dict, list)):
                    walk(sub, depth + 1)

    walk(metrics or {})
    if not found:
        return [None] * num_stages

    def matches(d):
        thr = exits.threshold if exits is not None else None
        thr = list(thr) if isinstance(thr, tuple) else thr
        return exits is not None and d.get('policy') == exits.policy and d.get('threshold') == thr

    entry = next((d for d in found if matches(d)), found[0])
    out = []
    for f in entry['tokens_active']:
        ok = isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1
        out.append([f * patch_tokens] if ok else None)
    return out


def stage_names(model: DoViTSegmenter) -> list[str]:
    """'embed', 'stage_0' .. 'stage_{S-1}', 'decoder'[, 'refine']: the stages in run order."""
    names = ['embed'] + [f'stage_{s}' for s in range(model.cfg.num_stages)] + ['decoder']
    return names + (['refine'] if model.refine is not None else [])


def stage_profiles(model: DoViTSegmenter, image_hw: tuple[int, int], precision: str = 'fp32',
                   token_stats: Sequence[Sequence[float] | None] | None = None,
                   key_mask: bool = False) -> dict[str, list[dict]]:
    """{stage name: input specs} of every stage of `model` at (H, W).

    The first block stage always sees every token, and a 'features' decoder decodes every
    token: both static. Later block stages, and a 'predictions' decoder, take min..full tokens
    with opt at the median kept count. key_mask: block stages also take a (1, n) bool mask on
    the same token axis (padded buckets)."""
    cfg = model.cfg
    full, N = full_tokens(model, image_hw)
    nc = int(cfg.class_token)
    stats = list(token_stats) if token_stats is not None else [None] * cfg.num_stages
    specs = {'embed': trt_input_specs('embed', None, full, cfg.dim, precision,
                                      image_hw=image_hw)}
    for s in range(cfg.num_stages):
        low = full if s == 0 else min_tokens(model, s)   # the first stage always sees all
        sp = trt_input_specs('block', stats[s] if s else [N], full, cfg.dim, precision,
                             low=low, nc=nc)
        if key_mask:
            sp.append(_spec('key_mask', *(x[:2] for x in (sp[0]['min_shape'],
                                                          sp[0]['opt_shape'],
                                                          sp[0]['max_shape'])), torch.bool))
        specs[f'stage_{s}'] = sp
    pred = cfg.exit_semantics == 'predictions'
    specs['decoder'] = trt_input_specs('decoder', stats[-1] if pred else [N], N, cfg.dim,
                                       precision, low=MIN_TOKENS if pred else N)
    if model.refine is not None:
        specs['refine'] = refine_specs(model, image_hw, precision)
    return specs


def program_profile(program) -> list[dict]:
    """The (name, min, opt, max, dtype) of each user input of an ExportedProgram, read as
    Torch-TensorRT reads them: a symbolic dimension's range from the shape environment, its opt
    from the value it was traced with; a static dimension is its own min, opt and max."""
    from torch.export.graph_signature import InputKind
    user = [s.arg.name for s in program.graph_signature.input_specs
            if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == 'placeholder'}
    out = []
    for name in user:
        val = nodes[name].meta['val']
        lo, opt, hi = [], [], []
        for d in val.shape:
            if isinstance(d, torch.SymInt):
                env, expr = d.node.shape_env, d.node.expr
                rng = env.var_to_range.get(expr) or env.bound_sympy(expr)
                vals = getattr(env, 'backed_var_to_val', None) or env.var_to_val  # torch >= 2.13
                v = vals.get(expr)
                v = v if v is not None else expr.xreplace(vals)
                lo.append(int(rng.lower))
                hi.append(int(rng.upper))
                opt.append(int(v))
            else:
                lo.append(int(d))
                hi.append(int(d))
                opt.append(int(d))
        out.append(_spec(name, tuple(lo), tuple(opt), tuple(hi), val.dtype))
    return out


def same_profile(got: list[dict], want: list[dict]) -> bool:
    """Names and shapes equal (dtypes aside: the fp16 recipe keeps some inputs fp32)."""
    keys = ('name', 'min_shape', 'opt_shape', 'max_shape')
    return [[tuple(s[k]) if k != 'name' else s[k] for k in keys] for s in got] == \
        [[tuple(s[k]) if k != 'name' else s[k] for k in keys] for s in want]


__all__ = ['opt_tokens', 'trt_input_specs', 'refine_specs', 'token_stats_from_metrics',
           'stage_names', 'stage_profiles', 'program_profile', 'same_profile', 'PRECISIONS',
           'DTYPES', 'OPT_MULTIPLE']
