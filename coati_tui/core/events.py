"""The event protocol between a trainer (or any heavy child) and whoever watches it: one schema.

Each event is one JSON object per line: ``{"v": 1, "type": "step", "time": 1732350000.1, ...}``.
The trainer appends every event to ``events.jsonl`` in its run folder and prints it on stdout; the UI
and the CLI read the same lines, and a past run's plots are redrawn from its file.

``REQUIRED`` lists the fields each type must carry; any other field is allowed (stages add their own
metrics, e.g. the reward model's accuracy). Bump ``VERSION`` when a required field changes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Iterator

VERSION = 1

REQUIRED: dict[str, tuple[str, ...]] = {
    # resolved config, sizes, strategy; total_steps = optimizer steps of the whole run
    "start": ("stage", "config", "params", "trainable_params", "strategy", "device", "precision", "total_steps"),
    # one per optimizer step; memory fields are bytes (gpu_* absent on CPU)
    "step": ("step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "samples_per_s", "eta_s", "cpu_rss"),
    "eval": ("step", "metrics"),
    "checkpoint": ("step", "path"),
    "sample": ("step", "prompt", "response"),
    "log": ("level", "message"),
    "done": ("status", "step"),  # status: completed | cancelled
    "error": ("kind", "message", "log_tail"),
    # the generation worker (coati_tui.worker): a model loaded, streamed pieces, a finished answer
    "loaded": ("model", "device", "dtype", "quant", "memory_bytes", "load_s"),
    "token": ("id", "text"),
    "answer": ("id", "text", "tokens", "tokens_per_s", "stop"),  # stop: end_token | max_new_tokens | cancelled
}
ERROR_KINDS = ("gpu_oom", "cpu_oom", "data", "config", "missing_dependency", "crash")
DONE_STATUSES = ("completed", "cancelled")


class EventError(ValueError):
    pass


def make(type_: str, **fields) -> dict:
    """A checked event dict."""
    if type_ not in REQUIRED:
        raise EventError(f"unknown event type {type_!r}")
    missing = [k for k in REQUIRED[type_] if k not in fields]
    if missing:
        raise EventError(f"{type_} event lacks {', '.join(missing)}")
    if type_ == "error" and fields["kind"] not in ERROR_KINDS:
        raise EventError(f"error kind {fields['kind']!r} is not one of {ERROR_KINDS}")
    if type_ == "done" and fields["status"] not in DONE_STATUSES:
        raise EventError(f"done status {fields['status']!r} is not one of {DONE_STATUSES}")
    return {"v": VERSION, "type": type_, "time": round(time.time(), 3), **fields}


def parse(line: str) -> dict | None:
    """One line -> event, or None for a line that is not an event (a stray print, a blank line)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("type") not in REQUIRED or "v" not in event:
        return None
    return event


def read(path: str | Path) -> list[dict]:
    """Every event of a run's ``events.jsonl`` (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [e for e in map(parse, f) if e is not None]


def follow(stream: IO[str]) -> Iterator[dict]:
    for line in stream:
        event = parse(line)
        if event is not None:
            yield event


class Emitter:
    """Appends events to ``events.jsonl`` (flushed per line) and echoes them to ``echo`` (stdout)."""

    def __init__(self, path: str | Path | None, echo: IO[str] | None = None, enabled: bool = True):
        self.enabled = enabled
        self.file = open(path, "a", encoding="utf-8") if (path and enabled) else None
        self.echo = echo if enabled else None

    def __call__(self, type_: str, **fields) -> dict:
        event = make(type_, **fields)
        if self.enabled:
            line = json.dumps(event, ensure_ascii=False)
            if self.file is not None:
                self.file.write(line + "\n")
                self.file.flush()
            if self.echo is not None:
                try:
                    self.echo.write(line + "\n")
                    self.echo.flush()
                except (BrokenPipeError, OSError, ValueError):  # the watcher went away: the file goes on
                    self.echo = None
        return event

    def close(self) -> None:
        if self.file:
            self.file.close()
