"""Rank: pairwise preference labeling. Two answers to one prompt side by side (stacked when narrow), the
user picks A, B, tie or skip; every judgment is committed to the preference store (SQLite) before the next
pair appears, and the labels train the next reward model (ctrl+t) or a DPO run from model A (ctrl+o), or
export (ctrl+e / `coati-tui export prefs`). ctrl+r starts the next labeling round: the newest finished
preference run (DPO / ORPO / KTO) becomes model A and the previous model A becomes B, so label -> DPO ->
label runs without leaving the pane; each judgment records its round.

Answers come from one model (two samples) or two models (one each), written by generation workers (child
processes, as in Chat) in the background (coati_tui.host.pairs), so the next pairs are ready before this
one is judged. Which answer goes left is a coin flip, recorded with the pair. Each worker's stderr goes to
a log beside the store (prefs-worker-A.log).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.markdown import Markdown
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Header, Input, Static

from coati_tui.data import prefstore
from coati_tui.data.formats import DataError, load_prompts
from coati_tui.host.chats import chat_prompts
from coati_tui.host.gen_client import GenerationClient
from coati_tui.host.pairs import AHEAD, PairWriter, default_annotator, default_store, worker_log
from coati_tui.ui.screens.rank_loop import RankLoop
from coati_tui.ui.widgets.footer import KeyFooter
from coati_tui.ui.widgets.path_input import PathSuggester

WIDE = 100  # columns from which the answers sit side by side


class PairArea(Container, can_focus=True):
    """The two answers; focused while labeling, so the choice keys reach the screen."""


class RankScreen(RankLoop, Screen):
    BINDINGS = [
        Binding("a", "choose('A')", "A better", id="choose_a"),
        Binding("b", "choose('B')", "B better", id="choose_b"),
        Binding("t", "choose('tie')", "Tie", id="tie"),
        Binding("s", "choose('skip')", "Skip", id="skip"),
        Binding("u", "undo", "Undo", id="undo"),
        Binding("n", "note", "Note", id="note"),
        Binding("ctrl+l", "start", "Start", id="start"),
        Binding("ctrl+g", "pick_run", "Runs", id="pick_run"),
        Binding("ctrl+t", "train_rm", "Train RM", id="train_rm"),
        Binding("ctrl+o", "train_dpo", "Train DPO", id="train_dpo"),
        Binding("ctrl+r", "next_round", "Next round", id="next_round"),
        Binding("ctrl+e", "export", "Export", id="export"),
        Binding("escape", "focus_pair", "Labels", show=False),
    ]
    DEFAULT_CSS = """
    .rank-row { height: 1; }
    .rank-row Input { width: 1fr; }
    #rank-annotator { width: 18; }
    #rank-status { height: auto; padding: 0 1; color: $text-muted; }
    #rank-prompt { height: auto; max-height: 6; padding: 0 1; border: round $accent; }
    #rank-pair { height: 1fr; layout: horizontal; }
    #rank-pair.stacked { layout: vertical; }
    #rank-pair:focus-within, #rank-pair:focus { background: $boost; }
    .answer { width: 1fr; height: 1fr; border: round $primary; padding: 0 1; }
    .answer.picked { border: round $success; }
    #rank-note { height: 1; }
    """

    def __init__(self, options: dict | None = None) -> None:
        super().__init__()
        self.options = options
        self.store: prefstore.Store | None = None
        self.annotator = ""
        self.current: prefstore.PairView | None = None
        self.shown_at = 0.0
        self.writer = PairWriter()  # the generation workers and the prompts they answer
        self.latencies: list[float] = []  # keypress -> next pair drawn, seconds (bench/rank_latency.py)
        self.pending_note = ""

    def compose(self) -> ComposeResult:
        if self.options is None:
            self.options = dict(getattr(self.app, "rank_options", {}))
        o = self.options
        model = o.get("model") or getattr(self.app, "model", None) or self._latest_model()
        yield Header()
        with Horizontal(classes="rank-row"):
            yield Input(
                model or "",
                id="rank-model",
                compact=True,
                suggester=PathSuggester(dirs_only=True),
                placeholder="model A: a model or run folder",
            )
            yield Input(
                o.get("model_b", ""),
                id="rank-model-b",
                compact=True,
                suggester=PathSuggester(dirs_only=True),
                placeholder="model B (empty: two samples of A)",
            )
        with Horizontal(classes="rank-row"):
            yield Input(
                o.get("prompts", ""),
                id="rank-prompts",
                compact=True,
                suggester=PathSuggester((".jsonl", ".json", ".csv", ".parquet")),
                placeholder="prompt file (empty: your chat history)",
            )
            yield Input(
                str(o.get("store") or default_store()),
                id="rank-store",
                compact=True,
                suggester=PathSuggester(prefstore.SUFFIXES),
                placeholder="preference store (.sqlite)",
            )
            yield Input(
                o.get("annotator") or default_annotator(), id="rank-annotator", compact=True, placeholder="annotator"
            )
        yield Static("", id="rank-status")
        yield Static("", id="rank-prompt")
        with PairArea(id="rank-pair"):
            with VerticalScroll(id="rank-left", classes="answer"):
                yield Static("", id="rank-a")
            with VerticalScroll(id="rank-right", classes="answer"):
                yield Static("", id="rank-b")
        yield Input(id="rank-note", compact=True, placeholder="n: a note for the next judgment")
        yield Input(id="rank-typed", compact=True, placeholder="type a prompt; enter puts it next in line")
        yield KeyFooter()

    def _latest_model(self) -> str:
        from coati_tui.host import runs

        done = [r for r in runs.list_runs() if r["final"] and r["stage"] in ("ppo", "sft")]
        done.sort(key=lambda r: r["stage"] != "ppo")  # the newest PPO model first, else the newest SFT
        return str(Path(done[0]["run"]) / "final") if done else ""

    def on_mount(self) -> None:
        self.query_one("#rank-left").border_title = "A"
        self.query_one("#rank-right").border_title = "B"
        self.query_one("#rank-prompt").border_title = "Prompt"
        self._arrange(self.size.width)
        self._open_store()
        if self.options.get("start") and self.query_one("#rank-model", Input).value.strip():
            self.action_start()
        self.query_one(PairArea).focus()

    def on_unmount(self) -> None:
        self.writer.stop()
        if self.store:
            self.store.close()

    def on_resize(self, event) -> None:
        self._arrange(event.size.width)

    def _arrange(self, width: int) -> None:
        self.query_one("#rank-pair").set_class(width < WIDE, "stacked")

    # ---- the store -------------------------------------------------------------------------------
    def _open_store(self) -> bool:
        path = self.query_one("#rank-store", Input).value.strip() or str(default_store())
        self.annotator = self.query_one("#rank-annotator", Input).value.strip() or default_annotator()
        if self.store and self.store.path == Path(path).expanduser():
            return True
        if self.store:
            self.store.close()
            self.store = None
        try:
            self.store = prefstore.Store(path)
        except prefstore.StoreError as exc:
            self._status(Text(str(exc), style="red"))
            self.notify(str(exc), title="Preference store", severity="error", timeout=15)
            return False
        self.current = None
        self._show_next()
        return True

    def _stats_text(self) -> Text:
        s = self.store.stats()
        text = Text.assemble(
            ("labeled ", ""),
            (str(s["labeled"]), "bold"),
            f" · A {s['A']} / B {s['B']} · ties {s['tie']} · skipped {s['skip']}",
        )
        ready = len(self.store.pending(self.annotator, AHEAD + 50)) - (self.current is not None)
        text.append(f" · ready {max(ready, 0)}")
        if self.store.current_round() > 1:
            text.append(f" · round {self.store.current_round()}", style="bold")
        if len(s["annotators"]) > 1:
            text.append(" · " + ", ".join(f"{a} {n}" for a, n in s["annotators"].items()))
        if s["agreement"] is not None:
            text.append(f" · agreement {s['agreement']:.0%} of {s['shared_pairs']}")
        return text

    def _status(self, extra: Text | str = "") -> None:
        text = self._stats_text() if self.store else Text()
        gen = self.writer.state()
        if gen:
            text.append(f" · {gen}", style="italic")
        if extra:
            text = Text.assemble(text, "\n", extra) if text.plain else Text(extra) if isinstance(extra, str) else extra
        self.query_one("#rank-status", Static).update(text)

    # ---- showing pairs ---------------------------------------------------------------------------
    def _show_next(self, pair_id: int | None = None) -> None:
        if pair_id is None:
            pending = self.store.pending(self.annotator, 1) if self.store else []
            pair_id = pending[0] if pending else None
        if pair_id is None:
            self.current = None
            self.query_one("#rank-prompt", Static).update(
                Text(
                    "No pair to judge yet. Give model A (and B) and press ctrl+l to generate pairs from the prompt "
                    "file or your chat history; type prompts in the line at the bottom.",
                    style="dim",
                )
            )
            self.query_one("#rank-a", Static).update("")
            self.query_one("#rank-b", Static).update("")
        else:
            self.current = self.store.pair(pair_id)
            self.shown_at = time.perf_counter()
            self.query_one("#rank-prompt", Static).update(_prompt_text(self.current.prompt))
            # Rich's Markdown renders in this frame (Textual's Markdown widget parses in a thread and mounts
            # later): the next pair is whole on the first refresh after the key
            self.query_one("#rank-a", Static).update(Markdown(self.current.left or "*(empty answer)*"))
            self.query_one("#rank-b", Static).update(Markdown(self.current.right or "*(empty answer)*"))
            self.query_one("#rank-left").scroll_home(animate=False)
            self.query_one("#rank-right").scroll_home(animate=False)
        self._status()

    def action_choose(self, choice: str) -> None:
        t0 = time.perf_counter()
        if self.current is None or self.store is None:
            self.notify("No pair on screen.", severity="warning")
            return
        note = self.query_one("#rank-note", Input).value.strip()
        self.store.judge(self.current.id, choice, self.annotator, note, round(t0 - self.shown_at, 3))  # committed
        self.query_one("#rank-note", Input).value = ""
        self._show_next()
        self.call_after_refresh(lambda: self.latencies.append(time.perf_counter() - t0))
        self._pump()

    def action_undo(self) -> None:
        if self.store is None:
            return
        pair_id = self.store.undo(self.annotator)
        if pair_id is None:
            self.notify("Nothing to undo.", severity="warning")
            return
        self._show_next(pair_id)
        self.notify("Took back the last judgment: judge this pair again.")

    def action_note(self) -> None:
        self.query_one("#rank-note", Input).focus()

    @on(Input.Submitted, "#rank-note")
    def action_focus_pair(self) -> None:
        self.query_one(PairArea).focus()

    @on(Input.Submitted, "#rank-store")
    @on(Input.Submitted, "#rank-annotator")
    def _store_changed(self) -> None:
        self._open_store()
        self.action_focus_pair()

    # ---- generation ------------------------------------------------------------------------------
    @on(Input.Submitted, "#rank-model")
    @on(Input.Submitted, "#rank-model-b")
    @on(Input.Submitted, "#rank-prompts")
    def action_start(self) -> None:
        """(Re)start generation: the models in the fields, prompts from the file or the chat history."""
        if not self._open_store():
            return
        specs = [self.query_one(f"#{i}", Input).value.strip() for i in ("rank-model", "rank-model-b")]
        if not specs[0]:
            self.notify("Give model A: a model folder or a run folder.", severity="warning")
            self.query_one("#rank-model", Input).focus()
            return
        source = self.query_one("#rank-prompts", Input).value.strip()
        try:
            prompts = load_prompts(source) if source else chat_prompts()
        except DataError as exc:
            self.notify(str(exc), title="Prompts", severity="error", timeout=15)
            return
        self.writer.queue(prompts, source or "chat history", self.store)
        if not prompts:
            self.notify("No prompts: no prompt file and no saved chats yet. Type prompts at the bottom.", timeout=10)
        store_path = self.store.path
        for worker in self.writer.start([s for s in specs if s], lambda slot: worker_log(store_path, slot)):
            threading.Thread(target=self._read, args=(worker,), daemon=True).start()
        self._status()
        self.action_focus_pair()

    def action_pick_run(self) -> None:
        """A run's model into model B when that field has focus, else into model A."""
        from coati_tui.ui.widgets.run_picker import RunPicker

        target = "#rank-model-b" if self.focused is self.query_one("#rank-model-b") else "#rank-model"

        def picked(path: str | None) -> None:
            if path:
                self.query_one(target, Input).value = path

        self.app.push_screen(RunPicker(), picked)

    @on(Input.Submitted, "#rank-typed")
    def _typed(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        event.input.value = ""
        self.writer.add_typed(text)
        if not self.writer.workers:
            self.notify("Queued. Give model A and press ctrl+l to generate its answers.")
        self._pump()
        self._status()

    def _read(self, worker: GenerationClient) -> None:
        for ev in worker.events():  # a worker that dies ends with an error event (its stderr's tail in it)
            if worker not in self.writer.workers:
                break  # stopped, or replaced
            try:
                self.app.call_from_thread(self._on_event, worker, ev)
            except RuntimeError:  # the app has closed
                break

    def _on_event(self, worker: GenerationClient, ev: dict[str, Any]) -> None:
        what = self.writer.handle(worker, ev, self.store)
        if what == "pair" and self.current is None:
            self._show_next()
        elif what == "error":
            where = self.writer.slot(worker)
            if where not in self.writer.loaded or where in self.writer.stopped:  # it did not load, or died
                text = Text(f"model {where}: {ev['kind']}: {ev['message']}", style="red")
                for line in ev["log_tail"][-3:]:
                    text.append("\n  " + line, style="dim")
                if ev["log_tail"]:
                    text.append(f"\n  the worker's log: {worker.log_path}", style="dim")
                self._status(text)
            self.notify(
                ev["message"], title=f"model {where}: {ev['kind'].replace('_', ' ')}", severity="error", timeout=10
            )
            return
        if what:
            self._pump()
            self._status()

    def _pump(self) -> None:
        """Ask for the next pair while fewer than AHEAD wait beyond the one on screen."""
        store = self.store
        if store is not None:
            self.writer.pump(store, lambda: len(store.pending(self.annotator, AHEAD + 1)) - (self.current is not None))


def _prompt_text(messages: list[dict]) -> Text:
    text = Text()
    earlier = messages[:-1]
    if earlier:
        text.append(f"({len(earlier)} earlier turn{'s' if len(earlier) > 1 else ''}) ", style="dim")
    text.append(messages[-1]["content"])
    return text
