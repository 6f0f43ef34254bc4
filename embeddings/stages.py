"""Multi-stage embedding methods: the stages a method declares and the trainer runs in order.

A stage is either ``train`` (epochs of gradient training over the training data) or
``procedure`` (the method's own routine, e.g. an evolutionary search or a pruning pass, that
may score candidates on validation data). ``ctr.train.stages`` runs them from the recipe
(``embedding.stages.<name>.epochs``), saves each stage's output in the run directory and
resumes from the last finished stage. Single-stage methods declare no stages and train on
the ordinary path.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal

from torch import Tensor, nn

from ctr.errors import refuse_for_training
from ctr.recipe import EmbeddingConfig, OptimizerConfig

_finished: frozenset[str] = frozenset()  # while a resumed run's net is built, its finished stages: stages_finished


@dataclass(frozen=True)
class Stage:
    """One stage of a multi-stage method.

    Args:
        name: the stage's name; its settings are ``embedding.stages.<name>`` in a recipe.
        kind: ``train`` (gradient training on the training split) or ``procedure`` (the
            method's ``run_procedure``: no gradient steps, validation scores on demand).
        bilevel: (train) the method's architecture parameters step on validation batches
            through ``arch_update`` while all other parameters step on training batches.
        rewind: (train) restore the parameters the whole net had before the first stage
            before this stage begins (retraining from the same initialization).
        fresh_tables: (train) the method builds new, untrained tables as the stage begins
            (the rest of the net goes on from earlier stages).
    """

    name: str
    kind: Literal["train", "procedure"] = "train"
    bilevel: bool = False
    rewind: bool = False
    fresh_tables: bool = False


@contextmanager
def stages_finished(names: Iterable[str]) -> Iterator[None]:
    """While the net of a resumed run is built, the stages it finished (``names``): a resume
    restores them and runs them no more, so a value only such a stage reads is taken as the
    run saved it (``refuse_before_stage``)."""
    global _finished
    before, _finished = _finished, frozenset(names)
    try:
        yield
    finally:
        _finished = before


def refuse_before_stage(stage: str, message: str, error: type[Exception] = ValueError) -> None:
    """``refuse_for_training``'s refusal of a value that only ``stage`` reads (the size of a
    search, of an index), spared too while the net of a resumed run that finished ``stage``
    is built (``stages_finished``)."""
    if stage not in _finished:
        refuse_for_training(message, error)


@dataclass
class StageConfig:
    """Recipe settings of one stage.

    Args:
        epochs: training epochs of a ``train`` stage (default: ``train.epochs``).
        max_steps: optional cap on its optimizer steps.
    """

    epochs: int | None = None
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")


@dataclass
class StagedConfig(EmbeddingConfig):
    """Settings every multi-stage method has.

    Args:
        stages: stage name → ``{epochs, max_steps}``; stages not named use ``train.epochs``.
    """

    stage_names: ClassVar[tuple[str, ...]] = ()
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.stages:
            if name not in self.stage_names:
                raise ValueError(f"stages.{name}: unknown stage (this method has: {', '.join(self.stage_names)})")


@dataclass
class SearchConfig(StagedConfig):
    """Settings of a multi-stage method with architecture parameters (``arch_parameters``).

    Args:
        arch_optimizer: optimizer of the method's architecture parameters (thresholds,
            selection weights); a dense optimizer from the optimizers registry.
    """

    arch_optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))


@dataclass
class StageContext:
    """What a ``procedure`` stage may use.

    Args:
        score: runs the whole net over the validation split and returns its AUC.
        seed: the recipe's seed (procedures draw their randomness from it).
        progress: show progress bars.
    """

    score: Callable[[], float]
    seed: int
    progress: bool = False


class MultiStageMixin:
    """Hooks a multi-stage method implements next to the ``EmbeddingMethod`` contract.

    The trainer calls, for each stage in ``stages()``: ``begin_stage`` (the method switches
    its behaviour and may restructure its storage), then trains or calls
    ``run_procedure``, then saves ``stage_output`` (tensors) and ``stage_summary`` (JSON).
    Replaying ``begin_stage`` and loading each finished stage's saved state rebuilds a
    method exactly, which is how runs resume and how ``ctr eval`` loads a finished run.
    """

    config: StagedConfig

    def begin_stage(self, stage: Stage) -> None:
        """Switches to ``stage`` (called before training, and again when replaying)."""

    def run_procedure(self, stage: Stage, context: StageContext) -> None:
        """Runs a ``procedure`` stage."""
        raise NotImplementedError(f"{type(self).__name__} has no procedure for stage {stage.name!r}")

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters: stepped by ``embedding.arch_optimizer``, not by the
        dense or embedding optimizers (on validation batches in a ``bilevel`` stage)."""
        return []

    def arch_update(self, valid_loss: Tensor, optimizer: Any) -> None:
        """One architecture step from the loss of a validation batch (``bilevel`` stages)."""
        raise NotImplementedError(f"{type(self).__name__} has no bilevel stage")

    def stage_output(self, stage: Stage) -> dict[str, Tensor]:
        """The stage's result as tensors (masks, dims, thresholds, selection weights)."""
        return {}

    def stage_summary(self, stage: Stage) -> dict[str, Any]:
        """A short JSON-able summary of the stage's result, for people and the log."""
        return {}

    def stage_settings(self, name: str) -> StageConfig:
        return self.config.stages.get(name) or StageConfig()
