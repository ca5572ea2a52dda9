"""The Textual app. Thin: screens live in screens/, panels in widgets/, layout in app.tcss.

Screens talk only through the messages in messages.py: they bubble here, and the app opens, switches
and fills screens. Only Home, the first screen, is imported up front; every other screen is imported
when it is first opened, so the first frame waits on no import it does not draw.

The app process never imports torch, transformers or peft: training and generation run in child
processes, and everything the screens show (profile, plan, presets) is computed without them.
"""

from __future__ import annotations

import gc

from textual.app import App, SystemCommand
from textual.binding import Binding

from coati_tui import __version__
from coati_tui.ui.messages import ChatWith, OpenRun, PrefillStage, ShowRuns
from coati_tui.ui.screens.home import HomeScreen


class CoatiApp(App):
    TITLE = "coati-tui"
    SUB_TITLE = f"RLHF on one GPU · v{__version__}"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        ("q", "quit", "Quit"),
        ("question_mark", "help", "Help"),
        Binding("f1", "switch_mode('train')", "Train", show=False),
        Binding("f2", "switch_mode('chat')", "Chat", show=False),
        Binding("f3", "switch_mode('rank')", "Rank", show=False),
    ]
    MODES = {"train": HomeScreen, "chat": lambda: _chat_screen(), "rank": lambda: _rank_screen()}
    DEFAULT_MODE = "train"

    def __init__(
        self,
        model: str | None = None,
        mode: str = "train",
        quant: str = "none",
        rank: dict | None = None,
        trust_remote_code: bool = False,  # `chat MODEL --trust-remote-code`: that model may run its own code
    ) -> None:
        self.model = model  # Home (the train mode's first screen) plans this model; Chat loads it
        self.trust_remote_code = trust_remote_code
        self.start_mode, self.quant = mode, quant
        self.rank_options = rank or {}  # `coati-tui rank`: store, second model, prompts, annotator
        if not gc.get_freeze_count():
            # What is imported by now lives as long as the app: the collector stops re-scanning it, which
            # spares start-up a full collection (~20 ms, more on a loaded machine). Once per process.
            gc.freeze()
        super().__init__()

    def on_mount(self) -> None:
        if self.start_mode != "train":
            self.switch_mode(self.start_mode)  # `coati-tui chat MODEL`: the chat screen loads the model

    # ---- messages from the screens ---------------------------------------------------------------
    def on_open_run(self, msg: OpenRun) -> None:
        from coati_tui.ui.screens.train import TrainScreen

        self.push_screen(
            TrainScreen(msg.run_dir, start=msg.start, gpu_total=msg.gpu_total, ram_total=msg.ram_total, demo=msg.demo)
        )

    def on_show_runs(self, _msg: ShowRuns) -> None:
        from coati_tui.ui.screens.runs import RunsScreen

        self.push_screen(RunsScreen())

    async def on_prefill_stage(self, msg: PrefillStage) -> None:
        await self.switch_mode("train")
        while not isinstance(self.screen, HomeScreen):  # Runs, a Train screen, ... over it
            await self.pop_screen()
        self.screen.prefill(msg.model, reward=msg.reward, hint=msg.hint, data=msg.data, then=msg.then)

    async def on_chat_with(self, msg: ChatWith) -> None:
        await self.switch_mode("chat")
        chat = self.screen
        chat.query_one("#chat-model").value = msg.model
        chat.action_load()
        if msg.hint:
            self.notify(msg.hint, timeout=10)

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
                yield SystemCommand(
                    b.description,
                    f"{type(screen).__name__.replace('Screen', '')} · key {b.key}",
                    lambda s=screen, a=b.action: self.call_later(s.run_action, a),
                )
        yield SystemCommand("Help", "keys and how the loop works", self.action_help)


def _chat_screen():
    """Imported on first use: the chat screen pulls in a Markdown parser (~70 ms) the first frame can skip."""
    from coati_tui.ui.screens.chat import ChatScreen

    return ChatScreen()


def _rank_screen():
    from coati_tui.ui.screens.rank import RankScreen

    return RankScreen()


def run_app(
    model: str | None = None,
    mode: str = "train",
    quant: str = "none",
    rank: dict | None = None,
    trust_remote_code: bool = False,
) -> None:
    CoatiApp(model=model, mode=mode, quant=quant, rank=rank, trust_remote_code=trust_remote_code).run()
