"""One writer per run folder: the trainer that trains it holds ``RUN_DIR/lock`` (``fcntl.flock``).

A second trainer on the same folder (two resumes, or a CLI resume while the app's trainer runs) is
refused with a message naming the first one's pid and command line. The kernel drops the lock when
its process dies, however it dies, so a lock file left by a dead process is simply taken over; the pid
written in it only names the holder. No torch here.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from coati_tui.core.errors import ConfigError

LOCK_NAME = "lock"


class RunLocked(ConfigError):
    """Another live process writes this run folder."""


@dataclass
class Holder:
    pid: int | None
    command: str  # "" where it cannot be read

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        return f"{who} ({self.command})" if self.command else who


class RunLock:
    """Held while the trainer runs (``release`` or the process's end drops it)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def acquire(run_dir: str | os.PathLike[str]) -> RunLock:
    """Take the run folder's lock and write our pid in it; RunLocked names the live holder."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLocked(_refusal(Path(run_dir), _read_holder(path))) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(fd, path)


def holder(run_dir: str | os.PathLike[str]) -> Holder | None:
    """Who holds the run folder's lock now (without taking it), or None when no live process does."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path)
    finally:
        os.close(fd)  # a shared lock we got is dropped at once
    return None


def check_free(run_dir: str | os.PathLike[str]) -> None:
    """RunLocked (naming the holder) when a live process writes ``run_dir``."""
    found = holder(run_dir)
    if found is not None:
        raise RunLocked(_refusal(Path(run_dir), found))


def _refusal(run_dir: Path, found: Holder) -> str:
    return (
        f"{run_dir} is being trained by {found.describe()}; one writer per run folder. Wait for it, "
        f"or stop it first (Ctrl-C, or `kill -INT {found.pid or 'PID'}`: it checkpoints), then resume"
    )


def _read_holder(path: Path) -> Holder:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return Holder(None, "")
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    except OSError:
        command = ""
    return Holder(pid, command)
