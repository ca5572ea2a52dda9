"""Faults of the storage a real machine has, injected into real child processes: a full disk while a
checkpoint or the final model is written (RLIMIT_FSIZE in the child: the write fails with EFBIG, as it
would with ENOSPC), two writers on one run folder, kill -9 during a preference export.

Each ends in one clear message (the path, the pid), and what was already saved stays whole."""

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from sample_data import sft_records, write_jsonl

from coati_tui.core import events, presets, runlock
from coati_tui.core.errors import disk_full, error_kind
from coati_tui.core.run_config import RunConfig

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

FULL_FT = ["--batch-size", "4", "--accumulation-steps", "1", "--max-len", "64", "--preset", "lora_naive"]
FULL_FT += ["--lora-rank", "0", "--max-steps", "3", "--save-interval", "2"]


def train(*args, limit=None, timeout=300):
    """`coati-tui train ... --json`; ``limit``: the largest file (bytes) this process and its children may write."""

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", "train", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap if limit else None,
    )
    return proc, [e for e in map(events.parse, proc.stdout.splitlines()) if e]


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def set_max_steps(run, n):
    import dataclasses

    dataclasses.replace(RunConfig.read(run), max_steps=n).write(run)


@pytest.fixture(scope="module")
def done_run(tiny_model, tmp_path_factory):
    """A full fine-tune that ran 3 steps: checkpoints/step-2 and final/, written with room to spare."""
    data = write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", sft_records(48))
    run = tmp_path_factory.mktemp("disk") / "run"
    proc, _ = train("sft", "--model", str(tiny_model), "--data", data, "--out", str(run), *FULL_FT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def test_the_disk_fills_during_a_checkpoint_then_the_final_model_and_the_run_goes_on(done_run):
    run, ckpt = done_run, done_run / "checkpoints" / "step-2"
    before, final_before = digest(ckpt), digest(run / "final")
    weights = min((ckpt / "trainable.safetensors").stat().st_size, (run / "final" / "model.safetensors").stat().st_size)
    limit = weights // 2  # the logs and events fit; no checkpoint or model weights do

    set_max_steps(run, 6)  # resumes at step 2; step 4's checkpoint cannot be written
    proc, evs = train("sft", "--resume", str(run), limit=limit)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (err,) = [e for e in evs if e["type"] == "error"]
    assert err["kind"] == "disk_full", err
    assert str(run / "checkpoints" / "step-4") in err["message"] and "free there" in err["message"]
    assert f"{ckpt} stands" in err["message"] and "needs about" in err["message"]
    assert digest(ckpt) == before  # the previous checkpoint is whole ...
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]  # ... and no .tmp is left
    assert events.read(run / "events.jsonl")[-1] == err

    set_max_steps(run, 3)  # resumes at step 2; the final model cannot be written
    proc, evs = train("sft", "--resume", str(run), limit=limit)
    (err,) = [e for e in evs if e["type"] == "error"]
    assert proc.returncode == 1 and err["kind"] == "disk_full", err
    assert str(run / "final") in err["message"]
    assert digest(run / "final") == final_before and not (run / "final.tmp").exists()

    proc, evs = train("sft", "--resume", str(run))  # room again: the run goes on from its checkpoint
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [e for e in evs if e["type"] == "start"][0]["resumed_from"] == 2
    assert [e for e in evs if e["type"] == "done"][0]["status"] == "completed"


async def test_the_app_shows_the_disk_full_hint_and_stays_up(done_run, tmp_path):
    from coati_tui.ui.app import CoatiApp
    from coati_tui.ui.screens.train import TrainScreen

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_bytes((done_run / "config.toml").read_bytes())
    message = f"disk full writing {run}/checkpoints/step-4 (OSError: [Errno 28] No space left on device)"
    (run / "events.jsonl").write_text(json.dumps(events.make("error", kind="disk_full", message=message,
                                                             log_tail=[])) + "\n")  # fmt: skip
    app = CoatiApp()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = TrainScreen(run)
        app.push_screen(screen)
        for _ in range(50):
            await pilot.pause(0.1)
            text = str(screen.query_one("#problem").render()) if screen.is_mounted else ""
            if "free space" in text:
                break
        assert "disk full" in text and "checkpoints/step-4" in text and "free space" in text.lower(), text
        await pilot.press("escape")  # still up and answering keys
        assert app.screen is not screen


@pytest.mark.parametrize(
    "exc",
    [
        OSError(28, "No space left on device"),
        OSError(122, "Disk quota exceeded"),
        OSError(27, "File too large"),
        RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0"),
        RuntimeError("basic_ios::clear: iostream error"),  # what torch.save said when the test above hit it
    ],
)
def test_every_form_of_a_full_disk_is_disk_full(exc):
    assert error_kind(exc) == "disk_full"
    try:
        raise ValueError("while saving") from exc
    except ValueError as wrapped:
        assert disk_full(wrapped) and error_kind(wrapped) == "disk_full"
    assert error_kind(OSError(2, "No such file or directory")) == "crash"


# ---- one writer per run folder -------------------------------------------------------------------
@pytest.fixture
def long_run(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(48))
    run = tmp_path / "run"
    run.mkdir()
    cfg = RunConfig(stage="sft", model=str(tiny_model), data=data, preset=presets.load("lora_naive"), max_steps=2)
    cfg.preset = cfg.preset.with_overrides({"train.max_len": 64, "train.batch_size": 4, "train.max_epochs": 100})
    cfg.write(run)
    return run


