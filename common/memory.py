"""Host memory that is freed must go back to the system: long runs on CPU otherwise grow until the OOM killer ends
a Ray worker, one of the complaints about peer systems."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = 4 << 20  # a decode step's logits at Qwen's vocabulary from 7 rows up; 1 MB slowed decoding by 40 %


def return_large_blocks_to_os(threshold: int = LARGE_BLOCK) -> bool:
    """Serve every allocation of `threshold` bytes or more with its own mmap, unmapped when freed.

    glibc raises its mmap threshold after the first large free (up to 32 MB), so the [rows, vocabulary] logits a
    decode step allocates and frees come from the heap from then on, and small tensors kept between steps pin them
    there: at Qwen's 151,936-token vocabulary resident memory grew by ~9 MB per decoded token. A fixed threshold turns
    that off; below 4 MB the page faults of fresh mappings cost more than they save (measured on the decode loop).
    Returns False where the C library is not glibc (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.info("mallopt(M_MMAP_THRESHOLD) unavailable: large freed blocks may stay resident")
    return ok
