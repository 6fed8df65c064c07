"""How a training process takes CPU memory: large freed blocks go back to the OS instead of piling up.

glibc serves a block from its heap unless it is larger than the mmap threshold, and that threshold is
dynamic: each freed mapped block raises it, up to 32 MiB. A training step allocates and frees many
activations and gradients between 4 and 32 MiB; after the first step they all come from the heap, whose
freed pieces are too scattered to be returned or reused for the next step's different sizes, so the
process's resident memory climbs a few hundred MiB per step above what is live. A fixed threshold of
4 MiB gives each such block its own mapping, returned at free. Fresh mappings fault their pages in again
each step; PyTorch's transparent-huge-page allocation (`THP_MEM_ALLOC_ENABLE`: 2 MiB pages for blocks of
2 MiB and more) makes that 512 times fewer faults.

Measured on `configs/ferplus_paper.yaml` at batch 32 (2 cores, 4 SAM steps and a 256-image evaluation;
`python benchmarks/bench_poster.py --phases '' --loop`): peak RSS 3287 MiB with both settings against
4121 MiB with them off (`THP_MEM_ALLOC_ENABLE=0`), at the same speed (0.955 and 0.941 images/s); the
threshold alone, on small pages, in another such run (`/usr/bin/time` maximum RSS): 3203 against
4292 MiB, but 14% slower (0.98 against 1.14 images/s). See the README's
"grefel_paper against POSTER++".

Only the huge-page switch has to come before torch's first allocation (PyTorch reads it once), so the
training commands call `use_training_allocator()` before importing torch; a process that imported torch
already keeps glibc's defaults, as does one whose environment turns the huge pages off; a
`MALLOC_MMAP_THRESHOLD_` in the environment wins over this one.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD_BYTES = 4 << 20
# The same two settings as environment variables, for a child process started fresh (glibc reads
# MALLOC_MMAP_THRESHOLD_ at start-up, as mallopt(M_MMAP_THRESHOLD) sets it later).
TRAINING_ALLOCATOR_ENV = {"THP_MEM_ALLOC_ENABLE": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES)}
_M_MMAP_THRESHOLD = -3      # glibc malloc.h


def use_training_allocator() -> bool:
    """Apply both settings to this process if it runs glibc and has not loaded torch yet; True if applied."""
    if not sys.platform.startswith("linux") or "torch" in sys.modules:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # not glibc (e.g. musl): its allocator, its defaults
        return False
    if os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1") != "1":
        return False                          # small pages: the threshold would cost a fault per 4 KiB
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return True
