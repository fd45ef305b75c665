"""The training loop: single process or under torchrun (DDP), resumable, time-boxed.

`Trainer` runs in named steps (setup and resume, train_step, evaluate, checkpoint, time
budget); the sample stream (stream.py) makes a resumed run see exactly the batches the
uninterrupted run would have.
"""
from __future__ import annotations

import csv
import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from ..data import load_dataset
from ..data.mix import class_mix
from ..data.transforms import AugmentConfig, TrainTransform, collate
from ..model import DoViTSegmenter, ExitConfig
from ..model.vit import ATTENTION_CORES
from ..runtime.artifacts import ModelMeta, load_model, save_model_dir
from ..runtime.attention import resolve_attention
from ..runtime.device import cpu_supports_bf16, resolve_device
from .checkpoint import copy_matching, latest_checkpoint, load_train_state, save_checkpoint
from .config import TrainConfig
from .determinism import configure_determinism
from .distributed import TrainForward, params_sha256, pick_device, setup_distributed
from .ema import WeightEMA
from .evaluate import evaluate
from .losses import class_frequencies, dovit_loss, median_frequency_weights
from .optim import anneal_threshold, build_optimizer, lr_factor
from .run_folder import check_run_folder, open_metrics_csv, replace_dir
from .stop import StopRequest, ignore_in_worker
from .stream import StreamDataset, StreamSampler

__all__ = ['Trainer', 'train', 'build_optimizer', 'params_sha256', 'lr_factor',
           'anneal_threshold', 'use_bf16', 'class_weights']


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


