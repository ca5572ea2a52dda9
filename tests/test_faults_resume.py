"""Faults that real machines have, the resume half: the trainer killed with SIGKILL at seeded moments
(mid-step, while a checkpoint or the final model is being written), then `coati-tui train --resume`;
damaged checkpoints. Real child processes throughout: the CLI, and under it the trainer, whose pid the
run folder names. Each test draws its kill moments from its own seed, so a failure repeats."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sample_data import sft_records, write_jsonl

from coati_tui.core import events, paths
from coati_tui.host import runs

SAVE = 3  # a checkpoint every 3 steps: 12 steps, checkpoints at 3, 6 and 9 (the last 2 kept)
ARGS = ["--batch-size", "4", "--accumulation-steps", "1", "--max-len", "64", "--max-epochs", "1"]
ARGS += ["--save-interval", str(SAVE), "--lr", "3e-3"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "coati_tui", "train", "sft", *args, "--json"]


class Attempt:
    """One `coati-tui train` (its events read on a thread, so the pipe never fills) and its trainer."""

    def __init__(self, run: Path, args: list[str]):
        self.run = run
        self.err = open(run.parent / f"{run.name}-stderr.txt", "w+", encoding="utf-8")  # never a full pipe
        self.proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.events: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for ev in events.follow(self.proc.stdout):
            self.events.append(ev)

    def started(self) -> bool:
        return any(e["type"] == "start" for e in self.events)

    def wait_for(self, ready, timeout: float = 120) -> bool:
        """Poll ``ready()`` (tightly: a checkpoint write lasts milliseconds) until true or the CLI ends."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return True
            if self.proc.poll() is not None and not self.reader.is_alive():
                return False
        raise AssertionError(f"timed out waiting in {self.run}")

    def kill(self) -> bool:
        """SIGKILL to the trainer (not the CLI): False when it had already finished."""
        try:
            os.kill(int((self.run / "pid").read_text()), signal.SIGKILL)
            return True
        except ProcessLookupError:
            return False

    def finish(self) -> tuple[int, str]:
        self.reader.join(timeout=300)
        code = self.proc.wait(timeout=60)
        self.err.seek(0)
        return code, self.err.read()


def kill_at(run: Path, args: list[str], moment: str, step: int, rng: random.Random) -> tuple[Attempt, bool]:
    """Start an attempt and SIGKILL its trainer at ``moment``: "step" (during the step after ``step``),
    "checkpoint" (while ``checkpoints/.tmp-step-<step>`` is being written) or "final" (while
    ``final.tmp`` is). Returns the attempt and whether the kill landed at that moment."""
    att = Attempt(run, args)
    assert att.wait_for(att.started), att.finish()
    if moment == "step":
        hit = att.wait_for(lambda: any(e["type"] == "step" and e["step"] == step for e in att.events))
        time.sleep(rng.uniform(0, 0.02))  # a tiny step lasts ~30 ms: somewhere inside the next one
    else:
        where = run / "checkpoints" / f".tmp-step-{step}" if moment == "checkpoint" else run / "final.tmp"
        hit = att.wait_for(where.exists)
    killed = hit and att.kill()
    code, err = att.finish()
    assert code != 0 if killed else code == 0, err[-2000:]
    return att, killed


def resume(run: Path) -> tuple[Attempt, int, str]:
    att = Attempt(run, ["--resume", str(run)])
    code, err = att.finish()
    return att, code, err


def plotted(run: Path) -> tuple[list[int], list[float], str]:
    """What the Train screen shows of a past run: the plot's steps and values, and its log's text."""
    import asyncio

    from coati_tui.ui.app import CoatiApp
    from coati_tui.ui.screens.train import TrainScreen
    from coati_tui.ui.widgets.loss_plot import LossPlot

    async def look():
        app = CoatiApp()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.2)
            screen = TrainScreen(run)
            app.push_screen(screen)
            while not (app.screen is screen and screen.is_mounted):
                await pilot.pause(0.1)
            await pilot.pause(0.5)
            plot = screen.query_one(LossPlot)
            log = screen.query_one("#log")
            text = "\n".join("".join(seg.text for seg in line) for line in log.lines)
            return list(plot.steps), list(plot.values), text

    return asyncio.run(look())


def losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events.latest_steps(events.read(run / "events.jsonl"))}


