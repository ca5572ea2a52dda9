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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

VERSION = 1

REQUIRED: dict[str, tuple[str, ...]] = {
    # resolved config, sizes, strategy; total_steps = optimizer steps of the whole run
    "start": ("stage", "config", "params", "trainable_params", "strategy", "device", "precision", "total_steps"),
    # one per optimizer step; memory fields are bytes (gpu_* absent on CPU; cpu_peak: the RSS high-water
    # mark so far); mfu and flops_per_s where the recipe counts its model FLOPs (core/flops.py)
    "step": ("step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "samples_per_s", "eta_s", "cpu_rss"),
    "eval": ("step", "metrics"),
    "checkpoint": ("step", "path"),
    "sample": ("step", "prompt", "response"),
    "log": ("level", "message"),
    "done": ("status", "step"),  # status: completed | cancelled | stopped (by the trainer: its reason)
    # a sign of reward hacking (trainer/ppo/guard.py): kind kl | length | reward_range | gap, what to try
    "alarm": ("step", "kind", "message", "hint"),
    "error": ("kind", "message", "log_tail"),
    # the generation worker (coati_tui.worker): a model loaded, streamed pieces, a finished answer
    "loaded": ("model", "device", "dtype", "quant", "memory_bytes", "load_s"),
    "token": ("id", "text"),
    # stop: end_token | max_new_tokens | stop_sequence | cancelled (prompt_tokens: the prompt's length)
    "answer": ("id", "text", "tokens", "tokens_per_s", "stop"),
}
ERROR_KINDS = ("gpu_oom", "cpu_oom", "data", "config", "missing_dependency", "disk_full", "crash")
DONE_STATUSES = ("completed", "cancelled", "stopped")


class EventError(ValueError):
    pass


def make(type_: str, **fields: Any) -> dict[str, Any]:
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


def parse(line: str) -> dict[str, Any] | None:
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


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a run's ``events.jsonl`` (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [e for e in map(parse, f) if e is not None]


def torn_tail(path: str | Path) -> tuple[int, str] | None:
    """(its line number, its text) when the file's last line lacks its newline (a writer killed mid-line),
    else None. ``parse`` of that text tells a cut-short event from a whole one that missed its newline."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return None
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return None
        f.seek(0)
        lines, last = 0, b""
        for chunk in iter(lambda: f.read(1 << 20), b""):
            lines += chunk.count(b"\n")
            last = chunk.rsplit(b"\n", 1)[1] if b"\n" in chunk else (last + chunk)[-(1 << 20) :]
    return lines + 1, last.decode("utf-8", errors="replace")


class Steps:
    """A run's step events as they stand, in step order, fed one event at a time (``latest_steps`` for a
    whole list). A resumed trainer redoes the steps after its checkpoint, so ``events.jsonl`` can hold a
    step twice: the later record wins, and it also ends every record after it (they came from the trainer
    that was stopped); a start that ``resumed_from`` step r ends the records after r at once."""

    def __init__(self) -> None:
        self.list: list[dict[str, Any]] = []

    def add(self, ev: Mapping[str, Any]) -> int:
        """Take any event; returns how many of the records before it still stand."""
        if ev.get("type") == "start" and isinstance(ev.get("resumed_from"), int):
            cut = ev["resumed_from"]
        elif ev.get("type") == "step":
            cut = ev["step"] - 1
        else:
            return len(self.list)
        while self.list and self.list[-1]["step"] > cut:
            self.list.pop()
        kept = len(self.list)
        if ev["type"] == "step":
            self.list.append(dict(ev))
        return kept


def latest_steps(evs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The step events of ``evs`` (a run's, in file order) as they stand: see ``Steps``."""
    steps = Steps()
    for ev in evs:
        steps.add(ev)
    return steps.list


def follow(stream: IO[str]) -> Iterator[dict[str, Any]]:
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

    def __call__(self, type_: str, **fields: Any) -> dict[str, Any]:
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


# ---- the generation worker's choices (its --quant and --dtype; a ``loaded`` event names both) -------------
QUANTS = ("none", "8bit", "4bit", "gptq")  # gptq: the folder must be a GPTQ checkpoint (they load as such anyway)
DTYPES = ("auto", "fp32", "bf16", "fp16")


# ---- one line of text per event: the CLI's progress and the Train screen's log ----------------------------
@dataclass(frozen=True)
class StepView:
    """How one stage's steps read: which field tells them apart, what is plotted, the line they make."""

    stage: str  # the start event's stage; "" for the row that serves every stage without its own
    marker: str  # a step field only this stage's steps carry (when the stage is not known)
    metric: str  # the step field plotted and put first
    label: str  # the plot's title
    headline: str  # str.format over the step's fields (a missing one reads nan)


