"""The environment of heavy child processes (trainer, generation worker, benchmarks' children).

``MALLOC_MMAP_THRESHOLD_``: glibc's malloc raises its mmap threshold after each large free (up to 32 MiB),
so the blocks of a layer's transient activations are then carved from the heap and kept after they are
freed: a reward-model forward under gradient checkpointing held 49 MiB of live tensors but grew RSS by
585 MiB (bench/planner_accuracy.py). Pinned at 128 KiB, RSS tracks the live tensors, which is what the
planner predicts; the price was that every large tensor is a fresh mmap whose 4 KiB pages fault in one by
one, zero-filled. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35; ignored by older ones and
where the kernel's transparent huge pages are "never") asks for those mmaps as 2 MiB pages: one fault
where there were 512. Issue 15, bench/allocator.py (a 12M Llama, LoRA q/k/v/o, batch 8 x 256, SFT):

    setting                      tokens/s   peak RSS   (planner: 1295 MiB)
    threshold 128 KiB                 764    779 MiB
    128 KiB + huge pages             1050    784 MiB   (1.37x at the same memory: shipped)
    threshold 1 MiB + huge pages     1028    785 MiB
    threshold 4 MiB                  1349   1133 MiB   (faster, but RSS drifts from the live tensors:
                                                        the 60M Llama's SFT then ran 28% above its plan)

Both are set. (Huge pages were dropped once, blamed for CI's resume test drifting 3e-4; the cause was the
CPU-peak matmul drawing from the global RNG on a machine's first run, fixed in trainer/measure.py; with huge
pages the resume and precomputed-reference tests repeat their runs within 1e-4.)
``COATI_TUI_BACKWARD_MMAP`` (4 MiB, set only where the threshold above is ours): the trainer raises the
threshold to it around each backward pass (trainer/malloc.py), whose transient blocks then reuse the heap
without the forward's long-lived activations between them, and trims the heap after: SFT 1.06x -> 1.19x
TRL's speed on issue 15's small setup, the 60M planner rows unchanged (bench/RESULTS.md).
The user's own settings always win (``child_env``).
"""

from __future__ import annotations

import os

CHILD_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    "TOKENIZERS_PARALLELISM": "false",
}

# the trainer's mmap threshold during backward passes (trainer/malloc.py); 0 = as the rest of the step
BACKWARD_MMAP, BACKWARD_MMAP_THRESHOLD = "COATI_TUI_BACKWARD_MMAP", str(4 * 2**20)


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with the child settings; the user's own win."""
    env = dict(os.environ if base is None else base)
    if "MALLOC_MMAP_THRESHOLD_" not in env:  # ours, not the user's: the trainer may move it by phase
        env.setdefault(BACKWARD_MMAP, BACKWARD_MMAP_THRESHOLD)
    for key, value in CHILD_ENV.items():
        env.setdefault(key, value)
    env.update(extra)
    return env


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
