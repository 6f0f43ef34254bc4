"""Checks across a recipe's sections: keys valid alone that do not go together (an optimizer
that cannot step the gradients it would get, a setting the chosen method ignores)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ctr.errors import RecipeError
from ctr.recipe.schedules import PlateauSchedule, metric_mode
from ctr.registry import DATASETS, EMBEDDINGS, OPTIMIZERS

if TYPE_CHECKING:
    from ctr.recipe import Recipe, TrainConfig

STRATEGIES = ("auto", "single_device")
SEED_MAX = 2**32 - 1  # numpy's largest seed, and so Lightning's seed_everything's

DENSE_ONLY_OPTIMIZERS = ("adam", "adamw")  # torch's Adam and AdamW refuse sparse gradients
DECAYING_OPTIMIZERS = ("adam", "adamw", "adagrad", "sgd")  # weight_decay as L2 in the gradient


def _check_weight_decay(recipe: Recipe) -> None:
    """The dense part's optimizer steps dense gradients (sparse_adam cannot); weight_decay is
    applied as L2 in the gradient by ``DECAYING_OPTIMIZERS`` only (adagrad and sgd decay a
    sparse gradient's rows), so it is refused where it would be ignored: sparse_adam and
    rowwise_adagrad (fused and sharded table updates refuse it on their own)."""
    dense_ones = {"train.optimizer": recipe.train.optimizer}
    arch = getattr(recipe.embedding, "arch_optimizer", None)  # a method's architecture parameters: dense too
    if arch is not None:
        dense_ones["embedding.arch_optimizer"] = arch
    for key, dense in dense_ones.items():
        if dense.name == "sparse_adam":
            raise RecipeError(f"{key}.name: sparse_adam steps sparse gradients only, and these are dense; use adam, "
                              "adamw, adagrad or sgd")
        if dense.weight_decay and dense.name not in DECAYING_OPTIMIZERS:
            raise RecipeError(f"{key}.weight_decay: {dense.name} applies no weight decay; use "
                              f"{', '.join(DECAYING_OPTIMIZERS)}, or 0")
    tables = recipe.train.embedding_optimizer
    if tables.weight_decay and not tables.fused and tables.name not in DECAYING_OPTIMIZERS:  # fused: its config
        raise RecipeError(f"train.embedding_optimizer.weight_decay: {tables.name} applies no weight decay; use "
                          "adagrad or sgd (or adam with embedding.gradients: dense), or 0")


def check_seeds_from(seed: int, seeds: int) -> None:
    """Refuses ``seeds`` seeds ``seed, seed + 1, ..`` that pass numpy's largest (``--seeds`` of
    ``ctr tune`` and ``ctr bench compression``; Lightning's ``seed_everything`` raises on them)."""
    if seed + seeds - 1 > SEED_MAX:
        raise RecipeError(f"--seeds: {seeds} seeds from seed {seed} pass {SEED_MAX}, numpy's largest; give fewer seeds "
                          "or a lower seed")


def budget_needed(method: str) -> str:
    """The error of a method that sizes its storage from a budget, given none."""
    return (f"embedding.budget: {method} sizes its storage from a budget (a fraction of the full tables' bytes,"
            " e.g. 0.1)")


def reads_backend(method: str) -> bool:
    """Whether the registered embedding ``method`` looks its rows up through the kernels with
    ``embedding.backend`` (``reads_backend``; the others do their own lookups)."""
    return getattr(EMBEDDINGS.get(method).target, "reads_backend", False)


def generates_rows(dataset: str) -> bool:
    """Whether the registered ``dataset`` makes its rows itself (``synthetic``) and reads no file."""
    return getattr(DATASETS.get(dataset).target, "generated", False)


def splits_itself(dataset: str) -> bool:
    """Whether the registered ``dataset`` splits its rows itself (``amazon``), reading no
    ``data.split`` fraction."""
    return getattr(DATASETS.get(dataset).target, "own_split", False)


def _updates_in_backward(recipe: Recipe) -> bool:
    """Whether the recipe's embedding method updates its rows inside the backward."""
    return getattr(EMBEDDINGS.get(recipe.embedding.method).target, "updates_in_backward", False)


def _check_loss_scaling(recipe: Recipe) -> None:
    """``16-mixed`` scales the loss, and Lightning takes the scale out of the gradients only
    inside the optimizer's step: a fused table update (in the backward) and ``grad_clip``
    (before the step) would see scaled gradients."""
    if recipe.trainer.precision != "16-mixed":
        return
    if recipe.train.embedding_optimizer.fused:
        raise RecipeError("trainer.precision: 16-mixed scales the gradients that the fused table update applies in "
                          "the backward; use bf16-mixed (no loss scale) or train.embedding_optimizer.fused: false")
    if recipe.train.grad_clip:
        raise RecipeError("trainer.precision: 16-mixed would clip loss-scaled gradients (train.grad_clip); use "
                          "bf16-mixed (no loss scale) or no grad_clip")
    if _updates_in_backward(recipe):
        raise RecipeError(f"trainer.precision: 16-mixed scales the gradients that {recipe.embedding.method} applies to "
                          "its rows in the backward; use bf16-mixed (no loss scale)")


def _check_plateau_modes(train: TrainConfig) -> None:
    """A plateau schedule on the run's monitor (no ``monitor`` of its own): that monitor must
    be a validation metric (the schedule steps after validations), and a ``mode`` given must
    be the direction in which it improves."""
    monitor = train.best_by[0]
    for name in ("scheduler", "embedding_scheduler"):
        schedule = getattr(train, name)
        if not (isinstance(schedule, PlateauSchedule) and schedule.monitor is None):
            continue
        if not monitor.startswith("valid/"):
            raise RecipeError(f"train.{name}.monitor: a plateau schedule watches a validation metric, not early "
                              f"stopping's {monitor}")
        if schedule.mode is not None:
            try:
                metric_mode(monitor, schedule.mode)
            except ValueError as err:
                raise RecipeError(f"train.{name}.{err}") from None


def _check_ranges(recipe: Recipe) -> None:
    """The run's seed and the data keys every dataset shares (a ``path`` only for a dataset that
    reads files, ``split`` fractions only for one that does not split its rows itself): checked
    here, not in ``DataConfig``, so that a dataset's config class (a plugin's too) need not call
    a base check."""
    if not 0 <= recipe.seed <= SEED_MAX:
        raise RecipeError(f"seed: must be in [0, {SEED_MAX}] (numpy's seeds), got {recipe.seed}")
    if recipe.data.shuffle_buffer < 1:
        raise RecipeError(f"data.shuffle_buffer: must be >= 1 (rows), got {recipe.data.shuffle_buffer}")
    if recipe.data.prefetch < 0:  # a queue of maxsize -1 has no bound
        raise RecipeError(f"data.prefetch: must be >= 0 (0: batches built inline), got {recipe.data.prefetch}")
    if recipe.data.path is not None and generates_rows(recipe.data.dataset):
        raise RecipeError(f"data.path: the {recipe.data.dataset} dataset generates its rows and reads no file; name the "
                          f"dataset that reads {recipe.data.path!r} in data.dataset (csv, parquet, criteo, ...)")
    split, default = recipe.data.split, type(recipe.data.split)()
    if (split.valid, split.test) != (default.valid, default.test) and splits_itself(recipe.data.dataset):
        raise RecipeError(f"data.split: the {recipe.data.dataset} dataset splits its rows itself and reads neither "
                          "data.split.valid nor data.split.test; leave them out")


def _check_home_folders(recipe: Recipe) -> None:
    """Refuses a path of the ``~user/...`` form naming no user of this machine (wherever the
    path is read, ``Path.expanduser`` raises a RuntimeError on it)."""
    paths = {f"data.{key}": getattr(recipe.data, key, None) for key in recipe.data.path_keys}
    for key, value in {**paths, "output.dir": recipe.output.dir}.items():
        if value:
            try:
                Path(value).expanduser()
            except RuntimeError:
                raise RecipeError(f"{key}: {value!r} names the home folder of no user of this machine") from None


def check_combinations(recipe: Recipe) -> None:
    """Registered optimizer names, and keys valid alone that do not go together."""
    OPTIMIZERS.get(recipe.train.optimizer.name, "train.optimizer.name")
    OPTIMIZERS.get(recipe.train.embedding_optimizer.name, "train.embedding_optimizer.name")
    arch = getattr(recipe.embedding, "arch_optimizer", None)  # a method's architecture parameters' optimizer
    if arch is not None:
        OPTIMIZERS.get(arch.name, "embedding.arch_optimizer.name")
    dense, embedding_optimizer = recipe.embedding.gradients == "dense", recipe.train.embedding_optimizer
    if dense and (embedding_optimizer.fused or embedding_optimizer.name == "sparse_adam"):
        instead = ("fused: false (a fused update steps the touched rows in the backward)" if embedding_optimizer.fused
                   else "a torch optimizer of dense gradients (adam, adamw, adagrad, sgd)")
        raise RecipeError(
            f"embedding.gradients: dense gradients cannot be stepped by train.embedding_optimizer"
            f" {embedding_optimizer.name}{' (fused)' if embedding_optimizer.fused else ''}; use {instead}, or "
            "gradients: sparse"
        )
    if not dense and not embedding_optimizer.fused and embedding_optimizer.name in DENSE_ONLY_OPTIMIZERS:
        raise RecipeError(
            f"train.embedding_optimizer.name: {embedding_optimizer.name} cannot step sparse table gradients"
            " (embedding.gradients: sparse); use adagrad, sgd, sparse_adam or rowwise_adagrad, or gradients: dense"
        )
    method = EMBEDDINGS.get(recipe.embedding.method, "embedding.method").target
    if recipe.embedding.budget is None and getattr(method, "needs_budget", False):
        raise RecipeError(budget_needed(recipe.embedding.method))
    if recipe.embedding.backend is not None and not reads_backend(recipe.embedding.method):
        raise RecipeError(f"embedding.backend: method {recipe.embedding.method!r} does its own lookups and does not "
                          "read the kernel backend (leave it out)")
    _check_ranges(recipe)
    _check_home_folders(recipe)
    _check_plateau_modes(recipe.train)
    _check_weight_decay(recipe)
    _check_loss_scaling(recipe)
    if getattr(recipe.model, "l2_reg", 0):
        updater = ("a fused table update" if recipe.train.embedding_optimizer.fused else
                   recipe.embedding.method if _updates_in_backward(recipe) else None)
        if updater:
            raise RecipeError(f"model.l2_reg: the regularizer looks the batch's rows up again, and {updater} would "
                              "step that lookup on its own (not with the loss's gradient); use "
                              "train.embedding_optimizer.fused: false and a method updated by the optimizer")
    if recipe.trainer.strategy not in STRATEGIES:
        raise RecipeError(
            f"trainer.strategy: {recipe.trainer.strategy!r}: use one of {', '.join(STRATEGIES)} (a distributed run"
            " is set by trainer.devices and the distributed section)"
        )