def assert_same_as(reference: dict[int, float], run: Path) -> None:
    got = losses(run)
    assert sorted(got) == sorted(reference)
    worst = max(abs(got[s] - reference[s]) for s in reference)
    assert worst <= 1e-4, (worst, got, reference)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model wide enough that a full fine-tune's checkpoint takes a moment to write, its data, and
    the uninterrupted run every test compares against."""
    from coati_tui.trainer.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_model(root / "model", "causal", hidden=256, intermediate=512)
    data = write_jsonl(root / "sft.jsonl", sft_records(48))
    base = ["--model", str(model), "--data", data, *ARGS, "--lora-rank", "0", "--preset", "lora_naive"]
    ref = root / "ref"
    att = Attempt(ref, [*base, "--out", str(ref)])
    code, err = att.finish()
    assert code == 0, err[-2000:]
    reference = losses(ref)
    assert sorted(reference) == list(range(1, 13))
    return base, reference


@pytest.mark.slow
def test_kills_mid_step_then_resume_equal_the_uninterrupted_run(setup, tmp_path):
    base, reference = setup
    rng = random.Random(1401)
    run = tmp_path / "run"
    first = rng.randint(1, SAVE - 1)  # before the first checkpoint: the resume starts over
    att, killed = kill_at(run, [*base, "--out", str(run)], "step", first, rng)
    assert killed and runs.status(run)["status"] == "stopped" and runs.status(run)["resume_from"] == 0
    second = rng.choice([4, 5, 7, 8, 10])  # not a checkpoint's step: the kill lands in a step, not a save
    att, killed = kill_at(run, ["--resume", str(run)], "step", second, rng)
    # step `second`'s event came after the checkpoint before it was whole; a busy machine may let the kill
    # land a step or two later (then a newer checkpoint may stand): the newest listed one is where it resumes
    last = max(e["step"] for e in events.read(run / "events.jsonl") if e["type"] == "step")
    newest = int(paths.checkpoints(run)[-1].name[5:])
    st = runs.status(run)
    assert killed and st["status"] == "stopped" and st["step"] == last >= second
    assert st["resume_from"] == newest >= second // SAVE * SAVE
    assert f"resumable from checkpoint step-{newest}" in st["note"]
    steps, values, log = plotted(run)  # the Train screen: each step once, the note that says where it resumes
    assert steps == list(range(1, last + 1)) and "resumable from checkpoint" in log and "press r" in log
    assert max(abs(v - reference[s]) for s, v in zip(steps, values)) <= 1e-4
    att, code, err = resume(run)
    assert code == 0, err[-2000:]
    (start,) = [e for e in att.events if e["type"] == "start"]
    assert start["resumed_from"] == newest
    assert_same_as(reference, run)
    steps = [e["step"] for e in events.read(run / "events.jsonl") if e["type"] == "step"]
    assert len(steps) > len(set(steps)) == 12  # some steps are in the file twice; each counts once
    st = runs.status(run)
    assert st["status"] == "completed" and st["step"] == 12 and st["loss"] == reference[12] and not st["note"]
    steps, values, _ = plotted(run)
    assert steps == list(range(1, 13)) and max(abs(v - reference[s]) for s, v in zip(steps, values)) <= 1e-4


@pytest.mark.slow
def test_a_kill_while_a_checkpoint_is_written_leaves_the_one_before(setup, tmp_path):
    base, reference = setup
    rng = random.Random(1402)
    run = tmp_path / "run"
    step = rng.choice([6, 9])
    att, killed = kill_at(run, [*base, "--out", str(run)], "checkpoint", step, rng)
    assert killed
    partial = paths.partial_writes(run)
    names = [c.name for c in paths.checkpoints(run)]
    if partial:  # the kill landed inside the write: the folder stays hidden, the one before stands
        assert f"step-{step}" not in names and f"step-{step - SAVE}" in names
        assert runs.status(run)["resume_from"] == step - SAVE
    else:  # (it landed just after the rename): the new one stands, whole
        assert f"step-{step}" in names and not paths.checkpoint_damage(run / "checkpoints" / f"step-{step}")
    att, code, err = resume(run)
    assert code == 0, err[-2000:]
    assert not paths.partial_writes(run)
    if partial:
        removed = [e["message"] for e in att.events if e["type"] == "log" and "did not finish" in e["message"]]
        assert removed and f".tmp-step-{step}" in removed[0]
    assert_same_as(reference, run)


@pytest.mark.slow
def test_a_kill_while_the_final_model_is_written_then_resume_writes_it(setup, tmp_path):
    base, reference = setup
    rng = random.Random(1403)
    run = tmp_path / "run"
    att, killed = kill_at(run, [*base, "--out", str(run)], "final", 12, rng)
    assert killed and runs.status(run)["status"] == "stopped"
    att, code, err = resume(run)
    assert code == 0, err[-2000:]
    assert [e["status"] for e in att.events if e["type"] == "done"] == ["completed"]
    assert not paths.partial_writes(run) and (run / "final" / "model.safetensors").is_file()
    assert_same_as(reference, run)


@pytest.mark.slow
def test_a_torn_last_line_is_skipped_and_named(setup, tmp_path):
    """A kill inside the events file's write leaves the line's first part; the next trainer ends that
    line, names it in a log event, and every reader skips it."""
    base, reference = setup
    rng = random.Random(1404)
    run = tmp_path / "run"
    step = rng.choice([4, 5, 7, 8, 10])
    kill_at(run, [*base, "--out", str(run)], "step", step, rng)
    lines = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    with open(run / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"v": 1, "type": "step", "time": 1796218955.046, "step": 1')  # what a kill mid-line leaves
    assert runs.status(run)["step"] >= step  # readers skip it before the resume too
    att, code, err = resume(run)
    assert code == 0, err[-2000:]
    named = [e["message"] for e in att.events if e["type"] == "log" and "cut short" in e["message"]]
    assert len(named) == 1 and f"line {len(lines) + 1} " in named[0], named
    text = (run / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert events.parse(text[len(lines)]) is None and events.parse(text[len(lines) + 1])["type"] == "log"
    assert_same_as(reference, run)


def cut_after(run: Path, base: list[str], step: int) -> tuple[str, str]:
    """A run killed just after step ``step``: its two kept checkpoints (step-3 and step-6, unless a busy
    machine let the trainer reach step 9 first), newest last."""
    _, killed = kill_at(run, [*base, "--out", str(run)], "step", step, random.Random(step))
    assert killed
    older, newest = [c.name for c in paths.checkpoints(run)]
    return older, newest


@pytest.mark.slow
def test_a_damaged_checkpoint_falls_back_to_the_one_before(setup, tmp_path):
    """The user's report: optimizer.pt of the newest checkpoint emptied, the one before whole."""
    base, reference = setup
    run = tmp_path / "run"
    older, newest = cut_after(run, base, 7)
    (run / "checkpoints" / newest / "optimizer.pt").write_bytes(b"")
    assert runs.status(run)["resume_from"] == int(older[5:])  # the Runs list already knows
    att, code, err = resume(run)
    assert code == 0, err[-2000:]
    warned = [e["message"] for e in att.events if e["type"] == "log" and e["level"] == "warning"]
    assert any(newest in w and "optimizer.pt" in w and "0 bytes" in w for w in warned), warned
    assert [e["resumed_from"] for e in att.events if e["type"] == "start"] == [int(older[5:])]
    assert (run / "checkpoints" / f"{newest}.damaged" / "optimizer.pt").is_file()  # set aside, not deleted
    assert_same_as(reference, run)


