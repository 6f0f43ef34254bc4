"""Learning-rate schedules of the task's optimizers (``train.scheduler``, ``train.embedding_scheduler``).

``cosine``, ``step`` and ``linear_warmup`` are closed forms of the epoch and the training step:
before every training step each scheduled optimizer's lr is set from its base lr, so a
resumed run (whose epoch and step Lightning restores) continues the schedule with no state of
its own. ``plateau`` is torch's ``ReduceLROnPlateau``, stepped after each validation with the
monitored metric; its lr lives in the optimizer's state and its counters are saved in
checkpoints by the task (``state_dict``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ctr.recipe import TrainConfig
from ctr.recipe.schedules import CosineSchedule, LinearWarmupSchedule, PlateauSchedule, SchedulerConfig, StepSchedule, metric_mode

Rule = Callable[[float, int, int], float]  # (base lr, epoch, step) → lr


class Schedules:
    """The schedules of the optimizers in ``parts`` that have one (``TrainConfig.schedule_of``).

    Args:
        parts: optimizer name → torch optimizer (the parts of a ``CombinedOptimizer``), freshly
            built: their current lr is the base lr of the closed-form schedules.
        train: the recipe's ``train`` block (schedules, epochs, early stopping).
        epochs: the epochs of the training scheduled (a multi-stage method's stage has its own),
            the period of a cosine that gives none; default ``train.epochs``.
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer], train: TrainConfig, epochs: int | None = None):
        self.parts = parts
        self.rules: dict[str, tuple[Rule, list[float]]] = {}
        self.plateaus: dict[str, tuple[ReduceLROnPlateau, str]] = {}
        for name, optimizer in parts.items():
            config = train.schedule_of(name)
            if isinstance(config, PlateauSchedule):
                self.plateaus[name] = plateau(config, optimizer, train.best_by)
            elif config is not None:
                self.rules[name] = (lr_rule(config, epochs or train.epochs), [g["lr"] for g in optimizer.param_groups])

    def lrs(self) -> dict[str, float]:
        """The current learning rate of each part (of its first parameter group)."""
        return {name: opt.param_groups[0]["lr"] for name, opt in self.parts.items() if opt.param_groups}

    def before_step(self, epoch: int, step: int) -> None:
        """Sets the lr of each closed-form schedule for training step ``step`` (0-based, counted
        over the run) in ``epoch``."""
        for name, (rule, bases) in self.rules.items():
            for group, base in zip(self.parts[name].param_groups, bases):
                group["lr"] = rule(base, epoch, step)

    def after_validation(self, metrics: dict[str, float]) -> None:
        """Steps the plateau schedules with their monitored metric (``valid/<name>`` → ``metrics[name]``)."""
        for scheduler, monitor in self.plateaus.values():  # a metric the run logs: checked before training
            scheduler.step(metrics[monitor.removeprefix("valid/")])

    def state_dict(self) -> dict[str, Any]:
        return {name: scheduler.state_dict() for name, (scheduler, _) in self.plateaus.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, (scheduler, _) in self.plateaus.items():
            if name in state:
                scheduler.load_state_dict(state[name])


def plateau(config: PlateauSchedule, optimizer: torch.optim.Optimizer,
            best_by: tuple[str, str]) -> tuple[ReduceLROnPlateau, str]:
    """torch's ReduceLROnPlateau for ``config`` and the metric it watches: its own monitor,
    else the run's (``TrainConfig.best_by``), in the direction that metric improves."""
    monitor = config.monitor or best_by[0]
    mode = metric_mode(monitor, config.mode)
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=config.factor, patience=config.patience,
                                  threshold=config.min_delta, threshold_mode="abs", min_lr=config.min_lr)
    return scheduler, monitor


def lr_rule(config: SchedulerConfig, epochs: int) -> Rule:
    """The lr as a function of (base lr, epoch, step) for a closed-form schedule; ``epochs`` is
    the cosine period when the schedule gives none."""
    if isinstance(config, CosineSchedule):
        period = config.epochs or epochs
        return lambda base, epoch, step: _between(config.min_lr, base, _cosine(min(epoch / period, 1.0)))
    if isinstance(config, StepSchedule):
        return lambda base, epoch, step: base * config.factor ** (epoch // config.step_epochs)
    if isinstance(config, LinearWarmupSchedule):
        return lambda base, epoch, step: warmup_lr(config, base, step)
    raise TypeError(f"no closed form for schedule {config.name!r}")


def warmup_lr(config: LinearWarmupSchedule, base: float, step: int) -> float:
    """``base·(step + 1) / warmup_steps`` during the warm-up, then ``base`` (``decay: none``) or a
    linear / cosine fall to ``min_lr`` over ``decay_steps`` steps."""
    if step < config.warmup_steps:
        return base * (step + 1) / config.warmup_steps
    if config.decay == "none":
        return base
    progress = min((step - config.warmup_steps) / config.decay_steps, 1.0)
    return _between(config.min_lr, base, 1 - progress if config.decay == "linear" else _cosine(progress))


def _between(low: float, high: float, fraction: float) -> float:
    return low + (high - low) * fraction


def _cosine(progress: float) -> float:
    return (1 + math.cos(math.pi * progress)) / 2
