"""Recipes: the YAML a user writes, validated strictly into typed configs.

Sections: ``name, seed, plugins, data, model, embedding, train, trainer, output``. The
``data``, ``model`` and ``embedding`` blocks are validated against the config class of the
registry entry they name (``data.dataset``, ``model.name``, ``embedding.method``), so a
plugin's options are checked like the built-ins'.

Example:
    >>> recipe = load_recipe("recipes/quickstart.yaml", ["model.name=lr"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ctr.errors import RecipeError
from ctr.registry import DATASETS, EMBEDDINGS, MODELS, OPTIMIZERS, import_plugins
from ctr.schema import FeatureSpec, Kind
from ctr.typed import parse, require_at_least, to_plain


@dataclass
class SplitConfig:
    """Random train/valid/test split of datasets that ship as one stream of rows.

    ``seed`` seeds the split (and the sample of numeric values that quantile boundaries are
    fitted on): part of the encoded data's cache key, unlike the recipe's ``seed``, so that
    every training seed sees the same split and reuses one encoding.
    """

    valid: float = 0.1
    test: float = 0.1
    seed: int = 2024

    def __post_init__(self) -> None:
        if not (0 <= self.valid < 1 and 0 <= self.test < 1 and self.valid + self.test < 1):
            raise ValueError("split.valid and split.test must be in [0, 1) and sum to less than 1")
        if self.seed < 0:  # numpy's generators take non-negative seeds only
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass
class FeatureShorthand:
    """``data.features`` given by exception: every column of the data (a csv header, a parquet
    schema) is a feature of kind ``default_kind``, except the label, the group, the columns in
    ``skip`` and those a spec in ``specs`` reads (that spec is used for them). The run's
    ``recipe.yaml`` holds the resolved list.
    """

    default_kind: Kind = "categorical"
    specs: list[FeatureSpec] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    """Common data settings; each dataset's config class adds its own keys.

    Args:
        dataset: registered dataset name (``ctr models`` lists them).
        path: the original files (a file or a folder), for file-based datasets.
        features: feature specs (built-in datasets supply defaults), or a ``FeatureShorthand``.
        label: label column; group: group column for group AUC (e.g. the user).
        split: fractions for datasets without their own split.
        cache_dir: where encoded data is cached (default ``$CTR_CACHE`` or ``~/.cache/ctr``).
        on_bad_rows: ``error`` stops at the first bad row naming file and line;
            ``skip`` drops such rows and counts them in the report.
        prefetch: batches prepared ahead by a background thread (0 = none).
        shuffle_buffer: rows mixed by the training loader's shuffle buffer.
        on_device: hold each split whole in the training device's memory and build batches
            there (``ctr.datasets.resident``): for GPUs that train faster than host threads
            read rows. Each epoch is a uniform seeded permutation; no sequence features.
    """

    dataset: str = "synthetic"
    path: str | None = None
    features: list[FeatureSpec] | FeatureShorthand | None = None
    label: str | None = None
    group: str | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    cache_dir: str | None = None
    on_bad_rows: Literal["error", "skip"] = "error"
    prefetch: int = 2
    shuffle_buffer: int = 1_000_000
    on_device: bool = False
    path_keys: ClassVar[tuple[str, ...]] = ("path", "valid_path", "test_path", "cache_dir")  # made absolute in a run

    def input_paths(self) -> dict[str, Path]:
        """The files and folders the recipe reads rows from, by key (``data.path``, ...)."""
        given = {key: getattr(self, key, None) for key in self.path_keys if key != "cache_dir"}
        return {f"data.{key}": Path(value).expanduser() for key, value in given.items() if value}

    def reading(self, path: Path) -> DataConfig:
        """This config reading every row of ``path`` instead of its files (``ctr predict``,
        ``ctr eval --data``): a separate valid or test file is dropped."""
        others = {name: None for name in ("valid_path", "test_path") if hasattr(self, name)}
        return dataclasses.replace(self, path=str(path), **others)


@dataclass
class ModelConfig:
    """Common model settings; each model's config class adds its own keys."""

    name: str = "dlrm"


