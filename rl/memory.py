"""Peak memory of this process, as the learner and every rollout worker report it: RSS from the OS, and the
GPU memory PyTorch's caching allocator has held (None where there is no CUDA device in use)."""

from __future__ import annotations

import resource
import sys

GIB = 2**30


def peak_rss_bytes() -> int:
    """The process's peak resident set size (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def gpu_peak_bytes(cuda=None) -> int | None:
    """The most GPU memory PyTorch held on any device so far (max_memory_reserved), or None when CUDA is
    unavailable or this process never used it (asking would not create a CUDA context then either).
    `cuda`: torch.cuda, or a stand-in for tests."""
    if cuda is None:
        if "torch" not in sys.modules:  # never import torch just to learn that it was not used
            return None
        import torch

        cuda = torch.cuda
    if not cuda.is_available() or not cuda.is_initialized():
        return None
    return max((int(cuda.max_memory_reserved(device)) for device in range(cuda.device_count())), default=None)
