"""The training loop: single process or under torchrun (DDP), resumable, time-boxed.

Determinism: the sample order of every epoch and each sample's augmentation are functions of
(seed, position in the sample stream) only, so a resumed run sees exactly the batches the
uninterrupted run would have, whatever the number of loader workers.
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import load_dataset
from ..data.transforms import AugmentConfig, TrainTransform, collate
from ..model import DoViTSegmenter, ExitConfig
from ..runtime.artifacts import ModelMeta, load_model, save_model_dir
from ..runtime.device import cpu_supports_bf16, resolve_device
from .checkpoint import latest_checkpoint, load_train_state, save_checkpoint
from .config import TrainConfig
from .determinism import configure_determinism
from .evaluate import evaluate
from .losses import class_frequencies, dovit_loss, median_frequency_weights


class StreamDataset(Dataset):
    """Position p in the infinite sample stream -> augmented (image, label)."""

    def __init__(self, ds, transform: TrainTransform, seed: int):
        self.ds, self.transform, self.seed = ds, transform, seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, p: int):
        L = len(self.ds)
        epoch, i = divmod(p, L)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(L))
        image, label = self.ds[int(self._perm[1][i])]
        return self.transform(image, label, np.random.default_rng([self.seed, 1, p]))


class StreamSampler(Sampler):
    """This rank's stream positions for steps [start, steps): rank r takes slice r of each
    global batch."""

    def __init__(self, start: int, steps: int, global_batch: int, rank: int, world: int):
        self.start, self.steps, self.gb = start, steps, global_batch
        self.rank, self.b = rank, global_batch // world

    def __iter__(self):
        for s in range(self.start, self.steps):
            base = s * self.gb + self.rank * self.b
            yield from range(base, base + self.b)

    def __len__(self):
        return (self.steps - self.start) * self.b


class TrainForward(nn.Module):
    """Routes DDP's forward to forward_train so gradient sync hooks are set up."""

    def __init__(self, model: DoViTSegmenter):
        super().__init__()
        self.model = model

    def forward(self, x, exits=None):
        return self.model.forward_train(x, exits)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return DistInfo()
    backend = 'nccl' if device.startswith('cuda') else 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', 0)))