@dataclass
class EmbeddingConfig:
    """Common embedding settings; each method's config class adds its own keys.

    Args:
        method: registered embedding method (``full``, ``hash``, ...).
        dim: output dimension D of every feature's embedding.
        budget: memory budget as a fraction of the full table's bytes (methods that
            compress size themselves from it; ``None`` = the method's own default).
        backend: embedding-bag kernel backend (``torch``, ``triton``, ``fbgemm``) of the
            methods that look up through the kernels (``reads_backend``; refused for the
            others); ``None`` = ``$CTR_KERNEL_BACKEND`` or automatic.
        init_std: standard deviation of the normal initialisation of table rows.
        gradients: ``sparse`` (only the rows a batch touched; the embedding optimizer must take
            sparse gradients) or ``dense`` (a gradient of every row, so any torch optimizer, dense
            Adam included, can train the tables; each step then reads and writes them whole).
        dense_max_mb: ``gradients: dense`` is refused for tables above this many MB.
    """

    method: str = "full"
    dim: int = 16
    budget: float | None = None
    backend: str | None = None
    init_std: float = 0.01
    gradients: Literal["sparse", "dense"] = "sparse"
    dense_max_mb: float = 64.0

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError("dim must be >= 1")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise ValueError("budget must be in (0, 1]")
        for name in ("init_std", "dense_max_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class OptimizerConfig:
    """An optimizer: ``name`` from the optimizers registry, learning rate, weight decay."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class EmbeddingOptimizerConfig(OptimizerConfig):
    """The embedding tables' optimizer; ``fused: true`` applies it inside the lookup's backward.

    Fused, a table method's weight becomes a buffer updated in place by the kernel (no
    gradient of the table is built) and its optimizer state is saved in checkpoints. Only
    the sparse optimizers with a rule in ``ctr.kernels.optim`` (its ``FUSABLE`` list) have a
    fused form, checked when training starts; it computes the same update on the touched
    rows as the unfused optimizer of that name.

    Its defaults are its own (``adagrad``, lr 0.05): a recipe that sets only ``lr`` keeps a
    sparse optimizer.
    """

    name: str = "adagrad"
    lr: float = 0.05
    fused: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fused and self.weight_decay:
            raise ValueError("fused: weight_decay is not supported by the fused embedding update")


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
class EarlyStopConfig:
    """Stop when ``monitor`` (``VALID_METRICS`` or ``train/loss``) has not improved by more
    than ``min_delta`` for ``patience`` validations. ``mode`` follows the monitor (``min`` for
    a loss, ``max`` for an AUC)."""

    monitor: str = "valid/auc"
    mode: Literal["max", "min"] | None = None
    patience: int = 2
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        require_at_least(self, 0, "patience", "min_delta")
        if self.monitor not in (*VALID_METRICS, "train/loss"):
            raise ValueError(f"monitor: {self.monitor!r} is not logged; choose from {', '.join(VALID_METRICS)}, train/loss")
        metric_mode(self.monitor, self.mode)

    @property
    def direction(self) -> str:
        """``mode``, or the monitor's own when not given."""
        return metric_mode(self.monitor, self.mode)


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
        if not 0 < self.factor < 1 or self.patience < 0 or self.min_delta < 0 or self.min_lr < 0:
            raise ValueError("plateau: factor must be in (0, 1); patience, min_delta and min_lr >= 0")
        if self.monitor is not None and self.monitor not in VALID_METRICS:
            raise ValueError(f"plateau: monitor must be a validation metric ({', '.join(VALID_METRICS)}), "
                             f"got {self.monitor!r}")
        if self.monitor is not None:
            metric_mode(self.monitor, self.mode)


@dataclass
class CosineSchedule(SchedulerConfig):
    """Per epoch, ``lr`` falls along a half cosine to ``min_lr`` at epoch ``epochs`` (default
    ``train.epochs``): ``min_lr + (lr - min_lr)·(1 + cos(π·e / epochs)) / 2`` in epoch ``e``."""

    name: str = "cosine"
    epochs: int | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.min_lr < 0:
            raise ValueError("cosine: epochs must be >= 1 and min_lr >= 0")


