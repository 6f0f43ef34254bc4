"""``ctr bench train``: samples/s of a recipe's training loop and where each step's time goes.

The recipe trains in the same loop as ``ctr train`` (Lightning fit of ``CTRTask``, the
recipe's loaders and optimizers; no validation, no checkpoints) for ``warmup`` untimed steps,
then ``steps`` timed steps, then, on a GPU, ``profile_steps`` steps under the profiler:

- samples/s: the timed steps' samples over their wall time (the device synchronized at both
  ends only, so the host runs ahead as in training);
- the split of the timed steps into data, embedding, dense, backward and optimizer: GPU time
  from CUDA events in stream order on a GPU, host time on a CPU (``ctr.train.phases``);
- on a GPU, from the profiled steps: the share of wall time in which a kernel or copy ran
  (the union of their intervals) and the host-device synchronisations per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch

from ctr.errors import UserError
from ctr.recipe.files import apply_override
from ctr.train.phases import PHASES, EventClock, PhaseClock, WallClock

# Runtime calls that block the host (``cudaMemcpy`` is the synchronous copy; ``cudaMemcpyAsync`` is not).
SYNC_CALLS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"})


@dataclass
class TrainBenchConfig:
    """Settings of ``ctr bench train``.

    Args:
        recipe: the recipe file; overrides: ``key.path=value`` strings.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        warmup, steps, profile_steps: untimed, timed and profiled training steps.
    """

    recipe: Path
    overrides: list[str] = field(default_factory=list)
    device: str = "auto"
    warmup: int = 10
    steps: int = 50
    profile_steps: int = 10


@dataclass
class TrainBenchResult:
    """What one run measured (``busy``/``syncs_per_step`` are ``None`` on a CPU)."""

    device: str
    batch_size: int
    samples: int
    seconds: float
    phases: dict[str, float]
    busy: float | None
    syncs_per_step: float | None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds


class _Window(L.Callback):
    """Times steps ``warmup`` .. ``warmup + steps`` and profiles the ones after."""

    def __init__(self, clock: PhaseClock, config: TrainBenchConfig, device: torch.device):
        self.clock, self.config, self.device = clock, config, device
        self.step, self.samples, self.seconds = 0, 0, 0.0
        self.profiler: torch.profiler.profile | None = None
        self.profiled_seconds = 0.0
        self._start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        warmup, steps = self.config.warmup, self.config.steps
        if self.step == warmup:
            self._sync()
            self._start, self.clock.enabled = time.perf_counter(), True
        elif self.step == warmup + steps:
            self._sync()
            self.seconds, self.clock.enabled = time.perf_counter() - self._start, False
            if self.device.type == "cuda" and self.config.profile_steps:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
                self.profiler.start()
                self._start = time.perf_counter()
        if warmup <= self.step < warmup + steps:
            self.samples += batch.size
        self.step += 1

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        self._sync()
        if self.clock.enabled:  # no step after the timed ones (--profile-steps 0): the window ends here
            self.seconds, self.clock.enabled = time.perf_counter() - self._start, False
        if self.profiler is not None:
            self.profiled_seconds = time.perf_counter() - self._start
            self.profiler.stop()


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _refuse_processes(overrides: list[str]) -> None:
    """Refuses an ``-o`` of more than one process: the benchmark measures one process's loop
    (a recipe's own ``trainer.devices`` is set to 1; an override said otherwise, and was not),
    given by its key or in a mapping of the section (``trainer={devices: 2}``)."""
    for item in overrides:
        given: dict = {}
        apply_override(given, item)
        trainer = given.get("trainer")
        counts = [trainer.get(key, 1) for key in ("devices", "num_nodes")] if isinstance(trainer, dict) else []
        if any(count not in (1, "") or isinstance(count, bool) for count in counts):
            raise UserError(f"-o {item}: ctr bench train measures one process's training loop (it runs with "
                            "trainer.devices and num_nodes 1); time a distributed run with ctr train")


def run_train_bench(config: TrainBenchConfig) -> TrainBenchResult:
    """Trains ``config.recipe`` for the configured steps and returns the measurements."""
    from ctr.datasets import prepare
    from ctr.recipe import load_recipe
    from ctr.train.loop import Session, quiet_lightning
    from ctr.train.placement import use_threads
    from ctr.train.placement import placement
    from ctr.train.rundir import RunDir
    from ctr.train.task import CTRTask

    for flag, count, least in (("--steps", config.steps, 1), ("--warmup", config.warmup, 0),
                               ("--profile-steps", config.profile_steps, 0)):
        if count < least:
            raise UserError(f"{flag}: must be >= {least}, got {count}")
    _refuse_processes(config.overrides)
    device = resolve_device(config.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    recipe = load_recipe(config.recipe, [*config.overrides, f"trainer.accelerator={accelerator}", "trainer.devices=1"])
    quiet_lightning()
    use_threads(recipe.trainer.num_threads)  # as ctr train does: the figures are of the same loop
    L.seed_everything(recipe.seed, verbose=False)
    prepared = prepare(recipe.data, recipe.trainer.progress_bar)
    clock = EventClock(device) if device.type == "cuda" else WallClock()
    profiled = config.profile_steps if device.type == "cuda" else 0  # the profiler's figures are a GPU's only
    task = CTRTask(recipe, prepared.schema, phases=clock)
    window = _Window(clock, config, device)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=recipe.trainer.precision, max_epochs=-1,
        max_steps=config.warmup + config.steps + profiled, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[window],
    )
    session = Session(recipe, RunDir("."), prepared, False, placement(recipe))
    loader = session.loader("train", training=True)
    try:
        trainer.fit(task, loader)
    finally:
        loader.close()
    busy = syncs = None
    if window.profiler is not None:
        busy, syncs = _profile_figures(window.profiler, window.profiled_seconds, config.profile_steps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return TrainBenchResult(name, recipe.train.batch_size, window.samples, window.seconds, clock.totals(), busy, syncs)


def _profile_figures(profiler: torch.profiler.profile, seconds: float, steps: int) -> tuple[float, float]:
    """(share of ``seconds`` in which the GPU ran a kernel or copy, host syncs per step)."""
    intervals, syncs = [], 0
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            intervals.append((event.time_range.start, event.time_range.end))
        elif event.name in SYNC_CALLS:
            syncs += 1
    busy_us, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy_us += end - max(start, reach)
            reach = end
    return busy_us / 1e6 / seconds, max(syncs - 1, 0) / steps  # the window's own closing sync is not the loop's


def format_result(result: TrainBenchResult, config: TrainBenchConfig) -> str:
    """The report: throughput (with the rows a timed step trained on average where that is less
    than the batch size: an epoch's last batch, or a split smaller than one batch), then the
    phase split as a markdown table."""
    kind = "GPU time (CUDA events)" if result.busy is not None else "host time"
    per_step = round(result.samples / config.steps)  # as shown: 511.76 rows a step read "512" beside batch 512
    smaller = f" ({per_step:,} rows a timed step on average)" if per_step < result.batch_size else ""
    lines = [
        f"device: {result.device}; torch {torch.__version__}",
        f"recipe {config.recipe}, batch {result.batch_size:,}{smaller}: {config.steps} timed steps after "
        f"{config.warmup} warm-up",
        f"samples/s: {result.samples_per_s:,.0f} ({result.samples:,} samples in {result.seconds:.3f} s)",
    ]
    if result.busy is not None:
        lines.append(f"GPU busy: {100 * result.busy:.1f}% of wall time over {config.profile_steps} profiled steps; "
                     f"host-device synchronisations per step: {result.syncs_per_step:.2f}")
    total = sum(result.phases.values()) or 1.0
    lines += ["", f"| phase | {kind} per step, ms | share |", "|---|---:|---:|"]
    for phase in PHASES:
        seconds = result.phases.get(phase, 0.0)
        lines.append(f"| {phase} | {1e3 * seconds / config.steps:.3f} | {100 * seconds / total:.1f}% |")
    return "\n".join(lines)
