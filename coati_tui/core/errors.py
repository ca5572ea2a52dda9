"""One ``error_kind`` for every process, and the base of the errors that carry their own kind.

An error event's ``kind`` tells the app which hint to show: ``gpu_oom`` / ``cpu_oom`` (offer a smaller
preset), ``data`` (the file, line and field), ``config`` (the key), ``missing_dependency`` (the install
command), ``disk_full`` (the path being written, what it needs: free space, then resume), ``crash`` (the
log tail). A full disk reaches us as ``OSError`` ENOSPC / EDQUOT, as EFBIG under a file-size limit (the
trainer ignores SIGXFSZ so the write fails instead of killing it), or inside torch's and safetensors'
own messages. Our own errors say their kind with a class attribute; the trainer,
the generation worker and the CLI all classify through this one function.
"""

from __future__ import annotations

import errno
import importlib.metadata
import shutil
from pathlib import Path

from coati_tui.core.units import fmt_bytes


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
    if disk_full(exc):
        return "disk_full"
    return "crash"


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save's C++ stream drops the errno: "basic_ios::clear: iostream error", then "unexpected pos" as it closes
DISK_WORDS = ("no space left on device", "disk quota exceeded", "file too large", "failed writing", "iostream error")


def disk_full(exc: BaseException) -> bool:
    """Did a write fail for want of room? ``exc`` or an error it was raised from."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain: __cause__ / __context__
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in DISK_ERRNOS:
            return True
        if any(word in str(seen).lower() for word in DISK_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full_message(exc: BaseException, writing: Path | None, like: Path | None = None) -> str:
    """``writing``: the folder the failed write went to; ``like``: a finished folder of the same kind (the
    last checkpoint), whose size is what the write needs."""
    where = writing or Path(getattr(exc, "filename", None) or ".")
    probe = where if where.exists() else where.parent
    free = shutil.disk_usage(probe).free if probe.exists() else 0
    need = f"; it needs about {fmt_bytes(folder_bytes(like))} (the size of {like})" if like else ""
    limit = "; a file over the size this process may write (`ulimit -f`) fails so too" if _efbig(exc) else ""
    return f"disk full writing {where} ({type(exc).__name__}: {exc}); {fmt_bytes(free)} free there{need}{limit}"


def _efbig(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.EFBIG) or "file too large" in str(exc).lower()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def transformers_major() -> int:
    """The installed transformers' major version (4 on the colossalai stack, 5 on the current one)."""
    return int(importlib.metadata.version("transformers").split(".")[0])
