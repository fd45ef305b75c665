#!/usr/bin/env python3
"""ENet against the shipped model on this CPU: the model issue's speed bar ("at least twice as
fast as ENet on the same CPU").

ENet (Paszke et al. 2016, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
Segmentation", the CNN trained from scratch on CamVid at 480x360 that the issue compares
with) is built here from the paper's table 1 with random weights: speed does not depend on
the weights. Each timed call is a frame's model work for both: the forward, then labels and
confidence at full resolution (for our model exactly what `dovit-bench` times). Calls
alternate ENet / ours (`dovit_ros.cli.bench.time_pair`), so a drifting host hits both. Both
get the same deployment steps: BatchNorms folded into the layers before them where they follow
one (model/fold.py; ENet keeps the one after its initial concatenation), the same
post-processing (model.types.labels_confidence), each network in its faster memory layout.

    python scripts/enet_speed.py [--model models/camvid-dovit-tiny] [--threads 2]
        [--precision fp32|bf16] [--runs 20] [--no-fold] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def cbp(cin: int, cout: int, k, stride: int = 1, padding=0, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BN -> PReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.PReLU(cout))


class Initial(nn.Module):
    """3x3 stride-2 conv (13 channels) beside a 2x2 max pool of the image (3), concatenated."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 13, 3, 2, 1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.out = nn.Sequential(nn.BatchNorm2d(16), nn.PReLU(16))

    def forward(self, x):
        return self.out(torch.cat([self.conv(x), self.pool(x)], 1))


class Bottleneck(nn.Module):
    """Regular, dilated or asymmetric (5x1 then 1x5) bottleneck, projection ratio 4."""

    def __init__(self, c: int, dilation: int = 1, asymmetric: bool = False):
        super().__init__()
        i = c // 4
        mid = (nn.Sequential(nn.Conv2d(i, i, (5, 1), padding=(2, 0), bias=False),
                             cbp(i, i, (1, 5), padding=(0, 2))) if asymmetric
               else cbp(i, i, 3, padding=dilation, dilation=dilation))
        self.ext = nn.Sequential(cbp(c, i, 1), mid, nn.Conv2d(i, c, 1, bias=False),
                                 nn.BatchNorm2d(c))
        self.act = nn.PReLU(c)

    def forward(self, x):
        return self.act(x + self.ext(x))


class Down(nn.Module):
    """Downsampling bottleneck: 2x2 stride-2 projection; the main branch max-pools (keeping
    the indices for the decoder's unpooling) and is zero-padded to the new width."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        i = cout // 4
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.ext = nn.Sequential(cbp(cin, i, 2, stride=2), cbp(i, i, 3, padding=1),
                                 nn.Conv2d(i, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.PReLU(cout)
        self.pad = cout - cin

    def forward(self, x):
        main, idx = self.pool(x)
        ext = self.ext(x)
        main = torch.cat([main, main.new_zeros(main.shape[0], self.pad, *main.shape[2:])], 1)
        return self.act(main + ext), idx


class Up(nn.Module):
    """Upsampling bottleneck: the main branch (1x1 conv) is max-unpooled with the matching
    encoder indices, the extension branch uses a stride-2 transposed convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        i = cin // 4
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.ext = nn.Sequential(cbp(cin, i, 1),
                                 nn.ConvTranspose2d(i, i, 2, 2, bias=False),
                                 nn.BatchNorm2d(i), nn.PReLU(i),
                                 nn.Conv2d(i, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.PReLU(cout)

    def forward(self, x, idx, size):
        return self.act(self.unpool(self.main(x), idx, output_size=size) + self.ext(x))


def stage(c: int) -> nn.Sequential:
    """Stages 2 and 3 after their first layer: regular, dilated 2, asymmetric, dilated 4,
    regular, dilated 8, asymmetric, dilated 16."""
    return nn.Sequential(Bottleneck(c), Bottleneck(c, 2), Bottleneck(c, asymmetric=True),
                         Bottleneck(c, 4), Bottleneck(c), Bottleneck(c, 8),
                         Bottleneck(c, asymmetric=True), Bottleneck(c, 16))


class ENet(nn.Module):
    def __init__(self, num_classes: int = 11):
        super().__init__()
        self.initial = Initial()
        self.down1 = Down(16, 64)
        self.stage1 = nn.Sequential(*[Bottleneck(64) for _ in range(4)])
        self.down2 = Down(64, 128)
        self.stage2, self.stage3 = stage(128), stage(128)
        self.up4 = Up(128, 64)
        self.stage4 = nn.Sequential(Bottleneck(64), Bottleneck(64))
        self.up5 = Up(64, 16)
        self.stage5 = Bottleneck(16)
        self.full = nn.ConvTranspose2d(16, num_classes, 3, 2, 1, output_padding=1, bias=False)

    def forward(self, x):
        x = self.initial(x)
        s1 = x.shape[-2:]
        x, i1 = self.down1(x)
        x = self.stage1(x)
        s2 = x.shape[-2:]
        x, i2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, i2, s2))
        x = self.stage5(self.up5(x, i1, s1))
        return self.full(x)


