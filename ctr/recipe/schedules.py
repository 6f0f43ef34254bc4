"""Learning-rate schedule configs (``train.scheduler`` / ``train.embedding_scheduler``) and the
validation metrics a run can monitor. The schedules themselves run in ``ctr.train.schedule``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ctr.errors import refuse_for_training
from ctr.typed import require_at_least


VALID_METRICS = ("valid/auc", "valid/logloss", "valid/gauc")  # gauc: with a data.group column


def metric_mode(monitor: str, mode: str | None) -> str:
    """The direction in which ``monitor`` improves: ``min`` for a loss, ``max`` for an AUC.
    ``mode`` may only repeat it (the other way would keep the worst checkpoint)."""
    best = "min" if monitor.endswith("loss") else "max"
    if mode not in (None, best):
        raise ValueError(f"mode: {monitor} improves as it {'falls' if best == 'min' else 'rises'}, so mode must be "
                         f"{best} (leave mode out to follow the monitor)")
    return best


@dataclass
class SchedulerConfig:
    """A learning-rate schedule; ``name`` picks the class of its keys (``SCHEDULERS``)."""

    name: str = "constant"


@dataclass
class ConstantSchedule(SchedulerConfig):
    """The optimizer's ``lr`` throughout (to keep one optimizer off ``train.scheduler``)."""


@dataclass
class PlateauSchedule(SchedulerConfig):
    """After each validation: when ``monitor`` has not gained more than ``min_delta`` for more than
    ``patience`` validations, ``lr *= factor`` (not below ``min_lr``). The defaults are FuxiCTR's
    ``reduce_lr_on_plateau``: lr ÷ 10 after every validation without a gain, down to 1e-6.
    ``monitor`` defaults to ``train.early_stop``'s (else ``valid/auc``); ``mode`` follows the
    monitor."""

    name: str = "plateau"
    factor: float = 0.1
    patience: int = 0
    min_delta: float = 0.0
    min_lr: float = 1e-6
    monitor: str | None = None
    mode: Literal["max", "min"] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {self.factor}")
        require_at_least(self, 0, "patience", "min_delta", "min_lr")
        if self.monitor is not None and self.monitor not in VALID_METRICS:
            raise ValueError(f"monitor: must be a validation metric ({', '.join(VALID_METRICS)}), got {self.monitor!r}")
        if self.monitor is not None:
            metric_mode(self.monitor, self.mode)


@dataclass
class CosineSchedule(SchedulerConfig):
    """Per epoch, ``lr`` falls along a half cosine to ``min_lr`` at epoch ``epochs`` (default
    ``train.epochs``, a multi-stage method's stage's own ``epochs``):
    ``min_lr + (lr - min_lr)·(1 + cos(π·e / epochs)) / 2`` in epoch ``e``."""

    name: str = "cosine"
    epochs: int | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs is not None:
            require_at_least(self, 1, "epochs")
        require_at_least(self, 0, "min_lr")


@dataclass
class LinearWarmupSchedule(SchedulerConfig):
    """Per training step: ``lr`` rises linearly from ``lr / warmup_steps`` to ``lr`` over the
    first ``warmup_steps`` steps, then ``decay`` (``none``: stays; ``linear`` / ``cosine``: falls
    to ``min_lr`` over ``decay_steps`` steps and stays there). ``decay_steps`` and ``min_lr`` are
    read by a decay only, so with ``decay: none`` they are refused (``min_lr`` above 0)."""

    name: str = "linear_warmup"
    warmup_steps: int = 1000
    decay: Literal["none", "linear", "cosine"] = "none"
    decay_steps: int | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        require_at_least(self, 0, "warmup_steps", "min_lr")
        if self.decay != "none" and (self.decay_steps is None or self.decay_steps < 1):
            given = "not given" if self.decay_steps is None else f"got {self.decay_steps}"
            raise ValueError(f"decay_steps must be >= 1 with decay {self.decay!r}, {given}")
        if self.decay == "none":  # the lr stays at its base after the warm-up: these would be unread
            for key, value in (("decay_steps", self.decay_steps), ("min_lr", self.min_lr or None)):
                if value is not None:
                    refuse_for_training(f"{key}: {value:g} is read by a decay only; set decay (linear or cosine) "
                                        f"or leave {key} out")


@dataclass
class StepSchedule(SchedulerConfig):
    """``lr *= factor`` after every ``step_epochs`` epochs."""

    name: str = "step"
    step_epochs: int = 1
    factor: float = 0.1

    def __post_init__(self) -> None:
        require_at_least(self, 1, "step_epochs")
        if not 0 < self.factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {self.factor}")


SCHEDULERS: dict[str, type[SchedulerConfig]] = {
    "constant": ConstantSchedule,
    "plateau": PlateauSchedule,
    "cosine": CosineSchedule,
    "linear_warmup": LinearWarmupSchedule,
    "step": StepSchedule,
}