@pytest.mark.slow
def test_no_whole_checkpoint_is_one_error_naming_what_is_missing(setup, tmp_path):
    base, _ = setup
    run = tmp_path / "run"
    older, newest = cut_after(run, base, 7)
    (run / "checkpoints" / newest / "trainable.safetensors").unlink()
    rng_pt = run / "checkpoints" / older / "rng.pt"
    rng_pt.write_bytes(rng_pt.read_bytes()[:100])
    att, code, err = resume(run)
    assert code != 0 and "Traceback" not in err
    (error,) = [e for e in att.events if e["type"] == "error"]
    assert error["kind"] == "config" and not [e for e in att.events if e["type"] == "step"]
    assert f"{newest}/trainable.safetensors: missing" in error["message"]
    assert f"{older}/rng.pt: 100 bytes" in error["message"]
    assert not any("Traceback" in line for line in error["log_tail"])
    assert [c.name for c in paths.checkpoints(run)] == [older, newest]  # nothing moved: a retry says the same


def test_latest_steps_the_later_record_wins():
    evs = [{"type": "start", "resumed_from": 0}] + [{"type": "step", "step": s, "loss": s} for s in (1, 2, 3, 4)]
    evs += [{"type": "start", "resumed_from": 2}, {"type": "step", "step": 3, "loss": 30}]
    assert [(e["step"], e["loss"]) for e in events.latest_steps(evs)] == [(1, 1), (2, 2), (3, 30)]
    evs += [{"type": "step", "step": 1, "loss": 10}]  # a restart with no checkpoint, its start lost
    assert [(e["step"], e["loss"]) for e in events.latest_steps(evs)] == [(1, 10)]


def test_checkpoint_damage_reads_the_manifest(tmp_path):
    ckpt = tmp_path / "step-2"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 2}))
    (ckpt / "optimizer.pt").write_bytes(b"x" * 10)
    paths.write_manifest(ckpt)
    assert paths.checkpoint_damage(ckpt) == ""
    (ckpt / "optimizer.pt").write_bytes(b"x" * 4)
    assert "optimizer.pt: 4 bytes, the manifest says 10" in paths.checkpoint_damage(ckpt)
    (ckpt / "optimizer.pt").unlink()
    assert "optimizer.pt: missing" in paths.checkpoint_damage(ckpt)
    (ckpt / "manifest.json").unlink()  # a checkpoint from before manifests: state and empty files only
    assert paths.checkpoint_damage(ckpt) == ""
    (ckpt / "rng.pt").write_bytes(b"")
    assert "rng.pt: empty" in paths.checkpoint_damage(ckpt)


def test_the_runs_list_says_a_stopped_run_is_resumable_and_from_where():
    from coati_tui.ui.screens.runs import _resumable

    stopped = {"status": "stopped", "final": False, "resume_from": 6}
    assert "resumable from step 6" in _resumable(stopped)
    assert "from the start" in _resumable({**stopped, "resume_from": 0})
    assert "resumable from step 4" in _resumable({**stopped, "status": "cancelled", "resume_from": 4})
    for done in ({**stopped, "status": "completed", "final": True}, {**stopped, "status": "failed"}):
        assert _resumable(done) == ""  # a finished run, or one whose error a resume would repeat
