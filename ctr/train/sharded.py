"""The network of a distributed run: plain tables sharded by TorchRec, everything else under DDP.

A method whose storage is plain tables (``full``, every feature pooled by sum) is handed to
TorchRec as an ``EmbeddingBagCollection`` (``ShardedTables``: one table per vocabulary,
initialised from the method's rows) and the network is wrapped in TorchRec's
``DistributedModelParallel`` (DMP) with a plan from TorchRec's planner under the recipe's
``distributed`` constraints: DMP shards the tables (their optimizer fused into the backward
by FBGEMM) and puts the dense part under DDP. Any other method runs data-parallel: the whole
network (its tables replicated) under plain DDP, whose gradient average also covers the
tables' sparse gradients on gloo.

A checkpoint of either is read back into one process without a process group
(``load_distributed_weights``): a sharded network's tables are concatenated into the
method's buffer.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ctr.batch import JaggedFeatures
from ctr.embeddings.types import FeatureEmbeddings
from ctr.errors import RecipeError, UserError, raise_wrapped_signal, reason
from ctr.recipe import EmbeddingOptimizerConfig, Recipe
from ctr.train.plan import (
    SHARD_COLUMNS, SHARDABLE_METHODS, _hide_torchrec_notes, check_shard_columns, replicated_when_unshardable,
    sharded_types,
)

if TYPE_CHECKING:  # the Lightning module's file: ctr train's launcher checks a request without Lightning
    from ctr.train.net import CTRNet

TABLE_PREFIX = "embedding.ebc.embedding_bags."
# sharding types whose pooled output is reduce-scattered over the ranks: the backward's
# all-gather needs every rank's part of a batch to have the same number of rows on gloo
REDUCE_SCATTERED = frozenset({"row_wise", "table_row_wise", "grid_shard"})
ADAGRAD_EPS = 1e-10  # ctr's adagrad (torch's default); FBGEMM's default differs
ROWWISE_EPS = 1e-8  # ctr's rowwise_adagrad


class ShardedTables(nn.Module):
    """A plain-table method's tables as a TorchRec ``EmbeddingBagCollection`` that DMP shards:
    the same output as the method (pooled [B, F, D], sum pooling), rows copied from it.

    Args:
        method: the run's ``full`` method (its ``weight`` [R, D] holds every table's rows).

    ``equal_parts`` (set by ``shard`` when a table's pooled output is reduce-scattered, as a
    row-wise table's is) pads this rank's part of a batch, up to TorchRec only, to the
    largest part of any rank with rows of empty bags (no id: they look nothing up and no
    table row gets a gradient from them), and cuts them from the pooled output: the
    network, the loss and the metrics see this rank's rows only.

    Example:
        >>> net.embedding = ShardedTables(net.embedding)  # doctest: +SKIP
    """

    def __init__(self, method: nn.Module):
        super().__init__()
        from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
        from torchrec.modules.embedding_modules import EmbeddingBagCollection

        schema, self.dim = method.schema, method.dim
        self.feature_names, self.layout = method.feature_names, method.layout
        self.table_rows, self._bytes = method.table_rows, (method.stored_bytes(), method.full_bytes())
        features = {table: [f.spec.name for f in schema.sparse_features if f.table == table] for table in self.table_rows}
        configs = [EmbeddingBagConfig(name=table, embedding_dim=self.dim, num_embeddings=rows, feature_names=features[table],
                                      pooling=PoolingType.SUM) for table, rows in self.table_rows.items()]
        self.ebc = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
        start = 0
        with torch.no_grad():
            for table, rows in self.table_rows.items():
                self.ebc.embedding_bags[table].weight.copy_(method.weight[start : start + rows])
                start += rows
        self.equal_parts = False

    def forward(self, sparse: JaggedFeatures) -> FeatureEmbeddings:
        """Pooled [B, F, D] in the method's feature order (read by key: a sharded output
        comes in shard order)."""
        rows = sparse.batch_size
        kjt = padded_kjt(sparse, largest_part(rows, sparse.values.device)) if self.equal_parts else sparse.to_kjt()
        by_key = self.ebc(kjt).to_dict()
        pooled = torch.stack([by_key[name][:rows] for name in self.feature_names], 1)
        return FeatureEmbeddings(pooled=pooled, sequences={}, masks={})

    def regularizer(self) -> Tensor:
        return torch.zeros(())

    def stored_bytes(self) -> int:
        """The method's ``stored_bytes()`` (checked when it was read)."""
        return self._bytes[0]

    def full_bytes(self) -> int:
        return self._bytes[1]


