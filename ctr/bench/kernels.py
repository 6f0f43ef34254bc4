"""``ctr bench kernels``: embedding-bag kernels against a loop of ``nn.EmbeddingBag`` and FBGEMM.

Two suites, each measured in one run so that ratios compare like with like:

- ``lookup`` (default): the DLRM-like workload of FBGEMM's TBE benchmark (26 tables, D in
  {64, 128}, pooling factor 1 and 20, batch 65,536 on a GPU). For every implementation it
  times the forward and the backward with the optimizer update (row-wise Adagrad by
  default) and prints ms, GB/s with FBGEMM's byte formula (forward bytes =
  out_bytes·B·ΣD + w_bytes·B·ΣD·L; backward+update moves twice that) and the share of the
  device's peak memory bandwidth.
- ``step``: one embedding training step of a DeepFM-sized model (26 tables, B = 4096,
  D = 16, one id per field) with every way ``ctr`` can update a table — sparse gradient +
  an outside optimizer, or fused into the backward — and, for scale, the step of the
  DeepFM MLP (3×400, Adam) the embedding feeds.

Ids are uniform over each table's rows, or Zipf-distributed with ``alpha > 0``.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ctr.bench.kernel_impls import LR, Impl, Workload, fused_impl, loop_impl, sparse_grad_impl, tbe_impl, tbe_unavailable
from ctr.errors import UserError
from ctr.host import memory_bytes
from ctr.kernels.embedding_bag import Backend, BackendUnavailable, FusedOptimizer, available, check_fused

log = logging.getLogger("ctr.bench")

GPU_BATCH, CPU_BATCH = 65_536, 4096
# Peak memory bandwidth (GB/s, vendor specifications) by a substring of the device name.
# First match wins, so more specific names come first (GH200 before H200, A100 before A10).
PEAK_GBPS = {
    "GH200": 4000.0, "H200": 4800.0, "H100 NVL": 3900.0, "H100 PCIe": 2000.0, "H100": 3350.0,
    "B200": 8000.0, "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0,
    "A10G": 600.0, "A10": 600.0, "L40S": 864.0, "L40": 864.0, "L4": 300.0, "V100": 900.0,
    "T4": 320.0, "RTX 4090": 1008.0, "RTX 3090": 936.0, "MI300X": 5300.0, "MI250X": 3277.0,
}


@dataclass
class KernelBenchConfig:
    """Settings of ``ctr bench kernels`` (``None`` = the suite's default for the device).

    Args:
        suite: ``lookup`` (DLRM-like TBE workload) or ``step`` (DeepFM-sized training step).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        batch, tables, rows: batch size, number of tables, rows per table.
        dims: embedding dims to sweep; poolings: ids per bag to sweep.
        alpha: Zipf exponent of the ids (0 = uniform).
        optimizer: the fused / outside optimizer of the lookup suite.
        iters, warmup: timed and untimed iterations per measurement.
        peak_gbps: the device's peak memory bandwidth (default: the table by device name).
        seed: seed of the generated ids.
    """

    suite: str = "lookup"
    device: str = "auto"
    batch: int | None = None
    tables: int = 26
    rows: int = 100_000
    dims: list[int] | None = None
    poolings: list[int] | None = None
    alpha: float = 0.0
    optimizer: str = "rowwise_adagrad"
    iters: int = 10
    warmup: int = 2
    peak_gbps: float | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list)


def resolve(config: KernelBenchConfig) -> tuple[KernelBenchConfig, torch.device]:
    """Fills the suite's defaults and checks the values; errors name the flag."""
    if config.suite not in ("lookup", "step"):
        raise UserError(f"--suite: expected lookup or step, got {config.suite!r}")
    want = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
    device = torch.device("cpu" if want == "auto" else want)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    step = config.suite == "step"
    notes = list(config.notes)
    batch = config.batch
    if batch is None:
        batch = CPU_BATCH if step or device.type == "cpu" else GPU_BATCH
        if device.type == "cpu" and not step:
            notes.append(f"reduced size for CPU: batch {batch} (the GPU workload uses {GPU_BATCH:,}; set --batch)")
    config = replace(
        config, batch=batch, notes=notes,
        dims=config.dims or ([16] if step else [64, 128]), poolings=config.poolings or ([1] if step else [1, 20]),
    )
    for name in ("batch", "tables", "rows", "iters"):
        if getattr(config, name) < 1:
            raise UserError(f"--{name}: must be >= 1, got {getattr(config, name)}")
    for flag, sizes in (("--dims", config.dims), ("--pooling", config.poolings)):
        if min(sizes) < 1:
            raise UserError(f"{flag}: each must be >= 1, got {','.join(map(str, sizes))}")
        repeated = sorted({size for size in sizes if sizes.count(size) > 1})
        if repeated:
            raise UserError(f"{flag}: {', '.join(map(str, repeated))} given twice (its workload would be timed twice)")
    if not 0 <= config.alpha < float("inf"):
        raise UserError(f"--alpha: must be a finite number >= 0, got {config.alpha}")
    if config.warmup < 0:
        raise UserError(f"--warmup: must be >= 0, got {config.warmup}")
    if any(dim % 4 for dim in config.dims):
        raise UserError(f"--dims: {config.dims}: the FBGEMM tables compared take dims that are multiples of 4")
    if config.peak_gbps is not None and not 0 < config.peak_gbps < float("inf"):
        raise UserError(f"--peak-gbps: must be a finite number > 0, got {config.peak_gbps}")
    _check_fits(config, device)
    return config, device


def _check_fits(config: KernelBenchConfig, device: torch.device) -> None:
    """Refuses a workload whose tables (weights and an optimizer state of their size), ids
    and pooled outputs (with their gradients) need more than the device's memory."""
    dim, pooling = max(config.dims), max(config.poolings)
    needed = 8 * config.tables * (config.rows * dim + config.batch * (pooling + dim))
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
    else:
        memory = memory_bytes()
    if needed > memory:
        raise UserError(f"the largest workload (--tables {config.tables} --rows {config.rows} --dims {dim} --batch "
                        f"{config.batch} --pooling {pooling}) needs ~{needed / 2**30:.3g} GiB, more than this device's "
                        f"{memory / 2**30:.1f} GiB; lower the sizes")


def peak_bandwidth(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """(peak GB/s or None, where it came from) for ``device``."""
    if override is not None:
        return override, "--peak-gbps"
    if device.type != "cuda":
        return None, "unknown for CPUs (pass --peak-gbps)"
    name = torch.cuda.get_device_name(device)
    for key, gbps in PEAK_GBPS.items():
        if key in name:
            return gbps, f"table entry {key!r}"
    return None, f"{name!r} not in the table (pass --peak-gbps)"


def forward_bytes(work: Workload) -> float:
    """FBGEMM's forward byte count: out_bytes·B·ΣD + w_bytes·B·ΣD·L."""
    sum_d = work.tables * work.dim
    return 4 * work.batch * sum_d + 4 * work.batch * sum_d * work.pooling


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_impl(impl: Impl, grad: Tensor, iters: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(forward ms, forward+backward+update ms) per call, end to end: ``iters`` calls issued
    back to back with the device synchronized only before and after, as a training loop queues
    work (the host's time counts only where the device would wait for it). The backward's
    figure is their difference (``backward_ms``)."""

    def loop(count: int, with_backward: bool) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(count):
            out = impl.forward()
            if with_backward:
                impl.backward(out, grad)
        _sync(device)
        return time.perf_counter() - start

    loop(warmup, True)
    forward_s = loop(iters, False)
    both_s = loop(iters, True)
    return 1e3 * forward_s / iters, 1e3 * both_s / iters


def backward_ms(forward: float, both: float) -> float | None:
    """The backward+update's ms: the whole call's less the forward's; None when noise made the
    forward loop as slow as the whole one (no figure, rather than an absurd bandwidth)."""
    return both - forward if both > forward else None


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _measure(builders: list[tuple[str, Callable[[], Impl]]], work: Workload, config: KernelBenchConfig,
             device: torch.device) -> list[tuple[str, float, float]]:
    """Builds, times and frees each implementation in turn: [(name, fwd ms, fwd+bwd ms)]."""
    results = []
    grad = torch.randn(work.tables * work.batch, work.dim, device=device)
    tty = sys.stderr.isatty()
    for name, build in tqdm(builders, desc=f"D={work.dim} L={work.pooling}", disable=not tty, leave=False):
        impl = build()
        if not tty:
            log.info("timing %s (D=%d, L=%d)", name, work.dim, work.pooling)
        results.append((name, *time_impl(impl, grad.view(impl.grad_shape), config.iters, config.warmup, device)))
        del impl
        gc.collect()
    return results


def _header(config: KernelBenchConfig, device: torch.device, peak: tuple[float | None, str]) -> list[str]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    ids = "uniform" if config.alpha == 0 else f"Zipf alpha={config.alpha}"
    lines = [
        f"device: {name}; torch {torch.__version__}",
        f"tables {config.tables} x {config.rows:,} rows, batch {config.batch:,}, fp32 weights, ids {ids}, "
        f"{config.iters} timed iterations after {config.warmup} warm-up",
        f"peak memory bandwidth: {f'{peak[0]:.0f} GB/s' if peak[0] else 'n/a'} ({peak[1]})",
    ]
    return lines + [f"note: {note}" for note in config.notes]


def _fused_backends(rule: str, device: torch.device) -> list[Backend]:
    """Backends that run ``rule`` fused on ``device`` (Triton only on a GPU: the CPU interpreter
    is a correctness tool, far too slow to time)."""
    backends = []
    for backend in Backend:
        if available(backend, device) is not None or (backend is Backend.TRITON and device.type != "cuda"):
            continue
        try:
            check_fused(backend, FusedOptimizer(rule, lr=LR))
        except BackendUnavailable:
            continue
        backends.append(backend)
    return backends


def _lookup_builders(work: Workload, config: KernelBenchConfig, device: torch.device):
    rule = config.optimizer
    builders = [(f"nn.EmbeddingBag loop + {rule}", lambda: loop_impl(work, rule, device))]
    for backend in _fused_backends(rule, device):
        builders.append((f"ctr {backend.value}, fused {rule}", lambda b=backend: fused_impl(work, rule, b, device)))
        if backend is Backend.TRITON:
            builders.append((f"ctr {backend.value}, fused {rule}, per-table sort",
                             lambda b=backend: fused_impl(work, rule, b, device, per_table_sort=True)))
    if tbe_unavailable(rule, device) is None:
        builders.append((f"fbgemm TBE module, {rule}", lambda: tbe_impl(work, rule, device)))
    return builders


def run_lookup(config: KernelBenchConfig, device: torch.device) -> str:
    """The DLRM-like grid; returns the report (markdown tables)."""
    peak = peak_bandwidth(device, config.peak_gbps)
    lines = _header(config, device, peak)
    for dim in config.dims:
        for pooling in config.poolings:
            work = Workload(config.tables, config.rows, config.batch, dim, pooling, config.alpha, config.seed)
            results = _measure(_lookup_builders(work, config, device), work, config, device)
            lines += ["", f"D={dim}, L={pooling}:", *_lookup_table(results, work, peak[0])]
    return "\n".join(lines)


def _lookup_table(results: list[tuple[str, float, float]], work: Workload, peak: float | None) -> list[str]:
    fwd_bytes = forward_bytes(work)
    loop_total = results[0][2]
    pct = lambda gbps: f"{100 * gbps / peak:.1f}%" if peak and gbps else "n/a"  # noqa: E731
    rows = [
        "| implementation | fwd ms | fwd GB/s | fwd % peak | bwd+upd ms | bwd+upd GB/s | bwd+upd % peak "
        "| fwd+bwd+upd ms | vs loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fwd, both in results:
        bwd = backward_ms(fwd, both)
        fwd_gbps, bwd_gbps = fwd_bytes / fwd / 1e6, None if bwd is None else 2 * fwd_bytes / bwd / 1e6
        rows.append(
            f"| {name} | {fwd:.2f} | {fwd_gbps:.1f} | {pct(fwd_gbps)} | {_ms(bwd)} | "
            f"{'n/a' if bwd_gbps is None else f'{bwd_gbps:.1f}'} | {pct(bwd_gbps)} | {both:.2f} | {loop_total / both:.2f}x |"
        )
    return rows


def _step_builders(work: Workload, device: torch.device):
    builders = [
        ("sparse grad + adagrad (default)", lambda: sparse_grad_impl(work, "adagrad", device)),
        ("sparse grad + rowwise_adagrad", lambda: sparse_grad_impl(work, "rowwise_adagrad", device)),
    ]
    for rule in ("adagrad", "rowwise_adagrad"):
        for backend in _fused_backends(rule, device):
            builders.append((f"fused {rule} ({backend.value})", lambda r=rule, b=backend: fused_impl(work, r, b, device)))
    return builders


def _mlp_step_ms(work: Workload, config: KernelBenchConfig, device: torch.device) -> float:
    """One step (forward, backward, Adam) of DeepFM's MLP (3×400) over the embeddings."""
    mlp = nn.Sequential(
        nn.Linear(work.tables * work.dim + 13, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
        nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 1),
    ).to(device)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    x = torch.randn(work.batch, work.tables * work.dim + 13, device=device)
    total = 0.0
    for i in range(config.warmup + config.iters):
        _sync(device)
        start = time.perf_counter()
        mlp(x).sum().backward()
        opt.step()
        opt.zero_grad()
        _sync(device)
        total += (time.perf_counter() - start) if i >= config.warmup else 0.0
    return 1e3 * total / config.iters


def run_step(config: KernelBenchConfig, device: torch.device) -> str:
    """The DeepFM-sized training-step comparison; returns the report."""
    lines = _header(config, device, (None, "not used by this suite"))
    for dim in config.dims:
        for pooling in config.poolings:
            work = Workload(config.tables, config.rows, config.batch, dim, pooling, config.alpha, config.seed)
            results = _measure(_step_builders(work, device), work, config, device)
            mlp = _mlp_step_ms(work, config, device)
            base = results[0][2]
            lines += ["", f"D={dim}, L={pooling}: embedding forward + backward + update per step",
                      "| update | fwd ms | bwd+upd ms | step ms | speed-up vs default | share of step with MLP |",
                      "|---|---:|---:|---:|---:|---:|"]
            for name, fwd, total in results:
                lines.append(f"| {name} | {fwd:.2f} | {_ms(backward_ms(fwd, total))} | {total:.2f} | {base / total:.2f}x "
                             f"| {100 * total / (total + mlp):.0f}% |")
            lines.append(f"DeepFM MLP (3x400, Adam) step alone: {mlp:.2f} ms")
    return "\n".join(lines)


def run(config: KernelBenchConfig) -> str:
    """Runs the chosen suite and returns its report."""
    config, device = resolve(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse invariant checks are implicitly disabled.*")
        return run_lookup(config, device) if config.suite == "lookup" else run_step(config, device)
