"""torch.compile backend: each stage compiled once, for every token count.

'dynamic' token mode: block stages after the first, and the decoder where its input varies
('predictions' exits), are compiled with a symbolic token axis: `maybe_mark_dynamic(t, 1)` on
the input of every call, so the first call already compiles the general graph (no static graph
first and a recompile on the second count). Not `mark_dynamic(t, 1, min=, max=)`: with hard
bounds, a hit in inductor's on-disk graph cache whose guards were recorded under other bounds
(the same stage graph compiled for another image size) raises a constraint violation instead of
missing; the soft mark recompiles there instead, which the graph count shows. Counts below the
symbolic minimum never reach the compiled stage (stages.py runs them eagerly). The first stage
and the embedding always see the same shape and are compiled static. Stages with the same
structure share a compiled graph, since dynamo passes their weights in as inputs.

'buckets' token mode: kept tokens are padded to one of a few static lengths with a key mask
(stages.py), compiled with dynamic=False: one graph per bucket and stage structure, and on CUDA
mode='reduce-overhead' can then capture each as a CUDA graph.

Graphs are counted per stage (the growth of dynamo's unique-graph counter during that stage's
calls), so tests and `dovit-bench` can check that no frame recompiles after warm-up.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Callable

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from ...model import DoViTSegmenter
from .stages import TOKEN_MODES, StagedRunner, StageSet, build_stages

COMPILE_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


@dataclass
class CompileOptions:
    """token_mode: 'dynamic' (one symbolic-length graph per stage) or 'buckets'.
    buckets: number of static lengths in bucket mode. mode: torch.compile mode;
    'reduce-overhead' (CUDA graphs) needs CUDA and bucket mode."""
    token_mode: str = 'dynamic'
    buckets: int = 4
    mode: str | None = None
    fullgraph: bool = True

    def __post_init__(self):
        if self.token_mode not in TOKEN_MODES:
            raise ValueError(f'token_mode must be one of {TOKEN_MODES}, got {self.token_mode!r}')
        if not isinstance(self.buckets, int) or isinstance(self.buckets, bool) or self.buckets < 1:
            raise ValueError(f'buckets must be an integer >= 1, got {self.buckets!r}')
        if self.mode not in COMPILE_MODES:
            raise ValueError(f'compile mode must be one of {COMPILE_MODES}, got {self.mode!r}')
        if self.mode == 'reduce-overhead' and self.token_mode != 'buckets':
            raise ValueError("compile mode 'reduce-overhead' records one CUDA graph per input "
                             "shape: use it with token_mode 'buckets'")


def compile_available(device: str | torch.device = 'cpu') -> tuple[bool, str]:
    """(usable, reason): inductor needs a C++ compiler on CPU and Triton on CUDA."""
    dev = torch.device(device)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            return False, 'CUDA is not available'
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, 'torch.compile on CUDA needs Triton, which is not installed'
        return True, 'inductor (Triton)'
    if dev.type == 'cpu':
        cxx = next((c for c in ('g++', 'c++', 'clang++') if shutil.which(c)), None)
        if cxx is None:
            return False, 'torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH'
        return True, f'inductor (C++, {cxx})'
    return False, f'no torch.compile support set up for device type {dev.type!r}'


class GraphCount:
    """Graphs compiled during the calls of each stage, by name."""

    def __init__(self):
        self.per_stage: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        self.per_stage.setdefault(name, 0)

        def counted(*args):
            before = counters['stats']['unique_graphs']
            out = fn(*args)
            self.per_stage[name] += counters['stats']['unique_graphs'] - before
            return out
        return counted


def _owned(fn: Callable) -> Callable:
    """CUDA-graph outputs live in a pool that the next replay overwrites: hand out copies
    (the bookkeeping keeps some across stages and writes into the class token in place)."""
    def call(*args):
        out = fn(*args)
        return tuple(o.clone() for o in out) if isinstance(out, tuple) else out.clone()
    return call


def _dynamic_tokens(fn: Callable) -> Callable:
    """Marks the token axis of the first argument symbolic before each call."""
    def call(t, *rest):
        torch._dynamo.maybe_mark_dynamic(t, 1)
        return fn(t, *rest)
    return call


def compile_stages(model: DoViTSegmenter, image_hw: tuple[int, int],
                   opts: CompileOptions | None = None, count: GraphCount | None = None
                   ) -> StageSet:
    """Compiled stage callables of `model` (already on its device and dtype) for (H, W)."""
    opts = opts or CompileOptions()
    eager = build_stages(model, image_hw)
    dynamic = opts.token_mode == 'dynamic'
    # Every call adds cache entries to the same stage forward code objects (one per stage
    # structure and shape kind; one per bucket and structure in bucket mode). Dynamo's
    # per-code limit (8) counts them over the whole process, so a second image size or model
    # would fail hard under fullgraph (seen: dovit-bench's compile run after the backend tests
    # in one pytest process); raise it by what this call may add.
    torch._dynamo.config.recompile_limit += 2 * opts.buckets + 4 if not dynamic else 6

    def comp(mod, static: bool):
        fn = torch.compile(mod, fullgraph=opts.fullgraph, mode=opts.mode,
                           dynamic=False if static else None)
        return _owned(fn) if opts.mode == 'reduce-overhead' else fn

    embed = comp(eager.embed, True)
    blocks = []
    for s, blk in enumerate(eager.blocks):
        fn = comp(blk, not dynamic or s == 0)
        blocks.append(_dynamic_tokens(fn) if dynamic and s else fn)
    pred = model.cfg.exit_semantics == 'predictions'
    decoder = comp(eager.decoder, not (dynamic and pred))
    if dynamic and pred:
        decoder = _dynamic_tokens(decoder)
    refine = comp(eager.refine, True) if eager.refine is not None else None
    if count is not None:
        embed = count.wrap('embed', embed)
        blocks = [count.wrap(f'stage_{s}', b) for s, b in enumerate(blocks)]
        decoder = count.wrap('decoder', decoder)
        # `is not None`, not truthiness: a compiled module's len() raises
        refine = count.wrap('refine', refine) if refine is not None else None
    return StageSet(embed=embed, blocks=blocks, decoder=decoder, image_hw=tuple(image_hw),
                    refine=refine)


class CompiledRunner(StagedRunner):
    """StagedRunner over compiled stages, built lazily for each new image size; `graphs`
    holds the per-stage graph counts."""

    def __init__(self, model: DoViTSegmenter, opts: CompileOptions | None = None):
        self.opts = opts or CompileOptions()
        self.graphs = GraphCount()
        super().__init__(model, lambda hw: compile_stages(model, hw, self.opts, self.graphs),
                         token_mode=self.opts.token_mode, buckets=self.opts.buckets)

    def __call__(self, x, exits, plan=None):
        if self.opts.mode == 'reduce-overhead':   # a new frame: earlier replays may be reused
            torch.compiler.cudagraph_mark_step_begin()
        return super().__call__(x, exits, plan)


__all__ = ['CompileOptions', 'CompiledRunner', 'GraphCount', 'compile_available',
           'compile_stages', 'COMPILE_MODES']
