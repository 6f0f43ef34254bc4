"""The net every run trains: a recipe's embedding method and model (``CTRNet``), built with
one-line errors for sizes that cannot be allocated, the summary line a run's log begins
with, and the autocast a run's precision computes under. Imports no Lightning: the
distributed loop's ranks train it without.
"""

from __future__ import annotations

import dataclasses
import re
import traceback
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.embeddings.base import EmbeddingMethod
from ctr.embeddings.types import FeatureEmbeddings
from ctr.errors import RecipeError, reason
from ctr.host import memory_bytes
from ctr.models.base import CTRModel
from ctr.recipe import Recipe
from ctr.registry import EMBEDDINGS, MODELS
from ctr.schema import Schema
from ctr.train.optim import fused_optimizer

if TYPE_CHECKING:
    from ctr.datasets import Prepared


class CTRNet(nn.Module):
    """Embedding method + model: ``Batch`` → logits [B]."""

    def __init__(self, recipe: Recipe, schema: Schema):
        super().__init__()
        self.embedding: EmbeddingMethod = build_embedding(recipe, schema)
        if recipe.train.embedding_optimizer.fused:
            self.embedding.use_fused_update(fused_optimizer(recipe.train.embedding_optimizer))
        model, self.model_name = MODELS.get(recipe.model.name, "model.name").target, recipe.model.name
        try:
            with allocating("model", recipe.model):
                self.model: CTRModel = model(schema, self.embedding.layout, recipe.model)
        except ValueError as err:
            refuse_plugin_error(err, self.model_name, f"{_called(model)}(schema, layout, config)")
            raise
        if not isinstance(self.model, CTRModel):
            raise RecipeError(f"model.name: {recipe.model.name} built a {type(self.model).__name__}, not a "
                              "ctr.models.base.CTRModel (subclass it: the trainer calls its forward(batch, "
                              "embedded) and regularizer)")
        if recipe.trainer.compile:
            self.model.compile()  # in place: parameter names and checkpoints stay as without it

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits [B] and the regularization loss (a scalar)."""
        return self.score(batch, self.embedding(batch.sparse))

    def score(self, batch: Batch, embedded: FeatureEmbeddings) -> tuple[Tensor, Tensor]:
        """The model's part: logits [B] and the regularization loss, given the embeddings."""
        logits = self._of_model(self.model, "forward", batch, embedded)
        terms = {"embedding.method": self.embedding.regularizer(),
                 "model.name": self._of_model(self.model.regularizer, "regularizer", batch, embedded)}
        if not torch.compiler.is_exporting():
            self.check_logits(logits, batch.size)
            self.check_regularizers(terms)
        return logits, terms["embedding.method"] + terms["model.name"]

    def _of_model(self, call: Callable[..., Any], method: str, batch: Batch, embedded: FeatureEmbeddings) -> Any:
        """``call(batch, embedded)``, the model's ``method``; a plugin's ValueError in it is a
        one-line error naming the model (``refuse_plugin_error``)."""
        try:
            return call(batch, embedded)
        except ValueError as err:
            refuse_plugin_error(err, self.model_name, f"{type(self.model).__name__}.{method}(batch, embedded)")
            raise

    def check_trainable(self, loss: Tensor) -> None:
        """Refuses a training loss [] that no trainable parameter shapes (a plugin's forward
        returning a constant): its backward was torch's "does not require grad" traceback."""
        if not loss.requires_grad:
            raise RecipeError(f"model.name: {type(self.model).__name__} returned logits that no trainable parameter "
                              "shapes (nor does a regularizer): train.optimizer has nothing to learn; use the model's "
                              "parameters or the embeddings in forward")

    def check_logits(self, logits: Any, rows: int) -> None:
        """Refuses a model's output other than floating logits [B] (a plugin's [B, 1], or a
        ``squeeze()`` that leaves a batch of one row a scalar)."""
        if isinstance(logits, Tensor) and logits.is_floating_point() and tuple(logits.shape) == (rows,):
            return
        got = f"{logits.dtype} logits {list(logits.shape)}" if isinstance(logits, Tensor) else type(logits).__name__
        raise RecipeError(f"model.name: {type(self.model).__name__} returned {got} for {rows} row"
                          f"{'s' if rows != 1 else ''}; a model returns float logits [B] (squeeze(-1), not squeeze())")

    def check_regularizers(self, terms: dict[str, Any]) -> None:
        """Refuses a regularizer other than a float scalar tensor [] (a plugin's [3] ended in
        autograd's "grad can be implicitly created only for scalar outputs", None in a
        TypeError, a Python float trained without a word and without a gradient)."""
        for key, term in terms.items():
            if isinstance(term, Tensor) and term.is_floating_point() and term.dim() == 0:
                continue
            owner = type(self.embedding if key == "embedding.method" else self.model).__name__
            raise RecipeError(f"{key}: {owner}.regularizer() returned {_shown(term)}; a regularizer returns a float scalar "
                              "tensor [] (torch.zeros(()) for none)")


CTR_SOURCES = [(Path(__file__).parents[1] / part).resolve() for part in ("", "datasets", "embeddings", "kernels")]


def refuse_plugin_error(err: ValueError, name: str, call: str) -> None:
    """A RecipeError naming model ``name`` and ``call`` (its constructor, forward or
    regularizer) with what ``err`` says, when a plugin's model raised it (its own check of a
    value): not where a built-in model raised it, nor ctr's own code (a bug of ctr's, left to
    its traceback). The traceback is the error's cause, which ``CTR_DEBUG=1`` prints."""
    if MODELS.builtin(name) or _raised_in_ctr(err):
        return
    raise RecipeError(f"model.name: {name}: {call} raised {reason(err, typed=True)} (CTR_DEBUG=1 prints its "
                      "traceback)") from err


