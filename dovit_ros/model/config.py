"""Typed configuration of the segmenter (architecture) and of the exits (per forward call)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Sequence

EXIT_SEMANTICS = ('features', 'predictions')
EXIT_POLICIES = ('none', 'threshold', 'dtop')
DECODERS = ('linear', 'refine')

# name: (dim, depth, heads)
PRESETS = {
    'tiny': (192, 12, 3),
    'small': (384, 12, 6),
    'base': (768, 12, 12),
    'large': (1024, 24, 16),
}


def default_decision_points(depth: int) -> tuple[int, ...]:
    """DoViT's decision layers: after blocks 3, 6, 9 of 12 and 6, 12, 18 of 24 (quarters)."""
    step = depth // 4
    return tuple(step * i for i in (1, 2, 3)) if step > 0 else ()


def stem_widths(dim: int) -> list[int]:
    """Output channels of the conv stem's four stride-2 convs (strides 2, 4, 8, 16)."""
    return [max(dim // 8, 16), max(dim // 4, 32), max(dim // 2, 64), dim]


@dataclass
class ViTConfig:
    """Architecture of a DoViT segmenter; everything that the weights depend on.

    `decision_points` are 1-based block counts: (3, 6, 9) means "judge tokens after the 3rd,
    6th and 9th block". `exit_semantics` says what an exited token contributes:
    'features' (DoViT: its frozen feature vector goes to the decoder) or
    'predictions' (DToP: its aux-head logits are final).
    `decoder`: 'linear' (SETR-naive token head, bilinear upsampling of token logits; every
    model made before `decoder` existed) or 'refine' (the same token head, then a
    high-resolution path fusing the conv stem's stride-8 and stride-4 features, widths
    `refine_dims`, with `refine_blocks` residual 3x3 blocks after the stride-8 and stride-4
    fusions and, where `refine_strip` is non-zero, a block of k-pixel depthwise strip
    convolutions after each (k odd >= 3; 0: none); needs conv_stem).
    """
    num_classes: int = 19
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: tuple[int, int] = (512, 512)   # (H, W) the position embeddings are learned at
    conv_stem: bool = False
    class_token: bool = False
    merge_exited: bool = False   # DoViT eq. 8: class token <- (class token + exited mean) / 2
    decision_points: tuple[int, ...] | None = None
    exit_semantics: str = 'features'
    decoder_dim: int = 256
    qkv_bias: bool = True
    decoder: str = 'linear'
    refine_dims: tuple[int, int] = (64, 32)   # channels of the stride-8 and stride-4 fusions
    refine_blocks: tuple[int, int] = (0, 0)   # residual 3x3 blocks after each fusion
    refine_strip: tuple[int, int] = (0, 0)    # strip-conv lengths after those blocks (0: none)
    drop_path: float = 0.0   # training only: stochastic depth of the last block (linear from 0)

    def __post_init__(self):
        self.img_size = tuple(int(v) for v in self.img_size)
        if self.decision_points is None:
            self.decision_points = default_decision_points(self.depth)
        self.decision_points = tuple(int(d) for d in self.decision_points)
        self.refine_dims = tuple(self.refine_dims)
        if isinstance(self.refine_blocks, list):   # from YAML
            self.refine_blocks = tuple(self.refine_blocks)
        if isinstance(self.refine_strip, list):
            self.refine_strip = tuple(self.refine_strip)
        self.validate()

    def validate(self) -> None:
        def bad(name, why):
            raise ValueError(f'ViTConfig.{name}: {why}')
        for name in ('num_classes', 'dim', 'depth', 'heads', 'patch_size', 'decoder_dim'):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(name, f'must be a positive integer, got {v!r}')
        for name in ('conv_stem', 'class_token', 'merge_exited', 'qkv_bias'):
            if not isinstance(getattr(self, name), bool):
                bad(name, f'must be true or false, got {getattr(self, name)!r}')
        r = self.mlp_ratio
        if (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < float('inf')
                or int(self.dim * r) < 1):
            bad('mlp_ratio', f'must be a number > 0 giving an MLP of at least one unit, got {r!r}')
        d = self.drop_path
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            bad('drop_path', f'must be a number in [0, 1), got {d!r}')
        if self.dim % self.heads:
            bad('dim', f'{self.dim} is not divisible by heads={self.heads}')
        if len(self.img_size) != 2 or min(self.img_size) < self.patch_size:
            bad('img_size', f'must be (H, W) of at least one patch, got {self.img_size}')
        if self.conv_stem and self.patch_size != 16:
            bad('conv_stem', 'the convolutional stem is built for patch_size 16')
        dps = self.decision_points
        if list(dps) != sorted(set(dps)) or any(d < 1 or d >= self.depth for d in dps):
            bad('decision_points', f'must be increasing block counts in [1, {self.depth - 1}], '
                f'got {dps}')
        if self.exit_semantics not in EXIT_SEMANTICS:
            bad('exit_semantics', f'must be one of {EXIT_SEMANTICS}, got {self.exit_semantics!r}')
        if self.merge_exited and not self.class_token:
            bad('merge_exited', 'needs class_token: true')
        if self.decoder not in DECODERS:
            bad('decoder', f'must be one of {DECODERS}, got {self.decoder!r}')
        if self.decoder == 'refine' and not self.conv_stem:
            bad('decoder', "'refine' fuses the conv stem's features: needs conv_stem: true")

        def int_pair(name: str, low: int, what: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 2 or any(
                    isinstance(x, bool) or not isinstance(x, int) or x < low for x in v):
                bad(name, f'must be {what}, got {v}')
        int_pair('refine_dims', 1, 'two positive integers')
        int_pair('refine_blocks', 0, 'two integers >= 0')
        int_pair('refine_strip', 0, 'two integers >= 0')
        for name in ('refine_blocks', 'refine_strip'):
            if any(getattr(self, name)) and self.decoder != 'refine':
                bad(name, "the blocks belong to the refine decoder: needs decoder: 'refine'")
        if any(k and (k < 3 or k % 2 == 0) for k in self.refine_strip):
            bad('refine_strip', f'strip lengths must be odd and >= 3 (0: none), got '
                f'{self.refine_strip}')

    @classmethod
    def preset(cls, name: str, **overrides) -> 'ViTConfig':
        if name not in PRESETS:
            raise ValueError(f'unknown preset {name!r}; known: {", ".join(PRESETS)}')
        dim, depth, heads = PRESETS[name]
        return cls(**{'dim': dim, 'depth': depth, 'heads': heads, **overrides})

    @property
    def num_stages(self) -> int:
        return len(self.decision_points) + 1

    def stage_blocks(self) -> list[tuple[int, int]]:
        """[start, end) block ranges of each stage."""
        bounds = (0,) + self.decision_points + (self.depth,)
        return list(zip(bounds[:-1], bounds[1:]))

    def to_dict(self) -> dict:
        d = asdict(self)
        d['img_size'] = list(self.img_size)
        d['decision_points'] = list(self.decision_points)
        d['refine_dims'] = list(self.refine_dims)
        d['refine_blocks'] = list(self.refine_blocks)
        d['refine_strip'] = list(self.refine_strip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'ViTConfig':
        if not isinstance(d, dict):
            raise ValueError(f'architecture must be a mapping, got {type(d).__name__}')
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f'unknown architecture field(s): {", ".join(unknown)}')
        for k, v in d.items():
            want = known[k].type
            if want in ('int', 'float', 'bool', 'str') and v is not None:
                ok = {'int': isinstance(v, int) and not isinstance(v, bool),
                      'float': isinstance(v, (int, float)) and not isinstance(v, bool),
                      'bool': isinstance(v, bool), 'str': isinstance(v, str)}[want]
                if not ok:
                    raise ValueError(f'architecture.{k}: expected {want}, got {v!r}')
        return cls(**d)


@dataclass
class ExitConfig:
    """How tokens leave the network on one forward call (not part of the weights).

    threshold: xi, one value or one per decision point; a token exits when its aux-head
    confidence (max softmax) is > xi, so xi >= 1 disables exits.
    topk_per_class: dtop only; of the tokens that would exit, the k most confident of each
    predicted class stay active to keep that class's context for later layers.
    """
    policy: str = 'threshold'
    threshold: float | Sequence[float] = 0.95
    topk_per_class: int = 5

    def __post_init__(self):
        if self.policy not in EXIT_POLICIES:
            raise ValueError(f'policy must be one of {EXIT_POLICIES}, got {self.policy!r}')
        ts = self.threshold if isinstance(self.threshold, (list, tuple)) else [self.threshold]
        for t in ts:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or t != t or t < 0:
                raise ValueError(f'threshold must be a number >= 0, got {t!r}')
        if isinstance(self.threshold, list):
            self.threshold = tuple(self.threshold)
        k = self.topk_per_class
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f'topk_per_class must be an integer >= 0, got {k!r}')

    def thresholds(self, n: int) -> list[float]:
        """One xi per decision point."""
        if isinstance(self.threshold, (list, tuple)):
            if len(self.threshold) != n:
                raise ValueError(f'{len(self.threshold)} thresholds given for {n} decision points')
            return [float(t) for t in self.threshold]
        return [float(self.threshold)] * n

    def with_(self, **changes) -> 'ExitConfig':
        return replace(self, **changes)


FULL = ExitConfig(policy='none')

__all__ = ['ViTConfig', 'ExitConfig', 'FULL', 'PRESETS', 'EXIT_POLICIES', 'EXIT_SEMANTICS',
           'DECODERS', 'default_decision_points', 'stem_widths']