class Trainer:
    """One training run in named steps: `__init__` sets up (data, model, optimiser, resume),
    `run` loops over `train_step`, `evaluate`, `checkpoint` and the time budget."""

    def __init__(self, cfg: TrainConfig, out_dir, resume: bool = False,
                 time_budget_min: float | None = None, device: str = 'auto',
                 progress: bool = True, log=print):
        self.t_start = time.monotonic()
        self.cfg, self.log, self.budget_min = cfg, log, time_budget_min
        self.info = setup_distributed(resolve_device(device).type)
        self.dev = pick_device(device, self.info)
        # before any matmul: cuBLAS reads its workspace setting when it first runs
        self.determinism = configure_determinism(self.dev.type, cfg.deterministic)
        if self.dev.type == 'cuda':
            torch.cuda.set_device(self.dev)
        self.out = Path(out_dir)
        if self.info.main:
            check_run_folder(self.out, resume)
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self._setup_data()
        self._setup_model()
        ck = latest_checkpoint(self.out) if resume else None
        self._resumed_attention: str | None = None
        self.start, self.best = self._resume(ck, resume)
        self.ema = self._setup_ema(ck)
        self.fwd = self._wrap_model()
        self.loader = self._make_loader()
        self.amp = use_bf16(cfg, self.dev)
        self.attention = self._setup_attention()
        self.main_log(f'device {self.dev}, {"bf16 autocast" if self.amp else "fp32"}, '
                      f'{torch.get_num_threads()} CPU threads, attention {self.attention}')
        self.csv_path = self.out / 'metrics.csv'
        if self.info.main:
            open_metrics_csv(self.csv_path, self.start, resume)
        self.bar = None
        if progress and self.info.main:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.steps, initial=self.start, desc=cfg.name,
                            dynamic_ncols=True)

    def main_log(self, text: str) -> None:
        if self.info.main:
            self.log(text)

    # ---------------------------------------------------------------- setup
    def _setup_data(self) -> None:
        d = self.cfg.data
        self.train_ds = load_dataset(d.dataset, d.root, d.train_split, d.classes_yaml)
        self.val_ds = (load_dataset(d.dataset, d.root, d.val_split, d.classes_yaml)
                       if d.val_split else None)
        self.holdout_ds = None
        if d.holdout:   # one drive out of training, evaluated beside val (generalisation)
            self.holdout_ds = self.train_ds.select(d.holdout, keep=True)
            self.train_ds = self.train_ds.select(d.holdout, keep=False)
        self.classes = self.train_ds.classes
        self.weights = class_weights(self.cfg, self.train_ds)
        if self.weights is not None:
            self.main_log('class weights: ' + ', '.join(
                f'{n} {w:.3f}' for n, w in zip(self.classes.names, self.weights)))

    def _setup_model(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        model = DoViTSegmenter(cfg.model_config(self.classes.num_classes))
        fresh: list[str] = []   # tensor names init_from did not supply
        if cfg.init_from:
            src, _ = load_model(cfg.init_from)
            fresh = copy_matching(model, src.state_dict(), cfg.init_drop)
            if cfg.init_drop:
                self.main_log(f'init_from {cfg.init_from}: left behind '
                              + ', '.join(f'{d}*' for d in cfg.init_drop))
            if fresh:
                self.main_log(f'init_from {cfg.init_from}: {len(fresh)} tensor(s) start '
                              f'fresh (not in the source): {", ".join(fresh)}')
        model.to(self.dev)
        if cfg.channels_last:   # the convolutions' fast layout on CPU (measured)
            model.channels_last()
        self.model = model
        self.teacher = (load_model(cfg.teacher, self.dev)[0]
                        if max(cfg.distill_weight, cfg.exits.full_distill_weight or 0) > 0
                        else None)
        self.opt = build_optimizer(model, cfg.optim, set(fresh))
        self.meta = ModelMeta(architecture=model.cfg, classes=self.classes, mean=tuple(d.mean),
                              std=tuple(d.std), name=cfg.name,
                              exits=ExitConfig(cfg.default_policy, cfg.default_threshold,
                                               cfg.exits.topk_per_class),
                              recipe={'train_config': cfg.to_dict()})

    def _setup_attention(self) -> str:
        """The attention core of the model and the teacher: the config's, else the one a
        resumed run used (a resumed run computes as the interrupted one did), else measured in
        the training precision (runtime/attention.py; DOVIT_ATTENTION pins it). On CPUs where
        bf16 makes the matmul core faster for inference it was for training too (bf16 training
        steps 16-22 % faster on an AMD EPYC, docs/benchmarks.md)."""
        choice = self.cfg.attention
        if choice == 'auto' and self._resumed_attention:
            choice = self._resumed_attention
        dtype = torch.bfloat16 if self.amp else torch.float32
        core, _ = resolve_attention(None if choice == 'auto' else choice, self.model,
                                    self.dev, dtype)
        if self.info.world > 1:   # one core for all ranks: rank 0's timing decides
            cores = sorted(ATTENTION_CORES)
            idx = torch.tensor([cores.index(core)], device=self.dev)
            dist.broadcast(idx, 0)
            core = cores[int(idx.item())]
        for m in (self.model, self.teacher, self.ema and self.ema.model):
            if m is not None:
                m.attention_core(core)
        return core

    def _resume(self, ck: Path | None, resume: bool) -> tuple[int, dict]:
        start, best = 0, {'miou': -1.0, 'step': -1}
        if ck is not None:
            state = load_train_state(ck, self.model, self.opt)
            start = int(state['step'])
            best = state.get('extra', {}).get('best', best)
            self._resumed_attention = state.get('extra', {}).get('attention')
            self.main_log(f'resumed from {ck} at step {start}')
        elif resume:
            self.main_log(f'no checkpoint in {self.out}; starting from step 0')
        return start, best

    def _setup_ema(self, ck: Path | None) -> WeightEMA | None:
        """The weight average (after resuming: it starts from the weights it averages)."""
        if not self.cfg.ema_decay:
            return None
        ema = WeightEMA(self.model, self.cfg.ema_decay)
        if ck is not None and not ema.load(ck):
            self.main_log(f'{ck} holds no weight average: it starts from the checkpoint')
        return ema

    def _wrap_model(self) -> nn.Module:
        model, info = self.model, self.info
        if info.world > 1 and self.dev.type == 'cuda':
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.model = model
        fwd = TrainForward(model)
        if info.world > 1:
            fwd = nn.parallel.DistributedDataParallel(
                fwd, device_ids=[self.dev.index] if self.dev.type == 'cuda' else None)
        if self.cfg.batch_size % info.world:
            raise ValueError(f'batch_size {self.cfg.batch_size} is not divisible by '
                             f'{info.world} ranks')
        return fwd

    def _make_loader(self) -> DataLoader:
        cfg, d, info = self.cfg, self.cfg.data, self.info
        aug = TrainTransform(AugmentConfig(
            crop=tuple(d.crop), scale_range=tuple(d.scale_range), flip=d.flip,
            brightness=d.jitter, contrast=d.jitter, saturation=d.jitter, hue=d.hue,
            blur=d.blur, ignore_index=self.classes.ignore_index))
        return DataLoader(
            StreamDataset(self.train_ds, aug, cfg.seed),
            sampler=StreamSampler(self.start, cfg.steps, cfg.batch_size, info.rank, info.world),
            batch_size=cfg.batch_size // info.world, num_workers=d.workers,
            collate_fn=lambda b: collate(b, d.mean, d.std), persistent_workers=False,
            worker_init_fn=ignore_in_worker,   # a group's SIGTERM is the main process's to handle
            # own generator: the iterator's base seed must not draw from (and so shift) the
            # global RNG that checkpoints save and resumed runs restore
            generator=torch.Generator().manual_seed(cfg.seed))

    # ---------------------------------------------------------------- one step each
    def exits_at(self, step: int) -> tuple[ExitConfig | None, float]:
        """Phase 2's annealed exits at this step (None in phase 1 and on phase 2's full-token
        steps), and xi (nan in phase 1, 1 on a full-token step)."""
        e = self.cfg.exits
        if e.policy == 'none':
            return None, float('nan')
        if e.full_every and step % e.full_every == e.full_every - 1:
            return None, 1.0
        xi = anneal_threshold(step, self.cfg.steps, e)
        return ExitConfig(e.policy, xi, e.topk_per_class), xi

    def distill_weight_for(self, ex: ExitConfig | None) -> float:
        """beta for a step run with `ex` (from exits_at): `exits.full_distill_weight` on phase
        2's full-token steps where set, `distill_weight` everywhere else."""
        e = self.cfg.exits
        full = e.policy != 'none' and ex is None
        if full and e.full_distill_weight is not None:
            return float(e.full_distill_weight)
        return self.cfg.distill_weight

    def train_step(self, step: int, images: torch.Tensor, labels: torch.Tensor
                   ) -> dict[str, float]:
        cfg = self.cfg
        images, labels = images.to(self.dev, non_blocking=True), labels.to(self.dev,
                                                                           non_blocking=True)
        if cfg.data.classmix:   # per-step generator: a resumed run mixes the same way
            gen = torch.Generator().manual_seed(
                (cfg.seed * 1_000_003 + step) * self.info.world + self.info.rank)
            images, labels = class_mix(images, labels, cfg.data.classmix,
                                       self.classes.ignore_index, gen)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        f = lr_factor(step, cfg.steps, cfg.optim.warmup_steps, cfg.optim.poly_power)
        for g in self.opt.param_groups:
            g['lr'] = cfg.optim.lr * f * g.get('lr_scale', 1.0)
        ex, _ = self.exits_at(step)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.amp):
            o = self.fwd(images, ex)
            tl = None
            if self.teacher is not None:
                with torch.no_grad():
                    tl = self.teacher.forward_train(images).logits
        loss, parts = dovit_loss(o, labels, cfg.aux_weight, tl, self.distill_weight_for(ex),
                                 self.classes.ignore_index, cfg.loss, self.weights)
        if not math.isfinite(parts['loss']):
            raise FloatingPointError(f'loss became {parts["loss"]} at step {step}')
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return parts

    def evaluate(self, step: int) -> tuple[float | str, float | str, float | str]:
        """(val mIoU at full tokens, held-out mIoU at full tokens, val mIoU at the default
        exits) on rank 0; '' where not run. A new best val mIoU (of the kind `select_best`
        names) is saved as the model directory `best/`."""
        cfg, d = self.cfg, self.cfg.data
        due = step % cfg.eval_every == 0 or step == cfg.steps
        if not (due and self.info.main):
            return '', '', ''
        val = held = at_default = ''
        # the weight average when there is one: it is what best/ keeps
        model, which = ((self.ema.model, ', weight average') if self.ema is not None
                        else (self.model, ''))
        if self.holdout_ds is not None:
            held = evaluate(model, self.holdout_ds, ExitConfig('none'), d.mean, d.std,
                            self.dev).miou
            self.log(f'step {step}: held-out {d.holdout} mIoU {100 * held:.2f} '
                     f'(full tokens{which})')
        if self.val_ds is not None:
            val = evaluate(model, self.val_ds, ExitConfig('none'), d.mean, d.std,
                           self.dev).miou
            self.log(f'step {step}: val mIoU {100 * val:.2f} (full tokens{which})')
            metrics = {'val_miou_full': val, 'step': step}
            if cfg.select_best == 'default':
                at_default = evaluate(model, self.val_ds, self.meta.exits, d.mean, d.std,
                                      self.dev).miou
                metrics['val_miou_default'] = at_default
                self.log(f'step {step}: val mIoU {100 * at_default:.2f} at the default exits '
                         f'({self.meta.exits.policy}, xi {self.meta.exits.threshold:g})')
            score = at_default if cfg.select_best == 'default' else val
            if score > self.best['miou']:
                self.best = {'miou': score, 'step': step}
                self.meta.metrics = metrics
                tmp = self.out / 'best.tmp'
                shutil.rmtree(tmp, ignore_errors=True)
                save_model_dir(tmp, model, self.meta)
                replace_dir(tmp, self.out / 'best')
        self.model.train()
        return val, held, at_default

    def should_stop(self, now: float, asked: bool = False) -> bool:
        """Past the time budget, or a stop `asked` for by a signal (on any rank: all stop at
        the same step)."""
        over = asked or (self.budget_min is not None
                         and (now - self.t_start) > 60 * self.budget_min)
        if self.info.world > 1:
            flag = torch.tensor([float(over)], device=self.dev)
            dist.all_reduce(flag)
            over = bool(flag.item() > 0)
        return over

    def checkpoint(self, step: int) -> None:
        if self.info.main:
            save_checkpoint(self.out, step, self.model, self.meta, self.opt,
                            {'best': self.best, 'attention': self.attention},
                            keep=self.cfg.keep_checkpoints,
                            ema=None if self.ema is None else self.ema.model)
        if self.info.world > 1:
            dist.barrier()

    def record(self, step: int, now: float, ips: float, parts: dict, val, held,
               at_default) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{parts["loss"]:.3f}',
                                 lr=f'{self.opt.param_groups[0]["lr"]:.2e}', img_s=f'{ips:.1f}')
        if self.info.main:
            with open(self.csv_path, 'a', newline='') as fh:
                csv.writer(fh).writerow([
                    step, round(now - self.t_start, 2), self.opt.param_groups[0]['lr'],
                    self.exits_at(step - 1)[1], parts['loss'], parts['ce'],
                    parts.get('aux', ''), parts.get('kl', ''), round(ips, 2), val, held,
                    at_default])

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict:
        cfg = self.cfg
        step, stopped_early, t_last = self.start, False, time.monotonic()
        self.model.train()
        with StopRequest() as stop:   # Ctrl-C / SIGTERM: stop at this step's end, checkpointed
            for images, labels in self.loader:
                parts = self.train_step(step, images, labels)
                step += 1
                now = time.monotonic()
                ips = cfg.batch_size / max(1e-9, now - t_last)
                t_last = now
                val, held, at_default = self.evaluate(step)
                self.record(step, now, ips, parts, val, held, at_default)
                over = self.should_stop(now, stop.requested is not None)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or over:
                    self.checkpoint(step)
                if over:
                    stopped_early = step < cfg.steps
                    why = (f'{stop.requested} received' if stop.requested else
                           f'time budget of {self.budget_min} min spent')
                    self.main_log(f'{why}: stopped at step {step}; continue with --resume')
                    break
        if self.bar is not None:
            self.bar.close()
        info = self.info
        return {'step': step, 'steps': cfg.steps, 'stopped_early': stopped_early,
                'best': self.best, 'determinism': self.determinism, 'out': str(self.out),
                'rank': info.rank, 'world': info.world,
                'params_sha256': params_sha256(self.model)}


def train(cfg: TrainConfig, out_dir, resume: bool = False, time_budget_min: float | None = None,
          device: str = 'auto', progress: bool = True, log=print) -> dict:
    """Run (or continue) training; returns a summary dict. Stops at `cfg.steps`, when the
    time budget is spent or at SIGINT / SIGTERM (train/stop.py), always at a checkpoint."""
    return Trainer(cfg, out_dir, resume, time_budget_min, device, progress, log).run()
