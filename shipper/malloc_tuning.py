"""glibc malloc settings for a process that frees its encoded chunks right after sending them.

Each chunk the pipeline reads becomes a few hundred encoded records (1-2 KiB bytes objects,
above Python's small-object allocator) and a joined request body, all freed together once
sent. With glibc's defaults the heap top above 128 KiB is handed back to the kernel on every
such free, and the next chunk faults the same pages in again: measured at about 2 us per
KubeArmor record and 1 us per line across the benchmark mix. Keeping up to
``TRIM_THRESHOLD_BYTES`` of free heap, and serving blocks under ``MMAP_THRESHOLD_BYTES`` from
the heap, makes the next chunk reuse warm memory. 8 MiB is the smallest that kept the gain in
``benchmarks/bench_pipeline.py`` (4 MiB did not); 16 MiB bought no more CPU and cost 6-17 MB
more peak RSS in ``bench_es.py`` and ``es_outage.py``.

``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` in the environment win, as glibc
documents; on a C library without ``mallopt`` (musl, macOS) nothing changes.
"""

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 8 << 20
MMAP_THRESHOLD_BYTES = 1 << 20


def tune_malloc() -> bool:
    """Apply the settings above unless the environment sets them; True when applied."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: malloc left at its defaults")
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
