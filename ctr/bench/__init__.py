"""ctr.bench: benchmark runners (``ctr bench ...``)."""
