"""``ctr plan``: how a recipe's embedding tables would shard over N processes, before training.

The tables of the recipe's fitted schema are declared to TorchRec's planner
(``EmbeddingShardingPlanner``) as an ``EmbeddingBagCollection`` on the meta device (no
memory is allocated), with the recipe's embedding optimizer applied in backward so that the
planner counts its state. The planner chooses each table's sharding (table-wise, row-wise,
column-wise, data-parallel) under a memory cap per rank; the report lists, per table, rows,
dim, the bytes of weights and of optimizer state, the sharding type and the ranks, and per
rank the bytes it holds and the planner's own storage estimate. When nothing fits, the
planner's reason is the error, with the embedding budget at which a compressing method
(``hash``, ``unified``) would fit.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

import torch

from ctr.errors import RecipeError, UserError
from ctr.recipe import Recipe
from ctr.schema import Schema
from ctr.train.checks import check_batch_split
from ctr.train.placement import check_accelerator

FP32_BYTES = 4
SHARD_COLUMNS = 4  # FBGEMM's kernels of a sharded table take shards of a multiple of 4 columns
SHARDABLE_METHODS = ("full",)  # methods whose storage is plain tables TorchRec shards
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40}
# Optimizer state per row of a shard of ``cols`` columns, in floats (the rules of
# ctr.kernels.optim; a column shard keeps its own row-wise accumulator, as FBGEMM's do).
STATE_FLOATS: dict[str, Callable[[int], int]] = {
    "sgd": lambda cols: 0, "adagrad": lambda cols: cols, "rowwise_adagrad": lambda cols: 1,
    "sparse_adam": lambda cols: 2 * cols,
}


@dataclass(frozen=True)
class TablePlan:
    """One table's placement: its shards as (rank, rows, cols)."""

    name: str
    rows: int
    dim: int
    sharding: str
    shards: tuple[tuple[int, int, int], ...]

    def bytes_on(self, rank: int, state_floats: Callable[[int], int]) -> tuple[int, int]:
        """(weight bytes, optimizer-state bytes) of this table on ``rank``."""
        weights = state = 0
        for where, rows, cols in self.shards:
            if where == rank:
                weights += rows * cols * FP32_BYTES
                state += rows * state_floats(cols) * FP32_BYTES
        return weights, state


@dataclass(frozen=True)
class Plan:
    """Every table's placement over ``world_size`` ranks and the planner's estimate per rank."""

    tables: tuple[TablePlan, ...]
    world_size: int
    optimizer: str
    planner_bytes: tuple[int, ...]
    method_bytes: int  # the recipe's embedding method's own storage (a data-parallel method's per rank)

    def rank_bytes(self, rank: int) -> int:
        """Weights and optimizer state held by ``rank``."""
        return sum(sum(t.bytes_on(rank, STATE_FLOATS[self.optimizer])) for t in self.tables)


