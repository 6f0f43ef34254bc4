"""ctr.bench: benchmarks that compare methods in one run (``ctr bench ...``)."""