def largest_part(rows: int, device: torch.device) -> int:
    """The most rows any rank's part of this batch holds (``rows`` on this rank; a collective)."""
    import torch.distributed as dist

    most = torch.tensor([rows], dtype=torch.int64, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def padded_kjt(sparse: JaggedFeatures, rows: int):  # noqa: ANN201 (a torchrec KeyedJaggedTensor)
    """``sparse`` [B samples] as a ``KeyedJaggedTensor`` of ``rows`` >= B samples: samples B
    to ``rows`` hold an empty bag of every feature (the same ids and weights)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    features, batch = len(sparse.keys), sparse.batch_size
    lengths = sparse.lengths().view(features, batch)
    lengths = torch.cat([lengths, lengths.new_zeros(features, rows - batch)], 1).reshape(-1)
    return KeyedJaggedTensor(keys=list(sparse.keys), values=sparse.values, weights=sparse.weights, lengths=lengths)


def check_request(recipe: Recipe) -> None:
    """What the recipe alone decides about a distributed run's tables (checked before any
    process starts): a sharding other than auto or data_parallel needs plain tables, a
    data-parallel method's tables take no fused update, sharded tables a rule FBGEMM fuses."""
    if recipe.embedding.method in SHARDABLE_METHODS:
        in_backward_optimizer(recipe.train.embedding_optimizer)
        check_shard_columns(recipe)
        return
    asked = sharded_types(recipe)
    if asked:
        raise RecipeError(f"distributed.sharding: {', '.join(sorted(asked))} needs plain tables (embedding.method "
                          f"{recipe.embedding.method} runs data-parallel); use auto or data_parallel")
    if recipe.train.embedding_optimizer.fused:
        raise RecipeError("train.embedding_optimizer.fused: a data-parallel run's replicas would each update their own "
                          "tables; set fused: false (DDP then averages the tables' gradients)")


def shardable(recipe: Recipe, net: CTRNet) -> bool:
    """Whether the run's tables shard through TorchRec: a plain-table method whose features
    are all pooled by sum, where TorchRec is installed (else the run is data-parallel)."""
    check_request(recipe)
    if recipe.embedding.method not in SHARDABLE_METHODS:
        return False
    method = net.embedding
    sums = not any(method._keeps_positions) and not any(method._mean_pooled)  # noqa: SLF001 (the method's pooling)
    if sums and importlib.util.find_spec("torchrec") is not None:
        return True
    why = ("this schema has sequences kept per position or mean-pooled" if not sums else
           "TorchRec is not installed here")
    if {recipe.distributed.sharding, *recipe.distributed.tables.values()} - {"auto", "data_parallel"}:
        raise RecipeError(f"distributed.sharding: the full method's tables shard with TorchRec when every feature is "
                          f"pooled by sum; {why}; use auto or data_parallel")
    if recipe.train.embedding_optimizer.fused:
        raise RecipeError(f"train.embedding_optimizer.fused: this run is data-parallel ({why}); set fused: false")
    return False


def in_backward_optimizer(config: EmbeddingOptimizerConfig) -> tuple[type[torch.optim.Optimizer], dict]:
    """The optimizer TorchRec fuses into the sharded tables' backward: the same rule and
    hyper-parameters as ctr's embedding optimizer ``config.name``."""
    rules = {"adagrad": ({"lr": config.lr, "eps": ADAGRAD_EPS}), "sgd": {"lr": config.lr},
             "rowwise_adagrad": {"lr": config.lr, "eps": ROWWISE_EPS}}
    if config.name not in rules:
        raise RecipeError(f"train.embedding_optimizer.name: sharded tables train with {', '.join(rules)}; "
                          f"got {config.name!r}")
    if config.weight_decay:
        raise RecipeError("train.embedding_optimizer.weight_decay: sharded tables are stepped without weight decay; "
                          "use 0")
    if config.name == "rowwise_adagrad":
        quiet_torchrec()  # before the import: it loads FBGEMM, which notes each library to the root logger
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        return RowWiseAdagrad, rules[config.name]
    return {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}[config.name], rules[config.name]


