"""The app driven headless by Textual's Pilot."""

import io
import json
import subprocess
import sys
import textwrap

import pytest
from arch_configs import ARCHS
from rich.console import Console
from textual.binding import Binding

from coati_tui.ui.app import CoatiApp
from coati_tui.ui.widgets.plan_table import PlanTable

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def text_of(widget) -> str:
    """What a Static shows, as plain text."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(widget.content)
    return console.export_text()


async def _settle(app, pilot):
    for _ in range(3):
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)


async def test_home_shows_machine_and_plans_the_demo():
    app = CoatiApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await _settle(app, pilot)
        screen = app.screen
        assert "RAM" in text_of(screen.query_one("#machine"))
        assert "built-in demo" in text_of(screen.query_one("#model-info"))
        table = screen.query_one("#plan", PlanTable)
        assert table.row_count == len(table.presets) == 6
        assert table.plan.recommended == "lora_naive"  # on a CPU-only machine, the naive LoRA preset
        detail = text_of(screen.query_one("#detail"))
        assert "coati-tui demo" in detail  # no model yet: the headless twin is the demo
        await pilot.press("b")  # breakdown on
        assert "activations" in text_of(screen.query_one("#detail"))


async def test_typing_a_model_replans_and_bad_paths_say_why(tmp_path):
    model = tmp_path / "qwen"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(ARCHS["qwen2.5-7b"][0]))
    app = CoatiApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await _settle(app, pilot)
        await pilot.press("m")
        await pilot.press(*"/no/such/模型")
        await pilot.press("enter")
        await _settle(app, pilot)
        info = text_of(app.screen.query_one("#model-info"))
        assert "/no/such/模型" in info and "downloads nothing" in info
        field = app.screen.query_one("#model-input")
        field.value = str(model)
        await pilot.press("m", "enter")
        await _settle(app, pilot)
        assert "7.62B parameters" in text_of(app.screen.query_one("#model-info"))
        assert app.screen.query_one("#plan", PlanTable).plan.params == ARCHS["qwen2.5-7b"][1]


def test_app_process_never_imports_torch():
    code = textwrap.dedent("""
        import asyncio, sys
        from coati_tui.ui.app import CoatiApp
        async def main():
            app = CoatiApp()
            async with app.run_test() as pilot:
                await app.workers.wait_for_complete()
                await pilot.pause(0.1)
        asyncio.run(main())
        print(sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


async def test_data_path_completes_validates_and_previews(tmp_path):
    from sample_data import preference_records, write_jsonl

    write_jsonl(tmp_path / "prefs.jsonl", preference_records(20))
    (tmp_path / "bad.jsonl").write_text(
        '{"messages": [{"from": "user", "content": "好"}, {"from": "assistant", '
        '"content": "好"}]}\n{"messages": [{"from": "robot", "content": "x"}]}\n',
        encoding="utf-8",
    )
    app = CoatiApp()
    async with app.run_test(size=(100, 50)) as pilot:
        await _settle(app, pilot)
        await pilot.press("d")
        await pilot.press(*f"{tmp_path}/pr")
        await pilot.pause(0.3)
        await pilot.press("right")  # accept the completion
        field = app.screen.query_one("#data-input")
        assert field.value == f"{tmp_path}/prefs.jsonl"
        info = app.screen.query_one("#data-info")
        for _ in range(40):
            await pilot.pause(0.05)
            if "preference pairs" in text_of(info):
                break
        shown = text_of(info)
        assert "✓ 20 preference pairs" in shown and "chosen" in shown and "你好！很高兴见到你。" in shown
        field.value = str(tmp_path / "bad.jsonl")
        for _ in range(40):
            await pilot.pause(0.05)
            if "line 2" in text_of(info):
                break
        assert "bad.jsonl: line 2, field 'messages[0].role': unknown role 'robot'" in text_of(info)


async def test_settings_edit_hyperparameters_with_help_and_reach_the_command():
    from coati_tui.ui.screens.settings import SettingsScreen

    app = CoatiApp()
    async with app.run_test(size=(120, 45)) as pilot:
        await _settle(app, pilot)
        table = app.screen.query_one("#plan", PlanTable)
        before = next(r.cpu_bytes for r in table.plan.rows if r.preset == "lora_naive" and r.stage == "sft")
        await pilot.press("e")
        assert isinstance(app.screen, SettingsScreen)
        labels = " ".join(str(w.render()) for w in app.screen.query("Label"))
        assert "sequences per micro-batch" in labels  # each setting shows its help
        app.screen.query_one("#train__batch_size").value = "两"
        await pilot.press("ctrl+s")
        assert "train.batch_size: expected a whole number" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#train__batch_size").value = "0"
        await pilot.press("ctrl+s")  # the presets' own check: below the minimum
        assert "train.batch_size" in str(app.screen.query_one("#settings-error").render())
        app.screen.query_one("#train__batch_size").value = "16"
        app.screen.query_one("#lora__rank").value = "8"
        await pilot.press("ctrl+s")
        await _settle(app, pilot)
        home = app.screen
        assert home.overrides == {"train.batch_size": 16, "lora.rank": 8}
        after = next(r.cpu_bytes for r in table.plan.rows if r.preset == "lora_naive" and r.stage == "sft")
        assert after > before  # a bigger batch plans more activation memory
        home.model = "/models/m"  # the headless command carries the edits as flags
        home._show_detail()
        assert "--batch-size 16 --lora-rank 8" in text_of(home.query_one("#detail"))


async def test_modes_switch_and_the_headless_command_copies():
    from coati_tui.ui.screens.chat import ChatScreen
    from coati_tui.ui.screens.home import HomeScreen
    from coati_tui.ui.screens.rank import RankScreen

    app = CoatiApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await _settle(app, pilot)
        await pilot.press("y")
        assert app.clipboard == "coati-tui demo"
        await pilot.press("f2")
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("f3")
        assert isinstance(app.screen, RankScreen)
        assert "No pair to judge yet" in text_of(app.screen.query_one("#rank-prompt"))
        await pilot.press("f1")
        assert isinstance(app.screen, HomeScreen) and app.screen.query_one("#plan", PlanTable).row_count == 6


async def test_screens_ask_the_app_through_messages(tmp_path):
    """Runs posts PrefillStage: the App closes Runs and fills Home; the copied command is built from
    the choices (two lines with a reward model), not from the text on screen."""
    from coati_tui.ui.messages import PrefillStage
    from coati_tui.ui.screens.home import HomeScreen
    from coati_tui.ui.screens.runs import RunsScreen

    model = tmp_path / "qwen"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(ARCHS["qwen2.5-7b"][0]))
    app = CoatiApp()
    async with app.run_test(size=(100, 40)) as pilot:
        await _settle(app, pilot)
        await pilot.press("u")
        assert isinstance(app.screen, RunsScreen)
        app.screen.post_message(PrefillStage(str(model), data="/d/对话 1.jsonl", reward="/runs/rm", hint="next"))
        await _settle(app, pilot)
        home = app.screen
        assert isinstance(home, HomeScreen) and home.model == str(model)
        assert home.query_one("#reward-input").value == "/runs/rm" and app.focused is home.query_one("#data-input")
        home.query_one("#plan").focus()
        await pilot.press("y")
        sft, ppo = app.clipboard.splitlines()
        assert sft.startswith(f"coati-tui train sft --model {model} --data '/d/对话 1.jsonl' --preset ")
        assert ppo.startswith(f"coati-tui train ppo --model {model} --reward /runs/rm --prompts '/d/对话 1.jsonl'")
        assert sft in text_of(home.query_one("#detail"))