@dataclass
class LinearWarmupSchedule(SchedulerConfig):
    """Per training step: ``lr`` rises linearly from ``lr / warmup_steps`` to ``lr`` over the
    first ``warmup_steps`` steps, then ``decay`` (``none``: stays; ``linear`` / ``cosine``: falls
    to ``min_lr`` over ``decay_steps`` steps and stays there)."""

    name: str = "linear_warmup"
    warmup_steps: int = 1000
    decay: Literal["none", "linear", "cosine"] = "none"
    decay_steps: int | None = None
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.min_lr < 0:
            raise ValueError("linear_warmup: warmup_steps and min_lr must be >= 0")
        if self.decay != "none" and (self.decay_steps is None or self.decay_steps < 1):
            raise ValueError(f"linear_warmup: decay {self.decay!r} needs decay_steps >= 1")


@dataclass
class StepSchedule(SchedulerConfig):
    """``lr *= factor`` after every ``step_epochs`` epochs."""

    name: str = "step"
    step_epochs: int = 1
    factor: float = 0.1

    def __post_init__(self) -> None:
        if self.step_epochs < 1 or not 0 < self.factor <= 1:
            raise ValueError("step: step_epochs must be >= 1 and factor in (0, 1]")


SCHEDULERS: dict[str, type[SchedulerConfig]] = {
    "constant": ConstantSchedule,
    "plateau": PlateauSchedule,
    "cosine": CosineSchedule,
    "linear_warmup": LinearWarmupSchedule,
    "step": StepSchedule,
}


@dataclass
class TrainConfig:
    """Optimisation settings.

    ``optimizer`` updates dense parameters; ``embedding_optimizer`` updates embedding tables
    sparsely (only the rows a batch touched), or fused into the backward (``fused: true``).
    ``scheduler`` schedules the learning rate of both; ``embedding_scheduler``, when given,
    replaces it for the embedding optimizer (``{name: constant}`` keeps its lr fixed).
    """

    batch_size: int = 4096
    eval_batch_size: int = 16384
    epochs: int = 1
    max_steps: int | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    embedding_optimizer: EmbeddingOptimizerConfig = field(default_factory=EmbeddingOptimizerConfig)
    early_stop: EarlyStopConfig | None = field(default_factory=EarlyStopConfig)
    scheduler: SchedulerConfig | None = None
    embedding_scheduler: SchedulerConfig | None = None
    grad_clip: float | None = None
    eval_every_n_steps: int | None = None

    def __post_init__(self) -> None:
        require_at_least(self, 1, "batch_size", "eval_batch_size", "epochs")
        for name in ("max_steps", "eval_every_n_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null (no limit), got {value}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip}")

    @property
    def best_by(self) -> tuple[str, str]:
        """The metric and mode that pick the best checkpoint (and rank ``ctr tune``'s points):
        early stopping's, else ``valid/auc``, max."""
        stop = self.early_stop or EarlyStopConfig()
        return stop.monitor, stop.direction

    def schedule_of(self, part: str) -> SchedulerConfig | None:
        """The schedule of optimizer ``part`` (``dense`` or ``embedding``); None = constant lr."""
        chosen = self.embedding_scheduler if part == "embedding" and self.embedding_scheduler else self.scheduler
        return None if chosen is None or chosen.name == "constant" else chosen


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")  # Lightning's, those whose training ctr checks
PRECISION_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}  # Lightning's short names


@dataclass
class TrainerConfig:
    """Where and how training runs (passed to Lightning).

    Args:
        accelerator, precision, strategy: Lightning's.
        devices: processes per machine; above 1 (or with ``num_nodes`` above 1) the run is
            distributed (``docs/distributed.md``): one process per device, gloo on CPU, nccl on GPUs.
        num_nodes: machines; each runs ``ctr train`` (or torchrun) with ``devices`` processes.
        num_threads: torch's CPU threads; ``auto``: the cores this process may run on
            (``os.sched_getaffinity``); null: torch's own choice.
        progress_bar: show a progress bar (default: when stderr is a terminal).
        compile: ``torch.compile`` the model's dense part (the embedding lookup stays as it is:
            its kernels are already fused).
    """

    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    precision: str | int = "32-true"
    strategy: str = "auto"
    num_threads: int | Literal["auto"] | None = "auto"
    progress_bar: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.num_threads, int) and self.num_threads < 1:
            raise ValueError("num_threads must be >= 1, auto or null")
        require_at_least(self, 1, "devices", "num_nodes")
        self.precision = PRECISION_ALIASES.get(str(self.precision), self.precision)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r}: use {', '.join(PRECISIONS)} (weights stay fp32; "
                             "the mixed ones compute in half precision)")

    @property
    def world_size(self) -> int:
        """Processes of the run: ``devices`` × ``num_nodes``."""
        return self.devices * self.num_nodes


