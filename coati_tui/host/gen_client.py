"""The generation worker's client (no torch): the one place that starts ``python -m coati_tui.worker``,
writes its requests, reads its events and stops it. The CLI (`generate`), Chat and Rank all go through it.

The worker's stderr (library warnings: bitsandbytes writes one per 8-bit matmul on a CPU) is drained by a
thread into a log file from the moment the worker starts. Left in a pipe nobody reads, it fills the
pipe's 64 KiB and the worker blocks inside a warning while its client waits for the answer. The log keeps
the first ``LOG_LIMIT`` bytes (then the tail at the end); the last lines are kept in memory too, and an
``error`` event that reaches the client carries them in its ``log_tail``.

    client = GenerationClient("runs/sft-1/final", quant="4bit", log=Path("chats/worker.log"))
    for ev in client.events():          # loaded, token..., answer, error (see coati_tui.core.events)
        if ev["type"] == "loaded":
            client.generate([{"role": "user", "content": "hi"}], max_new_tokens=64)
        ...
    client.stop()
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from coati_tui.core import events, paths
from coati_tui.core.events import DTYPES, QUANTS
from coati_tui.core.procenv import child_env

__all__ = ["DTYPES", "QUANTS", "SAMPLING_KEYS", "GenerationClient", "default_log", "generate_request", "stop"]

WORKER_MODULE = "coati_tui.worker"
SAMPLING_KEYS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "seed",
    "stop",
    "min_new_tokens",
)
LOG_LIMIT = 16 * 2**20  # bytes of a worker's stderr kept in its log file; then only its tail, at the end
TAIL_BYTES = 32 * 1024  # the end of stderr kept in memory, for error messages


def default_log() -> Path:
    """Where a worker's stderr goes when the caller names no file: ``~/coati-tui/logs/worker.log``."""
    return paths.home() / "logs" / "worker.log"


def generate_request(rid: str, messages: Sequence[Mapping[str, str]] | str, **sampling: Any) -> dict[str, Any]:
    """A ``generate`` request (the worker's defaults fill what ``sampling`` leaves out). ``messages`` is a
    conversation (rendered by the model's chat template) or a plain prompt string (sent as it is)."""
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"not a sampling setting: {', '.join(unknown)} (have: {', '.join(SAMPLING_KEYS)})")
    text = {"prompt": messages} if isinstance(messages, str) else {"messages": [dict(m) for m in messages]}
    return {"op": "generate", "id": rid, **text, **sampling}


