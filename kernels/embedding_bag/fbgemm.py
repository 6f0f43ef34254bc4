"""FBGEMM backend: fbgemm_gpu's table-batched embedding (TBE) CPU operators.

Our one weight buffer [R, D] with global rows is handed to FBGEMM as a single table
(``T = 1``; the per-table row offsets are already folded into the indices), so the whole
collection is still one operator call. Used ops (fbgemm-gpu-cpu 1.8.0):

- forward: ``fbgemm::split_embedding_codegen_forward_cpu`` (sum/mean, per-sample weights,
  fp32 and fp16 weights; FBGEMM's CPU build has no bf16 kernel);
- fused backward: ``fbgemm::split_embedding_backward_codegen_{sgd,adagrad,rowwise_adagrad}_cpu``,
  which apply the update to the weights and optimizer state in place. FBGEMM's CPU build has
  no standalone Adam backward, so fused Adam raises ``BackendUnavailable``;
- gradient for an outside optimizer: FBGEMM's only gradient output is a dense table-sized
  tensor, so this backend computes the sparse gradient with the reference sorted reduction.

Only CPU tensors: fbgemm_gpu's CUDA build exposes different operators (and the GPU machine
this project targets has no fbgemm); use the Triton backend on CUDA.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from ctr.kernels.embedding_bag import BackendUnavailable, reference
from ctr.kernels.optim.rules import FusedOptimizer, Rule
from ctr.kernels.embedding_bag.reference import Lookup

POOLING = {"sum": 0, "mean": 1}
OUTPUT_DTYPE = {torch.float32: 0, torch.float16: 1}  # fbgemm's SparseType codes
HOST_PLACEMENT = 3  # fbgemm's EmbeddingLocation.HOST


@functools.lru_cache(maxsize=1)
def load_error() -> str | None:
    """``None`` when fbgemm_gpu's TBE CPU ops load, else why they do not."""
    logging.disable(logging.INFO)  # fbgemm_gpu logs one line per library it loads
    try:
        import fbgemm_gpu  # noqa: F401
        import fbgemm_gpu.split_table_batched_embeddings_ops_training  # noqa: F401
    except Exception as err:  # a wheel built for another torch fails in many ways
        return f"fbgemm_gpu does not import: {type(err).__name__}: {err}"
    finally:
        logging.disable(logging.NOTSET)
    if not hasattr(torch.ops.fbgemm, "split_embedding_codegen_forward_cpu"):
        return "fbgemm_gpu has no split_embedding_codegen_forward_cpu operator"
    return None


def _ops() -> object:
    """``torch.ops.fbgemm`` once fbgemm_gpu's operators are loaded."""
    reason = load_error()
    if reason is not None:
        raise BackendUnavailable(f"kernel backend 'fbgemm' unavailable: {reason}")
    return torch.ops.fbgemm


def _geometry(weight: Tensor) -> dict[str, Tensor | int]:
    rows, dim = weight.shape
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    i64 = lambda *v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return {
        "placements": i32(HOST_PLACEMENT), "weights_offsets": i64(0), "D_offsets": i32(0, dim),
        "hash_size_cumsum": i64(0, rows), "hash_bits": max(int(rows).bit_length(), 1),
    }


def _check(weight: Tensor) -> None:
    if weight.device.type != "cpu":
        raise BackendUnavailable("the fbgemm backend runs on CPU tensors only (use triton on CUDA)")
    if weight.dtype not in OUTPUT_DTYPE:
        raise BackendUnavailable(f"fbgemm_gpu's CPU kernels do not support {weight.dtype} weights")
    if not weight.is_contiguous():
        raise BackendUnavailable("the fbgemm backend needs a contiguous weight")


def forward(weight: Tensor, indices: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, mode: str) -> Tensor:
    """Pooled lookup by FBGEMM's TBE forward: [num_bags, D] in ``weight``'s dtype.

    FBGEMM's CPU forward checks the ids' range but reads the ids and per-sample weights
    wherever the offsets point, so the bags are checked first (``reference.check_bags``);
    the fused backward reads the inputs this forward checked.
    """
    reference.check_mode(mode, per_sample_weights)
    reference.check_bags(indices, offsets, per_sample_weights)
    weight = weight.detach()
    _check(weight)
    geo = _geometry(weight)
    psw = None if per_sample_weights is None else per_sample_weights.detach().float().contiguous()
    return _ops().split_embedding_codegen_forward_cpu(
        weight.view(-1), geo["weights_offsets"], geo["D_offsets"], weight.shape[1], geo["hash_size_cumsum"],
        indices.long().contiguous(), offsets.long().contiguous(), POOLING[mode], psw, OUTPUT_DTYPE[weight.dtype],
    )


def segment_grad(grad_out: Tensor, lookup: Lookup) -> Tensor:
    """Gradient of each unique row [U, D] fp32 (reference sorted reduction; see module doc)."""
    return reference.segment_grad(grad_out, lookup)


def backward_update(
    grad_out: Tensor,
    weight: Tensor,
    state: dict[str, Tensor],
    lookup: Lookup,
    opt: FusedOptimizer,
    lr: float | None = None,
) -> None:
    """FBGEMM's fused backward: gradient and ``opt`` update of the touched rows, in place.

    Args:
        grad_out: [num_bags, D] gradient of the pooled output.
        weight: [R, D] contiguous CPU table, updated in place.
        state: ``opt.init_state(weight)``, updated in place.
        lookup: the forward's inputs.
        opt: ``sgd``, ``adagrad`` or ``rowwise_adagrad``.
        lr: this step's learning rate (a schedule's); ``None``: ``opt.lr``.
    """
    if opt.rule is Rule.ADAM:
        raise BackendUnavailable("fbgemm_gpu's CPU build has no fused Adam backward"
                                 " (use the torch or triton backend)")
    _check(weight)
    geo = _geometry(weight)
    lr = torch.tensor(opt.begin_step(state, lr), dtype=torch.float32)
    psw = lookup.per_sample_weights
    psw = None if psw is None else psw.detach().float().contiguous()
    common = (
        grad_out.float().contiguous(), weight.view(-1), geo["placements"], geo["weights_offsets"], geo["D_offsets"],
        weight.shape[1], geo["hash_size_cumsum"], geo["hash_bits"], lookup.indices.long().contiguous(),
        lookup.offsets.long().contiguous(), POOLING[lookup.mode], psw, False,
    )
    ops = _ops()
    if opt.rule is Rule.SGD:
        ops.split_embedding_backward_codegen_sgd_cpu(*common, lr)
        return
    momentum = state["sum"].view(-1)
    op = ops.split_embedding_backward_codegen_adagrad_cpu if opt.rule is Rule.ADAGRAD else ops.split_embedding_backward_codegen_rowwise_adagrad_cpu
    op(*common, momentum, geo["placements"], geo["weights_offsets"], lr, eps=opt.eps)
