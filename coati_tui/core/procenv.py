"""The environment of heavy child processes (trainer, generation worker, benchmarks' children).

Their allocator decides much of a CPU step's speed, and whether RSS follows the live tensors (what the
planner predicts). Issue 15's setup (a 12M Llama, LoRA q/k/v/o, batch 8 x 256, one thread), one run of
``bench/allocator.py --only 7,9,10`` (bench/RESULTS.md has the rest):

    allocator                                    SFT tok/s  peak RSS    RM tok/s  peak RSS
    glibc: 128 KiB threshold + huge pages,
           4 MiB in backward (shipped before)         1307   891 MiB        1114  1137 MiB
    mimalloc, its defaults (shipped)                  1491   879 MiB        1359  1213 MiB
    mimalloc, MADV_FREE purge                         1626   882 MiB        1474  1236 MiB
    (planner)                                               1295 MiB              1697 MiB

- **mimalloc** (``cmeel-mimalloc``, a dependency on Linux x86_64 / aarch64: the library alone, in a
  wheel), preloaded with ``LD_PRELOAD``, with its own defaults. Its size-segregated pages hand a freed
  block to the next tensor of its size without the zero-filled page faults of a fresh mmap, and without
  glibc's heap fragmenting around the forward's long-lived activations; a page left free for 10 ms is
  given back, so RSS tracks the live tensors (the 60M planner rows stay within +20% / -5%). Its
  ``MIMALLOC_PURGE_DECOMMITS=0`` (give pages back with ``MADV_FREE``) is 4-9% faster still, but those
  pages count in RSS until the kernel takes them: the planner's SFT rows then read 5-6% low. Not shipped;
  a user who wants it sets it (every ``MIMALLOC_*`` variable of theirs applies).
- **glibc**, where mimalloc is not installed (another platform), the user asked for it
  (``COATI_TUI_ALLOCATOR=glibc``), or the user tuned glibc themselves (``MALLOC_MMAP_THRESHOLD_``):
  ``MALLOC_MMAP_THRESHOLD_`` pinned at 128 KiB makes every tensor over that a fresh mmap, so RSS tracks the
  live tensors (glibc's dynamic threshold rises after each large free and carves later activations from a
  heap it keeps: a reward-model forward held 49 MiB of tensors but grew RSS by 585 MiB);
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) asks for those mmaps as 2 MiB pages, one fault
  where there were 512 (1.37x); ``COATI_TUI_BACKWARD_MMAP`` (4 MiB, only where the threshold is ours): the
  trainer raises the threshold around each backward pass, whose transient blocks then reuse the heap, and
  trims it after (trainer/malloc.py; 1.06x -> 1.19x TRL).

The user's own settings always win (``child_env``): an ``LD_PRELOAD`` of their own is kept as it is, and
so is every variable they set. The trainer's start event names the allocator it got (trainer/malloc.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHILD_ENV = {"TOKENIZERS_PARALLELISM": "false"}

# glibc's malloc, where mimalloc is not used
GLIBC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
# the trainer's mmap threshold during backward passes (trainer/malloc.py); 0 = as the rest of the step
BACKWARD_MMAP, BACKWARD_MMAP_THRESHOLD = "COATI_TUI_BACKWARD_MMAP", str(4 * 2**20)

ALLOCATOR = "COATI_TUI_ALLOCATOR"  # mimalloc (the default where it is installed) | glibc


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with the child settings; the user's own win."""
    env = dict(os.environ if base is None else base)
    library = mimalloc_library() if allocator(env) == "mimalloc" else None
    if library and env.get("LD_PRELOAD", library) == library:  # a preload of the user's own stays
        env["LD_PRELOAD"] = library  # with mimalloc's own defaults (a user's MIMALLOC_* variables apply)
    else:
        if "MALLOC_MMAP_THRESHOLD_" not in env:  # ours, not the user's: the trainer may move it by phase
            env.setdefault(BACKWARD_MMAP, BACKWARD_MMAP_THRESHOLD)
        for key, value in GLIBC_ENV.items():
            env.setdefault(key, value)
    for key, value in CHILD_ENV.items():
        env.setdefault(key, value)
    env.update(extra)
    return env


def allocator(env: dict[str, str]) -> str:
    """The allocator a child started with ``env`` should get: "mimalloc" unless the environment says
    otherwise (``COATI_TUI_ALLOCATOR``, or glibc's threshold set by hand)."""
    asked = env.get(ALLOCATOR, "").strip().lower()
    if asked in ("glibc", "mimalloc"):
        return asked
    return "glibc" if "MALLOC_MMAP_THRESHOLD_" in env else "mimalloc"


def mimalloc_library() -> str | None:
    """The path of the mimalloc shared library that ``cmeel-mimalloc`` installs, or None (not installed,
    not Linux, or a path ``LD_PRELOAD`` cannot hold: it splits on spaces and colons)."""
    if not sys.platform.startswith("linux"):
        return None
    for entry in sys.path:
        lib = Path(entry or ".") / "cmeel.prefix" / "lib" / "libmimalloc.so"
        if lib.is_file():
            path = str(lib.resolve())
            return None if any(c in path for c in " :") else path
    return None


def free_port() -> int:
    """A free TCP port on the loopback interface (torchrun's rendezvous, a one-process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank() -> int:
    """This process's rank under torchrun / ``colossalai run`` (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    """How many processes the launcher started (1 when launched alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
