"""The app with PPO and the demo: the demo started from Home (a real `coati-tui demo` child) is followed
across its runs, cancelled and resumed; a PPO run shows its health panel and samples; Runs pre-fills the
next stage from a run's output."""

import os

import pytest
from test_app_train import wait_for
from textual.widgets import Input, RichLog, Static

from coati_tui.host import runs
from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.home import HomeScreen
from coati_tui.ui.screens.runs import RunsScreen
from coati_tui.ui.screens.train import TrainScreen
from coati_tui.ui.widgets.loss_plot import LossPlot

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


async def test_demo_from_home_follows_its_runs_cancels_and_resumes():
    app = CoatiApp()  # no model: the demo is the default
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.5)
        await pilot.press("s")  # training needs a model: the app points at the demo instead
        await wait_for(pilot, lambda: any("press g" in str(n.message) for n in app._notifications))
        await pilot.press("g")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        train = app.screen
        assert train.demo and train.run_dir.name == "demo-sft"
        plot = train.query_one(LossPlot)
        await wait_for(pilot, lambda: len(plot.values) >= 3, timeout=120)
        await pilot.press("c")  # SIGINT to the demo's process group: the trainer checkpoints, the demo stops
        await wait_for(pilot, lambda: train.status == "cancelled", timeout=60)
        assert train.proc.wait(timeout=30) == 0
        assert runs.status(runs.demo_runs()[0])["status"] == "cancelled"
        await pilot.press("r")  # `coati-tui demo --resume`: SFT goes on from its checkpoint, then the RM
        await wait_for(pilot, lambda: train.run_dir.name == "demo-rm" and train.stage == "rm", timeout=240)
        sft = runs.status(runs.demo_runs()[0])
        assert sft["status"] == "completed" and sft["final"]
        await pilot.press("c")
        await wait_for(pilot, lambda: train.status == "cancelled", timeout=60)
        train.proc.wait(timeout=30)


async def test_a_ppo_run_shows_health_and_samples_and_next_stage_prefills(demo_home, monkeypatch):
    monkeypatch.setenv("COATI_TUI_HOME", str(demo_home))
    app = CoatiApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        table = app.screen.query_one("#runs-table")
        names = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert {"demo-sft", "demo-rm", "demo-ppo"} <= set(names)
        table.move_cursor(row=names.index("demo-ppo"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen) and app.screen.stage == "ppo")
        train = app.screen
        plot = train.query_one(LossPlot)
        await wait_for(pilot, lambda: len(plot.values) == 20)
        assert plot.ylabel.startswith("reward")
        health = str(train.query_one("#speed", Static).render())
        for word in ("reward", "KL", "ratio", "PTX", "value"):
            assert word in health, health
        log_lines = "\n".join(str(line.text) for line in train.query_one(RichLog).lines)
        assert "sample @" in log_lines and "true_score" in log_lines
        await pilot.press("escape")
        # next stage from the RM run: PPO with the SFT model and this reward model filled in
        table = app.screen.query_one("#runs-table")
        table.move_cursor(row=names.index("demo-rm"))
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        home = app.screen
        assert home.query_one("#reward-input", Input).value == str(demo_home / "runs" / "demo-rm")
        assert home.query_one("#model-input", Input).value == str(demo_home / "runs" / "demo-sft" / "final")
        assert app.focused is home.query_one("#data-input", Input)
        assert os.environ["COATI_TUI_HOME"] == str(demo_home)
        # next "stage" from the PPO run: Chat loads its model (a PEFT adapter over the SFT model)
        home.action_runs()
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query("#runs-table"))
        app.screen.query_one("#runs-table").move_cursor(row=names.index("demo-ppo"))
        await pilot.press("n")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "ChatScreen" and app.screen.loaded is not None, timeout=90
        )
        assert app.screen.loaded["model"] == str(demo_home / "runs" / "demo-ppo" / "final")
