"""The wizard end to end on a tiny model: model -> data -> plan -> a real training child on CPU ->
loss points in the plot -> cancel -> resume -> the run in Runs."""

import os
import time

import pytest
from sample_data import sft_records, write_jsonl

from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.runs import RunsScreen
from coati_tui.ui.screens.train import TrainScreen
from coati_tui.ui.widgets.loss_plot import LossPlot
from coati_tui.ui.widgets.plan_table import PlanTable

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


async def wait_for(pilot, cond, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await pilot.pause(0.2)
    app = pilot.app
    raise AssertionError(
        f"timed out waiting; screen {type(app.screen).__name__} {getattr(app.screen, 'status', None)}, "
        f"notifications {[n.message for n in app._notifications]}"
    )


async def test_wizard_trains_cancels_resumes_and_lists_the_run(tiny_model, tmp_path):
    home = os.environ["COATI_TUI_HOME"]
    os.makedirs(f"{home}/presets")
    with open(f"{home}/presets/lora_small.toml", "w", encoding="utf-8") as f:
        f.write(
            'description = "小 LoRA for tests"\n[lora]\nrank = 4\n'
            "[train]\nbatch_size = 2\naccumulation_steps = 1\nmax_len = 64\nmax_epochs = 10\n"
        )
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(48))
    app = CoatiApp(model=str(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.screen.query_one("#plan", PlanTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        app.screen.query_one("#data-input").value = data
        table.move_cursor(row=table.get_row_index("lora_small"))
        table.focus()
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        train = app.screen
        plot = train.query_one(LossPlot)
        await wait_for(pilot, lambda: len(plot.values) >= 2)  # loss points arrive from the child
        await pilot.press("c")
        await wait_for(pilot, lambda: train.status == "cancelled")
        cut = max(plot.steps)
        assert cut < train.total
        await pilot.press("r")
        await wait_for(pilot, lambda: train.status == "completed", timeout=240)
        assert max(plot.steps) == train.total and len(plot.values) == train.total
        assert (train.run_dir / "final" / "adapter_model.safetensors").is_file()
        await pilot.press("escape")
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        rows = app.screen.query_one("#runs-table")
        assert rows.row_count == 1
        assert "completed" in str(rows.get_row_at(0)[2])


async def test_a_crashing_trainer_shows_the_error_and_the_app_keeps_working(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "你好"}\n', encoding="utf-8")
    app = CoatiApp(model=str(tiny_model))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.screen.query_one("#plan", PlanTable)
        await wait_for(pilot, lambda: table.row_count > 0)
        app.screen.query_one("#data-input").value = str(bad)
        table.focus()
        await pilot.press("s")  # the data check refuses before any child starts
        await wait_for(pilot, lambda: any("line 1" in str(n.message) for n in app._notifications))
        assert not isinstance(app.screen, TrainScreen)
        await pilot.press("b")  # still responsive
        assert app.screen.show_breakdown


async def test_out_of_memory_offers_the_next_smaller_preset_and_resumes_with_it(tmp_path):
    """A run that died of OOM at step 3 (its files as the trainer leaves them: checkpoint step-2, an
    error event of kind cpu_oom; a real OOM cannot be provoked on a CI machine) shows the planner's next
    smaller preset; p starts it, resuming from the checkpoint when the adapters match. The model is stored in
    bf16, as models ship: on a CPU QLoRA then needs less RAM than LoRA's fp32 copy (with fp32 weights on disk
    the pages read to quantize them stay resident, and it needs more)."""
    import json
    import subprocess
    import sys

    from conftest import transformers_major

    from coati_tui.core import events
    from coati_tui.trainer.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model", intermediate=256, stored="bfloat16")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(48))
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coati_tui",
            "train",
            "sft",
            "--model",
            str(model),
            "--data",
            data,
            "--out",
            str(run),
            "--preset",
            "lora_naive",
            "--lora-rank",
            "4",
            "--batch-size",
            "2",
            "--accumulation-steps",
            "1",
            "--max-len",
            "64",
            "--max-steps",
            "4",
            "--save-interval",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = [e for e in events.read(run / "events.jsonl") if e["type"] != "done" and e.get("step", 0) <= 3]
    kept.append(events.make("error", kind="cpu_oom", message="MemoryError: cannot allocate", log_tail=["..."]))
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    import shutil

    shutil.rmtree(run / "final")
    app = CoatiApp()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        screen = TrainScreen(run)
        app.push_screen(screen)
        await wait_for(pilot, lambda: app.screen is screen and screen.is_mounted)
        problem = screen.query_one("#problem")
        await wait_for(pilot, lambda: "smaller preset" in str(problem.render()).lower())
        if transformers_major() < 5:  # QLoRA on CPU needs transformers 5: nothing smaller fits here
            assert "No smaller preset" in str(problem.render()) and screen.fallback is None
            return
        assert screen.fallback.preset == "qlora_naive"
        await pilot.press("p")
        await wait_for(pilot, lambda: screen.run_dir != run)
        assert (screen.run_dir / "checkpoints" / "step-2").is_dir()
        await wait_for(pilot, lambda: screen.status == "completed", timeout=240)
        evs = events.read(screen.run_dir / "events.jsonl")
        start = next(e for e in evs if e["type"] == "start")
        assert start["resumed_from"] == 2 and start["config"]["preset"]["quant"]["bits"] == 4
        assert [e["step"] for e in evs if e["type"] == "step"] == [3, 4]


async def test_the_app_reattaches_to_a_run_that_kept_training(tiny_model, tmp_path):
    """A run started detached (as the app starts them) trains on without the app; opening the app again
    shows it, and cancelling from there stops it cleanly."""
    from coati_tui.host import runs
    from coati_tui.host.build import build

    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(48))
    cfg = build(
        "sft",
        str(tiny_model),
        data,
        "lora_naive",
        {
            "lora.rank": 4,
            "train.batch_size": 2,
            "train.accumulation_steps": 1,
            "train.max_len": 64,
            "train.max_epochs": 50,
            "train.grad_checkpointing": False,
        },
    )
    run = runs.prepare(cfg)
    proc = runs.launch(run, detached=True)  # the app that started it is gone
    deadline = time.monotonic() + 60
    while runs.alive(run) is None and time.monotonic() < deadline:  # the trainer is up
        time.sleep(0.2)
    try:
        app = CoatiApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
            screen = app.screen
            assert screen.run_dir == run
            plot = screen.query_one(LossPlot)
            await wait_for(pilot, lambda: len(plot.values) >= 2)
            await pilot.press("c")
            await wait_for(pilot, lambda: screen.status == "cancelled")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
