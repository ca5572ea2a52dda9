"""The ranking pane driven by the Pilot on a tiny model: pairs are generated in the background by a real
generation worker, choices land in the SQLite store, undo and notes work, the export matches the choices,
and one key sets up and starts the next reward model's run."""

import json

import pytest
from test_app_train import wait_for

from coati_tui.data import prefstore
from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.rank import RankScreen

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "请列出三种水果。"}, {"prompt": "List three fruits."}, {"prompt": "你好"}, {"prompt": "Say hi."}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


async def test_a_labeling_session_stores_choices_undo_notes_and_exports(tiny_model, tmp_path):
    store = tmp_path / "prefs.sqlite"
    app = CoatiApp(
        model=str(tiny_model),
        mode="rank",
        rank={"prompts": str(prompts_file(tmp_path)), "store": str(store), "annotator": "标注员", "start": True},
    )
    async with app.run_test(size=(120, 40)) as pilot:
        rank = app.screen
        assert isinstance(rank, RankScreen)
        assert not rank.query_one("#rank-pair").has_class("stacked")  # wide: side by side
        await wait_for(pilot, lambda: rank.current is not None, timeout=120)
        first = rank.current
        assert first.prompt[-1]["content"] in ("请列出三种水果。", "List three fruits.", "你好", "Say hi.")
        assert rank.query_one("#rank-a").content.markup == (first.left or "*(empty answer)*")
        # the next pairs are written in the background while this one is on screen
        await wait_for(pilot, lambda: len(rank.store.pending("标注员")) >= 2, timeout=120)
        await pilot.press("a")
        second = rank.current
        assert second is not None and second.id != first.id
        await pilot.press("n")
        await pilot.press(*"太长", "enter")  # a note for the next judgment; enter goes back to the pair
        assert rank.query_one("#rank-pair").has_focus
        await pilot.press("b")
        await pilot.press("u")  # takes back B: the same pair is shown again
        assert rank.current.id == second.id
        await pilot.press("t")
        await wait_for(pilot, lambda: rank.current is not None, timeout=120)
        await pilot.press("s")
        assert "labeled 2" in str(rank.query_one("#rank-status").render())
        rows = rank.store.db.execute(
            "SELECT pair_id, choice, note, annotator, undone IS NOT NULL FROM comparisons ORDER BY id"
        ).fetchall()
        assert [(r[1], r[4]) for r in rows] == [("A", 0), ("B", 1), ("tie", 0), ("skip", 0)]
        assert rows[0][0] == first.id and rows[1][0] == rows[2][0] == second.id
        assert rows[1][2] == "太长" and {r[3] for r in rows} == {"标注员"}
        assert len(rank.latencies) == 4 and all(t > 0 for t in rank.latencies)
        # position is a recorded coin flip: the stored left answer is what was shown as A
        left = rank.store.db.execute(
            "SELECT l.text FROM pairs p JOIN responses l ON l.id = p.left_id WHERE p.id = ?", (first.id,)
        ).fetchone()[0]
        assert left == first.left
        await pilot.press("ctrl+e")
        exports = sorted((app_home(tmp_path) / "exports").glob("prefs-*-coati.jsonl"))
        assert len(exports) == 1
        records = [json.loads(x) for x in exports[0].read_text(encoding="utf-8").splitlines()]
        assert records == [
            {
                "context": [{"from": "user", "content": first.prompt[-1]["content"]}],
                "chosen": [{"from": "assistant", "content": first.left}],
                "rejected": [{"from": "assistant", "content": first.right}],
            }
        ]
        await pilot.resize_terminal(80, 30)
        await pilot.pause(0.1)
        assert rank.query_one("#rank-pair").has_class("stacked")  # narrow: one above the other


async def test_workers_writing_megabytes_to_stderr_still_write_pairs(tiny_model, tmp_path, monkeypatch):
    """bitsandbytes on a CPU writes a warning per 8-bit matmul: a worker whose stderr nobody reads blocks
    once the pipe is full. Rank's workers (two models here) are drained into logs beside the store."""
    from coati_tui.worker.__main__ import NOISE_ENV

    monkeypatch.setenv(NOISE_ENV, str(2 * 2**20))
    store = tmp_path / "prefs.sqlite"
    app = CoatiApp(
        mode="rank",
        rank={
            "model": str(tiny_model),
            "model_b": str(tiny_model),
            "start": True,
            "prompts": str(prompts_file(tmp_path)),
            "store": str(store),
            "annotator": "a",
        },
    )
    async with app.run_test(size=(120, 40)) as pilot:
        rank = app.screen
        await wait_for(pilot, lambda: rank.current is not None, timeout=120)
        assert rank.current.left_model == rank.current.right_model == str(tiny_model)
        for slot in "AB":
            assert (tmp_path / f"prefs-worker-{slot}.log").stat().st_size > 2 * 2**20


def app_home(tmp_path):
    from coati_tui.core import paths

    return paths.home()


