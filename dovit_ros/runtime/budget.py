"""Compute budget: steer xi frame by frame so a frame's cost (GFLOPs or latency) meets a target.

A velocity-form PI controller on log cost, acting on z = -ln(1 - xi + eps):
  * cost rises steeply as xi -> 1 (few tokens are *that* confident), so equal steps in xi are
    very unequal steps in cost; in z they are roughly even, which keeps one pair of gains
    usable from xi = 0.9 to xi = 1.0;
  * log cost makes the error relative: 10 % over budget is the same correction at 5 GFLOPs as
    at 500;
  * the velocity form (dz = kp * (e_k - e_{k-1}) + ki * e_k) with z clamped to the bounds has
    no integral state to wind up: at a bound it simply stays there until the error changes
    sign, and an unreachable target drives xi monotonically to its bound.
The controller predicts the next frame's cost from the last (scenes change slowly between
frames); a frame whose cost at threshold_min still exceeds the target is counted as over
budget at the bound and reported.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np

EPS = 1e-4   # z(1.0) = -ln(1e-4) ~ 9.2: xi = 1 (no exits) is a finite point of the z axis
KINDS = ('gflops', 'latency_ms')
# The lowest xi a budget may choose by default: the default model holds its accuracy down to
# 0.7 on CamVid val (64.13 against 64.21 at its default 0.8; models/camvid-dovit-tiny), and a
# bound above a model's default xi would make a budget spend more than no budget at all.
THRESHOLD_MIN = 0.70


def to_z(xi: float) -> float:
    return -math.log(max(1.0 - xi, 0.0) + EPS)


def from_z(z: float) -> float:
    return min(1.0, max(0.0, 1.0 + EPS - math.exp(-z)))


@dataclass
class BudgetConfig:
    target: float                    # GFLOPs per frame, or ms per frame
    kind: str = 'gflops'             # gflops | latency_ms
    threshold_min: float = THRESHOLD_MIN
    threshold_max: float = 1.0
    kp: float = 0.6
    ki: float = 1.2
    max_step: float = 1.0            # largest change of z in one frame
    window: int = 50

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f'budget kind must be one of {KINDS}, got {self.kind!r}')
        if not (isinstance(self.target, (int, float)) and self.target > 0):
            raise ValueError(f'budget target must be > 0, got {self.target!r}')
        if not 0.0 <= self.threshold_min <= self.threshold_max <= 1.0:
            raise ValueError('need 0 <= threshold_min <= threshold_max <= 1, got '
                             f'{self.threshold_min} / {self.threshold_max}')


class BudgetController:
    def __init__(self, cfg: BudgetConfig, initial_threshold: float | None = None):
        self.cfg = cfg
        self.z_lo, self.z_hi = to_z(cfg.threshold_min), to_z(cfg.threshold_max)
        xi0 = cfg.threshold_max if initial_threshold is None else initial_threshold
        self.z = min(self.z_hi, max(self.z_lo, to_z(xi0)))
        self.e_prev: float | None = None
        self.costs: collections.deque[float] = collections.deque(maxlen=cfg.window)
        self.frames = 0
        self.over_budget = 0
        self.over_at_min = 0   # frames over budget although xi was already at threshold_min

    @property
    def threshold(self) -> float:
        """xi for the coming frame."""
        return from_z(self.z)

    def observe(self, cost: float, threshold_used: float | None = None) -> float:
        """Account the frame just run and return xi for the next one."""
        if not (cost > 0 and math.isfinite(cost)):
            return self.threshold
        c = self.cfg
        self.frames += 1
        self.costs.append(cost)
        over = cost > c.target
        self.over_budget += over
        xi = self.threshold if threshold_used is None else threshold_used
        if over and xi <= c.threshold_min + 1e-9:
            self.over_at_min += 1
        e = math.log(c.target) - math.log(cost)   # > 0: under budget, room for a higher xi
        dz = c.ki * e + (0.0 if self.e_prev is None else c.kp * (e - self.e_prev))
        self.z = min(self.z_hi, max(self.z_lo, self.z + max(-c.max_step, min(c.max_step, dz))))
        self.e_prev = e
        return self.threshold

    def report(self) -> dict[str, str]:
        c = self.cfg
        kv = {'budget kind': c.kind, 'budget target': f'{c.target:g}',
              'budget threshold': f'{self.threshold:.4f}',
              'budget frames over pct': f'{100.0 * self.over_budget / max(1, self.frames):.1f}',
              'budget frames over at threshold_min': str(self.over_at_min)}
        if self.costs:
            p50, p95 = np.percentile(list(self.costs), [50, 95])
            kv.update({'budget achieved p50': f'{p50:.3f}', 'budget achieved p95': f'{p95:.3f}'})
        return kv


class BudgetChooser:
    """Per-frame exit settings whose xi a BudgetController steers (the rest stays fixed).

    The one object the node, `dovit-bag process` and tests use: call it for the coming
    frame's ExitConfig, then `observe(result, frame_ms)` with what the frame cost.
    """

    def __init__(self, base, cfg: BudgetConfig):
        t = base.threshold
        xi0 = float(max(t)) if isinstance(t, (list, tuple)) else float(t)
        self.base = base if base.policy != 'none' else base.with_(policy='threshold')
        self.ctrl = BudgetController(cfg, initial_threshold=xi0)

    def __call__(self):
        return self.base.with_(threshold=self.ctrl.threshold)

    def observe(self, result, frame_ms: float) -> float:
        """result: a FrameResult (its .gflops); frame_ms: the frame's latency."""
        cost = result.gflops if self.ctrl.cfg.kind == 'gflops' else frame_ms
        return self.ctrl.observe(cost)

    def report(self) -> dict[str, str]:
        return self.ctrl.report()


def budget_from(target_gflops: float = 0.0, target_latency_ms: float = 0.0,
                threshold_min: float = THRESHOLD_MIN, threshold_max: float = 1.0
                ) -> BudgetConfig | None:
    """The BudgetConfig for a pair of target settings (0 = off; at most one may be on)."""
    if target_gflops and target_latency_ms:
        raise ValueError('target_gflops and target_latency_ms cannot both be set: set one to 0')
    if not (target_gflops or target_latency_ms):
        return None
    kind, target = (('gflops', target_gflops) if target_gflops
                    else ('latency_ms', target_latency_ms))
    return BudgetConfig(target=float(target), kind=kind, threshold_min=threshold_min,
                        threshold_max=threshold_max)
