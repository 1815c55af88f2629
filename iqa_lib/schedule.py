"""Cosine annealing with linear warm-up and decaying restarts (SPEC §4).

Reproduces the ``CosineAnnealingWarmupRestarts`` scheduler of the
``cosine_annealing_warmup`` package that the team trained with, as a regular
``torch.optim.lr_scheduler.LRScheduler``. It is meant to be stepped once per
optimiser step. Within a cycle of length ``L`` with peak ``max_c``, step ``s``
has the learning rate

    s <  warmup:  min_lr + (max_c - min_lr) * s / warmup
    s >= warmup:  min_lr + (max_c - min_lr) * (1 + cos(pi * (s - warmup) / (L - warmup))) / 2

When ``s`` reaches ``L`` it wraps to 0, the cycle index ``c`` grows by one,
the next length is ``int((L - warmup) * cycle_mult) + warmup`` and the peak
becomes ``max_lr * gamma ** c``.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class CosineAnnealingWarmupRestarts(LRScheduler):
    """Warm-up then cosine decay, restarted every cycle with a peak decayed by ``gamma``.

    Every param group gets the same learning rate, times its ``lr_scale`` if it
    has one (the kit's slower ViT group); the optimiser's own ``lr`` values are
    ignored, as in the original package. After construction the
    learning rate is ``min_lr`` (global step 0, even when ``warmup_steps`` is
    0: the original package forces it there), and each ``step()`` advances
    one step.

    Args:
        optimizer: the wrapped optimiser.
        first_cycle_steps: length of the first cycle, in steps.
        cycle_mult: growth factor of the post-warm-up part of each new cycle.
        max_lr: peak learning rate of the first cycle.
        min_lr: the floor: the rate at the start of every cycle with a warm-up, and the one the cosine decays to.
        warmup_steps: linear warm-up length at the start of every cycle.
        gamma: the peak of cycle ``c`` is ``max_lr * gamma ** c``.
        last_epoch: index of the last step taken; -1 for a fresh start. As
            with torch's schedulers the constructor takes one step, so with
            ``last_epoch=N`` the learning rate is that of step ``N + 1``.
            To resume training prefer :meth:`load_state_dict`.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        first_cycle_steps: int,
        cycle_mult: float = 1.0,
        max_lr: float = 0.1,
        min_lr: float = 0.001,
        warmup_steps: int = 0,
        gamma: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        if first_cycle_steps < 1:
            raise ValueError(f"first_cycle_steps must be >= 1, got {first_cycle_steps}")
        if not 0 <= warmup_steps < first_cycle_steps:
            raise ValueError(
                f"warmup_steps must be >= 0 and < first_cycle_steps ({first_cycle_steps}), got {warmup_steps}"
            )
        if cycle_mult <= 0:
            raise ValueError(f"cycle_mult must be > 0, got {cycle_mult}")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if not 0 <= min_lr <= max_lr:
            raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
        if last_epoch < -1:
            raise ValueError(f"last_epoch must be >= -1, got {last_epoch}")

        self.first_cycle_steps = int(first_cycle_steps)
        self.cycle_mult = float(cycle_mult)
        self.base_max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps)
        self.gamma = float(gamma)

        # Position before global step 0; the base constructor's step() moves it to step 0.
        self.cycle = 0
        self.step_in_cycle = -1
        self.cur_cycle_steps = self.first_cycle_steps
        # Replay the steps already taken so the cycle position matches last_epoch.
        for _ in range(last_epoch + 1):
            self._advance()
        super().__init__(optimizer, last_epoch)

    def _advance(self) -> None:
        """Move the cycle position one step forward, wrapping into the next cycle."""
        self.step_in_cycle += 1
        if self.step_in_cycle >= self.cur_cycle_steps:
            self.step_in_cycle -= self.cur_cycle_steps
            self.cycle += 1
            # With cycle_mult < 1 and no warm-up the length would shrink to 0 (the
            # original then divides by zero); one step is the shortest meaningful cycle.
            grown = int((self.cur_cycle_steps - self.warmup_steps) * self.cycle_mult)
            self.cur_cycle_steps = max(grown + self.warmup_steps, 1)

    @property
    def cycle_max_lr(self) -> float:
        """Peak learning rate of the current cycle."""
        return self.base_max_lr * self.gamma**self.cycle

    def get_lr(self) -> list[float]:
        """Learning rate for the current position (times a param group's `lr_scale`, if it has one)."""
        if self.last_epoch == 0:
            lr = self.min_lr
        elif self.step_in_cycle < self.warmup_steps:
            lr = self.min_lr + (self.cycle_max_lr - self.min_lr) * self.step_in_cycle / self.warmup_steps
        else:
            # Evaluated in the order SPEC §4 writes it (pi * (s - warmup) first), so the floats
            # match a literal implementation of that formula bit for bit.
            s, w = self.step_in_cycle, self.warmup_steps
            angle = math.pi * (s - w) / (self.cur_cycle_steps - w)
            lr = self.min_lr + (self.cycle_max_lr - self.min_lr) * (1 + math.cos(angle)) / 2
        # A group may scale it (train.py: the backbone's `lr_scale`); without the key, the same for all.
        return [lr * group["lr_scale"] if "lr_scale" in group else lr for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        """Advance one step and update every param group's ``lr``.

        Call it after ``optimizer.step()``. Jumping to an arbitrary ``epoch``
        (deprecated in torch) is not supported.
        """
        if epoch is not None:
            raise ValueError("step() takes no epoch: each call advances exactly one step")
        self._advance()
        super().step()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state and put the restored learning rate on the optimiser.

        The constructor set the optimiser to ``min_lr``; without this the next
        optimiser step would use that instead of the resumed value whenever the
        optimiser's own state is not restored as well.
        """
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr
