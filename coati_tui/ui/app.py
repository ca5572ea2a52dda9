"""The Textual app. Thin: screens live in screens/, panels in widgets/, layout in app.tcss.

The app process never imports torch, transformers or peft: training and generation run in child
processes, and everything the screens show (profile, plan, presets) is computed without them.
"""

from __future__ import annotations

from textual.app import App, SystemCommand
from textual.binding import Binding

from coati_tui import __version__
from coati_tui.ui.screens.home import HomeScreen


class CoatiApp(App):
    TITLE = "coati-tui"
    SUB_TITLE = f"RLHF on one GPU · v{__version__}"
    CSS_PATH = "app.tcss"
    BINDINGS = [("q", "quit", "Quit"), ("question_mark", "help", "Help"),
                Binding("f1", "switch_mode('train')", "Train", show=False),
                Binding("f2", "switch_mode('chat')", "Chat", show=False),
                Binding("f3", "switch_mode('rank')", "Rank", show=False)]
    MODES = {"train": HomeScreen, "chat": lambda: _chat_screen(), "rank": lambda: _rank_screen()}
    DEFAULT_MODE = "train"

    def __init__(self, model: str | None = None, mode: str = "train", quant: str = "none",
                 rank: dict | None = None) -> None:
        self.model = model  # Home (the train mode's first screen) plans this model; Chat loads it
        self.start_mode, self.quant = mode, quant
        self.rank_options = rank or {}  # `coati-tui rank`: store, second model, prompts, annotator
        super().__init__()

    def on_mount(self) -> None:
        if self.start_mode != "train":
            self.switch_mode(self.start_mode)  # `coati-tui chat MODEL`: the chat screen loads the model

    def action_help(self) -> None:
        from coati_tui.ui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def get_system_commands(self, screen):
        """The palette (ctrl+p) reaches every action of the screen in view, by its footer name."""
        yield from super().get_system_commands(screen)
        for b in getattr(screen, "BINDINGS", []):
            b = b if isinstance(b, Binding) else Binding(*b)
            if b.description and not b.action.startswith("app."):
                yield SystemCommand(b.description, f"{type(screen).__name__.replace('Screen', '')} · key {b.key}",
                                    lambda s=screen, a=b.action: self.call_later(s.run_action, a))
        yield SystemCommand("Help", "keys and how the loop works", self.action_help)


def _chat_screen():
    """Imported on first use: the chat screen pulls in a Markdown parser (~70 ms) the first frame can skip."""
    from coati_tui.ui.screens.chat import ChatScreen

    return ChatScreen()


def _rank_screen():
    from coati_tui.ui.screens.rank import RankScreen

    return RankScreen()


def run_app(model: str | None = None, mode: str = "train", quant: str = "none", rank: dict | None = None) -> None:
    CoatiApp(model=model, mode=mode, quant=quant, rank=rank).run()