class GenerationClient:
    """One generation worker: a child process that loads ``model`` and answers requests, one at a time.

    Events are read by one consumer (``events()``, typically on a thread); requests may be sent from
    another. ``stop`` (or the module's ``stop`` for several at once) ends it."""

    def __init__(
        self,
        model: str,
        quant: str = "none",
        dtype: str = "auto",
        log: Path | str | None = None,
        trust_remote_code: bool = False,  # the worker may run the model folder's own code
    ) -> None:
        if quant not in QUANTS:
            raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.model, self.quant, self.dtype = model, quant, dtype
        self.log_path = Path(log) if log is not None else default_log()
        self._tail = b""
        self._lock = threading.Lock()  # the tail (drain thread vs readers) and stdin (several senders)
        self._ids = itertools.count(1)
        self._stopping = False
        log_file = self._open_log()
        read_end, write_end = os.pipe()
        try:
            self.proc: subprocess.Popen[str] = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, model, "--quant", quant, "--dtype", dtype]
                + (["--trust-remote-code"] if trust_remote_code else []),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=write_end,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=child_env(),
            )
        except BaseException:
            os.close(read_end)
            if log_file is not None:
                log_file.close()
            raise
        finally:
            os.close(write_end)  # the child holds its own copy: EOF comes when it exits
        pipe = os.fdopen(read_end, "rb", buffering=0)
        self._drain = threading.Thread(
            target=self._drain_stderr, args=(pipe, log_file), name=f"worker-stderr-{self.proc.pid}", daemon=True
        )
        self._drain.start()

    def __repr__(self) -> str:
        return f"GenerationClient({self.model!r}, quant={self.quant!r}, pid={self.proc.pid})"

    # ---- requests ------------------------------------------------------------------------------------
    def send(self, request: Mapping[str, Any]) -> bool:
        """Write one request; False when the worker is gone (its stdin closed)."""
        stdin = self.proc.stdin
        if stdin is None:
            return False
        with self._lock:
            try:
                stdin.write(json.dumps(request, ensure_ascii=False) + "\n")
                stdin.flush()
            except (OSError, ValueError):  # broken pipe, or closed: it is exiting
                return False
        return True

    def generate(self, messages: Sequence[Mapping[str, str]] | str, rid: str | None = None, **sampling: Any) -> str:
        """Ask for an answer to ``messages``; returns the request id its ``token``/``answer`` events carry."""
        rid = rid if rid is not None else f"r{next(self._ids)}"
        self.send(generate_request(rid, messages, **sampling))
        return rid

    def cancel(self, rid: str) -> bool:
        """Stop request ``rid``: its ``answer`` comes at once, with ``stop: cancelled``."""
        return self.send({"op": "cancel", "id": rid})

    def quit(self) -> bool:
        """Ask the worker to exit (it finishes nothing more); see ``stop`` for the deadline and the kill."""
        self._stopping = True
        return self.send({"op": "quit"})

    def stop(self, timeout: float = 5.0) -> None:
        stop(self, timeout=timeout)

    # ---- events --------------------------------------------------------------------------------------
    def events(self) -> Iterator[dict[str, Any]]:
        """The worker's events until its stdout ends. An ``error`` carries the end of stderr in its
        ``log_tail``; a worker that dies without saying why (killed, a crash in native code) ends with an
        ``error`` of kind crash naming its exit code, unless it was being stopped."""
        last: dict[str, Any] | None = None
        if self.proc.stdout is None:
            return
        for ev in events.follow(self.proc.stdout):
            if ev["type"] == "error" and not ev.get("log_tail"):
                ev = {**ev, "log_tail": self.stderr_tail()}
            last = ev
            yield ev
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # stdout closed but still running: not ours to judge
            return
        if code != 0 and not self._stopping and (last is None or last["type"] != "error"):
            yield events.make(
                "error",
                kind="crash",
                message=f"the generation worker exited with {code}",
                log_tail=self.stderr_tail(),
                exit_code=code,
            )

    # ---- the process ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self._stopping = True
        self.proc.kill()

    # ---- stderr --------------------------------------------------------------------------------------
    def stderr_tail(self, lines: int = 8) -> list[str]:
        """The last lines of the worker's stderr (a run of identical lines shown once, with its count).
        Once the worker has exited, waits a moment for the drain to reach the end."""
        if self.proc.poll() is not None:
            self._drain.join(timeout=2)
        with self._lock:
            text = self._tail.decode("utf-8", errors="replace")
        out: list[tuple[str, int]] = []
        for line in (x.rstrip() for x in text.splitlines()):
            if not line:
                continue
            if out and out[-1][0] == line:
                out[-1] = (line, out[-1][1] + 1)
            else:
                out.append((line, 1))
        return [line if n == 1 else f"{line} (x{n})" for line, n in out[-lines:]] if lines > 0 else []

    def _open_log(self) -> IO[bytes] | None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.log_path, "wb")
        except OSError:  # no log (a read-only home): stderr is still drained, its tail kept
            return None

    def _drain_stderr(self, pipe: IO[bytes], log: IO[bytes] | None) -> None:
        written = dropped = 0
        try:
            while True:
                chunk = pipe.read(65536)  # unbuffered: whatever is there, at most this much
                if not chunk:
                    break
                with self._lock:
                    self._tail = (self._tail + chunk)[-TAIL_BYTES:]
                if log is None:
                    continue
                keep = chunk[: max(0, LOG_LIMIT - written)]
                dropped += len(chunk) - len(keep)
                if keep:
                    log.write(keep)
                    log.flush()
                    written += len(keep)
        except (OSError, ValueError):
            pass
        finally:
            pipe.close()
            if log is not None:
                try:
                    if dropped:
                        with self._lock:
                            tail = self._tail
                        log.write(
                            f"\n[coati-tui: {dropped} more bytes of stderr; its last {len(tail)} follow]\n".encode()
                            + tail
                        )
                    log.close()
                except (OSError, ValueError):
                    pass


def stop(*workers: GenerationClient | subprocess.Popen[str] | None, timeout: float = 5.0) -> None:
    """Ask every running worker to quit, then wait for them against one shared deadline (two workers
    stopping take as long as one); a worker still running after it is killed. ``None`` and workers
    already gone are left be."""
    live = [w for w in workers if w is not None and w.poll() is None]
    for w in live:
        if isinstance(w, GenerationClient):
            w.quit()
        elif w.stdin is not None:
            try:
                w.stdin.write(json.dumps({"op": "quit"}) + "\n")
                w.stdin.flush()
            except (OSError, ValueError):  # its stdin is gone: it is exiting anyway
                pass
    deadline = time.monotonic() + timeout
    for w in live:
        try:
            w.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
