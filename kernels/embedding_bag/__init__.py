"""Table-batched embedding bag with a backend dispatch.

Resolution order: explicit request → ``$CTR_KERNEL_BACKEND`` → auto (a CUDA tensor and an
importable triton → ``triton``, else ``torch``). An explicit request for an unavailable
backend raises; nothing falls back silently. Triton and fbgemm_gpu are imported lazily.

Two entry points:
- ``embedding_bag``: pooled lookup; the table gets a sparse gradient (only touched rows)
  for an outside sparse optimizer.
- ``fused_embedding_bag``: pooled lookup whose backward updates the table in place with a
  fused optimizer rule (``FusedOptimizer``), building no gradient for it.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import os
from types import ModuleType

import torch
from torch import Tensor

from ctr.kernels.embedding_bag import native, reference
from ctr.kernels.embedding_bag.reference import bag_rows, grouped
from ctr.kernels.optim import FusedOptimizer, Rule

ENV_VAR = "CTR_KERNEL_BACKEND"

__all__ = [
    "Backend", "BackendUnavailable", "FusedOptimizer", "Rule", "available", "bag_rows", "check_fused", "embedding_bag",
    "fused_embedding_bag", "grouped", "resolve_backend", "single_id_row_grads", "single_ids_fit",
]


def single_ids_fit(weight: Tensor, num_ids: int) -> bool:
    """Whether ``single_id_row_grads`` runs (natively) for ``num_ids`` single-id bags of ``weight``."""
    return native.single_ids_fit(weight, num_ids)


def single_id_row_grads(grad_out: Tensor, rows: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """Each distinct row's gradient for bags of one id each (see ``native.single_id_row_grads``)."""
    return native.single_id_row_grads(grad_out, rows, num_rows)


class Backend(str, enum.Enum):
    """Kernel implementations of the embedding bag."""

    TORCH = "torch"
    TRITON = "triton"
    FBGEMM = "fbgemm"


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here."""


def available(backend: Backend, device: torch.device) -> str | None:
    """``None`` when ``backend`` can run on ``device``, else the reason it cannot."""
    if backend is Backend.TORCH:
        return None
    if backend is Backend.TRITON:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            return "triton needs a CUDA device (or TRITON_INTERPRET=1 for the CPU interpreter)"
        return None
    if importlib.util.find_spec("fbgemm_gpu") is None:
        return "fbgemm_gpu is not installed"
    if device.type != "cpu":
        return "the fbgemm backend runs fbgemm_gpu's CPU operators only (use triton on CUDA)"
    return _module(Backend.FBGEMM).load_error()


def resolve_backend(requested: str | Backend | None, device: torch.device | str) -> Backend:
    """Picks the backend once: explicit request, then the environment, then auto."""
    device = torch.device(device)
    choice = requested or os.environ.get(ENV_VAR) or None
    if choice is None:
        auto = Backend.TRITON if device.type == "cuda" else Backend.TORCH
        return auto if available(auto, device) is None else Backend.TORCH
    try:
        backend = Backend(choice)
    except ValueError:
        names = ", ".join(b.value for b in Backend)
        raise BackendUnavailable(f"unknown kernel backend {choice!r} (choose from {names})") from None
    reason = available(backend, device)
    if reason is not None:
        raise BackendUnavailable(f"kernel backend {backend.value!r} requested but unavailable: {reason}")
    return backend


def check_fused(requested: str | Backend | None, optimizer: FusedOptimizer) -> None:
    """Raises ``BackendUnavailable`` when the requested backend cannot apply ``optimizer`` fused.

    Args:
        requested: a backend, a recipe's ``embedding.backend`` or ``None`` (then
            ``$CTR_KERNEL_BACKEND``; automatic choices support every rule).
        optimizer: the fused rule.
    """
    choice = requested or os.environ.get(ENV_VAR) or None
    if choice in (Backend.FBGEMM, Backend.FBGEMM.value) and optimizer.rule is Rule.ADAM:
        raise BackendUnavailable(
            "kernel backend 'fbgemm' has no fused sparse_adam (fbgemm_gpu's CPU build lacks an Adam"
            " backward); use the torch or triton backend"
        )


def _module(backend: Backend) -> ModuleType:
    """The module implementing ``backend`` (imports triton / fbgemm only when asked); the
    torch backend is the reference with the CPU's C kernels where they apply."""
    if backend is Backend.TORCH:
        return native
    return importlib.import_module(f"ctr.kernels.embedding_bag.{backend.value}")


