"""Chat: talk to any model or run output through the generation worker (a child process; the app never
loads a model). Streaming, stop, regenerate, an editable system prompt, sampling controls, Markdown
answers, transcripts saved after every answer (~/coati-tui/chats/*.jsonl) and reopened. The worker's
stderr goes to ~/coati-tui/chats/worker.log; its last lines show when it fails."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, Input, Label, Markdown, Select, Static

from coati_tui.core.units import fmt_bytes
from coati_tui.host.chats import chats_dir, worker_log
from coati_tui.host.gen_client import GenerationClient, stop
from coati_tui.ui.widgets.footer import KeyFooter
from coati_tui.ui.widgets.path_input import PathSuggester

SAMPLING = (
    ("temperature", 0.7, float),
    ("top_p", 0.9, float),
    ("top_k", 0, int),
    ("max_new_tokens", 256, int),
    ("repetition_penalty", 1.0, float),
    ("seed", "", int),
)


class ChatScreen(Screen):
    BINDINGS = [
        Binding("ctrl+l", "load", "Load model", id="load"),
        Binding("ctrl+g", "pick_run", "Runs", id="pick_run"),
        Binding("ctrl+x", "stop", "Stop", id="stop", priority=True),  # before the input's own ctrl+x (cut)
        Binding("ctrl+r", "regenerate", "Regenerate", id="regenerate"),
        Binding("ctrl+n", "new", "New chat", id="new"),
        Binding("ctrl+o", "open_last", "Open last chat", id="open_last"),
        Binding("ctrl+y", "copy_last", "Copy answer", id="copy"),
    ]
    DEFAULT_CSS = """
    #chat-top { height: 3; }
    #chat-model { width: 1fr; }
    #chat-quant { width: 16; }
    #chat-status { height: auto; padding: 0 1; color: $text-muted; }
    #chat-body { height: 1fr; }
    #chat-log { width: 1fr; border: round $primary; padding: 0 1; }
    #chat-side { width: 30; height: auto; border: round $primary; padding: 0 1; }
    #chat-side Input { width: 100%; }
    .user { color: $accent; margin: 1 0 0 0; }
    .assistant { margin: 0; }
    """

    def __init__(self, model: str | None = None, quant: str = "none") -> None:
        super().__init__()
        self.model_spec, self.quant = model, quant
        self.worker: GenerationClient | None = None
        self.loaded: dict | None = None
        self.messages: list[dict] = []  # the conversation, without the system prompt
        self.generating = False
        self.buffer, self.dirty = "", False
        self.current: Markdown | None = None
        self.transcript: Path | None = None
        self.last_answer: dict | None = None

    def compose(self) -> ComposeResult:
        if self.model_spec is None and getattr(self.app, "start_mode", "") == "chat":
            self.model_spec, self.quant = self.app.model, self.app.quant
        yield Header()
        with Horizontal(id="chat-top"):
            yield Input(
                self.model_spec or "",
                id="chat-model",
                suggester=PathSuggester(dirs_only=True),
                placeholder="model folder, run folder or cached hub id; enter (or ctrl+l) loads",
            )
            yield Select(
                [("full precision", "none"), ("8-bit", "8bit"), ("4-bit NF4", "4bit"), ("GPTQ folder", "gptq")],
                value=self.quant,
                allow_blank=False,
                id="chat-quant",
            )
        yield Static("no model loaded", id="chat-status")
        with Horizontal(id="chat-body"):
            yield VerticalScroll(id="chat-log")
            with Vertical(id="chat-side"):
                yield Label("system prompt")
                yield Input(id="chat-system", placeholder="(none)")
                for name, default, _ in SAMPLING:
                    yield Label(name.replace("_", " "))
                    yield Input(str(default), id=f"chat-{name}", compact=True)
        yield Input(id="chat-input", placeholder="your message; enter sends")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#chat-log").border_title = "Chat"
        self.query_one("#chat-side").border_title = "Sampling"
        self.set_interval(0.1, self._flush)
        if self.model_spec:
            self.action_load()
        self.query_one("#chat-input", Input).focus()

    def on_unmount(self) -> None:
        self._stop_worker()

    # ---- the worker ------------------------------------------------------------------------------
    @on(Input.Submitted, "#chat-model")
    def action_load(self) -> None:
        spec = self.query_one("#chat-model", Input).value.strip()
        if not spec:
            self.notify("Give a model folder or a run folder first.", severity="warning")
            return
        self._stop_worker()
        self.quant = self.query_one("#chat-quant", Select).value
        self.loaded, self.generating = None, False
        self.query_one("#chat-status", Static).update(f"loading {spec} ({self.quant})…")
        trust = bool(getattr(self.app, "trust_remote_code", False)) and spec == self.app.model  # that one only
        self.worker = GenerationClient(spec, str(self.quant), log=worker_log(), trust_remote_code=trust)
        threading.Thread(target=self._read, args=(self.worker,), daemon=True).start()

    def action_pick_run(self) -> None:
        """Switch to any run's output: pick it, and it loads."""
        from coati_tui.ui.widgets.run_picker import RunPicker

        def picked(path: str | None) -> None:
            if path:
                self.query_one("#chat-model", Input).value = path
                self.action_load()

        self.app.push_screen(RunPicker(), picked)

    def _read(self, worker: GenerationClient) -> None:
        for ev in worker.events():  # a worker that dies ends with an error event (its stderr's tail in it)
            if worker is not self.worker:
                break  # stopped, or replaced by another model
            try:
                self.app.call_from_thread(self._on_event, worker, ev)
            except RuntimeError:  # the app has closed
                break

    def _stop_worker(self) -> None:
        stop(self.worker)
        self.worker = None

    def _on_event(self, worker: GenerationClient, ev: dict[str, Any]) -> None:
        if worker is not self.worker:
            return  # a model we already switched away from
        kind = ev["type"]
        if kind == "loaded":
            self.loaded = ev
            self._status()
        elif kind == "token":
            self.buffer += ev["text"]
            self.dirty = True
        elif kind == "answer":
            self.buffer = ev["text"]
            self.dirty = True
            self._flush()
            self.messages.append({"role": "assistant", "content": ev["text"]})
            self.generating, self.last_answer = False, ev
            self._status()
            self._save()
        elif kind == "error":
            self.generating = False
            if self.loaded is None or worker.poll() is not None:  # it did not load, or it died: say why
                self.loaded = None
                text = Text(f"{ev['kind']}: {ev['message']}", style="red")
                for line in ev["log_tail"][-3:]:
                    text.append("\n  " + line, style="dim")
                if ev["log_tail"]:
                    text.append(f"\n  the worker's log: {worker.log_path}", style="dim")
                self.query_one("#chat-status", Static).update(text)
            self.notify(ev["message"], title=ev["kind"].replace("_", " "), severity="error", timeout=10)

    def _status(self) -> None:
        ev = self.loaded
        where = Path(ev["model"])
        name = f"{where.parent.name}/{where.name}" if where.name == "final" else where.name
        text = Text.assemble(
            (name, "bold"),
            f" · {ev['device']} · {ev['dtype']} · {ev['quant']} · {fmt_bytes(ev['memory_bytes'])}"
            f" · loaded in {ev['load_s']:.1f} s",
        )
        if self.last_answer:
            a = self.last_answer
            text.append(
                f" · last answer {a['tokens']} tokens, {a['tokens_per_s']:.1f} tok/s ({a['stop'].replace('_', ' ')})"
            )
        self.query_one("#chat-status", Static).update(text)

    # ---- conversation ----------------------------------------------------------------------------
    @on(Input.Submitted, "#chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if not self._ready():
            return
        event.input.value = ""
        self.messages.append({"role": "user", "content": text})
        self._mount_user(text)
        self._ask()

    def _ready(self) -> bool:
        if self.loaded is None:
            self.notify("Load a model first (model field, enter).", severity="warning")
            return False
        if self.generating:
            self.notify("Still answering: ctrl+x stops it.", severity="warning")
            return False
        return True

    def _ask(self) -> None:
        sampling: dict[str, Any] = {}
        for name, default, cast in SAMPLING:
            raw = self.query_one(f"#chat-{name}", Input).value.strip()
            if raw == "" and default == "":
                continue
            try:
                sampling[name] = cast(raw)
            except ValueError:
                self.notify(f"{name}: {raw!r} is not a number", severity="error")
                self.messages.pop()
                return
        assert self.worker is not None  # _ready: a model is loaded
        self.buffer, self.dirty, self.generating = "", False, True
        self.current = Markdown("…", classes="assistant")
        self.query_one("#chat-log").mount(self.current)
        self.request_id = self.worker.generate(
            self._with_system(self.messages), rid=str(len(self.messages)), **sampling
        )

    def _with_system(self, messages: list[dict]) -> list[dict]:
        system = self.query_one("#chat-system", Input).value.strip()
        return ([{"role": "system", "content": system}] if system else []) + messages

    def _mount_user(self, text: str) -> None:
        self.query_one("#chat-log").mount(Static(Text("› " + text), classes="user"))

    def _flush(self) -> None:
        """Streamed text reaches the screen ten times a second, however fast tokens come."""
        if self.dirty and self.current is not None:
            self.current.update(self.buffer or "…")
            self.dirty = False
            self.query_one("#chat-log").scroll_end(animate=False)

    def action_stop(self) -> None:
        if self.generating and self.worker:
            self.worker.cancel(self.request_id)

    def action_regenerate(self) -> None:
        if not self._ready() or not self.messages or self.messages[-1]["role"] != "assistant":
            return
        self.messages.pop()
        if self.current is not None:
            self.current.remove()
        self._ask()

    def action_new(self) -> None:
        if self.generating:
            self.action_stop()
        self.messages, self.transcript, self.current, self.last_answer = [], None, None, None
        self.query_one("#chat-log").remove_children()

    def action_copy_last(self) -> None:
        answers = [m["content"] for m in self.messages if m["role"] == "assistant"]
        if answers:
            self.app.copy_to_clipboard(answers[-1])
            self.notify("Copied the last answer.")

    # ---- transcripts -----------------------------------------------------------------------------
    def _save(self) -> None:
        """The whole conversation, rewritten after every answer: one JSON object per line (a header,
        then the messages)."""
        if self.transcript is None:
            chats_dir().mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.transcript = chats_dir() / f"chat-{stamp}-{len(list(chats_dir().iterdir()))}.jsonl"
        header = {
            "model": self.loaded["model"] if self.loaded else None,
            "quant": self.quant,
            "system": self.query_one("#chat-system", Input).value,
        }
        lines = [json.dumps(header, ensure_ascii=False)] + [json.dumps(m, ensure_ascii=False) for m in self.messages]
        tmp = self.transcript.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(self.transcript)

    def action_open_last(self) -> None:
        folder = chats_dir()
        found = sorted(folder.glob("chat-*.jsonl"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        if not found:
            self.notify("No saved chats yet.", severity="warning")
            return
        self.open_transcript(found[-1])

    def open_transcript(self, path: Path) -> None:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        header, msgs = lines[0], lines[1:]
        self.action_new()
        self.transcript, self.messages = path, msgs
        self.query_one("#chat-system", Input).value = header.get("system", "")
        log = self.query_one("#chat-log")
        for m in msgs:
            log.mount(
                Static(Text("› " + m["content"]), classes="user")
                if m["role"] == "user"
                else Markdown(m["content"], classes="assistant")
            )
        if header.get("model") and not self.query_one("#chat-model", Input).value:
            self.query_one("#chat-model", Input).value = header["model"]
        self.notify(f"Opened {path.name} ({len(msgs)} messages).")