def fastest_layout(enet: nn.Module, x: torch.Tensor, calls: int = 5):
    """ENet and its input in whichever memory format runs it faster here (ENet's best)."""
    import time
    best = None
    for fmt in (torch.contiguous_format, torch.channels_last):
        m, xf = enet.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        enet_frame(m, xf)
        t0 = time.perf_counter()
        for _ in range(calls):
            enet_frame(m, xf)
        dt = time.perf_counter() - t0
        if best is None or dt < best[0]:
            best = (dt, fmt)
    fmt = best[1]
    name = 'channels_last' if fmt == torch.channels_last else 'contiguous'
    return enet.to(memory_format=fmt), x.contiguous(memory_format=fmt), name


def enet_frame(enet: nn.Module, x: torch.Tensor):
    """Labels and confidence at full resolution, as a node frame needs them: the same
    post-processing our model's frames get (model.types.labels_confidence)."""
    from dovit_ros.model.types import labels_confidence
    with torch.no_grad():
        return labels_confidence(enet(x))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='models/camvid-dovit-tiny')
    ap.add_argument('--image', default='../shared/data/camvid/val/images/0016E5_07959.jpg')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--precision', choices=('fp32', 'bf16'), default='fp32')
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--no-fold', action='store_true',
                    help='keep both networks\' BatchNorms unfolded (by default both are folded '
                         'into the layers before them, as the node does: model/fold.py)')
    ap.add_argument('--json', help='write the figures here')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from dovit_ros.cli.bench import make_bench_runner, model_case, time_pair
    from dovit_ros.model import FULL, fold_batchnorm
    from dovit_ros.runtime.device import cpu_model_name
    from dovit_ros.runtime.pipeline import PRECISIONS
    dt = PRECISIONS[a.precision]
    cpu = torch.device('cpu')
    case = argparse.Namespace(model=a.model, image=a.image, height=None, width=None,
                              policy=None, threshold=None, no_fold=a.no_fold, input_scale=1.0)
    model, x, exits, _, _ = model_case(case, cpu)
    model, x = model.to(dt), x.to(dt)
    ours, binfo = make_bench_runner(model, 'eager', cpu, x)
    torch.manual_seed(0)
    enet = ENet(model.cfg.num_classes).eval()
    folded = 0 if a.no_fold else fold_batchnorm(enet)   # the same deployment step as ours
    enet = enet.to(dt)
    enet, xe, layout = fastest_layout(enet, x)
    with FlopCounterMode(display=False) as fc:
        enet_frame(enet, x)
    enet_gflops = fc.get_total_flops() / 1e9

    def frame(exit_cfg):
        return lambda: ours(x, exit_cfg).labels_confidence()

    e_ms, full_ms = time_pair(lambda: enet_frame(enet, xe), frame(FULL), a.runs, a.warmup, cpu)
    e2_ms, pruned_ms = time_pair(lambda: enet_frame(enet, xe), frame(exits), a.runs, a.warmup,
                                 cpu)
    enet_ms = statistics.median(e_ms + e2_ms)
    fm, pm = statistics.median(full_ms), statistics.median(pruned_ms)
    r = {'cpu': cpu_model_name(), 'threads': a.threads, 'precision': a.precision,
         'height': int(x.shape[-2]), 'width': int(x.shape[-1]), 'runs': a.runs,
         'model': a.model, 'threshold': exits.threshold,
         'enet_params_m': sum(p.numel() for p in enet.parameters()) / 1e6,
         'enet_memory_format': layout, 'enet_bn_folded': folded,
         'bn_folded': not a.no_fold, 'attention': binfo['attention'],
         'enet_gflops': enet_gflops, 'enet_ms': enet_ms, 'full_ms': fm, 'pruned_ms': pm,
         'enet_over_full': enet_ms / fm, 'enet_over_pruned': enet_ms / pm,
         'torch': torch.__version__}
    print(f'{r["cpu"]}, {a.threads} threads, {a.precision}, {r["height"]}x{r["width"]}: ENet '
          f'({r["enet_params_m"]:.2f} M params, {enet_gflops:.2f} GFLOPs, {layout}) '
          f'{enet_ms:.1f} ms; ours full {fm:.1f} ms (ENet / ours {r["enet_over_full"]:.2f}), '
          f'at xi {exits.threshold} {pm:.1f} ms (ENet / ours {r["enet_over_pruned"]:.2f})')
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