def _raised_in_ctr(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in ctr's own code."""
    frames = traceback.extract_tb(err.__traceback__)
    where = Path(frames[-1].filename).resolve() if frames else None
    return where is not None and any(where.is_relative_to(root) for root in CTR_SOURCES)


def _called(target: Any) -> str:
    """The name a registered class or factory is called by."""
    return getattr(target, "__name__", type(target).__name__)


def _shown(value: Any) -> str:
    """A returned value as a message names it: ``torch.float32 [3]``, ``None``, ``a float``."""
    if isinstance(value, Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return "None" if value is None else f"a {type(value).__name__}"


def summary(recipe: Recipe, net: CTRNet, prepared: Prepared) -> str:
    """The line a run's log begins with: its data's rows, its embedding's bytes, its model's size."""
    splits, embedding = prepared.report["splits"], net.embedding
    dense = sum(p.numel() for p in net.model.parameters())
    rows = ", ".join(f"{split} {splits[split]['rows']}" for split in ("train", "valid", "test"))
    return (f"data {prepared.root.name}: {rows} rows | embedding {recipe.embedding.method}: "
            f"{embedding.stored_bytes() / 1e6:.2f} MB (full {embedding.full_bytes() / 1e6:.2f} MB) | model "
            f"{recipe.model.name}: {dense} dense params")


def probabilities(logits: Tensor) -> Tensor:
    """Click probabilities of ``logits`` [B], in float64 [B] (the scores ``ctr predict``
    writes): float32 rounds the sigmoid of every logit above 16.6 to 1.0, float64 only above
    36.7. The metrics rank the logits themselves (``ctr.metrics``)."""
    return torch.sigmoid(logits.double())


def build_embedding(recipe: Recipe, schema: Schema) -> EmbeddingMethod:
    """The recipe's embedding method on ``schema``, refused where training refuses it: a
    budget the method cannot reach, a plugin's object that is no EmbeddingMethod, its wrong
    ``memory_bytes()`` (here, not after training), dense gradients of tables past
    ``embedding.dense_max_mb``."""
    target = EMBEDDINGS.get(recipe.embedding.method, "embedding.method").target
    with allocating("embedding", recipe.embedding):
        method = target(schema, recipe.embedding)
    if not isinstance(method, EmbeddingMethod):
        raise RecipeError(f"embedding.method: {recipe.embedding.method} built a {type(method).__name__}, not a "
                          "ctr.embeddings.base.EmbeddingMethod (subclass it: the network calls what it defines)")
    stored = method.stored_bytes()
    if recipe.embedding.gradients == "dense":
        check_dense_size(stored, recipe.embedding.dense_max_mb)
    return method


ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "Overflow when unpacking",
                       "Maximum allowed size exceeded")


@contextmanager
def allocating(section: str, config: Any) -> Iterator[None]:
    """Builds the recipe's ``section`` (``embedding`` or ``model``, of settings ``config``)
    inside: an allocation that fails (torch's or numpy's, or a size past int64) is a one-line
    RecipeError naming the section's largest size, not the allocator's traceback."""
    try:
        yield
    except (RuntimeError, MemoryError, TypeError, ValueError) as err:
        if not isinstance(err, MemoryError) and not any(text in str(err) for text in ALLOCATION_FAILURES):
            raise
        name = getattr(config, "method", None) or getattr(config, "name", section)
        raise RecipeError(f"{section}: the parameters of {name} cannot be allocated ({_asked(err)}); lower its "
                          f"sizes (the largest: {largest_size(section, config)})") from None


def _asked(err: BaseException) -> str:
    """What a failed allocation asked for, against this machine's memory."""
    if "Overflow" in str(err):
        return "a size past int64"
    memory = memory_bytes()
    asked = re.search(r"allocate (\d+) bytes", str(err))
    said = f"{int(asked.group(1)) / 2**30:.3g} GiB asked" if asked else "more than there is"
    return f"{said}; this machine has {memory / 2**30:.1f} GiB"


def largest_size(section: str, config: Any) -> str:
    """``<section>.<key> = <value>``: the key of ``config`` holding the largest integer (or
    list of integers: layer widths); the section alone when none does."""
    sizes = {}
    for field in dataclasses.fields(config) if dataclasses.is_dataclass(config) else ():
        value = getattr(config, field.name)
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            sizes[field.name] = (max(values), value)
    if not sizes:
        return section
    key = max(sizes, key=lambda name: sizes[name][0])
    return f"{section}.{key} = {sizes[key][1]}"


def check_dense_size(table_bytes: int, max_mb: float) -> None:
    """Refuses dense table gradients for tables above ``embedding.dense_max_mb``."""
    if table_bytes > max_mb * 1e6:
        raise RecipeError(
            f"embedding.gradients: dense gradients need tables of at most embedding.dense_max_mb = {max_mb:g} MB;"
            f" these hold {table_bytes / 1e6:.3g} MB (use gradients: sparse, or raise embedding.dense_max_mb)"
        )


def densify_gradients(params: list[nn.Parameter]) -> None:
    """Replaces each sparse gradient of ``params`` by its dense form [R, D] (every row, zeros
    where the batch touched none), which dense optimizers such as Adam step."""
    for param in params:
        if param.grad is not None and param.grad.is_sparse:
            param.grad = param.grad.to_dense()


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """What a step of a run of ``precision`` computes under, as Lightning's mixed precision
    sets it (bf16 autocast, fp16 on a GPU: Lightning takes ``16-mixed`` for bf16 on a CPU;
    nothing for ``32-true``): its scores are its evaluation's."""
    if precision == "32-true":
        return nullcontext()
    half = precision == "16-mixed" and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.half if half else torch.bfloat16, cache_enabled=False)
