"""Snapshots of the main screens at 80x24 and 160x48: SVG screenshots in __snapshots__/ (syrupy).

The machine is a fixed profile (an RTX 3060 12 GB, 32 GiB RAM) and the runs are fixed files under a fixed
folder, so a snapshot changes only when the screens do. Rich names the SVG's CSS classes after a hash
that includes per-process details, so the name is normalised before comparing. After a deliberate change
of the UI: ``pytest tests/test_snapshots.py --snapshot-update``, then look at the SVGs before committing.
"""

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode

from coati_tui.core import hardware
from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.runs import RunsScreen
from coati_tui.ui.screens.train import TrainScreen

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

FIXED = Path("/tmp/coati-tui-snapshots")
SIZES = [(80, 24), (160, 48)]
GIB = 1024**3


def fixed_profile() -> hardware.Profile:
    return hardware.Profile(
        gpus=[hardware.GPU(0, "NVIDIA GeForce RTX 3060", 12 * GIB, 11 * GIB, "8.6", True, "560.35")],
        cpu=hardware.CPU(32 * GIB, 28 * GIB, 8, 16),
        disk_free_bytes=500 * GIB,
        disk_path="/home/user",
        stacks={
            "torch": {"installed": True, "version": "2.13.0", "cuda_build": True},
            "transformers": {"installed": True, "version": "5.23.0"},
            "peft": {"installed": True, "version": "0.21.2"},
            "colossalai": {"installed": False, "version": None},
            "bitsandbytes": {"installed": True, "version": "0.50.2"},
            "gptqmodel": {"installed": False, "version": None},
        },
    )


def write_ppo_run(folder: Path) -> Path:
    """A finished PPO run's files, as the trainer writes them (values are made up but well-formed)."""
    run = folder / "runs" / "ppo-20261123-140000-demo"
    run.mkdir(parents=True)
    (run / "config.toml").write_text('stage = "ppo"\n')
    evs = [
        {
            "v": 1,
            "type": "start",
            "time": 0,
            "stage": "ppo",
            "config": {},
            "params": 270144,
            "trainable_params": 74817,
            "strategy": "naive",
            "device": "cpu",
            "precision": "fp32",
            "total_steps": 30,
        }
    ]
    for i in range(1, 31):
        evs.append(
            {
                "v": 1,
                "type": "step",
                "time": i,
                "step": i,
                "total_steps": 30,
                "epoch": 0,
                "loss": -0.01,
                "lr": 1e-3,
                "tokens": 250,
                "tokens_per_s": 600.0,
                "samples_per_s": 70.0,
                "eta_s": 30.0 - i,
                "cpu_rss": (430 + i) * 1024**2,
                "reward_mean": -0.2 + 0.1 * i,
                "reward_std": 1.5,
                "kl": 0.05 * i,
                "kl_k3": 0.04 * i,
                "policy_loss": -0.01,
                "value_loss": 0.3,
                "ptx_loss": 1.1,
                "entropy": 0.9,
                "clip_frac": 0.02,
                "max_ratio": 1.6,
                "skipped_updates": 0,
                "response_len": 8.0,
                "rollout_tokens_per_s": 3000.0,
            }
        )
        if i % 10 == 0:
            evs.append(
                {
                    "v": 1,
                    "type": "sample",
                    "time": i,
                    "step": i,
                    "prompt": "请列出三种水果。",
                    "response": "樱桃、甜瓜、桃子。",
                    "reward": 4.7,
                }
            )
    evs.append(
        {"v": 1, "type": "eval", "time": 31, "step": 30, "metrics": {"reward": 2.78, "kl": 2.82, "true_score": 0.74}}
    )
    evs.append(
        {
            "v": 1,
            "type": "done",
            "time": 32,
            "status": "completed",
            "step": 30,
            "total_steps": 30,
            "final": str(run / "final"),
        }
    )
    (run / "events.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in evs), encoding="utf-8")
    (run / "final").mkdir()
    return run


class SVG(SingleFileSnapshotExtension):
    file_extension = "svg"  # syrupy >= 5 (4.x read _file_extension)
    _write_mode = WriteMode.TEXT


def screenshot(size, run_before) -> str:
    async def main():
        app = CoatiApp()
        async with app.run_test(size=size) as pilot:
            await run_before(pilot)
            return app.export_screenshot()

    return re.sub(r"terminal-\d+", "terminal", asyncio.run(main()))


@pytest.fixture
def snap(snapshot):
    return snapshot.use_extension(SVG)


@pytest.fixture
def fixed(monkeypatch):
    shutil.rmtree(FIXED, ignore_errors=True)
    FIXED.mkdir(parents=True)
    monkeypatch.setenv("COATI_TUI_HOME", str(FIXED))
    monkeypatch.setattr(hardware, "profile", fixed_profile)
    yield FIXED
    shutil.rmtree(FIXED, ignore_errors=True)


async def _settle(pilot):
    """Workers done, then layout, focus scrolling and animations finished (a loaded CI machine is slow)."""
    for _ in range(3):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.05)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.3)
    await pilot.wait_for_scheduled_animations()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_home(snap, fixed, size):
    assert screenshot(size, _settle) == snap