def parse_bytes(text: str, flag: str = "--memory-per-rank") -> int:
    """``16GB``, ``512MiB``, ``2e9`` → bytes; a UserError naming ``flag`` otherwise."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    try:
        size = int(float(match.group(1)) * UNITS[unit]) if match and unit in UNITS else 0
    except (ValueError, OverflowError):  # "1.2.3"; "1e400GB", an infinite float
        size = 0
    if size <= 0:  # also 0, which the planner would read as "its default"
        raise UserError(f"{flag}: expected a size such as 16GB or 512MiB, got {text!r}")
    return size


def sharded_types(recipe: Recipe) -> set[str]:
    """The sharding types the recipe asks for that split or move tables (neither ``auto`` nor
    ``data_parallel``): ``distributed.sharding`` and each of ``distributed.tables``."""
    return {recipe.distributed.sharding, *recipe.distributed.tables.values()} - {"auto", "data_parallel"}


def check_shard_columns(recipe: Recipe) -> None:
    """Refuses a sharding type that splits or moves tables when ``embedding.dim`` is not a
    multiple of 4: FBGEMM's kernels refuse such shards (TorchRec asserts it while sharding, on
    every rank). Data-parallel tables are plain replicas, which any dim allows; ``auto``
    tables are then left data-parallel (``replicated_when_unshardable``)."""
    dim, asked = recipe.embedding.dim, sharded_types(recipe)
    if dim % SHARD_COLUMNS and asked:
        raise RecipeError(f"embedding.dim: {dim} is not a multiple of {SHARD_COLUMNS}, which TorchRec's "
                          f"{', '.join(sorted(asked))} tables need (FBGEMM); use such a dim, or distributed.sharding "
                          "auto or data_parallel")


def replicated_when_unshardable(chosen: dict[str, str], dim: int) -> dict[str, str]:
    """``chosen`` (table → sharding type) with the ``auto`` tables data-parallel when ``dim``
    cannot shard (not a multiple of 4 columns): the planner would otherwise pick table-wise
    shards that FBGEMM refuses."""
    if dim % SHARD_COLUMNS == 0:
        return chosen
    return {table: "data_parallel" if kind == "auto" else kind for table, kind in chosen.items()}


def check_plan_request(recipe: Recipe, world_size: int) -> None:
    """Refuses, before the data is read, a plan that ``ctr plan`` cannot make or that no
    training of ``recipe`` over ``world_size`` processes would run."""
    optimizer = recipe.train.embedding_optimizer.name
    if optimizer not in STATE_FLOATS:
        raise RecipeError(f"train.embedding_optimizer.name: ctr plan counts the state of {', '.join(STATE_FLOATS)}; "
                          f"got {optimizer!r}")
    if world_size < 1:
        raise UserError("--world-size: must be >= 1")
    check_accelerator(recipe.trainer.accelerator)  # it picks CPU or GPU ranks; another would show a GPU plan
    check_batch_split(recipe, world_size)
    if world_size > 1:
        from ctr.train.sharded import check_request  # it imports this module

        check_request(recipe)  # the tables' sharding types and their optimizer


def plan_tables(recipe: Recipe, schema: Schema, world_size: int, memory_per_rank: int | None) -> Plan:
    """Plans the recipe's tables over ``world_size`` ranks (CPU ranks on the recipe's CPU
    accelerator, GPU ranks otherwise), ``memory_per_rank`` bytes each (default: the
    planner's), under the sharding types the recipe's ``distributed`` section fixes."""
    logging.getLogger().addFilter(_hide_torchrec_notes)  # torchrec and fbgemm also log through the root logger
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
    from torchrec.distributed.planner.types import PlannerError

    logging.getLogger("torchrec").setLevel(logging.ERROR)
    check_plan_request(recipe, world_size)
    method_bytes = _method_bytes(recipe, schema)
    optimizer = recipe.train.embedding_optimizer.name
    collection = _meta_collection(schema, recipe)
    device = "cpu" if recipe.trainer.accelerator == "cpu" else "cuda"
    cap = {"ddr_cap" if device == "cpu" else "hbm_cap": memory_per_rank} if memory_per_rank else {}
    topology = Topology(world_size=world_size, compute_device=device, **cap)
    from ctr.train.sharded import planner_constraints, table_constraints  # it imports this module

    fixed = table_constraints(recipe, list(schema.tables()))
    if "row_wise" in fixed.values() and device == "cpu":
        raise UserError("distributed.sharding: row_wise: TorchRec's planner proposes no row-wise shards of CPU tables; "
                        "ctr train writes that plan itself (docs/distributed.md), ctr plan cannot show it")
    planner = EmbeddingShardingPlanner(topology=topology, storage_reservation=FixedPercentageStorageReservation(0.0),
                                       constraints=planner_constraints(fixed, recipe.embedding.dim, world_size))
    try:
        sharding = planner.plan(collection, [EmbeddingBagCollectionSharder()])
    except PlannerError as err:
        raise UserError(_no_plan(err, schema, recipe, world_size, memory_per_rank)) from None
    tables = tuple(_table_plan(name, spec, schema, recipe.embedding.dim) for name, spec in sharding.plan[""].items())
    return Plan(tables, world_size, optimizer, _planner_bytes(planner, world_size, device), method_bytes)


def _method_bytes(recipe: Recipe, schema: Schema) -> int:
    """The stored bytes of the recipe's embedding method built on ``schema``: what training
    refuses at build time (a budget the method cannot reach, none given, dense gradients of
    tables past ``dense_max_mb``) is refused here too. A plain-table method is built on the
    meta device (the plan sizes its tables; none is allocated), a compressing one on the CPU
    (its storage is what each rank holds; some methods compute it from their buffers)."""
    from ctr.train.net import build_embedding

    device = "meta" if recipe.embedding.method in SHARDABLE_METHODS else "cpu"
    with torch.device(device):
        return build_embedding(recipe, schema).stored_bytes()


def _hide_torchrec_notes(record: logging.LogRecord) -> bool:
    """Drops torchrec's and fbgemm's notes to the root logger (libraries loaded, data-parallel
    tables without a sharding spec): the plan says what matters of them."""
    return "torchrec" not in record.pathname and "fbgemm" not in record.pathname


def _meta_collection(schema: Schema, recipe: Recipe):  # -> EmbeddingBagCollection
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    configs = [EmbeddingBagConfig(name=table, embedding_dim=recipe.embedding.dim, num_embeddings=rows,
                                  feature_names=[table]) for table, rows in schema.tables().items()]
    collection = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    apply_optimizer_in_backward(_state_twin(recipe.train.embedding_optimizer.name), collection.parameters(), {"lr": 0.01})
    return collection


def _state_twin(optimizer: str) -> type[torch.optim.Optimizer]:
    """A torch optimizer with the same state per row as ``optimizer`` (what the planner counts)."""
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    return {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad,
            "sparse_adam": torch.optim.Adam}[optimizer]


def _table_plan(name: str, spec, schema: Schema, dim: int) -> TablePlan:  # noqa: ANN001 (ParameterSharding)
    rows = schema.tables()[name]
    if spec.sharding_spec is None:  # data-parallel: a whole replica on every rank
        shards = tuple((rank, rows, dim) for rank in spec.ranks)
    else:
        shards = tuple((shard.placement.rank(), shard.shard_sizes[0], shard.shard_sizes[1])
                       for shard in spec.sharding_spec.shards)
    return TablePlan(name, rows, dim, spec.sharding_type, shards)


def _planner_bytes(planner, world_size: int, device: str) -> tuple[int, ...]:  # noqa: ANN001
    """The planner's own storage estimate per rank of its best plan."""
    totals = [0] * world_size
    for option in planner._best_plan or []:  # noqa: SLF001 (the planner keeps its chosen options there)
        for shard in option.shards:
            totals[shard.rank] += shard.storage.ddr if device == "cpu" else shard.storage.hbm
    return tuple(totals)


def _no_plan(err: Exception, schema: Schema, recipe: Recipe, world_size: int, memory: int | None) -> str:
    """The planner's reason, and the embedding budget at which a compressing method fits (it
    trains data-parallel: each rank holds its whole storage, so one rank's memory bounds it)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [lines[0].rstrip(".")] + [line.rstrip(",)") + ")" for line in lines if "for model parallel" in line]
    text = "no sharding plan fits: " + "; ".join(kept)
    if memory:
        full = sum(schema.tables().values()) * recipe.embedding.dim * FP32_BYTES
        dim = recipe.embedding.dim
        state = 1 + STATE_FLOATS[recipe.train.embedding_optimizer.name](dim) / dim
        budget = memory / (full * state)
        need = f"the tables with their optimizer state need {full * state / 2**30:.3g} GiB"
        if world_size * budget >= 1:  # the tables fit: what does not is the planner's own storage beside them
            text += f" ({need}, which the ranks hold; the rest is the planner's own storage per rank)"
        else:
            text += f" ({need}; with embedding.method hash or unified, embedding.budget <= {budget:.3g} would fit)"
    return text


def format_plan(plan: Plan, recipe: Recipe) -> str:
    """The per-table and per-rank tables of ``plan``, as markdown."""
    lines = [f"recipe {recipe.name}: {len(plan.tables)} tables, D = {recipe.embedding.dim}, "
             f"embedding optimizer {plan.optimizer}, {plan.world_size} rank{'s' if plan.world_size != 1 else ''}", ""]
    if recipe.embedding.method not in SHARDABLE_METHODS:
        lines += [f"embedding.method {recipe.embedding.method} is not sharded: it trains data-parallel, every rank "
                  f"holding its whole storage ({plan.method_bytes / 1e6:,.2f} MB of weights; docs/distributed.md). "
                  "The plan below is that of the full tables it compresses (embedding.method full).", ""]
    lines += ["| table | rows | dim | weights MB (all ranks) | optimizer state MB (all ranks) | sharding | ranks |",
             "|---|---:|---:|---:|---:|---|---|"]
    for table in plan.tables:
        sizes = [table.bytes_on(rank, STATE_FLOATS[plan.optimizer]) for rank in range(plan.world_size)]
        ranks = sorted({rank for rank, _, _ in table.shards})
        lines.append(f"| {table.name} | {table.rows:,} | {table.dim} | {sum(w for w, _ in sizes) / 1e6:,.2f} "
                     f"| {sum(s for _, s in sizes) / 1e6:,.2f} | {table.sharding} | {','.join(map(str, ranks))} |")
    lines += ["", "| rank | weights + state MB | planner's estimate MB |", "|---:|---:|---:|"]
    for rank in range(plan.world_size):
        lines.append(f"| {rank} | {plan.rank_bytes(rank) / 1e6:,.2f} | {plan.planner_bytes[rank] / 1e6:,.2f} |")
    return "\n".join(lines)
