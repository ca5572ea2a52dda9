"""The environment of heavy child processes (trainer, generation worker, benchmarks' children).

``MALLOC_MMAP_THRESHOLD_``: glibc's malloc raises its mmap threshold after each large free, so the
blocks of a layer's transient activations are then carved from the heap and kept after they are
freed. Measured on CPU (bench/planner_accuracy.py): a reward-model forward under gradient
checkpointing held 49 MiB of live tensors but grew RSS by 585 MiB; with the threshold pinned at
128 KiB, RSS grew by 50 MiB. Pinning it keeps large tensors in mmap'd blocks that go back to the OS.
"""

from __future__ import annotations

import os

CHILD_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "TOKENIZERS_PARALLELISM": "false",
}


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with the child settings; the user's own win."""
    env = dict(os.environ if base is None else base)
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
