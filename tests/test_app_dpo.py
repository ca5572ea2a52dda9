"""The app with the preference methods: Home starts DPO on a pairs file with the highlighted preset, the
Train screen follows it with its health panel (rewards, margin, accuracy, drift), and Runs' next stage of
the finished run opens Chat on its output."""

import os

import pytest
from sample_data import preference_records, write_jsonl
from test_app_train import wait_for
from textual.widgets import Static

from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.runs import RunsScreen
from coati_tui.ui.screens.train import TrainScreen
from coati_tui.ui.widgets.loss_plot import LossPlot
from coati_tui.ui.widgets.plan_table import PlanTable

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


async def test_home_starts_dpo_and_the_train_screen_shows_its_health(tiny_model, tmp_path):
    home = os.environ["COATI_TUI_HOME"]
    os.makedirs(f"{home}/presets")
    with open(f"{home}/presets/lora_small.toml", "w", encoding="utf-8") as f:
        f.write(
            'description = "小 LoRA for tests"\n[lora]\nrank = 4\n'
            "[train]\nbatch_size = 4\naccumulation_steps = 1\nmax_len = 64\nmax_epochs = 2\nlr = 3e-3\n"
        )
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(40))
    app = CoatiApp(model=str(tiny_model))
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.screen.query_one("#plan", PlanTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        app.screen.query_one("#data-input").value = data
        table.move_cursor(row=table.get_row_index("lora_small"))
        table.focus()
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        train = app.screen
        await wait_for(pilot, lambda: train.status == "completed", timeout=240)
        assert train.stage == "dpo" and len(train.query_one(LossPlot).values) == train.total
        health = str(train.query_one("#speed", Static).render())
        for word in ("chosen", "rejected", "margin", "accuracy", "log-prob/token", "drift"):
            assert word in health, health
        await pilot.press("escape")
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        rows = app.screen.query_one("#runs-table")
        assert "dpo" in str(rows.get_row_at(0)[1])
        await pilot.press("n")  # next stage of a DPO run: Chat with its output
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "ChatScreen" and app.screen.loaded is not None, timeout=90
        )
        assert app.screen.loaded["model"] == str(train.run_dir / "final")
