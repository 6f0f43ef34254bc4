"""Tile shapes of the Triton embedding-bag kernels on a GPU, against the device's copy bandwidth.

For the DLRM-like workload of ``ctr bench kernels`` (26 tables x 100,000 rows, batch 65,536,
D in {64, 128}, L in {1, 20}, fp32, uniform ids) it times, with ``triton.testing.do_bench``
(median of CUDA-event timings), the pooling forward and the fused row-wise Adagrad backward
kernel (ids already sorted; the sort is timed apart) at every tile shape of a grid (rows per
program x warps), each forward checked against torch's embedding bag on the same table
(itself checked once against float64 on the CPU). The current choice (``triton._blocks``)
is marked. A device-to-device copy gives the bandwidth the kernels can hope for (bytes read
+ written over time).

    python benchmarks/triton_tiles.py            # needs CUDA and triton
"""

from __future__ import annotations

import sys

import torch
import triton
from triton.testing import do_bench

from ctr.bench.kernel_impls import Workload
from ctr.bench.kernels import forward_bytes
from ctr.kernels.embedding_bag import FusedOptimizer, reference
from ctr.kernels.embedding_bag import triton as tri

ROWS_PER_PROGRAM = (8, 16, 32, 64)
WARPS = (2, 4, 8)
MAX_PER_THREAD = 128  # fp32 accumulator elements per thread; larger tiles spill


def copy_gbps() -> float:
    """Bytes read + written per second by a 4 GiB device-to-device copy."""
    src = torch.randn(2**29, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * 4 / ms / 1e6


def error(out: torch.Tensor, exact: torch.Tensor) -> float:
    """Max |out - exact| (exact: float64 on the CPU)."""
    return (out.cpu().double() - exact).abs().max().item()


def sweep(work: Workload) -> list[tuple[int, int, float, float, float]]:
    """[(rows per program, warps, forward ms, backward+update kernel ms, forward max |error|)]
    over the grid."""
    weight = torch.randn(work.tables * work.rows, work.dim, device="cuda") * 0.01
    indices, offsets = work.table_batched(torch.device("cuda"))
    grad = torch.randn(offsets.numel() - 1, work.dim, device="cuda")
    opt = FusedOptimizer("rowwise_adagrad", lr=0.01)
    state = opt.init_state(weight)
    ids = reference.sort_ids(indices, offsets, None, "sum", weight.shape[0])
    block_d = triton.next_power_of_2(work.dim)
    exact = reference.embedding_bag(weight.cpu().double(), indices.cpu(), offsets.cpu())
    print(f"torch CUDA embedding_bag max |error| vs float64 CPU: "
          f"{error(reference.embedding_bag(weight, indices, offsets), exact):.2e}")
    results, default = [], tri._blocks
    try:
        for rows in ROWS_PER_PROGRAM:
            for warps in WARPS:
                if rows * block_d > MAX_PER_THREAD * 32 * warps:
                    continue
                tri._blocks = lambda dim, r=rows, w=warps: (r, block_d, w)
                expected = reference.embedding_bag(weight, indices, offsets)  # the table as the updates left it
                err = (tri.forward(weight, indices, offsets, None, "sum") - expected).abs().max().item()
                fwd = do_bench(lambda: tri.forward(weight, indices, offsets, None, "sum"), return_mode="median")
                bwd = do_bench(lambda: tri._launch_backward(grad, ids, weight, 3, None, state, opt, 0.01),
                               return_mode="median")
                results.append((rows, warps, fwd, bwd, err))
    finally:
        tri._blocks = default
    return results


def sort_ms(work: Workload) -> float:
    """The torch sort + segment bookkeeping the backward runs before its kernel."""
    indices, offsets = work.table_batched(torch.device("cuda"))
    rows = work.tables * work.rows
    return do_bench(lambda: reference.sort_ids(indices, offsets, None, "sum", rows), return_mode="median")


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    ceiling = copy_gbps()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; "
          f"device-to-device copy {ceiling:.0f} GB/s (read + write)")
    summary = []
    for dim in (64, 128):
        for pooling in (1, 20):
            work = Workload(26, 100_000, 65_536, dim, pooling)
            fbytes = forward_bytes(work)
            current = tri._blocks(dim)
            print(f"\nD={dim} L={pooling} (current: {current[0]} rows/program, {current[2]} warps)")
            print("| rows/program | warps | fwd ms | fwd GB/s | bwd+upd kernel ms | bwd+upd GB/s | fwd max abs error |")
            print("|---:|---:|---:|---:|---:|---:|---:|")
            results = sweep(work)
            for rows, warps, fwd, bwd, err in results:
                mark = " *" if (rows, warps) == (current[0], current[2]) else ""
                print(f"| {rows}{mark} | {warps} | {fwd:.3f} | {fbytes / fwd / 1e6:.0f} | {bwd:.3f} "
                      f"| {2 * fbytes / bwd / 1e6:.0f} | {err:.1e} |")
            best_f = min(results, key=lambda r: r[2])
            best_b = min(results, key=lambda r: r[3])
            now = next(r for r in results if (r[0], r[1]) == (current[0], current[2]))
            summary.append((dim, pooling, now, best_f, best_b, sort_ms(work)))
    print("\n| D | L | fwd ms now | best fwd (rows, warps, ms) | bwd kernel ms now | best bwd (rows, warps, ms) | sort ms |")
    print("|---:|---:|---:|---|---:|---|---:|")
    for dim, pooling, now, bf, bb, sort in summary:
        print(f"| {dim} | {pooling} | {now[2]:.3f} | {bf[0]}, {bf[1]}, {bf[2]:.3f} | {now[3]:.3f} "
              f"| {bb[0]}, {bb[1]}, {bb[3]:.3f} | {sort:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
