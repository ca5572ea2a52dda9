"""Help: the keys of the screen underneath and of the app, and the loop in a few lines."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

GUIDE = (
    "The loop: SFT teaches the model to answer, the reward model (RM) learns which of two answers people "
    "prefer, PPO improves the SFT model against the RM while a KL penalty keeps it close and the PTX loss "
    "keeps its SFT skills. Or skip the RM and PPO: DPO (o) learns straight from the preference pairs "
    "(ORPO ctrl+o, KTO ctrl+k). Home plans memory for every preset and stage; each stage runs in a child "
    "process that keeps training if the app closes (Runs re-attaches). No model yet? g runs the demo. "
    "Every run can be replayed headless: coati-tui train STAGE --resume RUN_FOLDER. Then F2 Chat talks to "
    "the result (4-bit, 8-bit or GPTQ), and F3 Rank compares two of its answers: your labels train the "
    "next reward model (ctrl+t there) or a DPO run (ctrl+o), and ctrl+r makes that run model A of the next "
    "round of labels."
)


def keys_table(screen: Screen, app_bindings) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    seen = set()
    for b in list(getattr(screen, "BINDINGS", [])) + list(app_bindings):
        b = b if isinstance(b, Binding) else Binding(*b)
        if b.key in seen or not b.show:
            continue
        seen.add(b.key)
        t.add_row(b.key_display or b.key.replace("question_mark", "?").replace("escape", "esc"), b.description)
    t.add_row("ctrl+p", "command palette: every action by name")
    return t


class HelpScreen(ModalScreen):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 90%; max-width: 110; height: auto; max-height: 90%; border: round $accent;
            background: $surface; padding: 0 1; }
    """

    def __init__(self, under: Screen) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            title = type(self.under).__name__.replace("Screen", "")
            yield Static(Text(f"Keys: {title}", style="bold"))
            yield Static(keys_table(self.under, self.app.BINDINGS))
            yield Static(Text("\n" + GUIDE, style="dim"))

    def on_mount(self) -> None:
        self.query_one("#help").border_title = "Help (esc closes)"