def lr_factor(step: int, total: int, warmup: int, power: float) -> float:
    """Linear warm-up, then poly decay to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** power


def anneal_threshold(step: int, total: int, cfg) -> float:
    """xi from `anneal_from` down to the target over the first `anneal_fraction` of the run
    (linear), then held: exits start rare and grow as the aux heads become reliable."""
    span = max(1, int(total * cfg.anneal_fraction))
    f = min(1.0, step / span)
    return cfg.anneal_from + (cfg.threshold - cfg.anneal_from) * f


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(('pos_embed', 'cls_token')) else decay).append(p)
    groups = [{'params': decay, 'weight_decay': cfg.weight_decay},
              {'params': no_decay, 'weight_decay': 0.0}]
    if cfg.name == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def pick_device(device: str, info: DistInfo) -> torch.device:
    return resolve_device(device, info.local_rank if info.world > 1 else None)


def use_bf16(cfg: TrainConfig, dev: torch.device) -> bool:
    """bf16 autocast where it is fast: CUDA, and CPUs with bf16 matrix units (measured with
    scripts/train_speed.py; emulated bf16 elsewhere is slower than fp32)."""
    return cfg.amp and (dev.type == 'cuda' or (dev.type == 'cpu' and cpu_supports_bf16()))


def class_weights(cfg: TrainConfig, train_ds) -> list[float] | None:
    """The loss's class weights, from the training labels' class frequencies."""
    if cfg.loss.class_weights == 'none':
        return None
    K = train_ds.classes.num_classes
    pixels, image_pixels = class_frequencies((train_ds.label(i) for i in range(len(train_ds))), K)
    return median_frequency_weights(pixels, image_pixels, cfg.loss.power).tolist()


def _replace_dir(src: Path, dst: Path) -> None:
    """Swap a freshly written folder into place (old copy removed only afterwards)."""
    old = dst.with_name(dst.name + '.old')
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
    src.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def params_sha256(model: nn.Module) -> str:
    """sha256 of the parameters' names and raw bytes. Every DDP rank prints it in the summary:
    the parameters must agree across ranks (buffers such as BN running statistics need not:
    each rank updates its own between DDP's broadcasts from rank 0, and rank 0 saves)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig, out_dir, resume: bool = False, time_budget_min: float | None = None,
          device: str = 'auto', progress: bool = True, log=print) -> dict:
    """Run (or continue) training; returns a summary dict. Stops at `cfg.steps` or when the
    time budget is spent, always at a checkpoint."""
    t_start = time.monotonic()
    info = setup_distributed(resolve_device(device).type)
    dev = pick_device(device, info)
    determinism = configure_determinism(dev.type, cfg.deterministic)   # before any matmul
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    out = Path(out_dir)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    d = cfg.data
    train_ds = load_dataset(d.dataset, d.root, d.train_split, d.classes_yaml)
    val_ds = load_dataset(d.dataset, d.root, d.val_split, d.classes_yaml) if d.val_split else None
    holdout_ds = None
    if d.holdout:   # one drive out of training, evaluated beside val (generalisation)
        holdout_ds = train_ds.select(d.holdout, keep=True)
        train_ds = train_ds.select(d.holdout, keep=False)
    classes = train_ds.classes
    weights = class_weights(cfg, train_ds)
    if weights is not None and info.main:
        log('class weights: ' + ', '.join(f'{n} {w:.3f}' for n, w in zip(classes.names, weights)))
    model = DoViTSegmenter(cfg.model_config(classes.num_classes))
    if cfg.init_from:
        src, _ = load_model(cfg.init_from)
        model.load_state_dict(src.state_dict())
    model.to(dev)
    if cfg.channels_last:   # the convolutions' fast layout on CPU (measured); tokens unaffected
        model.patch_embed.to(memory_format=torch.channels_last)
        if model.refine is not None:
            model.refine.to(memory_format=torch.channels_last)
    teacher = load_model(cfg.teacher, dev)[0] if cfg.distill_weight > 0 else None
    opt = build_optimizer(model, cfg.optim)
    meta = ModelMeta(architecture=model.cfg, classes=classes, mean=tuple(d.mean),
                     std=tuple(d.std), name=cfg.name,
                     exits=ExitConfig(cfg.default_policy, cfg.default_threshold,
                                      cfg.exits.topk_per_class),
                     recipe={'train_config': cfg.to_dict()})
    start, best = 0, {'miou': -1.0, 'step': -1}
    ck = latest_checkpoint(out) if resume else None
    if ck is not None:
        state = load_train_state(ck, model, opt)
        start = int(state['step'])
        best = state.get('extra', {}).get('best', best)
        if info.main:
            log(f'resumed from {ck} at step {start}')
    elif resume and info.main:
        log(f'no checkpoint in {out}; starting from step 0')

    if info.world > 1 and dev.type == 'cuda':
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fwd = TrainForward(model)
    if info.world > 1:
        fwd = nn.parallel.DistributedDataParallel(
            fwd, device_ids=[dev.index] if dev.type == 'cuda' else None)
    if cfg.batch_size % info.world:
        raise ValueError(f'batch_size {cfg.batch_size} is not divisible by {info.world} ranks')
    aug = TrainTransform(AugmentConfig(crop=tuple(d.crop), scale_range=tuple(d.scale_range),
                                       flip=d.flip, brightness=d.jitter, contrast=d.jitter,
                                       saturation=d.jitter, hue=d.hue, blur=d.blur,
                                       ignore_index=classes.ignore_index))
    loader = DataLoader(StreamDataset(train_ds, aug, cfg.seed),
                        sampler=StreamSampler(start, cfg.steps, cfg.batch_size, info.rank,
                                              info.world),
                        batch_size=cfg.batch_size // info.world, num_workers=d.workers,
                        collate_fn=lambda b: collate(b, d.mean, d.std),
                        persistent_workers=False,
                        # own generator: the iterator's base seed must not draw from (and so
                        # shift) the global RNG that checkpoints save and resumed runs restore
                        generator=torch.Generator().manual_seed(cfg.seed))
    amp = use_bf16(cfg, dev)
    if info.main:
        log(f'device {dev}, {"bf16 autocast" if amp else "fp32"}, '
            f'{torch.get_num_threads()} CPU threads')
    csv_path = out / 'metrics.csv'
    fields = ['step', 'time', 'lr', 'xi', 'loss', 'ce', 'aux', 'kl', 'img_per_s', 'val_miou',
              'holdout_miou']
    if info.main and not csv_path.exists():
        with open(csv_path, 'w', newline='') as f:
            csv.writer(f).writerow(fields)
    elif info.main and resume:   # rows past the checkpoint (killed before it was saved): redone
        with open(csv_path, newline='') as f:
            rows = list(csv.reader(f))
        keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= start]
        if len(keep) < len(rows):
            tmp = csv_path.with_name(csv_path.name + '.tmp')
            with open(tmp, 'w', newline='') as f:
                csv.writer(f).writerows(keep)
            os.replace(tmp, csv_path)
    bar = None
    if progress and info.main:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=cfg.name, dynamic_ncols=True)
    base_lrs = [cfg.optim.lr for _ in opt.param_groups]
    step, stopped_early, t_last = start, False, time.monotonic()
    model.train()
    for images, labels in loader:
        images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        f = lr_factor(step, cfg.steps, cfg.optim.warmup_steps, cfg.optim.poly_power)
        for g, lr in zip(opt.param_groups, base_lrs):
            g['lr'] = lr * f
        ex = None
        xi = float('nan')
        if cfg.exits.policy != 'none':
            xi = anneal_threshold(step, cfg.steps, cfg.exits)
            ex = ExitConfig(cfg.exits.policy, xi, cfg.exits.topk_per_class)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            o = fwd(images, ex)
            tl = None
            if teacher is not None:
                with torch.no_grad():
                    tl = teacher.forward_train(images).logits
        loss, parts = dovit_loss(o, labels, cfg.aux_weight, tl, cfg.distill_weight,
                                 classes.ignore_index, cfg.loss, weights)
        if not math.isfinite(parts['loss']):
            raise FloatingPointError(f'loss became {parts["loss"]} at step {step}')
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        step += 1
        now = time.monotonic()
        ips = cfg.batch_size / max(1e-9, now - t_last)
        t_last = now
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f'{parts["loss"]:.3f}', lr=f'{opt.param_groups[0]["lr"]:.2e}',
                            img_s=f'{ips:.1f}')
        val_miou = holdout_miou = ''
        if holdout_ds is not None and info.main and (step % cfg.eval_every == 0
                                                     or step == cfg.steps):
            holdout_miou = evaluate(model, holdout_ds, ExitConfig('none'), d.mean, d.std,
                                    dev).miou
            model.train()
            log(f'step {step}: held-out {d.holdout} mIoU {100 * holdout_miou:.2f} (full tokens)')
        if val_ds is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            if info.main:
                r = evaluate(model, val_ds, ExitConfig('none'), d.mean, d.std, dev)
                model.train()
                val_miou = r.miou
                log(f'step {step}: val mIoU {100 * r.miou:.2f} (full tokens)')
                if r.miou > best['miou']:
                    best = {'miou': r.miou, 'step': step}
                    meta.metrics = {'val_miou_full': r.miou, 'step': step}
                    tmp = out / 'best.tmp'
                    shutil.rmtree(tmp, ignore_errors=True)
                    save_model_dir(tmp, model, meta)
                    _replace_dir(tmp, out / 'best')
        if info.main:
            with open(csv_path, 'a', newline='') as fh:
                csv.writer(fh).writerow([step, round(now - t_start, 2), opt.param_groups[0]['lr'],
                                         xi, parts['loss'], parts['ce'], parts.get('aux', ''),
                                         parts.get('kl', ''), round(ips, 2), val_miou,
                                         holdout_miou])
        over = time_budget_min is not None and (now - t_start) > 60 * time_budget_min
        if info.world > 1:
            flag = torch.tensor([float(over)], device=dev)
            dist.all_reduce(flag)
            over = bool(flag.item() > 0)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or over:
            if info.main:
                save_checkpoint(out, step, model, meta, opt, {'best': best},
                                keep=cfg.keep_checkpoints)
            if info.world > 1:
                dist.barrier()
        if over:
            stopped_early = step < cfg.steps
            if info.main:
                log(f'time budget of {time_budget_min} min spent: stopped at step {step}; '
                    f'continue with --resume')
            break
    if bar is not None:
        bar.close()
    return {'step': step, 'steps': cfg.steps, 'stopped_early': stopped_early, 'best': best,
            'determinism': determinism,
            'out': str(out), 'rank': info.rank, 'world': info.world,
            'params_sha256': params_sha256(model)}