def embedding_bag(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None = None,
    mode: str = "sum",
    backend: Backend = Backend.TORCH,
) -> Tensor:
    """Pools table rows per bag with the chosen backend; see ``reference.embedding_bag``.

    Args:
        weight: [R, D] every table in one buffer (fp32, fp16 or bf16).
        indices: [N] global rows; offsets: int64 [num_bags + 1], ``offsets[0] == 0``.
        per_sample_weights: optional [N] (sum mode only).
        mode: ``sum`` or ``mean``.
        backend: a resolved ``Backend``.

    Returns:
        [num_bags, D] in ``weight``'s dtype; ``weight`` gets a sparse gradient.

    While ``torch.export`` traces, every backend takes the torch reference (plain torch ops
    that export; an exported program holds no Triton or FBGEMM kernel). The torch backend
    pools an fp16/bf16 table that needs a gradient in fp32 and builds the table's sparse
    gradient itself (torch's sparse gradient cannot flow back through the cast).
    """
    plain = weight.dtype == torch.float32 or not weight.requires_grad
    if (backend is Backend.TORCH and plain) or torch.compiler.is_exporting():
        return reference.embedding_bag(weight, indices, offsets, per_sample_weights, mode)
    from ctr.kernels.embedding_bag.autograd import PooledLookup

    impl = _module(backend)
    wants_grad = weight.requires_grad or (per_sample_weights is not None and per_sample_weights.requires_grad)
    if not (torch.is_grad_enabled() and wants_grad):
        return impl.forward(weight, indices, offsets, per_sample_weights, mode)
    return PooledLookup.apply(weight, indices, offsets, per_sample_weights, mode, impl)


def fused_embedding_bag(
    weight: Tensor,
    state: dict[str, Tensor],
    indices: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: str,
    optimizer: FusedOptimizer,
    backend: Backend = Backend.TORCH,
    update: bool = True,
    groups: int = 1,
    single: bool = False,
    table_segments: int = 1,
    lr: float | None = None,
    check_offsets: bool = True,
) -> Tensor:
    """Pooled lookup whose backward applies ``optimizer`` to the touched rows of ``weight``.

    Args:
        weight: [R, D] table (a buffer: it receives no gradient), updated in place.
        state: ``optimizer.init_state(weight)``, updated in place.
        indices, offsets, per_sample_weights, mode: as in ``embedding_bag``.
        optimizer: the fused rule and hyper-parameters.
        backend: a resolved ``Backend``.
        update: ``False`` (evaluation) only looks up.
        groups: return the bags as ``groups`` equal groups, [groups, num_bags / groups, D]
            (e.g. [F, B, D] for one bag per feature and sample): a transposed or concatenated
            view of that output then reaches the backward without a copy into bag order.
        single: every bag holds exactly one id (``offsets`` is ``0, 1, ..., N``, checked
            when updating: ``reference.check_single``): the backward's sort skips the
            lengths, and on CPU the native Adagrad groups the ids with a counting sort
            (``native.counting_sort_fits``).
        table_segments: as ``reference.Lookup.table_segments`` (the caller's guarantee).
        lr: the learning rate of this step's update (a schedule's current lr); ``None``:
            ``optimizer.lr``.
        check_offsets: ``False`` skips the check of ``single``'s offsets (a few kernel
            launches a step) for a caller whose offsets are ``torch.arange(N + 1)`` by
            construction (the caller's guarantee, as ``table_segments``).

    Returns:
        [num_bags, D] (or [groups, num_bags / groups, D]) in ``weight``'s dtype; it requires
        grad when ``update`` and grad mode are on, so that its backward runs the update.
    """
    from ctr.kernels.embedding_bag.autograd import FusedLookup

    check_fused(backend, optimizer)
    impl = _module(backend)
    if not (update and torch.is_grad_enabled()):
        pooled = impl.forward(weight, indices, offsets, per_sample_weights, mode)
        return grouped(pooled, groups)
    if single and check_offsets:
        reference.check_single(indices, offsets)
    trigger = torch.empty(0, device=weight.device, requires_grad=True)
    return FusedLookup.apply(
        trigger, weight, indices, offsets, per_sample_weights, mode, impl, optimizer, state, groups,
        reference.Lookup(indices, offsets, per_sample_weights, mode, weight.shape[0], single, table_segments), lr,
    )
