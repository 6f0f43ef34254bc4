"""Facts about the machine this process runs on, for checks of sizes a user asked for."""

import os


def memory_bytes() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where there is none)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def launched() -> bool:
    """Whether this process is one rank of a launched group (torchrun's or ctr's)."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1
