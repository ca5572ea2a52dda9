"""The Textual app. Thin: screens live in screens/, panels in widgets/, layout in app.tcss.

The app process never imports torch, transformers or peft: training and generation run in child
processes, and everything the screens show (profile, plan, presets) is computed without them.
"""

from __future__ import annotations

from textual.app import App

from coati_tui import __version__
from coati_tui.screens.home import HomeScreen


class CoatiApp(App):
    TITLE = "coati-tui"
    SUB_TITLE = f"RLHF on one GPU · v{__version__}"
    CSS_PATH = "app.tcss"
    BINDINGS = [("q", "quit", "Quit"), ("question_mark", "help", "Help")]

    def __init__(self, model: str | None = None) -> None:
        super().__init__()
        self.model = model

    def on_mount(self) -> None:
        self.push_screen(HomeScreen(self.model))

    def action_help(self) -> None:
        self.notify("m: choose a model · arrows: pick a preset · b: memory breakdown · r: re-profile · "
                    "ctrl+p: every command · q: quit", title="Keys", timeout=8)


def run_app(model: str | None = None) -> None:
    CoatiApp(model=model).run()