def start_trainer(run, max_steps):
    set_max_steps(run, max_steps)
    child = subprocess.Popen(
        [sys.executable, "-m", "coati_tui.train", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in child.stdout:
        ev = events.parse(line)
        if ev and ev["type"] == "step":
            return child
    raise AssertionError("the first trainer never stepped")


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(long_run):
    run = long_run
    first = start_trainer(run, 10_000)
    try:
        assert runlock.holder(run).pid == first.pid
        proc, _ = train("sft", "--resume", str(run))  # the CLI says so before it starts anything
        assert proc.returncode == 2 and f"pid {first.pid}" in proc.stderr and "coati_tui.train" in proc.stderr
        assert "Traceback" not in proc.stderr
        config = (run / "config.toml").read_bytes()  # a new run aimed at it (--out) is refused too, untouched
        cfg = RunConfig.read(run)
        proc, _ = train("sft", "--model", cfg.model, "--data", cfg.data, "--out", str(run), "--preset", "lora_naive")
        assert proc.returncode == 2 and f"pid {first.pid}" in proc.stderr
        assert (run / "config.toml").read_bytes() == config

        seen = len(events.read(run / "events.jsonl"))
        second = subprocess.run(  # a trainer started by hand (or by an app that did not look) refuses too
            [sys.executable, "-m", "coati_tui.train", str(run)], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 1
        (err,) = [e for e in map(events.parse, second.stdout.splitlines()) if e]
        assert err["kind"] == "config" and f"pid {first.pid}" in err["message"]
        assert err not in events.read(run / "events.jsonl")[seen:]  # the first one's file is not written to
        assert first.poll() is None  # and the first trains on
    finally:
        os.kill(first.pid, signal.SIGKILL)  # dies holding the lock: the file stays, with its pid
        first.wait()
    assert (run / "lock").read_text().split()[0] == str(first.pid) and runlock.holder(run) is None
    set_max_steps(run, 2)
    proc, evs = train("sft", "--resume", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [e for e in evs if e["type"] == "done"][0]["status"] == "completed"


# ---- the preference store ---------------------------------------------------------------------------
EXPORTER = """
import sys, time
from coati_tui.data import prefstore

real = prefstore.json.dumps
count = [0]

def slow_dumps(*a, **k):  # the export, stopped halfway through its records
    count[0] += 1
    if count[0] == 50:
        print("halfway", flush=True)
        time.sleep(600)
    return real(*a, **k)

prefstore.json.dumps = slow_dumps
prefstore.export(sys.argv[1], "coati", sys.argv[2])
"""


def test_kill_9_during_an_export_leaves_the_old_file_whole(tmp_path):
    from coati_tui.data.prefstore import Store, export

    store = tmp_path / "p.sqlite"
    with Store(store) as s:
        for i in range(120):
            pid = s.add_prompt([{"role": "user", "content": f"问题 {i}"}], "test")
            pair = s.add_pair(pid, {"text": "好", "model": "a"}, {"text": "坏", "model": "b"}, swapped=False)
            s.judge(pair, "A", "ann")
    out = tmp_path / "prefs.jsonl"
    assert export(store, "coati", out)[0] == 120
    old = out.read_bytes()
    script = tmp_path / "exporter.py"
    script.write_text(EXPORTER)
    child = subprocess.Popen([sys.executable, str(script), str(store), str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "halfway"
    time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert out.read_bytes() == old  # the final name holds the whole old export, never half a new one
    strays = [p.name for p in tmp_path.iterdir() if p.name not in ("p.sqlite", "prefs.jsonl", "exporter.py")]
    assert all(n.startswith(".prefs.jsonl.") and n.endswith(".tmp") for n in strays if "sqlite" not in n), strays
    assert export(store, "coati", out)[0] == 120 and len(out.read_text().splitlines()) == 120


FULL_EXPORTER = """
import resource, signal, sys
from coati_tui.data import prefstore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a full disk says ENOSPC; a size limit says EFBIG (once ignored)
write = prefstore._write_whole


def fill_then_write(out, lines):  # the store is read; the disk fills as the export is written
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    write(out, lines)


prefstore._write_whole = fill_then_write
try:
    prefstore.export(sys.argv[1], "coati", sys.argv[2])
except OSError as exc:
    print("errno", exc.errno)
"""


def test_a_full_disk_during_an_export_leaves_the_old_file_and_no_temp(tmp_path):
    from coati_tui.data.prefstore import Store, export

    store = tmp_path / "p.sqlite"
    with Store(store) as s:
        for i in range(100):
            pid = s.add_prompt([{"role": "user", "content": f"问题 {i} " + "长" * 40}], "test")
            pair = s.add_pair(pid, {"text": "好" * 40, "model": "a"}, {"text": "坏", "model": "b"}, swapped=False)
            s.judge(pair, "A", "ann")
    out = tmp_path / "prefs.jsonl"
    out.write_text("the old export\n")
    script = tmp_path / "exporter.py"
    script.write_text(FULL_EXPORTER)
    proc = subprocess.run([sys.executable, str(script), str(store), str(out)], capture_output=True, text=True)
    assert proc.stdout.split() == ["errno", "27"], proc.stderr[-2000:]
    assert out.read_text() == "the old export\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert export(store, "coati", out)[0] == 100
