"""The guards against reward hacking (trainer/ppo/guard.py): by hand, then in a real PPO child."""

import json
from dataclasses import dataclass, field

import pytest
import torch

from coati_tui.core import presets
from coati_tui.trainer.ppo import guard


@dataclass
class State:
    first: dict = field(default_factory=dict)
    signs: dict = field(default_factory=dict)
    fired: list = field(default_factory=list)


STATS = {"mean": 1.0, "std": 2.0, "min": -3.0, "max": 5.0, "margin": 2.0, "pairs": 10}


def pp(**kw):
    return presets.Preset().with_overrides({f"ppo.{k}": v for k, v in kw.items()}).ppo


def test_stats_are_the_rms_eval_scores_summed_up():
    s = guard.stats_of([3.0, 1.0], [-1.0, 1.0])
    assert s["mean"] == 1.0 and s["min"] == -1.0 and s["max"] == 3.0 and s["margin"] == 2.0 and s["pairs"] == 2
    assert s["std"] == pytest.approx(torch.tensor([3.0, 1.0, -1.0, 1.0]).std().item())


def test_stats_are_read_from_the_rms_coati_json(tmp_path):
    assert guard.read_stats(str(tmp_path)) is None  # a model not trained here
    (tmp_path / "coati.json").write_text(json.dumps({"stage": "rm", "reward_stats": STATS}))
    assert guard.read_stats(str(tmp_path)) == STATS
    (tmp_path / "coati.json").write_text(json.dumps({"reward_stats": {"mean": "x"}}))
    assert guard.read_stats(str(tmp_path)) is None


def test_shaping_normalizes_clips_to_the_seen_range_and_charges_length():
    scores, lengths = torch.tensor([1.0, 9.0, -7.0]), torch.tensor([4.0, 4.0, 2.0])
    plain = guard.Shaper(pp(reward_normalize=True), STATS).shape(scores, lengths)
    assert plain.tolist() == [0.0, 4.0, -4.0]
    seen = guard.Shaper(pp(reward_clip_seen=True), STATS).shape(scores, lengths)
    assert seen.tolist() == [0.0, 2.0, -2.0]  # (5 - 1) / 2 and (-3 - 1) / 2
    long = guard.Shaper(pp(length_penalty=0.5), STATS).shape(scores, lengths)
    assert long.tolist() == [-2.0, 2.0, -5.0]
    raw = guard.Shaper(pp(reward_normalize=False, reward_clip=3.0), STATS).shape(scores, lengths)
    assert raw.tolist() == [1.0, 3.0, -3.0]
    assert guard.Shaper(pp(), None).shape(scores, lengths).tolist() == scores.tolist()  # no stats: raw


def test_the_kl_controller_steers_toward_its_target_by_at_most_20_percent_a_horizon():
    assert guard.next_kl_coef(0.1, 4.0, 2.0, 100, 100) == pytest.approx(0.12)  # far above: +20% a horizon
    assert guard.next_kl_coef(0.1, 2.5, 2.0, 100, 50) == pytest.approx(0.1 * (1 + 0.2 * 0.5))
    assert guard.next_kl_coef(0.1, 0.0, 2.0, 100, 10) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    assert guard.next_kl_coef(0.1, 9.0, 0.0, 100, 100) == 0.1  # target 0: a fixed coefficient
    coef = 0.1
    for _ in range(50):  # a KL that answers the coefficient settles near the target
        coef = guard.next_kl_coef(coef, 0.2 / coef, 2.0, 64, 32)
    assert 0.2 / coef == pytest.approx(2.0, rel=0.1)


def test_alarms_fire_once_after_their_patience_and_say_what_to_try():
    watch, state = guard.Watch(pp(kl_target=2.0, alarm_patience=2), STATS), State()
    calm = {"kl": 1.0, "response_len": 10.0, "reward_raw": 2.0}
    for _ in range(3):
        assert watch.check(state, calm) == []
    assert watch.check(state, {**calm, "kl": 5.0}) == []  # one step above 4.0: not yet
    (alarm,) = watch.check(state, {**calm, "kl": 5.0})
    assert alarm["kind"] == "kl" and alarm["limit"] == 4.0 and "kl_target" in alarm["hint"]
    assert watch.check(state, {**calm, "kl": 5.0}) == []  # once a run
    shrunk = {**calm, "response_len": 4.0, "reward_raw": 6.0}
    assert watch.check(state, shrunk) == []
    kinds = {a["kind"] for a in watch.check(state, shrunk)}
    assert kinds == {"length", "reward_range"}
    (gap,) = watch.check(state, {**calm, "reward_gap": 3.5})  # 1.5 x margin 2.0 = 3.0; no patience
    assert gap["kind"] == "gap" and "SFT model" in gap["message"]
    assert state.fired == ["kl", "length", "reward_range", "gap"]


