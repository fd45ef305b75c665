"""Training configuration: one YAML file in config/train/ -> TrainConfig (typed, validated).

The same schema expresses both recipes:
  DoViT: phase 1 full tokens (CE + alpha * aux CE), then phase 2 from the phase-1 model with
         exits on, xi annealed 1.0 -> target, optional self-distillation (beta * KL).
  DToP:  train without pruning, then fine-tune with `exits.policy: dtop` (beta 0).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..model import ViTConfig
from .losses import LossConfig


@dataclass
class DataConfig:
    dataset: str = 'camvid'            # camvid | cityscapes | folder
    root: str = '../shared/data/camvid'
    train_split: str = 'train'
    val_split: str = 'val'
    classes_yaml: str | None = None    # folder datasets
    crop: tuple[int, int] = (352, 480)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.25               # brightness / contrast / saturation strength
    hue: float = 0.0                   # hue shift, fraction of the colour wheel
    blur: float = 0.0                  # probability of a Gaussian blur (sigma 0.3..1.5 px)
    # file-name prefix (a drive) left out of training and evaluated beside val, e.g. 0006R0
    holdout: str | None = None
    # probability that a training image gets half the classes of its batch neighbour pasted
    # in (ClassMix, data/mix.py); 0 = off
    classmix: float = 0.0
    workers: int = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class OptimConfig:
    name: str = 'adamw'                # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9              # sgd only
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    poly_power: float = 0.9
    grad_clip: float = 1.0             # 0 = off
    # learning-rate multiplier for the parameters init_from did not supply (new blocks)
    fresh_lr_scale: float = 1.0


@dataclass
class ExitTrainConfig:
    """Phase 2: fine-tune with exits active (the masked training path)."""
    policy: str = 'none'               # none (phase 1) | threshold | dtop
    threshold: float = 0.95            # target xi, reached by annealing from `anneal_from`
    anneal_from: float = 1.0
    anneal_fraction: float = 0.5       # of the run's steps spent annealing
    topk_per_class: int = 5
    # every n-th step (0: none) runs without exits, so that the last blocks keep training on
    # the easy tokens and the model stays accurate at xi = 1 (the node's threshold:=1.0)
    full_every: int = 0
    # beta on those full-token steps (None: `distill_weight`, as on every other step); a larger
    # one holds the full-token mode closer to the phase-1 teacher it starts from
    full_distill_weight: float | None = None


@dataclass
class TrainConfig:
    name: str = 'run'
    model: dict = field(default_factory=lambda: {'preset': 'tiny'})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    exits: ExitTrainConfig = field(default_factory=ExitTrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init_from: str | None = None       # model dir to start from (phase 2: the phase-1 model)
    # name prefixes of init_from tensors left behind on purpose (a block removed), e.g.
    # [refine.blocks8.1.]; anything else the model lacks stays an error (copy_matching)
    init_drop: list = field(default_factory=list)
    teacher: str | None = None         # model dir for self-distillation (beta > 0)
    aux_weight: float = 1.0            # alpha (DoViT eq. 10, 12)
    distill_weight: float = 0.0        # beta (DoViT eq. 11, 12); 0.4 in DoViT's phase 2
    batch_size: int = 8                # global batch, split across ranks
    steps: int = 10000
    eval_every: int = 500
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0
    # bf16 autocast on CUDA, and on CPUs with bf16 matrix units (amx_bf16 / avx512_bf16)
    amp: bool = True
    channels_last: bool = True         # conv stem and refine decoder in channels-last layout
    # how the blocks compute softmax(QK^T)V: 'auto' (measured at the start of a run, as the
    # node does, runtime/attention.py; kept on resume), 'sdpa' (fused kernel) or 'matmul'
    attention: str = 'auto'
    deterministic: bool = True         # deterministic kernels where PyTorch has them
    default_threshold: float = 0.95    # written to model.yaml as the node's default xi
    default_policy: str = 'threshold'
    # which val mIoU picks `best/`: `full` tokens, or the `default` exits above (phase 2, where
    # the deployed accuracy is the one with exits; val at full tokens is still logged)
    select_best: str = 'full'
    # evaluate, keep and export an exponential moving average of the weights (train/ema.py)
    # with this decay per step, e.g. 0.995 (a ~200-step horizon); 0 = the raw weights
    ema_decay: float = 0.0

    def model_config(self, num_classes: int) -> ViTConfig:
        m = dict(self.model)
        preset = m.pop('preset', None)
        m['num_classes'] = num_classes
        return ViTConfig.preset(preset, **m) if preset else ViTConfig(**m)

    def to_dict(self) -> dict:
        return _plain(asdict(self))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _build(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ValueError(f'{where}: expected a mapping, got {type(d).__name__}')
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f'{where}: unknown field(s) {", ".join(unknown)}')
    kw = {}
    for k, v in d.items():
        sub = {'data': DataConfig, 'optim': OptimConfig, 'exits': ExitTrainConfig,
               'loss': LossConfig}
        if cls is TrainConfig and k in sub:
            kw[k] = _build(sub[k], v, f'{where}.{k}')
        elif isinstance(v, list):
            kw[k] = tuple(v)
        else:
            kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f'{where}: {e}') from None


def finite_number(x) -> bool:
    """A finite int or float from YAML (a bool is an int to Python, not a number here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(cfg: TrainConfig) -> TrainConfig:
    def bad(what):
        raise ValueError(f'train config: {what}')
    if cfg.optim.name not in ('adamw', 'sgd'):
        bad(f'optim.name must be adamw or sgd, got {cfg.optim.name!r}')
    if cfg.exits.policy not in ('none', 'threshold', 'dtop'):
        bad(f'exits.policy must be none, threshold or dtop, got {cfg.exits.policy!r}')
    if cfg.batch_size < 1 or cfg.steps < 1:
        bad('batch_size and steps must be >= 1')
    if cfg.exits.full_every < 0:
        bad('exits.full_every must be >= 0 (0: every step runs with exits)')
    if cfg.select_best not in ('full', 'default'):
        bad(f'select_best must be full or default, got {cfg.select_best!r}')
    if cfg.distill_weight > 0 and not cfg.teacher:
        bad('distill_weight > 0 needs a teacher model directory')
    fdw = cfg.exits.full_distill_weight
    if fdw is not None:
        if not finite_number(fdw) or fdw < 0:
            bad(f'exits.full_distill_weight must be a number >= 0, got {fdw!r}')
        if not cfg.exits.full_every:
            bad('exits.full_distill_weight needs exits.full_every > 0 (the full-token steps)')
        if fdw > 0 and not cfg.teacher:
            bad('exits.full_distill_weight > 0 needs a teacher model directory')
    if not 0 <= cfg.data.classmix <= 1:
        bad(f'data.classmix must be a probability 0..1, got {cfg.data.classmix}')
    if not 0 <= cfg.ema_decay < 1:
        bad(f'ema_decay must be 0 (off) or lie in (0, 1), got {cfg.ema_decay}')
    if len(cfg.data.crop) != 2:
        bad('data.crop must be [H, W]')
    if cfg.init_drop and not cfg.init_from:
        bad('init_drop needs init_from (it names parts of that model to leave behind)')
    if not all(isinstance(d, str) and d for d in cfg.init_drop):
        bad(f'init_drop must be a list of tensor name prefixes, got {cfg.init_drop!r}')
    scale = cfg.optim.fresh_lr_scale
    if not finite_number(scale) or scale <= 0:
        bad(f'optim.fresh_lr_scale must be a number > 0, got {scale!r}')
    if cfg.optim.fresh_lr_scale != 1 and not cfg.init_from:
        bad('optim.fresh_lr_scale needs init_from (it scales what that model did not supply)')
    if cfg.attention not in ('auto', 'sdpa', 'matmul'):
        bad(f'attention must be auto, sdpa or matmul, got {cfg.attention!r}')
    return cfg


def load_train_config(path, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file plus `key.sub=value` overrides (values parsed as YAML)."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f'{path}: cannot read train config ({e})') from None
    for ov in overrides or []:
        key, sep, val = ov.partition('=')
        if not sep:
            raise ValueError(f'override {ov!r} must look like key.sub=value')
        node = d
        parts = key.split('.')
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    cfg = validate(_build(TrainConfig, d, str(path)))
    try:   # the preset and architecture fields now, not once the dataset has been read
        cfg.model_config(num_classes=2)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{path}: field model: {e}') from None
    return cfg
