"""Single process or torchrun (DDP): rank information, the device of this rank, the module DDP
wraps, and a parameter fingerprint every rank prints."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..model import DoViTSegmenter
from ..runtime.device import resolve_device


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


def pick_device(device: str, info: DistInfo) -> torch.device:
    """This rank's device, with its index: torch.cuda.set_device refuses a bare 'cuda'."""
    return resolve_device(device, info.local_rank)


def params_sha256(model: nn.Module) -> str:
    """sha256 of the parameters' names and raw bytes. Every DDP rank prints it in the summary:
    the parameters must agree across ranks (buffers such as BN running statistics need not:
    each rank updates its own between DDP's broadcasts from rank 0, and rank 0 saves)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
