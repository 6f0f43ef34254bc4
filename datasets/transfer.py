"""Batches to an accelerator one step ahead: pinned host memory, asynchronous copies.

The loader's background thread builds each batch in page-locked (pinned) host memory; here
the copy of batch k + 1 to the device is queued on a side stream while step k computes, and
the compute stream waits for it only when batch k + 1 is used. Nothing blocks the host. On a
CPU device both are no-ops: batches pass through unchanged.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ctr.batch import Batch


def needs_pinning(device: torch.device) -> bool:
    """Whether batches bound for ``device`` are worth building in pinned memory."""
    return device.type == "cuda"


def ahead_on_device(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """``batches`` on ``device``, each copied while the previous one is in use.

    Args:
        batches: host batches (pinned for an asynchronous copy).
        device: the target; for a non-CUDA device the batches are yielded as they come.
    """
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)
    pending = _copy(next(batches, None), device, stream)
    while pending is not None:
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)
        for tensor in pending.tensors():  # allocated on the side stream, used on this one
            tensor.record_stream(current)
        ready, pending = pending, _copy(next(batches, None), device, stream)
        yield ready


def _copy(batch: Batch | None, device: torch.device, stream: torch.cuda.Stream) -> Batch | None:
    if batch is None:
        return None
    with torch.cuda.stream(stream):
        return batch.to(device, non_blocking=True)