@pytest.mark.parametrize("size", SIZES[1:], ids=lambda s: f"{s[0]}x{s[1]}")  # at 80x24 the dimmed Home
def test_help(snap, fixed, size):  # behind the modal lands a line higher or lower from run to run
    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("question_mark")
        await _settle(pilot)

    assert screenshot(size, run_before) == snap


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ppo_train_screen(snap, fixed, size):
    run = write_ppo_run(fixed)

    async def run_before(pilot):
        await _settle(pilot)
        pilot.app.push_screen(TrainScreen(run, ram_total=32 * GIB))
        await pilot.pause(0.4)
        await _settle(pilot)

    assert screenshot(size, run_before) == snap


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_screen(snap, fixed, size):
    write_ppo_run(fixed)

    async def run_before(pilot):
        await _settle(pilot)
        pilot.app.push_screen(RunsScreen())
        await pilot.pause(0.2)
        await _settle(pilot)

    assert screenshot(size, run_before) == snap


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")  # stacked at 80, side by side at 160
def test_rank_screen(snap, fixed, size, monkeypatch):
    from coati_tui.data.prefstore import Store

    monkeypatch.setenv("COATI_TUI_ANNOTATOR", "ann")
    store = Store(fixed / "prefs.sqlite")
    done = store.add_pair(
        store.add_prompt([{"role": "user", "content": "List three fruits."}], "typed"),
        {"text": "Apple, pear, fig.", "model": "m"},
        {"text": "Rock.", "model": "m"},
        swapped=False,
    )
    store.judge(done, "A", "ann")
    prompt = store.add_prompt([{"role": "user", "content": "用 Python 写出三种水果。"}], "typed")
    store.add_pair(
        prompt,
        {"text": '```python\nfruits = ["苹果", "香蕉", "橙子"]\n```', "model": "m"},
        {"text": "**三种水果**：苹果、梨、桃。", "model": "m"},
        swapped=True,
    )
    store.close()

    async def run_before(pilot):
        await _settle(pilot)
        await pilot.press("f3")
        await _settle(pilot)

    assert screenshot(size, run_before) == snap


async def _plan_qwen_7b(pilot):
    """Home with a Qwen2.5-7B config on the fixed RTX 3060 12 GB: its preset fits only by the search."""
    from arch_configs import ARCHS

    model = FIXED / "qwen2.5-7b"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(ARCHS["qwen2.5-7b"][0]))
    await _settle(pilot)
    pilot.app.screen.query_one("#model-input").value = str(model)
    await pilot.press("m", "enter")
    await _settle(pilot)


@pytest.mark.parametrize("size", SIZES[1:], ids=lambda s: f"{s[0]}x{s[1]}")
def test_home_plans_a_7b_for_a_12gb_card(snap, fixed, size):
    assert screenshot(size, _plan_qwen_7b) == snap


def test_home_shows_what_the_planner_changed_and_the_command_carries_it(fixed):
    from test_app import text_of

    from coati_tui.ui.widgets.plan_table import PlanTable

    async def main():
        app = CoatiApp()
        async with app.run_test(size=(160, 48)) as pilot:
            await _plan_qwen_7b(pilot)
            table = app.screen.query_one("#plan", PlanTable)
            row = next(r for r in table.plan.rows if r.preset == "qlora_naive" and r.stage == "sft")
            cell = table.get_cell("qlora_naive", table.ordered_columns[2].key)
            return table.plan.recommended, row, cell.plain, text_of(app.screen.query_one("#detail"))

    recommended, row, cell, detail = asyncio.run(main())
    assert recommended == "qlora_naive" and row.fits and row.changes
    assert cell.endswith("✓*")
    b, acc = row.batch_size, row.settings["train.accumulation_steps"]
    assert f"SFT  fits: with batch 4 -> {b}, accumulation 8 -> {acc}: " in detail
    flat = " ".join(detail.split())
    assert f"--preset qlora_naive --batch-size {b} --accumulation-steps {acc}" in flat