def test_without_rm_statistics_only_kl_and_length_can_fire():
    watch, state = guard.Watch(pp(alarm_patience=1), None), State()
    for _ in range(3):
        watch.check(state, {"kl": 0.0, "response_len": 10.0, "reward_raw": 99.0, "reward_gap": 99.0})
    assert state.fired == []


# ---- in real children --------------------------------------------------------------------------------
def _cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "coati_tui", *args, "--json"], capture_output=True, text=True, timeout=600
    )


SMALL = [
    "--lora-rank",
    "4",
    "--batch-size",
    "4",
    "--max-len",
    "64",
    "--no-grad-checkpointing",
    "--preset",
    "lora_naive",
]
PPO = ["--rollout-batch", "4", "--max-new-tokens", "8", "--ppo-epochs", "1", "--batch-size", "2"]


@pytest.fixture(scope="module")
def rm_run(tiny_model, tmp_path_factory):
    from sample_data import preference_records, write_jsonl

    folder = tmp_path_factory.mktemp("guard")
    prefs = write_jsonl(folder / "prefs.jsonl", preference_records(40))
    out = folder / "rm"
    proc = _cli(
        "train", "rm", "--model", str(tiny_model), "--data", prefs, *SMALL, "--max-steps", "3", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_an_rm_run_keeps_its_eval_scores_for_ppo(rm_run):
    from coati_tui.core import events

    stats = guard.read_stats(str(rm_run / "final"))
    assert stats is not None and stats["pairs"] >= 1 and stats["min"] <= stats["mean"] <= stats["max"]
    last_eval = [e for e in events.read(rm_run / "events.jsonl") if e["type"] == "eval"][-1]["metrics"]
    assert stats["margin"] == pytest.approx(last_eval["margin"], abs=1e-5)  # the same scores as its last eval


@pytest.mark.slow  # the loop's logic, not the stack's: CI runs it once
def test_ppo_normalizes_reports_and_stops_at_the_first_alarm_keeping_the_checkpoint_before(
    tiny_model, rm_run, tmp_path
):
    from sample_data import write_jsonl

    from coati_tui.core import events
    from coati_tui.host import runs

    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"messages": [{"from": "user", "content": q}]} for q in ("你好", "Name a color.")] * 16
    )
    preset = tmp_path / "touchy.toml"  # any KL at all is an alarm, at once
    preset.write_text("[ppo]\nalarm_kl = 1e-9\nalarm_patience = 1\ngap_every = 1\n[lora]\nrank = 4\n", encoding="utf-8")
    out = tmp_path / "ppo"
    proc = _cli(
        "train",
        "ppo",
        "--model",
        str(tiny_model),
        "--reward",
        str(rm_run),
        "--prompts",
        prompts,
        "--preset",
        str(preset),
        *PPO,
        "--max-len",
        "64",
        "--max-steps",
        "8",
        "--lr",
        "5e-3",
        "--kl-coef",
        "0",
        "--save-interval",
        "1",
        "--stop-on-alarm",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events.read(out / "events.jsonl")
    assert any("normalize it" in e["message"] for e in evs if e["type"] == "log")
    steps = [e for e in evs if e["type"] == "step"]
    assert all({"kl_coef", "reward_raw", "reward_gap", "reward_sft"} <= set(s) for s in steps)
    alarms = [e for e in evs if e["type"] == "alarm"]
    alarm = alarms[0]  # any KL above zero is one; so is a score above this tiny RM's narrow range
    assert {a["step"] for a in alarms} == {steps[-1]["step"]} and alarm["kind"] in guard.SIGNS
    assert alarm["step"] > 1  # step 1's actor is the reference: KL 0, and no baseline yet
    (done,) = [e for e in evs if e["type"] == "done"]
    assert done["status"] == "stopped" and f"alarm {alarm['kind']}" in done["reason"]
    assert done["kept_step"] == alarm["step"] - 1
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept[-1] == f"step-{alarm['step'] - 1}"  # the alarm's step was not kept
    assert (out / "final" / "adapter_config.json").is_file()
    assert runs.status(out)["status"] == "stopped"


def test_prompts_the_sft_model_already_answers_above_the_rms_range_raise_no_alarm():
    watch, state = guard.Watch(pp(alarm_patience=1), STATS), State()
    for _ in range(3):  # the SFT model's own answers score 6: above the RM's eval range (max 5)
        assert watch.check(state, {"kl": 0.0, "response_len": 8.0, "reward_raw": 6.0}) == []
    assert watch.check(state, {"kl": 0.0, "response_len": 8.0, "reward_raw": 7.5}) == []  # within a std of the start
    (alarm,) = watch.check(state, {"kl": 0.0, "response_len": 8.0, "reward_raw": 8.5})
    assert alarm["kind"] == "reward_range" and alarm["limit"] == 8.0


def test_the_hackable_task_teaches_the_rm_that_shorter_wins(tmp_path):
    """bench/ppo_hacking.py's task: with short_chosen every chosen answer names only its liked fruits, so it
    names fewer fruits than the rejected one whenever it had a disliked one to drop; without, both name three."""
    from coati_tui.data import demo

    def fruits(text: str) -> list[str]:
        names = [f for lang in demo.FRUITS.values() for group in lang.values() for f in group]
        return [f for f in names if f in text]

    def pairs(folder, **kw):
        files = demo.write_task(folder, seed=3, n_sft=8, n_pairs=60, n_prompts=4, n_test=4, **kw)
        rows = [json.loads(line) for line in files["prefs"].read_text(encoding="utf-8").splitlines()]
        assert {demo.language(r["context"][0]["content"]) for r in rows} == {"en", "zh"}  # both languages
        return [(fruits(r["chosen"][0]["content"]), fruits(r["rejected"][0]["content"])) for r in rows]

    hacked = pairs(tmp_path / "hacked", short_chosen=1.0)
    liked = {f for lang in demo.FRUITS.values() for f in lang["liked"]}
    assert all(set(chosen) <= liked and len(rejected) == 3 for chosen, rejected in hacked)
    assert sum(len(chosen) < 3 for chosen, _ in hacked) > len(hacked) / 2
    assert all(len(chosen) == len(rejected) == 3 for chosen, rejected in pairs(tmp_path / "plain"))


@pytest.mark.slow  # the loop's logic, not the stack's: CI runs it once
def test_grpo_scored_by_a_reward_model_trains_on_its_normalized_scores(tiny_model, rm_run, tmp_path):
    """GRPO with --reward RM shares PPO's shaping: step 1 (the policy still the SFT model, the same seed, so
    the same answers) reports (raw - mean) / std of the RM's eval scores; with reward_normalize off, raw."""
    from sample_data import write_jsonl

    from coati_tui.core import events

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": q} for q in ("你好", "Name a color.")] * 8)
    first = {}
    for name, normalize in (("norm", "true"), ("raw", "false")):
        preset = tmp_path / f"{name}.toml"
        preset.write_text(f"[ppo]\nreward_normalize = {normalize}\n[lora]\nrank = 4\n", encoding="utf-8")
        out = tmp_path / name
        proc = _cli(
            "train", "grpo", "--model", str(tiny_model), "--reward", str(rm_run), "--prompts", prompts,
            *SMALL[:-2], "--preset", str(preset), "--group-size", "4", "--max-new-tokens", "8",
            "--max-steps", "2", "--out", str(out),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        steps = [e for e in events.read(out / "events.jsonl") if e["type"] == "step"]
        assert len(steps) == 2
        first[name] = steps[0]["reward_mean"]
    stats = guard.read_stats(str(rm_run / "final"))
    assert stats is not None and stats["std"] > 0
    assert first["norm"] == pytest.approx((first["raw"] - stats["mean"]) / stats["std"], abs=1e-4)
