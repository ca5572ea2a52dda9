"""The Rank mode's screen until its pane is built: what it will do, and what works today."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from coati_tui import runs

TEXT = {
    "rank": ("Rank", "Compare two answers side by side; your choices become the next reward model's data.",
             "The ranking pane is not built yet. Preference data for `coati-tui train rm` is ColossalChat's\n"
             '  {"context": [...], "chosen": [...], "rejected": [...]}  or TRL\'s {"prompt", "chosen", "rejected"}'),
}


class PendingModeScreen(Screen):
    """F1 Train, F2 Chat, F3 Rank switch modes (each keeps its own screens)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def compose(self) -> ComposeResult:
        title, what, how = TEXT[self.mode]
        yield Header()
        with VerticalScroll(id="pending"):
            yield Static(Text.assemble((f"{title}\n", "bold"), (what + "\n\n", ""), (how, "dim")))
            yield Static(id="finished")
        yield Footer()

    def on_screen_resume(self) -> None:
        done = [r for r in runs.list_runs() if r["final"]]
        text = Text("\nModels ready in your runs:\n" if done else "\nNo finished run yet (F1: Train).", style="bold")
        for r in done[:10]:
            text.append(f"  {r['stage'] or '?':4s} {r['run']}/final\n", style="")
        self.query_one("#finished", Static).update(text)


class RankModeScreen(PendingModeScreen):
    def __init__(self) -> None:
        super().__init__("rank")
