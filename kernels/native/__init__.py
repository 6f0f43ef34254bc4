"""The build and loading of the ops' CPU kernels (C with OpenMP), shared by every op folder.

Some CPU work of a training step is a chain of memory-bound torch ops, each one a full pass
over a [B, F, D] tensor; a C loop does the chain in one pass. Each op keeps its C source and
its ctypes calls beside its torch reference (``kernels/fm/``, ``kernels/optim/``,
``kernels/embedding_bag/``); this module compiles every source into one library and decides,
once per process, whether it is available: no C compiler, a failed build, or
``CTR_NATIVE=0`` turn it off, and each op then runs its torch reference. The decision is
logged once.

The shared library is built once per source version into ``$CTR_CACHE`` (default
``~/.cache/ctr``)/native/<hash>/ (compiled to a temporary name, then renamed, so concurrent
first uses never load a half-written file). Built with ``-O3`` and no ``-march`` flag, so the
cache stays valid on any CPU of the same architecture.

Example:
    >>> lib = library()  # doctest: +SKIP
    >>> lib is None or hasattr(lib, "fm_forward")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

ENV_SWITCH = "CTR_NATIVE"
NOT_COALESCED = 3  # adagrad_sparse's status for rows that are not strictly increasing
SOURCES = ("fm/fm.c", "optim/rows.c")  # relative to kernels/
FLAGS = ("-O3", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")
I64, F32P, INT = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.c_int
I64P, F32 = ctypes.POINTER(ctypes.c_int64), ctypes.c_float
SIGNATURES = {
    "adagrad_rows": (I64P, I64P, I64P, F32P, I64, F32P, I64, I64, I64, I64, F32P, F32P, F32, F32, INT),
    "adagrad_single": (I64P, I64, I64, F32P, I64, I64, I64, I64, F32P, F32P, F32, F32, INT),
    "segment_sum_single": (I64P, I64, I64, F32P, I64, I64, I64, I64, I64P, F32P, I64P, INT),
    "adagrad_sparse": (I64P, F32P, I64, I64, I64, F32P, F32P, F32, F32, INT),
    "fm_forward": (F32P, I64, I64, F32P, F32P, F32P, I64, I64, I64, I64, F32P, F32P, F32P, INT),
    "fm_backward": (F32P, F32P, F32P, F32P, F32P, I64, I64, I64, I64, F32P, F32P, F32P, F32P, INT),
}


def cache_dir() -> Path:
    """Where built libraries live: ``$CTR_CACHE`` or ``~/.cache/ctr``, then ``native/``. An
    OSError names what set it (``$CTR_CACHE: <file>: not a folder``, as the data cache's error
    does) when it or a folder above is a file: nothing can be built there."""
    if os.environ.get("CTR_CACHE"):
        root, where = Path(os.environ["CTR_CACHE"]), "$CTR_CACHE"
    else:
        root, where = Path.home() / ".cache" / "ctr", "the default cache ($CTR_CACHE not set)"
    folder = root / "native"
    there = next(p for p in (folder, *folder.parents) if p.exists())  # "/" or "." at the latest
    if not there.is_dir():
        raise NotADirectoryError(f"{where}: {there}: not a folder")
    return folder


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernels, or ``None`` (then callers use their torch twins); built at most once
    per process and per source version."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        log.info("%s=0: ctr's native CPU kernels are off (torch ops instead)", ENV_SWITCH)
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.info("no C compiler found: ctr's native CPU kernels are off (torch ops instead)")
        return None
    try:
        lib = ctypes.CDLL(str(_build(Path(compiler))))
    except subprocess.CalledProcessError as error:
        log.warning("ctr's native CPU kernels are off (torch ops instead): %s failed:\n%s", compiler, error.stderr)
        return None
    except OSError as error:
        log.warning("ctr's native CPU kernels are off (torch ops instead): %s", error)
        return None
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, INT
    log.debug("ctr's native CPU kernels are on (%s)", lib._name)
    return lib


def _build(compiler: Path) -> Path:
    """Compiles the sources into the cache unless the same build is already there."""
    here = Path(__file__).parent.parent
    digest = hashlib.sha256(" ".join((str(compiler), *FLAGS)).encode())
    for name in SOURCES:
        digest.update((here / name).read_bytes())
    target = cache_dir() / digest.hexdigest()[:16] / "libctr_native.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        command = [str(compiler), *FLAGS, *(str(here / name) for name in SOURCES), "-o", str(partial)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def usable(*tensors: Tensor, rows: tuple[Tensor, ...] = ()) -> bool:
    """Whether the kernels can take ``tensors`` (fp32, contiguous, on the CPU) and ``rows``
    (the same, but only their last dimension need be contiguous), and the library is built."""
    def fp32_cpu(t: Tensor) -> bool:
        return t.dtype == torch.float32 and t.device.type == "cpu"

    return (
        all(fp32_cpu(t) and t.is_contiguous() for t in tensors)
        and all(fp32_cpu(t) and t.stride(-1) == 1 for t in rows)
        and library() is not None
    )


def pointer(tensor: Tensor | None) -> ctypes._Pointer | None:
    """A pointer to ``tensor``'s first element (fp32 or int64), or NULL for ``None``."""
    if tensor is None:
        return None
    return ctypes.cast(tensor.data_ptr(), I64P if tensor.dtype == torch.int64 else F32P)


def check(status: int, kernel: str) -> None:
    """Raises for a kernel's non-zero status: 1 = no scratch memory, 2 = a row out of range
    (``NOT_COALESCED`` is for the caller of ``adagrad_sparse`` to handle)."""
    if status == 1:
        raise MemoryError(f"native kernel {kernel} could not allocate its scratch memory")
    if status == 2:
        raise IndexError(f"native kernel {kernel}: an id's row is outside the table")
    if status != 0:
        raise RuntimeError(f"native kernel {kernel} failed with status {status}")
