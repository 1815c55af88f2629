"""Tests for iqa_lib.schedule against an independent closed form of SPEC §4."""

import io
import math

import numpy as np
import pytest
import torch

from iqa_lib.schedule import CosineAnnealingWarmupRestarts

# Any warning (notably torch's "lr_scheduler.step() before optimizer.step()") fails a test here.
pytestmark = pytest.mark.filterwarnings("error")

TEAM = dict(first_cycle_steps=800, cycle_mult=1.0, max_lr=1e-5, min_lr=1e-10, warmup_steps=200, gamma=0.9)
# Cycle lengths 11, 15, 21, 30, 43, ...: int() truncates 13.5, 19.5, 28.5, ...
SMALL = dict(first_cycle_steps=11, cycle_mult=1.5, max_lr=1.0, min_lr=0.1, warmup_steps=2, gamma=0.5)
NO_WARMUP = dict(first_cycle_steps=5, cycle_mult=2.0, max_lr=0.3, min_lr=0.01, warmup_steps=0, gamma=0.8)


def expected_lr(n: int, first_cycle_steps, cycle_mult, max_lr, min_lr, warmup_steps, gamma) -> float:
    """LR at global step n, computed from scratch: find n's cycle, then apply the formula."""
    if n == 0:
        return min_lr  # the optimiser starts at min_lr, whatever the formula says
    cycle, start, length = 0, 0, first_cycle_steps
    while n >= start + length:
        start += length
        cycle += 1
        length = int((length - warmup_steps) * cycle_mult) + warmup_steps
    s = n - start
    peak = max_lr * gamma**cycle
    if s < warmup_steps:
        return min_lr + (peak - min_lr) * s / warmup_steps
    angle = math.pi * (s - warmup_steps) / (length - warmup_steps)
    return min_lr + (peak - min_lr) * (1 + math.cos(angle)) / 2


def make(n_groups: int = 1, **cfg):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(n_groups)]
    # Group lrs deliberately differ from the schedule: the scheduler must override them.
    opt = torch.optim.SGD([{"params": [p], "lr": 0.5 + i} for i, p in enumerate(params)], lr=0.5)
    return opt, CosineAnnealingWarmupRestarts(opt, **cfg)


