"""The app with GRPO: Home starts it with a reward function named in the reward box (ctrl+g), the Train
screen plots the mean reward and shows GRPO's health panel (reward per function, tied groups, KL)."""

import json
import os

import pytest
from test_app_train import wait_for
from textual.widgets import Static

from coati_tui.core.run_config import RunConfig
from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.train import TrainScreen
from coati_tui.ui.widgets.loss_plot import LossPlot
from coati_tui.ui.widgets.plan_table import PlanTable

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


async def test_home_starts_grpo_with_a_reward_file_and_train_shows_its_health(tiny_model, tmp_path):
    home = os.environ["COATI_TUI_HOME"]
    os.makedirs(f"{home}/presets")
    with open(f"{home}/presets/grpo_small.toml", "w", encoding="utf-8") as f:
        f.write(
            'description = "小 GRPO for tests"\n[lora]\nrank = 4\n[train]\nbatch_size = 8\nmax_epochs = 1\n'
            "grad_checkpointing = false\n[grpo]\ngroup_size = 4\nprompts_per_step = 2\nmax_new_tokens = 8\n"
        )
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": q, "target": n} for q, n in (("你好", 6), ("Say thanks.", 12))] * 4
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text(
        "def near(prompts, completions, target, **kw):\n"
        "    return [-abs(len(c) - t) / 10 for c, t in zip(completions, target)]\n",
        encoding="utf-8",
    )
    app = CoatiApp(model=str(tiny_model))
    async with app.run_test(size=(160, 48)) as pilot:
        table = app.screen.query_one("#plan", PlanTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        app.screen.query_one("#data-input").value = str(prompts)
        app.screen.query_one("#reward-input").value = f"{rewards}:near, length=0.1"
        table.move_cursor(row=table.get_row_index("grpo_small"))
        table.focus()
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        train = app.screen
        await wait_for(pilot, lambda: train.status == "completed", timeout=240)
        assert train.stage == "grpo" and len(train.query_one(LossPlot).values) == train.total
        health = str(train.query_one("#speed", Static).render())
        for word in ("reward", "near", "length", "tied", "KL", "ratio", "entropy"):
            assert word in health, health
        assert RunConfig.read(train.run_dir).reward_fns == [f"{rewards}:near", "length=0.1"]
