"""ctr.kernels: embedding kernels. Imports torch (and, lazily, triton) only."""