async def test_labels_left_in_the_store_come_back_and_train_rm_starts_a_run(tiny_model, tmp_path):
    """A second session opens on the pairs still pending (no model needed to label them); ctrl+t sets up
    Home with the model and the store and starts the RM run with the planner's pick."""
    store = prefstore.Store(tmp_path / "p.sqlite")
    for i, text in enumerate(("苹果", "apple", "梨")):
        prompt = store.add_prompt([{"role": "user", "content": f"水果 {i}"}], "typed")
        store.add_pair(prompt, {"text": text, "model": "m"}, {"text": "石头", "model": "m"}, swapped=False)
    store.close()
    app = CoatiApp(mode="rank", rank={"store": str(tmp_path / "p.sqlite"), "annotator": "a", "model": str(tiny_model)})
    async with app.run_test(size=(120, 40)) as pilot:
        rank = app.screen
        await pilot.pause(0.1)
        assert rank.current is not None and rank.current.left == "苹果" and not rank.writer.workers
        await pilot.press("ctrl+t")
        assert "at least two" in " ".join(n.message for n in app._notifications)
        await pilot.press("a", "a")
        await pilot.press("ctrl+t")
        from coati_tui.ui.screens.train import TrainScreen

        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen), timeout=60)
        run_dir = app.screen.run_dir
        from coati_tui.core.run_config import RunConfig

        cfg = RunConfig.read(run_dir)
        assert cfg.stage == "rm" and cfg.model == str(tiny_model) and cfg.data.endswith("prefs-p.jsonl")
        assert len((run_dir / "prefs-p.jsonl").read_text(encoding="utf-8").splitlines()) == 2
        await pilot.press("c")  # cancel: the test only needs the run started


async def test_label_then_dpo_then_the_next_round_without_leaving_the_pane(tiny_model, tmp_path):
    """ctrl+o trains DPO on the labels from model A; once it has finished, ctrl+r makes its output model A
    of round 2 (the old A becomes B) and the next judgment is recorded as round 2."""
    store = prefstore.Store(tmp_path / "p.sqlite")
    for i, (good, bad) in enumerate((("苹果", "石头"), ("apple", "rock"), ("梨", "砖"), ("pear", "brick"))):
        prompt = store.add_prompt([{"role": "user", "content": f"水果 fruit {i}"}], "typed")
        store.add_pair(prompt, {"text": good, "model": "m"}, {"text": bad, "model": "m"}, swapped=False)
    store.close()
    app = CoatiApp(mode="rank", rank={"store": str(tmp_path / "p.sqlite"), "annotator": "a", "model": str(tiny_model)})
    async with app.run_test(size=(120, 40)) as pilot:
        rank = app.screen
        await pilot.pause(0.1)
        await pilot.press("a", "a", "a")
        await pilot.press("ctrl+o")
        from coati_tui.ui.screens.train import TrainScreen

        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen), timeout=60)
        train = app.screen
        from coati_tui.core.run_config import RunConfig

        cfg = RunConfig.read(train.run_dir)
        assert cfg.stage == "dpo" and cfg.model == str(tiny_model) and cfg.data.endswith("prefs-p.jsonl")
        await wait_for(pilot, lambda: train.status == "completed", timeout=300)
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.screen is rank, timeout=10)
        await pilot.press("ctrl+r")
        assert rank.query_one("#rank-model").value == str(train.run_dir / "final")
        assert rank.query_one("#rank-model-b").value == str(tiny_model)
        assert rank.store.current_round() == 2 and "round 2" in str(rank.query_one("#rank-status").render())
        await pilot.press("b")  # the pair left from round 1, judged now: it counts for round 2
        assert rank.store.rounds() == {1: 3, 2: 1}


@pytest.mark.parametrize("bad", ["text", "foreign"])
async def test_a_bad_store_is_one_clear_error(tmp_path, bad):
    import sqlite3

    path = tmp_path / "x.sqlite"
    if bad == "text":
        path.write_text("标签", encoding="utf-8")
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE notes(id INTEGER)")
        db.commit()
        db.close()
    app = CoatiApp(mode="rank", rank={"store": str(path)})
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.1)
        rank = app.screen
        assert rank.store is None
        assert "x.sqlite" in str(rank.query_one("#rank-status").render())
        await pilot.press("a")  # no pair: a notice, the app stays up
        await pilot.press("f1")
        assert type(app.screen).__name__ == "HomeScreen"


def test_the_next_reward_model_starts_from_the_runs_own_base(demo_home, tiny_model):
    from coati_tui.core.run_config import RunConfig
    from coati_tui.host.runs import rm_base

    runs = demo_home / "runs"
    assert rm_base(str(runs / "demo-ppo" / "final")) == RunConfig.read(runs / "demo-ppo").model
    assert rm_base(str(runs / "demo-rm")) == RunConfig.read(runs / "demo-rm").model
    assert rm_base(str(runs / "demo-sft")) == str(runs / "demo-sft")
    assert rm_base(str(tiny_model)) == str(tiny_model)
