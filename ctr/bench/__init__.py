"""ctr.bench: benchmark runners (compression tables, kernels)."""
