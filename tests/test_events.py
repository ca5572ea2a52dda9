import io
import os
import json

import pytest

from coati_tui.core import events
from coati_tui.host import runs


def test_make_checks_required_fields_and_kinds():
    ev = events.make("step", step=1, total_steps=2, epoch=0, loss=1.5, lr=1e-4, tokens_per_s=10.0,
                     samples_per_s=1.0, eta_s=3.0, cpu_rss=1, accuracy=0.5)
    assert ev["v"] == events.VERSION and ev["type"] == "step" and ev["accuracy"] == 0.5
    with pytest.raises(events.EventError, match="lacks loss"):
        events.make("step", step=1, total_steps=2, epoch=0, lr=1e-4, tokens_per_s=1, samples_per_s=1, eta_s=1,
                    cpu_rss=1)
    with pytest.raises(events.EventError, match="error kind"):
        events.make("error", kind="oops", message="x", log_tail=[])
    with pytest.raises(events.EventError, match="unknown event type"):
        events.make("party")


def test_emitter_writes_file_and_echo_and_parse_skips_noise(tmp_path):
    echo = io.StringIO()
    emit = events.Emitter(tmp_path / "events.jsonl", echo=echo)
    emit("log", level="info", message="数据：48 条")
    emit("done", status="completed", step=3)
    emit.close()
    with open(tmp_path / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"v": 1, "type": "step", "ste')  # a torn last line, as after a crash
    got = events.read(tmp_path / "events.jsonl")
    assert [e["type"] for e in got] == ["log", "done"] and got[0]["message"] == "数据：48 条"
    assert [e["type"] for e in events.follow(io.StringIO("warming up\n" + echo.getvalue()))] == ["log", "done"]
    assert events.parse(json.dumps({"type": "step"})) is None  # no version: not ours


def test_run_status_from_files(tmp_path):
    emit = events.Emitter(tmp_path / "events.jsonl")
    assert runs.status(tmp_path)["status"] == "unknown"
    emit("start", stage="rm", config={}, params=1, trainable_params=1, strategy="naive", device="cpu",
         precision="fp32", total_steps=2)
    assert runs.status(tmp_path)["status"] == "stopped"  # events but no live trainer
    (tmp_path / "pid").write_text(str(os.getpid()))
    assert runs.status(tmp_path)["status"] == "running"
    emit("error", kind="data", message="bad", log_tail=[])
    emit.close()
    st = runs.status(tmp_path)
    assert st["status"] == "failed" and st["stage"] == "rm"


def test_launch_commands():
    one = runs.command("/r")
    assert one[1:] == ["-m", "coati_tui.train", "/r"]
    many = runs.command("/r", runs.Launch(nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.1",
                                          master_port=29400))
    assert "torch.distributed.run" in many and "--nproc-per-node=4" in many and "--nnodes=2" in many
    assert "--master-port=29400" in many and "--node-rank=1" in many
    assert many[-2:] == ["coati_tui.train", "/r"]
