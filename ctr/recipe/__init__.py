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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ctr.errors import RecipeError, refuse_for_training
from ctr.recipe.checks import check_combinations
from ctr.recipe.files import apply_override, read_yaml
from ctr.recipe.schedules import SCHEDULERS, VALID_METRICS, SchedulerConfig, metric_mode
from ctr.registry import DATASETS, EMBEDDINGS, MODELS, import_plugins
from ctr.schema import FeatureSpec, Kind
from ctr.typed import parse, require_at_least, to_plain


@dataclass
class SplitConfig:
    """Random train/valid/test split of datasets that ship as one stream of rows.

    ``seed`` seeds the split (and the sample of numeric values that quantile boundaries are
    fitted on): part of the encoded data's cache key where it draws either, unlike the
    recipe's ``seed``, so that every training seed sees the same split and reuses one encoding.
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
    ``skip`` and those a spec in ``specs`` reads (those specs are used for them, in order). The run's
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
    # keys that change how rows are encoded or fed, never which rows are validated nor their
    # labels: ``ctr tune`` ranks points that differ in these (a grid of other data keys is refused)
    encoding_keys: ClassVar[tuple[str, ...]] = ("features", "cache_dir", "prefetch", "shuffle_buffer", "on_device")
    # encoding keys that also decide which rows are bad: with ``on_bad_rows: skip``, which are dropped
    row_check_keys: ClassVar[tuple[str, ...]] = ("features",)
    # keys read only to build the dataset's default features: refused off their defaults where
    # the recipe lists its features (left out of the cache key then: a saved run is scored)
    default_feature_keys: ClassVar[tuple[str, ...]] = ()
    # of each of those, what sets it in data.features instead (the refusal says so)
    per_feature: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        """Refuses a key of ``default_feature_keys`` set where ``features`` lists the features,
        which would leave it unread, and an empty ``features`` list (the default features would
        train in place of the none it lists)."""
        if self.features == []:
            refuse_for_training("features: [] lists no feature; list the features to train, or leave "
                                "data.features out for the dataset's defaults")
        if not self.features:
            return
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        key = next((key for key in self.default_feature_keys if getattr(self, key) != defaults[key]), None)
        if key is not None:
            refuse_for_training(f"{key}: {getattr(self, key)!r} builds the default features only, which "
                                f"data.features replaces; set {self.per_feature.get(key, 'it on each feature')} in "
                                "data.features instead")

    def tunable_keys(self) -> tuple[str, ...]:
        """The data keys a ``ctr tune`` grid may vary: ``encoding_keys``, less ``row_check_keys``
        when bad rows are skipped (each point would drop, and so validate on, other rows)."""
        if self.on_bad_rows != "skip":
            return self.encoding_keys
        return tuple(key for key in self.encoding_keys if key not in self.row_check_keys)

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


@dataclass
class EarlyStopConfig:
    """Stop when ``monitor`` (``VALID_METRICS`` or ``train/loss``) has not improved by more
    than ``min_delta`` for ``patience`` validations (>= 1: 0 stopped where 1 does, and a saved
    run with it is still scored). ``mode`` follows the monitor (``min`` for a loss, ``max`` for
    an AUC)."""

    monitor: str = "valid/auc"
    mode: Literal["max", "min"] | None = None
    patience: int = 2
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        require_at_least(self, 0, "min_delta")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.patience == 0:
            refuse_for_training("patience must be >= 1, got 0 (0 stops at the first validation without a gain, as 1 "
                                "does)")
        if self.monitor not in (*VALID_METRICS, "train/loss"):
            raise ValueError(f"monitor: {self.monitor!r} is not logged; choose from {', '.join(VALID_METRICS)}, train/loss")
        metric_mode(self.monitor, self.mode)

    @property
    def direction(self) -> str:
        """``mode``, or the monitor's own when not given."""
        return metric_mode(self.monitor, self.mode)


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
        sections[section] = parse(config_class, block, section, owner=f"{registry.kind} {name}")
    schedules = _pop_schedules(raw)
    recipe = parse(Recipe, raw, "")
    for section, config in sections.items():
        setattr(recipe, section, config)
    for key, schedule in schedules.items():
        setattr(recipe.train, key, schedule)
    check_combinations(recipe)
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
    if not isinstance(name, str) or name not in SCHEDULERS:  # a list or mapping: no name to look up
        raise RecipeError(f"{path}.name: expected one of {', '.join(SCHEDULERS)}, got {name!r}")
    return parse(SCHEDULERS[name], block, path)


@dataclass
class _PluginList:
    plugins: list[str] = field(default_factory=list)