async def test_the_footer_draws_the_shown_keys_redraws_when_they_change_and_a_click_presses_one():
    from textual.app import App
    from textual.widgets import Static

    from coati_tui.ui.widgets.footer import KeyFooter

    class Spot(Static, can_focus=True):
        BINDINGS = [Binding("x", "noop", "hidden", show=False)]

    class Box(Static, can_focus=True):
        BINDINGS = [("b", "mark('盒子')", "Box key 盒子")]

        def action_mark(self, what: str) -> None:
            self.app.marked.append(what)

    class Tiny(App):
        BINDINGS = [("q", "quit", "Quit")]

        def compose(self):
            yield Static("a", id="a")
            yield Spot("c", id="c")
            yield Box("b", id="b")
            yield KeyFooter()

    app = Tiny()
    app.marked = []
    async with app.run_test(size=(60, 10)) as pilot:
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        line = footer.render().plain
        assert " q Quit " in line and "Box key" not in line and line.rstrip().endswith("palette")
        first = footer.drawn
        app.query_one("#c").focus()  # a hidden key more: what is drawn stays
        await pilot.pause()
        assert footer.drawn is first
        app.query_one("#b").focus()  # a shown key more: redrawn with it
        await pilot.pause()
        line = footer.render().plain
        assert "b Box key 盒子" in line and footer.drawn != first
        await pilot.click(KeyFooter, offset=(line.index("Box key") + 1, 0))
        await pilot.pause()
        assert app.marked == ["盒子"]