def table_constraints(recipe: Recipe, tables: list[str]) -> dict[str, str]:
    """Each table's sharding type the recipe fixes (``distributed.tables`` over
    ``distributed.sharding``); tables left to the planner are absent (data-parallel when
    ``embedding.dim`` is not a multiple of 4, which sharded tables need)."""
    unknown = sorted(set(recipe.distributed.tables) - set(tables))
    if unknown:
        raise RecipeError(f"distributed.tables.{unknown[0]}: no such table (tables: {', '.join(tables)})")
    chosen = {table: recipe.distributed.tables.get(table, recipe.distributed.sharding) for table in tables}
    chosen = replicated_when_unshardable(chosen, recipe.embedding.dim)
    return {table: kind for table, kind in chosen.items() if kind != "auto"}


def planner_constraints(fixed: dict[str, str], dim: int, world: int) -> dict:
    """TorchRec planner constraints of the tables whose type the recipe fixes (``fixed``,
    from ``table_constraints``); column-wise tables in shards of about D / world columns
    (``column_shard``; the planner's default minimum, 32 columns, keeps small tables whole)."""
    from torchrec.distributed.planner.types import ParameterConstraints

    return {table: ParameterConstraints(sharding_types=[kind],
                                        min_partition=column_shard(dim, world) if kind == "column_wise" else None)
            for table, kind in fixed.items()}


