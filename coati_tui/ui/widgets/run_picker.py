"""Pick a finished run's model: a modal list of the runs with a final/ folder, newest first (Chat and Rank)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from coati_tui.host import runs


class RunPicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]
    DEFAULT_CSS = """
    RunPicker { align: center middle; }
    RunPicker OptionList { width: 90%; max-width: 110; height: auto; max-height: 80%; border: round $accent; }
    """

    def compose(self) -> ComposeResult:
        done = [r for r in runs.list_runs() if r["final"]]
        options = [
            Option(
                Text.assemble(((r["stage"] or "?").upper().ljust(4), "bold"), " ", Path(r["run"]).name),
                id=str(Path(r["run"]) / "final"),
            )
            for r in done
        ]
        picker = OptionList(*(options or [Option("no finished run yet (F1: Train)", disabled=True)]))
        picker.border_title = "Models from your runs (enter picks, esc closes)"
        yield picker

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
