"""Which allocator this process runs on, and, under glibc, its mmap threshold by phase of a step.

``core/procenv.py`` preloads mimalloc where it is installed; ``describe()`` says what the process got (the
start event carries it). The rest of this module serves glibc's fallback, where procenv starts the trainer
with ``MALLOC_MMAP_THRESHOLD_`` at 128 KiB, so every tensor over that is a fresh mmap: RSS follows the live
tensors (what the planner predicts), but each one's pages fault in zero-filled, and on a CPU that is a fifth
of a small model's step. A threshold of a few MiB reuses the heap's freed blocks instead and is ~1.3x
faster, but the forward's saved activations, interleaved with its temporaries, fragment the heap: RSS went
50-70% over the live tensors (bench/allocator.py).

The backward pass is where most allocations are (two gradients for each saved tensor) and where the saved
activations are only being freed: its transient blocks can come from the heap and be reused without the
forward's long-lived ones in between. So ``backward()`` raises the threshold (``COATI_TUI_BACKWARD_MMAP``,
4 MiB) around each backward pass and puts it back after, returning the heap's free pages to the kernel
(``malloc_trim``) before the next forward. Off where the threshold is the user's own (procenv only sets this
variable when it set the threshold), where it is 0, under mimalloc, and off glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

from coati_tui.core.procenv import BACKWARD_MMAP as ENV

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class Phases:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        self.backward_threshold = int(env.get(ENV, "0") or 0)
        self.forward_threshold = int(env.get("MALLOC_MMAP_THRESHOLD_", "0") or 0)
        self.libc = _glibc() if self.backward_threshold > 0 and self.forward_threshold > 0 else None

    @contextlib.contextmanager
    def backward(self) -> Iterator[None]:
        """Around a backward pass."""
        if self.libc is None:
            yield
            return
        self.libc.mallopt(M_MMAP_THRESHOLD, self.backward_threshold)
        try:
            yield
        finally:
            self.libc.mallopt(M_MMAP_THRESHOLD, self.forward_threshold)
            self.libc.malloc_trim(0)


def describe() -> str:
    """The allocator in this process, as the start event reports it: "mimalloc" when its library is
    mapped, else "glibc" with the settings procenv (or the user) gave it."""
    try:
        with open("/proc/self/maps") as f:
            if "libmimalloc" in f.read():
                return "mimalloc"
    except OSError:  # not Linux: the platform's own
        return "system"
    keys = ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", ENV)
    settings = ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ)
    return f"glibc ({settings})" if settings else "glibc"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return None
    return libc


PHASES = Phases()
