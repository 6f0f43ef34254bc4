"""The optimizers of one rank of a distributed run, and their learning-rate schedules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ctr.recipe import Recipe, TrainConfig
from ctr.train.optim import build_optimizer
from ctr.train.schedule import Schedules


class Optimizers:
    """The dense optimizer and, when there is one, the tables' optimizer, stepped as one; a
    bi-level stage's architecture optimizer (``arch``) is stepped apart and saved with them.

    ``follow_schedules`` puts ``dense`` and ``embedding`` (``named``) under the recipe's
    schedules (``train.scheduler`` / ``embedding_scheduler``), and with them TorchRec's fused
    optimizer of sharded tables, whose lr reaches FBGEMM when its ``zero_grad`` runs.
    """

    def __init__(self, parts: list[torch.optim.Optimizer], arch: torch.optim.Optimizer | None = None,
                 named: dict[str, torch.optim.Optimizer] | None = None):
        self.parts, self.arch, self.named = parts, arch, named or {}
        self.schedules: list[Schedules] = []
        self.fused: torch.optim.Optimizer | None = None

    @classmethod
    def build(cls, recipe: Recipe, dense: list[nn.Parameter], tables: list[nn.Parameter]) -> Optimizers:
        """``train.optimizer`` over ``dense``, ``train.embedding_optimizer`` over ``tables`` (if any)."""
        named = {"dense": build_optimizer(recipe.train.optimizer, dense, "train.optimizer")}
        if tables:
            named["embedding"] = build_optimizer(recipe.train.embedding_optimizer, tables, "train.embedding_optimizer")
        return cls(list(named.values()), named=named)

    def with_arch(self, arch: torch.optim.Optimizer, apart: bool) -> Optimizers:
        """These optimizers and an architecture optimizer: stepped with them, or ``apart``."""
        if apart:
            return Optimizers(self.parts, arch, self.named)
        return Optimizers([*self.parts, arch], named=self.named)

    def follow_schedules(self, train: TrainConfig, fused: torch.optim.Optimizer | None, epochs: int) -> None:
        """Schedules the parts (freshly built: their lr is the schedules' base) and ``fused``
        over a training of ``epochs`` (a stage's own)."""
        self.schedules = [Schedules(self.named, train, epochs)]
        if fused is not None:
            self.schedules.append(Schedules({"embedding": fused}, train, epochs))
        self.fused = fused

    def before_step(self, epoch: int, step: int) -> None:
        """Sets every scheduled lr for training step ``step`` (0-based, over the run) of ``epoch``."""
        for schedules in self.schedules:
            schedules.before_step(epoch, step)
        if self.fused is not None:
            self.fused.zero_grad()

    def after_validation(self, metrics: dict[str, float]) -> None:
        """Steps the plateau schedules with the validation ``metrics`` (``auc``, ``logloss``, ...)."""
        for schedules in self.schedules:
            schedules.after_validation(metrics)

    def lrs(self) -> dict[str, float]:
        """The lr of ``dense`` and ``embedding`` now (``lr/dense``, ``lr/embedding`` in the log)."""
        merged: dict[str, float] = {}
        for schedules in reversed(self.schedules):
            merged.update(schedules.lrs())
        return merged

    def zero_grad(self) -> None:
        for part in self.parts:
            part.zero_grad()

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def fused_lr(self) -> float | None:
        """The sharded tables' lr now (one schedule moves all their groups alike), or None on a
        rank that holds no sharded table."""
        groups = [] if self.fused is None else self.fused.param_groups
        return groups[0]["lr"] if groups else None

    def state_dict(self, fused_lr: float | None = None) -> dict[str, Any]:
        """The parts' states, the schedules' counters and ``fused_lr``, the sharded tables' lr
        (a plateau's cuts live only in their param groups, which their checkpoint leaves out;
        the caller gathers it: the rank that saves may hold no sharded table)."""
        return {"parts": [part.state_dict() for part in self.parts],
                "arch": None if self.arch is None else self.arch.state_dict(),
                "schedules": [schedules.state_dict() for schedules in self.schedules],
                "fused_lr": fused_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, saved in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(saved)
        if self.arch is not None:
            self.arch.load_state_dict(state["arch"])
        for schedules, saved in zip(self.schedules, state["schedules"], strict=True):
            schedules.load_state_dict(saved)
        if self.fused is not None and state.get("fused_lr") is not None:  # reaches FBGEMM at the next zero_grad
            for group in self.fused.param_groups:
                group["lr"] = state["fused_lr"]
