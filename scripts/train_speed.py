"""Training-step speed on this CPU: fp32 vs bf16 autocast, channels-last stem, torch.compile,
the attention core (+matmul: model/vit.py ATTENTION_CORES; default the fused kernel).

  python scripts/train_speed.py --threads 2 --crop 256 256 --batch 8 --steps 6 --json out.json

Each variant runs `--warmup` steps, then times `--steps` full training steps (forward_train,
the loss, backward, AdamW) of the default architecture on random images, and reports images/s
and the loss after a fixed number of steps from the same seed (numerical soundness: bf16 must
track fp32).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from dovit_ros.model import DoViTSegmenter, ViTConfig
from dovit_ros.runtime.device import cpu_model_name, cpu_supports_bf16
from dovit_ros.train.losses import dovit_loss


def run(variant: dict, a) -> dict:
    torch.manual_seed(0)
    cfg = ViTConfig.preset('tiny', num_classes=11, conv_stem=True, img_size=(360, 480),
                           decoder=a.decoder)
    m = DoViTSegmenter(cfg).train()
    if variant['matmul']:   # softmax(QK^T)V written as matmuls (model/vit.py ATTENTION_CORES)
        m.attention_core('matmul')
    if variant['channels_last']:
        m.patch_embed.to(memory_format=torch.channels_last)
        if m.refine is not None:
            m.refine.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    fwd = m.forward_train
    if variant['compile']:
        fwd = torch.compile(m.forward_train)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, *a.crop, generator=g)
    y = torch.randint(0, 11, (a.batch, *a.crop), generator=g)
    if variant['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=variant['bf16']):
            out = fwd(x)
        loss, parts = dovit_loss(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(parts['loss'])
    t = sorted(times[a.warmup:])[len(times[a.warmup:]) // 2]
    return {**variant, 'img_per_s': a.batch / t, 'step_ms_median': 1e3 * t,
            'loss_last': losses[-1], 'losses': losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--crop', type=int, nargs=2, default=(256, 256))
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--steps', type=int, default=6)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--decoder', default='refine')
    ap.add_argument('--variants', default='fp32,bf16,bf16+cl,fp32+cl,bf16+compile')
    ap.add_argument('--json')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.variants.split(','):
        v = {'name': name, 'bf16': 'bf16' in name, 'channels_last': '+cl' in name,
             'compile': 'compile' in name, 'matmul': '+matmul' in name}
        if v['bf16'] and not cpu_supports_bf16():
            print(f'{name}: skipped, this CPU has no bf16 matrix units')
            continue
        r = run(v, a)
        rows.append(r)
        print(f"{name:16s} {r['img_per_s']:6.2f} img/s  step {r['step_ms_median']:7.0f} ms  "
              f"loss after {len(r['losses'])} steps {r['loss_last']:.6f}", flush=True)
    info = {'cpu': cpu_model_name(), 'bf16_units': cpu_supports_bf16(), 'threads': a.threads,
            'torch': torch.__version__, 'python': platform.python_version(),
            'crop': list(a.crop), 'batch': a.batch, 'decoder': a.decoder, 'rows': rows}
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(info, f, indent=1)


if __name__ == '__main__':
    main()