Sharding = Literal["auto", "table_wise", "row_wise", "column_wise", "data_parallel"]


@dataclass
class DistributedConfig:
    """How a distributed run (``trainer.devices`` × ``trainer.num_nodes`` > 1) places tables.

    Args:
        sharding: TorchRec's sharding type of every table of a plain-table method (``full``):
            ``auto`` lets TorchRec's planner choose per table; ``table_wise``, ``row_wise``,
            ``column_wise`` or ``data_parallel`` constrain it. Other methods run data-parallel.
        tables: per-table overrides, table name → sharding type (``auto`` = the planner's choice).
    """

    sharding: Sharding = "auto"
    tables: dict[str, Sharding] = field(default_factory=dict)


@dataclass
class OutputConfig:
    """Run directory; ``None`` = ``runs/<name>-<timestamp>``."""

    dir: str | None = None


@dataclass
class Recipe:
    """A whole recipe, validated. ``data``, ``model`` and ``embedding`` hold instances of
    the config class their registry entry names (subclasses of the base configs)."""

    name: str = "run"
    seed: int = 42
    plugins: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


STRATEGIES = ("auto", "single_device")
SEED_MAX = 2**32 - 1  # numpy's largest seed, and so Lightning's seed_everything's

_SECTIONS = {
    "data": (DATASETS, "dataset", DataConfig),
    "model": (MODELS, "name", ModelConfig),
    "embedding": (EMBEDDINGS, "method", EmbeddingConfig),
}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Reads, overrides and validates a recipe file; raises RecipeError naming the key."""
    path = Path(path)
    raw = read_yaml(path)
    for item in overrides or []:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def read_yaml(path: Path) -> dict[str, Any]:
    """Loads a YAML mapping; errors name the file and line."""
    try:
        text = path.read_text()
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe: {err.strerror}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise RecipeError(f"{path}:{err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:  # a mistake (a truncated file, the wrong path), not a wish for every default
        raise RecipeError(f"{path}: an empty recipe; name at least its data or model (e.g. model: {{name: dlrm}})")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    return data


class _DuplicateKey(Exception):
    """A mapping of a recipe file names a key twice; the message starts with its line."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, refusing a key given twice in one mapping (YAML keeps the last one
    silently: a second ``train:`` section would drop every key of the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be given again
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            if not isinstance(key, Hashable):  # a list as a key: the base class's error
                break
            if key in first:
                raise _DuplicateKey(f"{line}: duplicate key {key!r} (first at line {first[key]})")
            first[key] = line
        return super().construct_mapping(node, deep)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Applies ``key.path=value`` (value parsed as YAML) to the raw recipe mapping."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r}: expected key.path=value")
    parts = key.split(".")
    if not all(parts):  # a stray dot: "data..rows", "seed."
        raise RecipeError(f"override {item!r}: an empty key between dots; expected key.path=value")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"{'.'.join(parts[: depth + 1])}: is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value