def column_shard(dim: int, world: int) -> int:
    """The planner's least column-wise shard width: the widest that splits D into at least
    ``world`` shards among the widths it takes (a multiple of 4 dividing D), else 4. The
    planner searches widths from there up to D, so a width that is not one of them (D / world
    = 6 of D = 12) left it a single shard of the whole table."""
    widths = [width for width in range(SHARD_COLUMNS, dim // world + 1, SHARD_COLUMNS) if dim % width == 0]
    return max(widths, default=SHARD_COLUMNS)


@dataclass
class Sharded:
    """A network under DMP: the module to call, its dense parameters, the weights of its
    data-parallel tables (replicated, DDP averages their dense gradients: the embedding
    optimizer steps them) and each table's sharding type. The sharded tables' optimizer runs
    inside the backward (FBGEMM)."""

    module: nn.Module
    dense: list[nn.Parameter]
    replicated_tables: list[nn.Parameter]
    plan: dict[str, str]  # table → "<sharding type> on <ranks>"


def shard(net: CTRNet, recipe: Recipe, device: torch.device) -> Sharded:
    """``net`` with its tables in ``ShardedTables`` under DMP, planned over the process group."""
    quiet_torchrec()
    import torch.distributed as dist
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    net.embedding = ShardedTables(net.embedding)
    rule, options = in_backward_optimizer(recipe.train.embedding_optimizer)
    apply_optimizer_in_backward(rule, net.embedding.ebc.parameters(), options)
    fixed = table_constraints(recipe, list(net.embedding.table_rows))
    world = dist.get_world_size()
    constraints = planner_constraints(fixed, recipe.embedding.dim, world)
    topology = Topology(world_size=world, compute_device=device.type,
                        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    sharders = [EmbeddingBagCollectionSharder()]
    if "row_wise" in fixed.values():  # TorchRec's planner proposes no row-wise shards of CPU tables
        plan = written_plan(net.embedding.ebc, fixed, world, device.type, sharders[0])
    else:
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        try:
            plan = planner.collective_plan(net, sharders, dist.GroupMember.WORLD)
        except Exception as err:  # the planner raises its own error types for plans it cannot make
            raise RecipeError(f"distributed.sharding: TorchRec's planner found no plan ({reason(err)})") from None
    types = {spec.sharding_type for spec in plan.plan["embedding.ebc"].values()}
    net.embedding.equal_parts = bool(types & REDUCE_SCATTERED)  # TorchRec needs equal parts there (its class doc)
    rows = {name: t.detach().clone() for name, t in net.state_dict().items() if name.startswith(TABLE_PREFIX)}
    module = DistributedModelParallel(net, device=device, plan=plan, sharders=sharders)
    _copy_rows(module, rows)
    stepped_in_backward = {id(p) for _, p in module.named_parameters()} - {
        id(p) for _, p in in_backward_optimizer_filter(module.named_parameters())}
    params = [(name, p) for name, p in module.named_parameters() if p.requires_grad and id(p) not in stepped_in_backward]
    dense = [p for name, p in params if not name.startswith("embedding.")]
    replicated = [p for name, p in params if name.startswith("embedding.")]  # data-parallel tables: dense gradients
    kinds = {table: f"{spec.sharding_type} on {','.join(map(str, sorted(set(spec.ranks))))}"
             for table, spec in plan.plan["embedding.ebc"].items()}
    return Sharded(module, dense, replicated, kinds)


def written_plan(ebc: nn.Module, fixed: dict[str, str], world: int, device_type: str, sharder):  # noqa: ANN001, ANN201
    """A plan written without the planner (when a table is row-wise): each table as ``fixed``
    says, tables left to the planner table-wise; table-wise tables go round the ranks,
    column-wise tables split into shards of ``column_shard`` columns dealt round the ranks (one
    per rank where D / world is such a width), row-wise tables into equal row blocks."""
    from torchrec.distributed.sharding_plan import (
        column_wise, construct_module_sharding_plan, data_parallel, row_wise, table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    kinds = {name: fixed.get(name, "table_wise") for name in ebc.embedding_bags}
    dim = ebc.embedding_bag_configs()[0].embedding_dim  # every table has the method's dim
    column_ranks = [shard % world for shard in range(dim // column_shard(dim, world))]
    make = {"row_wise": lambda i: row_wise(), "column_wise": lambda i: column_wise(ranks=column_ranks),
            "data_parallel": lambda i: data_parallel(), "table_wise": lambda i: table_wise(rank=i % world)}
    chosen = {name: make[kind](i) for i, (name, kind) in enumerate(kinds.items())}
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    module_plan = construct_module_sharding_plan(ebc, chosen, sharder=sharder, local_size=local, world_size=world,
                                                 device_type=device_type)
    return ShardingPlan({"embedding.ebc": module_plan})


def quiet_torchrec() -> None:
    """TorchRec's and FBGEMM's notes (kernel arguments, deprecations) are not shown: what
    matters of them, the plan, ``ctr train`` logs itself."""
    for name in ("torchrec", "torch.fx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().addFilter(_hide_torchrec_notes)
    for module in ("torchrec", "fbgemm_gpu", "torch.distributed", "torch.nn.parallel", "torch.fx", "torch.autograd"):
        warnings.filterwarnings("ignore", module=module)


def _copy_rows(module: nn.Module, rows: dict[str, Tensor]) -> None:
    """Writes the tables' initial rows [rows, D] into their shards (the sharded tables are
    built afresh: they would otherwise start from TorchRec's own initialisation)."""
    state = module.state_dict()
    with torch.no_grad():
        for name, full in rows.items():
            target = state[name]
            if not hasattr(target, "local_shards"):  # a data-parallel table: a whole replica
                target.copy_(full)
                continue
            for shard in target.local_shards():
                (r, c), (h, w) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r : r + h, c : c + w])
    module.load_state_dict(state)


def load_distributed_weights(net: CTRNet, path: Path, sharded: bool) -> None:
    """Loads the weights of a distributed run's checkpoint (a DCP folder) into ``net`` in
    this process, without a process group: a sharded run's tables [rows, D] are read whole
    and concatenated, in schema order, into the method's buffer."""
    import torch.distributed.checkpoint as dcp

    if not sharded:
        state = {"model": net.state_dict()}
        _dcp_load(dcp, state, path)
        net.load_state_dict(state["model"])
        return
    method = net.embedding
    tables = {TABLE_PREFIX + t + ".weight": torch.empty(rows, method.dim) for t, rows in method.table_rows.items()}
    state = {"model": {**tables, **{"model." + k: v for k, v in net.model.state_dict().items()}}}
    _dcp_load(dcp, state, path)
    with torch.no_grad():
        method.weight.copy_(torch.cat([state["model"][key] for key in tables]))


def _dcp_load(dcp, state: dict, path: Path) -> None:  # noqa: ANN001 (the module)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DCP says it assumes one process: it does
            dcp.load(state, checkpoint_id=str(path), no_dist=True)
    except (Exception, dcp.api.CheckpointException) as err:  # CheckpointException is a BaseException
        raise_wrapped_signal(err)
        raise UserError(f"{path}: does not fit this run's model ({reason(err)})") from None