def run(opt, sched, n_steps: int) -> list[float]:
    """Take n_steps optimiser+scheduler steps; return the lr in force before each step and after the last."""
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(n_steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("cfg, n_steps", [(TEAM, 2600), (SMALL, 160), (NO_WARMUP, 100)])
def test_every_step_matches_closed_form(cfg, n_steps):
    opt, sched = make(**cfg)
    lrs = run(opt, sched, n_steps)
    expected = [expected_lr(n, **cfg) for n in range(n_steps + 1)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12, atol=0)
    assert sched.get_last_lr() == [lrs[-1]]
    assert sched.cycle >= 3


def test_team_golden_values():
    lrs = run(*make(**TEAM), 2600)
    assert lrs[0] == 1e-10
    assert lrs[100] == pytest.approx((1e-10 + 1e-5) / 2, rel=1e-12)
    assert lrs[200] == pytest.approx(1e-5, rel=1e-12)
    assert lrs[500] == pytest.approx((1e-10 + 1e-5) / 2, rel=1e-12)  # cos(pi/2) = 0
    assert 1e-10 < lrs[799] < 2e-10  # last step of the cosine, just above min_lr
    assert lrs[800] == 1e-10  # cycle 1 starts back at min_lr
    assert lrs[1000] == pytest.approx(0.9e-5, rel=1e-12)
    assert max(lrs[800:1600]) == lrs[1000]
    assert lrs[1600] == 1e-10
    assert lrs[1800] == pytest.approx(0.81e-5, rel=1e-12)
    assert lrs[2400] == 1e-10
    assert lrs[2600] == pytest.approx(0.729e-5, rel=1e-12)


def test_small_config_golden_values():
    lrs = run(*make(**SMALL), 80)
    # Cycles start at 0, 11, 26, 47, 77 and peak two steps later at 1, 0.5, 0.25, 0.125, 0.0625.
    for start, peak in [(0, 1.0), (11, 0.5), (26, 0.25), (47, 0.125), (77, 0.0625)]:
        assert lrs[start] == pytest.approx(0.1, abs=1e-15)
        assert lrs[start + 1] == pytest.approx((0.1 + peak) / 2, abs=1e-15)
        assert lrs[start + 2] == pytest.approx(peak, abs=1e-15)
    assert lrs[25] > lrs[26] < lrs[27]


def test_no_warmup_starts_at_min_lr():
    lrs = run(*make(**NO_WARMUP), 6)
    assert lrs[0] == 0.01
    assert lrs[1] == pytest.approx(0.01 + 0.29 * (1 + math.cos(math.pi / 5)) / 2)
    assert lrs[5] == pytest.approx(0.3 * 0.8)  # cycle 1 step 0 is its peak when there is no warm-up


def test_every_param_group_gets_the_lr():
    opt, sched = make(n_groups=3, **SMALL)
    for n in range(40):
        assert [g["lr"] for g in opt.param_groups] == [pytest.approx(expected_lr(n, **SMALL), rel=1e-12)] * 3
        assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()


def _roundtrip(obj):
    """Serialise as a checkpoint would (torch.save / torch.load with weights_only)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("restore_optimizer", [True, False])
def test_resume_mid_cycle_is_exact(restore_optimizer):
    n_total, n_before = 2600, 1234
    reference = run(*make(n_groups=2, **TEAM), n_total)

    opt, sched = make(n_groups=2, **TEAM)
    first_part = run(opt, sched, n_before)
    saved = _roundtrip({"sched": sched.state_dict(), "opt": opt.state_dict()})

    new_opt, new_sched = make(n_groups=2, **TEAM)
    assert new_opt.param_groups[0]["lr"] == 1e-10  # a fresh scheduler restarts at min_lr
    if restore_optimizer:
        new_opt.load_state_dict(saved["opt"])
    new_sched.load_state_dict(saved["sched"])
    # Even without the optimiser's state, the next optimiser step must use the resumed lr.
    assert [g["lr"] for g in new_opt.param_groups] == [reference[n_before]] * 2
    second_part = run(new_opt, new_sched, n_total - n_before)

    assert first_part[:-1] + second_part == reference
    assert [g["lr"] for g in new_opt.param_groups][1] == reference[-1]


def test_last_epoch_replays_the_position():
    opt, _ = make(**SMALL)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]  # torch requires it when last_epoch >= 0
    sched = CosineAnnealingWarmupRestarts(opt, last_epoch=29, **SMALL)
    assert sched.last_epoch == 30
    assert opt.param_groups[0]["lr"] == pytest.approx(expected_lr(30, **SMALL), rel=1e-12)
    lrs = run(opt, sched, 20)
    np.testing.assert_allclose(lrs, [expected_lr(n, **SMALL) for n in range(30, 51)], rtol=1e-12, atol=0)


def test_shrinking_cycles_without_warmup_stay_defined():
    # cycle_mult < 1 with no warm-up shrinks cycles 4, 2, 1, then would reach 0 steps.
    cfg = dict(first_cycle_steps=4, cycle_mult=0.5, max_lr=1.0, min_lr=0.0, warmup_steps=0, gamma=0.5)
    lrs = run(*make(**cfg), 12)
    assert lrs[4] == 0.5 and lrs[6] == 0.25 and lrs[7] == 0.125 and lrs[8] == 0.0625
    assert all(math.isfinite(lr) for lr in lrs)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(first_cycle_steps=0), "first_cycle_steps must be >= 1"),
        (dict(warmup_steps=800), "warmup_steps must be >= 0 and < first_cycle_steps"),
        (dict(warmup_steps=-1), "warmup_steps must be >= 0"),
        (dict(cycle_mult=0.0), "cycle_mult must be > 0"),
        (dict(gamma=0.0), "gamma must be > 0"),
        (dict(min_lr=1e-3), "need 0 <= min_lr <= max_lr"),
        (dict(min_lr=-1.0), "need 0 <= min_lr <= max_lr"),
        (dict(last_epoch=-2), "last_epoch must be >= -1"),
    ],
)
def test_invalid_arguments(override, message):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        CosineAnnealingWarmupRestarts(opt, **{**TEAM, **override})


def test_step_with_epoch_is_rejected():
    opt, sched = make(**SMALL)
    opt.step()
    with pytest.raises(ValueError, match="takes no epoch"):
        sched.step(5)