def first_difference(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> str | None:
    """The first key (dotted) whose value differs between two raw recipe mappings, with both
    values (``train.epochs: 6 before, 1 now``); None when they are equal."""
    for key in dict.fromkeys([*before, *now]):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = first_difference(old, new, f"{prefix}{key}.")
            if found:
                return found
        elif old != new:
            return f"{prefix}{key}: {_shown(old)} before, {_shown(new)} now"
    return None


def _shown(value: Any, width: int = 60) -> str:
    """``value``'s repr, cut to ``width`` characters (a feature list can be long)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def recipe_from_dict(raw: dict[str, Any]) -> Recipe:
    """Validates a raw recipe mapping: plugins first, then each section against its class."""
    raw = dict(raw)
    import_recipe_plugins(raw)
    sections = {}
    for section, (registry, key, base) in _SECTIONS.items():
        block = raw.pop(section, None)
        if block is None:  # an empty section: its defaults
            block = {}
        if not isinstance(block, dict):  # `data: false`, `model: []` are no settings to default
            raise RecipeError(f"{section}: expected a mapping, got {block!r}")
        name = block.get(key, getattr(base(), key))
        if not isinstance(name, str):
            raise RecipeError(f"{section}.{key}: expected str, got {name!r}")
        config_class = registry.get(name, f"{section}.{key}").config or base
        sections[section] = parse(config_class, block, section)
    schedules = _pop_schedules(raw)
    recipe = parse(Recipe, raw, "")
    for section, config in sections.items():
        setattr(recipe, section, config)
    for key, schedule in schedules.items():
        setattr(recipe.train, key, schedule)
    _check_combinations(recipe)
    return recipe


def import_recipe_plugins(raw: dict[str, Any]) -> None:
    """Imports the modules a raw recipe's ``plugins:`` lists (registering their entries)."""
    import_plugins(parse(_PluginList, {"plugins": raw.get("plugins", [])}, "").plugins)


def _pop_schedules(raw: dict[str, Any]) -> dict[str, SchedulerConfig | None]:
    """Removes ``train.scheduler`` / ``train.embedding_scheduler`` from ``raw`` (copying the
    ``train`` block) and validates each against the class its ``name`` picks."""
    train = raw.get("train")
    if not isinstance(train, dict):
        return {}
    train = raw["train"] = dict(train)
    schedules = {}
    for key in ("scheduler", "embedding_scheduler"):
        if key in train:
            schedules[key] = _schedule(train.pop(key), f"train.{key}")
    return schedules


def _schedule(block: Any, path: str) -> SchedulerConfig | None:
    if block is None:
        return None
    if not isinstance(block, dict):
        raise RecipeError(f"{path}: expected a mapping with a name ({', '.join(SCHEDULERS)}), got {block!r}")
    name = block.get("name")
    if name not in SCHEDULERS:
        raise RecipeError(f"{path}.name: expected one of {', '.join(SCHEDULERS)}, got {name!r}")
    return parse(SCHEDULERS[name], block, path)


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
    reads files): checked here, not in ``DataConfig``, so that a dataset's config class (a
    plugin's too) need not call a base check."""
    if not 0 <= recipe.seed <= SEED_MAX:
        raise RecipeError(f"seed: must be in [0, {SEED_MAX}] (numpy's seeds), got {recipe.seed}")
    if recipe.data.shuffle_buffer < 1:
        raise RecipeError(f"data.shuffle_buffer: must be >= 1 (rows), got {recipe.data.shuffle_buffer}")
    if recipe.data.prefetch < 0:  # a queue of maxsize -1 has no bound
        raise RecipeError(f"data.prefetch: must be >= 0 (0: batches built inline), got {recipe.data.prefetch}")
    if recipe.data.path is not None and generates_rows(recipe.data.dataset):
        raise RecipeError(f"data.path: the {recipe.data.dataset} dataset generates its rows and reads no file; name the "
                          f"dataset that reads {recipe.data.path!r} in data.dataset (csv, parquet, criteo, ...)")


def _check_combinations(recipe: Recipe) -> None:
    """Registered optimizer names, and keys valid alone that do not go together."""
    OPTIMIZERS.get(recipe.train.optimizer.name, "train.optimizer.name")
    OPTIMIZERS.get(recipe.train.embedding_optimizer.name, "train.embedding_optimizer.name")
    dense, embedding_optimizer = recipe.embedding.gradients == "dense", recipe.train.embedding_optimizer
    if dense and (embedding_optimizer.fused or embedding_optimizer.name == "sparse_adam"):
        fused = " (fused)" if embedding_optimizer.fused else ""
        raise RecipeError(
            f"embedding.gradients: dense gradients cannot be stepped by train.embedding_optimizer"
            f" {embedding_optimizer.name}{fused}; use adam, adagrad or gradients: sparse"
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


@dataclass
class _PluginList:
    plugins: list[str] = field(default_factory=list)
