"""Budget controller on a simulated cost model: 1 - confidence ~ Exp(mean = difficulty) per
token and decision point, so the fraction exiting at xi is 1 - exp(-(1 - xi) / d)."""
import math

import numpy as np
import pytest

from dovit_ros.runtime.budget import BudgetConfig, BudgetController, from_z, to_z


def sim_cost(xi: float, d: float, full: float = 10.0) -> float:
    keep, total = 1.0, 0.1 * full          # embedding + decoder
    for _ in range(3):                     # three stages before the last
        total += 0.225 * full * keep
        keep *= math.exp(-(1 - xi) / d)    # fraction that stays
    return total + 0.225 * full * keep


def run(ctrl, difficulty, frames, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    xis, costs = [], []
    for i in range(frames):
        xi = ctrl.threshold
        c = sim_cost(xi, difficulty(i)) * rng.lognormal(0, noise)
        xis.append(xi)
        costs.append(c)
        ctrl.observe(c, xi)
    return np.array(xis), np.array(costs)


def test_z_mapping_round_trips_and_is_monotonic():
    xs = np.linspace(0, 1, 101)
    zs = [to_z(x) for x in xs]
    assert all(b > a for a, b in zip(zs, zs[1:]))
    assert np.allclose([from_z(z) for z in zs], xs, atol=1e-9)


@pytest.mark.parametrize('target', [4.5, 6.0, 8.0])
def test_holds_target_across_scene_changes(target):
    # easy and hard scenes alternate every 20 frames; target between cost at 0.9 and 1.0
    def diff(i):
        return 0.02 if (i // 20) % 2 == 0 else 0.08
    assert sim_cost(0.9, 0.08) < target < sim_cost(1.0, 0.08)
    ctrl = BudgetController(BudgetConfig(target=target))
    xis, costs = run(ctrl, diff, 200)
    assert abs(costs[10:].mean() / target - 1) < 0.10
    # every scene segment, once settled, stays within 10 % on average
    for j in range(10):
        seg = costs[j * 20 + 10:(j + 1) * 20]
        assert abs(seg.mean() / target - 1) < 0.10, (j, seg.mean())
    assert xis.min() >= 0.9 - 1e-12 and xis.max() <= 1.0


def test_unreachable_low_target_drives_xi_monotonically_to_min():
    ctrl = BudgetController(BudgetConfig(target=1.0, threshold_min=0.9))
    xis, costs = run(ctrl, lambda i: 0.08, 60, noise=0.0)
    assert all(b <= a + 1e-12 for a, b in zip(xis, xis[1:]))
    assert xis[-1] == pytest.approx(0.9)
    assert ctrl.over_at_min > 0
    assert ctrl.report()['budget frames over pct'] == '100.0'


def test_unreachable_high_target_drives_xi_monotonically_to_max():
    ctrl = BudgetController(BudgetConfig(target=50.0), initial_threshold=0.9)
    xis, _ = run(ctrl, lambda i: 0.05, 60, noise=0.0)
    assert all(b >= a - 1e-12 for a, b in zip(xis, xis[1:]))
    assert xis[-1] == pytest.approx(1.0)
    assert ctrl.over_budget == 0


def test_no_windup_at_bound():
    # 30 frames pinned at the bound by an impossible target, then the target becomes easy:
    # the controller must leave the bound on the very next frames, not after unwinding.
    ctrl = BudgetController(BudgetConfig(target=1.0))
    run(ctrl, lambda i: 0.05, 30, noise=0.0)
    assert ctrl.threshold == pytest.approx(ctrl.cfg.threshold_min)   # pinned at the bound
    ctrl.cfg.target = 9.0
    xi0 = ctrl.threshold
    ctrl.observe(sim_cost(xi0, 0.05), xi0)
    assert ctrl.threshold > xi0


def test_no_oscillation_when_settled_without_noise():
    ctrl = BudgetController(BudgetConfig(target=6.0))
    xis, costs = run(ctrl, lambda i: 0.05, 80, noise=0.0)
    e = np.sign(costs[20:] - 6.0)
    crossings = np.count_nonzero(e[1:] != e[:-1])
    assert crossings <= 6   # at most one step across the target per 10 frames


@pytest.mark.parametrize('kw', [dict(target=0), dict(target=5, kind='watts'),
                                dict(target=5, threshold_min=0.99, threshold_max=0.9)])
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        BudgetConfig(**kw)


def test_ignores_non_finite_costs():
    ctrl = BudgetController(BudgetConfig(target=5.0), initial_threshold=0.95)
    xi = ctrl.threshold
    assert ctrl.observe(float('nan')) == xi and ctrl.frames == 0
