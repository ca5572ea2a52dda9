import io
import json
import os

import pytest

from coati_tui.core import events
from coati_tui.host import runs

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def test_make_checks_required_fields_and_kinds():
    ev = events.make(
        "step",
        step=1,
        total_steps=2,
        epoch=0,
        loss=1.5,
        lr=1e-4,
        tokens_per_s=10.0,
        samples_per_s=1.0,
        eta_s=3.0,
        cpu_rss=1,
        accuracy=0.5,
    )
    assert ev["v"] == events.VERSION and ev["type"] == "step" and ev["accuracy"] == 0.5
    with pytest.raises(events.EventError, match="lacks loss"):
        events.make(
            "step", step=1, total_steps=2, epoch=0, lr=1e-4, tokens_per_s=1, samples_per_s=1, eta_s=1, cpu_rss=1
        )
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
    emit(
        "start",
        stage="rm",
        config={},
        params=1,
        trainable_params=1,
        strategy="naive",
        device="cpu",
        precision="fp32",
        total_steps=2,
    )
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
    many = runs.command(
        "/r", runs.Launch(nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    )
    assert "torch.distributed.run" in many and "--nproc-per-node=4" in many and "--nnodes=2" in many
    assert "--master-port=29400" in many and "--node-rank=1" in many
    assert many[-2:] == ["coati_tui.train", "/r"]


def _step(**extra):
    return events.make(
        "step",
        step=3,
        total_steps=10,
        epoch=0,
        loss=0.4321,
        lr=1e-4,
        tokens_per_s=1234.4,
        samples_per_s=2.0,
        eta_s=5.0,
        cpu_rss=3 * 2**30,
        **extra,
    )


def test_describe_reads_every_event_as_one_line():
    d = events.describe
    assert (
        d(
            events.make(
                "start",
                stage="rm",
                config={},
                params=1,
                trainable_params=1,
                strategy="naive",
                device="cpu",
                precision="fp32",
                total_steps=2,
            )
        )
        == "rm · naive · cpu"
    )
    assert d(_step()) == "loss 0.4321 · 1234 tok/s · RAM 3.0 GiB"
    assert (
        d(events.make("eval", step=4, metrics={"accuracy": 0.91234, "loss": 0.5}))
        == "eval @ 4: accuracy 0.9123, loss 0.5"
    )
    assert d(events.make("checkpoint", step=4, path="/r/checkpoints/step-4")) == "checkpoint /r/checkpoints/step-4"
    assert (
        d(events.make("sample", step=10, prompt="请列出三种水果。", response="樱桃、桃子。", reward=4.7))
        == "sample @10 请列出三种水果。 → 樱桃、桃子。  (reward +4.700)"
    )
    assert d(events.make("sample", step=10, prompt="p", response="r")) == "sample @10 p → r"  # no reward: none shown
    assert d(events.make("log", level="info", message="数据：48 条")) == "数据：48 条"
    assert d(events.make("done", status="completed", step=30, final="/r/final")) == "completed at step 30: /r/final"
    assert (
        d(events.make("done", status="cancelled", step=5, resume="coati-tui train sft --resume /r"))
        == "cancelled at step 5: coati-tui train sft --resume /r"
    )
    assert (
        d(events.make("error", kind="gpu_oom", message="CUDA out of memory", log_tail=[]))
        == "gpu_oom: CUDA out of memory"
    )
    assert (
        d(events.make("loaded", model="/m", device="cpu", dtype="fp32", quant="4bit", memory_bytes=2**20, load_s=1.25))
        == "loaded /m · cpu · fp32 · 4bit · 1.0 MiB in 1.2 s"
    )
    assert (
        d(events.make("answer", id="1", text="hi", tokens=8, tokens_per_s=40.0, stop="max_new_tokens"))
        == "answer: 8 tokens, 40.0 tok/s (max new tokens)"
    )
    assert d({"v": 1, "type": "party", "time": 0, "guests": 3}) == "party: guests 3"  # a newer child's event


def test_a_ppo_step_reads_by_its_stage_or_by_its_fields():
    ppo = _step(reward_mean=1.5, kl=0.0123)
    assert events.describe(ppo).startswith("reward +1.500 · KL 0.012 · ")  # no stage known: its fields decide
    assert events.describe(ppo, stage="ppo") == events.describe(ppo)
    assert events.describe(_step(), stage="ppo").startswith("reward +nan · KL nan")  # a field missing: nan, no crash
    assert events.step_view("ppo").metric == "reward_mean" and events.step_view("sft").metric == "loss"
    assert events.step_view(None, ppo).label == "reward (mean per rollout)"
    assert events.step_view(None, _step()).metric == "loss"


def test_a_new_stage_is_one_row(monkeypatch):
    dpo = events.StepView("dpo", "reward_margin", "loss", "loss", "loss {loss:.3f} · margin {reward_margin:+.2f}")
    monkeypatch.setattr(events, "STEP_VIEWS", (dpo, *events.STEP_VIEWS))
    step = _step(reward_margin=0.25)
    assert events.describe(step).startswith("loss 0.432 · margin +0.25 · ")
    assert events.describe(step, stage="dpo") == events.describe(step)
    assert events.describe(_step(), stage="sft").startswith("loss 0.4321 ·")  # the others read as before


def test_the_health_panel_follows_the_stage_and_without_one_the_step_views_table():
    """One table says what each stage's steps carry (events.STEP_VIEWS): the Train screen's panel picks a
    stage's health from it, by the start event's stage, else by the step's own fields."""
    from coati_tui.ui.widgets import health

    base = {"step": 3, "total_steps": 9, "tokens_per_s": 120.0, "samples_per_s": 2.0, "eta_s": 5, "cpu_rss": 2**20}
    grpo = {**base, "loss": 0.1, "lr": 1e-4, "reward_mean": 0.5, "tied_frac": 0.75, "kl": 0.01, "reward/奖励": 0.2}
    for stage in ("grpo", None):
        text = health.panel(grpo, stage=stage).plain
        assert "tied 75%" in text and "奖励 +0.200" in text, stage
    # the same fields under a stage with no panel of its own read as loss only
    assert "tied" not in health.panel(grpo, stage="sft").plain
    assert "loss 0.1000 · lr 1.00e-04" in health.panel(grpo, stage="sft").plain
    kto = {**base, "loss": 0.3, "lr": 1e-4, "reward_desirable": 0.4, "reward_undesirable": -0.2}
    assert (
        "good +0.400 · bad -0.200" in health.panel(kto, [{"kind": "k", "step": 2, "message": "m", "hint": "h"}]).plain
    )
    assert "ALARM k @ 2" in health.panel(kto, [{"kind": "k", "step": 2, "message": "m", "hint": "h"}], "kto").plain
