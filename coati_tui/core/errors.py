"""One ``error_kind`` for every process, and the base of the errors that carry their own kind.

An error event's ``kind`` tells the app which hint to show: ``gpu_oom`` / ``cpu_oom`` (offer a smaller
preset), ``data`` (the file, line and field), ``config`` (the key), ``missing_dependency`` (the install
command), ``crash`` (the log tail). Our own errors say their kind with a class attribute; the trainer,
the generation worker and the CLI all classify through this one function.
"""

from __future__ import annotations

import importlib.metadata


class CoatiError(Exception):
    """An error whose message is fit to show a user as it is; ``kind`` classifies it."""

    kind = "crash"


class ConfigError(CoatiError, ValueError):
    """A setting, preset or checkpoint that does not fit this run; the message names the key or file."""

    kind = "config"


class MissingDependency(CoatiError, RuntimeError):
    """A package or CUDA that this run needs is missing; the message says how to get it."""

    kind = "missing_dependency"


def error_kind(exc: BaseException) -> str:
    own = getattr(exc, "kind", None)
    if isinstance(own, str) and own:
        return own
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "gpu_oom"
    if isinstance(exc, MemoryError):
        return "cpu_oom"
    if isinstance(exc, ImportError):
        return "missing_dependency"
    return "crash"


def transformers_major() -> int:
    """The installed transformers' major version (4 on the colossalai stack, 5 on the current one)."""
    return int(importlib.metadata.version("transformers").split(".")[0])