STEP_VIEWS: tuple[StepView, ...] = (
    StepView(
        "grpo",
        "tied_frac",
        "reward_mean",
        "reward (mean per step)",
        "reward {reward_mean:+.3f} ± {reward_std:.3f} · tied {tied_frac:.0%} · KL {kl:.4f} · clip {clip_frac:.2f}",
    ),  # before PPO: its steps carry PPO's marker too
    StepView(
        "ppo", "reward_mean", "reward_mean", "reward (mean per rollout)", "reward {reward_mean:+.3f} · KL {kl:.3f}"
    ),
    StepView(
        "orpo",
        "log_odds_ratio",
        "loss",
        "loss (SFT + odds ratio)",
        "loss {loss:.4f} · NLL {nll:.4f} · accuracy {accuracy:.2f} · log-odds {log_odds_ratio:+.3f}",
    ),  # before DPO: its events carry DPO's marker too
    StepView(
        "dpo",
        "margin",
        "loss",
        "loss (DPO / IPO / SimPO)",
        "loss {loss:.4f} · accuracy {accuracy:.2f} · margin {margin:+.3f}",
    ),
    StepView(
        "kto",
        "reward_desirable",
        "loss",
        "loss (KTO)",
        "loss {loss:.4f} · reward good {reward_desirable:+.3f} / bad {reward_undesirable:+.3f} · KL {kl:.3f}",
    ),
    # a new stage is one more row here, above the catch-all
    StepView("", "loss", "loss", "loss", "loss {loss:.4f}"),  # sft, rm and any stage without a row
)


def step_view(stage: str | None = None, ev: Mapping[str, Any] | None = None) -> StepView:
    """The row of ``stage`` (a start event's), else the first whose marker ``ev`` carries, else the catch-all."""
    for row in STEP_VIEWS:
        if row.stage and (row.stage == stage if stage else ev is not None and row.marker in ev):
            return row
    return next((row for row in STEP_VIEWS if not row.stage), STEP_VIEWS[-1])


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> float:
        return float("nan")


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _done(ev: Mapping[str, Any]) -> str:
    where = ev.get("final") or ev.get("resume")
    why = f" ({ev['reason']})" if ev.get("reason") else ""
    return f"{ev['status']} at step {ev['step']}{why}" + (f": {where}" if where else "")


def _sample(ev: Mapping[str, Any]) -> str:
    reward = f"  (reward {ev['reward']:+.3f})" if isinstance(ev.get("reward"), (int, float)) else ""
    return f"sample @{ev['step']} {ev['prompt']} → {ev['response']}{reward}"


def _step(ev: Mapping[str, Any], stage: str | None) -> str:
    from coati_tui.core.units import fmt_bytes

    head = step_view(stage, ev).headline.format_map(_Fields(ev))
    mfu = f" · MFU {ev['mfu']:.1%}" if isinstance(ev.get("mfu"), (int, float)) else ""
    return f"{head} · {ev.get('tokens_per_s', 0):.0f} tok/s{mfu} · RAM {fmt_bytes(ev.get('cpu_rss', 0))}"


def _loaded(ev: Mapping[str, Any]) -> str:
    from coati_tui.core.units import fmt_bytes

    return (
        f"loaded {ev['model']} · {ev['device']} · {ev['dtype']} · {ev['quant']} · "
        f"{fmt_bytes(ev['memory_bytes'])} in {ev['load_s']:.1f} s"
    )


LINES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "start": lambda ev: f"{ev['stage']} · {ev['strategy']} · {ev['device']}",
    "eval": lambda ev: f"eval @ {ev['step']}: " + ", ".join(f"{k} {_num(v)}" for k, v in ev["metrics"].items()),
    "checkpoint": lambda ev: f"checkpoint {ev['path']}",
    "sample": _sample,
    "log": lambda ev: str(ev["message"]),
    "done": _done,
    "alarm": lambda ev: f"ALARM ({ev['kind']}) at step {ev['step']}: {ev['message']}. Try: {ev['hint']}",
    "error": lambda ev: f"{ev['kind']}: {ev['message']}",
    "loaded": _loaded,
    "token": lambda ev: str(ev["text"]),
    "answer": lambda ev: (
        f"answer: {ev['tokens']} tokens, {ev['tokens_per_s']:.1f} tok/s ({str(ev['stop']).replace('_', ' ')})"
    ),
}


def describe(ev: Mapping[str, Any], stage: str | None = None) -> str:
    """One event as one line of text. ``stage`` (the run's start event's) picks how a step reads; without
    it the step's own fields do (see ``STEP_VIEWS``)."""
    kind = str(ev.get("type", ""))
    if kind == "step":
        return _step(ev, stage)
    line = LINES.get(kind)
    if line is not None:
        return line(ev)
    rest = {k: v for k, v in ev.items() if k not in ("v", "type", "time")}
    return f"{kind}: " + ", ".join(f"{k} {_num(v)}" for k, v in rest.items())
