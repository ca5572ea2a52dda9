"""PPO as users run it (real children) and its parts in-process on tiny models."""

import json
import shutil
import subprocess
import sys

import pytest
from sample_data import sft_records, write_jsonl

from coati_tui.core import events

PPO_SMALL = [
    "--lora-rank",
    "4",
    "--batch-size",
    "2",
    "--rollout-batch",
    "4",
    "--max-new-tokens",
    "8",
    "--ppo-epochs",
    "1",
    "--max-len",
    "64",
    "--no-grad-checkpointing",
    "--preset",
    "lora_naive",
]


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "coati_tui", *args], capture_output=True, text=True, timeout=timeout)


def of(evs, kind):
    return [e for e in evs if e["type"] == kind]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    recs = [
        {"messages": [{"from": "user", "content": q}]}
        for q in ("你好", "Say thanks.", "一加一等于几？", "Name a color.", "中国的首都是哪里？", "What is 2 + 3?")
    ] * 4
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", recs)


def test_demo_runs_the_whole_loop_and_ppo_beats_sft(demo_home):
    """A shortened `coati-tui demo`: the RM ranks held-out pairs, PPO raises the true score and the reward
    while the KL stays bounded, and the final actor loads as a standard adapter."""
    assert (demo_home / "demo-rc.txt").read_text() == "0", (demo_home / "demo-stderr.txt").read_text()[-3000:]
    summary = json.loads((demo_home / "demo-stdout.txt").read_text().strip().splitlines()[-1])
    assert summary["rm_accuracy"] >= 0.9
    assert summary["true_score_ppo"] > summary["true_score_sft"], summary
    runs = demo_home / "runs"
    evs = events.read(runs / "demo-ppo" / "events.jsonl")
    (start,) = of(evs, "start")
    assert start["shared_reward"] and start["layout"] == "lean"  # the RM rode on the actor's base
    evals = of(evs, "eval")
    assert evals[0]["step"] == 0 and evals[0]["metrics"]["kl"] == 0  # actor == reference at the start
    assert evals[-1]["metrics"]["reward"] > evals[0]["metrics"]["reward"]
    assert 0 < evals[-1]["metrics"]["kl"] < 10
    steps = of(evs, "step")
    assert len(steps) == 20
    for key in (
        "reward_mean",
        "reward_std",
        "kl",
        "kl_k3",
        "policy_loss",
        "value_loss",
        "ptx_loss",
        "entropy",
        "clip_frac",
        "max_ratio",
        "skipped_updates",
        "response_len",
        "rollout_tokens_per_s",
    ):
        assert all(key in s for s in steps), key
    samples = of(evs, "sample")
    assert samples and all(isinstance(s["response"], str) and "reward" in s for s in samples)
    assert any(ord(c) > 0x4E00 for s in samples for c in s["prompt"] + s["response"])  # Chinese round trip

    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    final = runs / "demo-ppo" / "final"
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        runs / "demo-sft" / "final"
    )
    model = AutoPeftModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "请列出三种水果。"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = out[0, ids["input_ids"].shape[1] :].tolist()
    assert tok.convert_tokens_to_ids("<|end|>") in answer  # it stops


def test_separate_reward_model_and_resume_repeats_the_run(tiny_model, tiny_reward_model, prompts, tmp_path):
    """A reward model from another base rides separately; a run resumed from its step-2 checkpoint makes
    the same rollouts and updates as the uninterrupted run."""
    a = tmp_path / "a"
    proc = cli(
        "train",
        "ppo",
        "--model",
        str(tiny_model),
        "--reward",
        str(tiny_reward_model),
        "--prompts",
        prompts,
        "--out",
        str(a),
        "--max-steps",
        "4",
        "--save-interval",
        "2",
        *PPO_SMALL,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events.read(a / "events.jsonl")
    assert not of(evs, "start")[0]["shared_reward"]
    assert any("separate model" in e["message"] for e in of(evs, "log"))
    assert [e["step"] for e in of(evs, "checkpoint")] == [2]
    assert (a / "final" / "adapter_config.json").is_file()

    b = tmp_path / "b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns("final", "events.jsonl"))
    proc = cli("train", "ppo", "--resume", str(b), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs_b = events.read(b / "events.jsonl")
    assert of(evs_b, "start")[0]["resumed_from"] == 2
    steps_a = {e["step"]: e for e in of(evs, "step")}
    steps_b = of(evs_b, "step")
    assert [e["step"] for e in steps_b] == [3, 4]
    for e in steps_b:
        for key in ("reward_mean", "kl", "policy_loss", "value_loss"):
            assert e[key] == pytest.approx(steps_a[e["step"]][key], abs=1e-4), key
        # the adaptive KL controller's coefficient comes back with the checkpoint (it has moved since step 1)
        assert e["kl_coef"] == pytest.approx(steps_a[e["step"]]["kl_coef"], rel=1e-9)
        assert e["kl_coef"] != steps_a[1]["kl_coef"]


@pytest.mark.parametrize("layout", ["lean", "four_models"])
def test_ptx_changes_the_actor_update(tiny_model, tiny_reward_model, layout):
    """In both layouts: the policy loss alone moves the actor, and the PTX loss changes that step."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoTokenizer

    from coati_tui.core import presets
    from coati_tui.data.tokenize import end_token, prepare_sft, render
    from coati_tui.trainer import models as loader
    from coati_tui.trainer import strategy
    from coati_tui.trainer.ppo import lean, separate
    from coati_tui.trainer.ppo import recipe as ppo_recipe
    from coati_tui.trainer.ppo import rollout as ppo_rollout
    from coati_tui.trainer.ppo import update as ppo_update
    from coati_tui.trainer.ppo.layout import ADAPTERS

    preset = presets.load("lora_naive").with_overrides(
        {
            "lora.rank": 4,
            "train.batch_size": 4,
            "train.grad_checkpointing": False,
            "ppo.max_new_tokens": 6,
            "ppo.ppo_epochs": 1,
            "ppo.ptx_coef": 1.0,
            "ppo.memory_lean": layout == "lean",
        }
    )
    tok = AutoTokenizer.from_pretrained(tiny_model)
    end_id, _ = end_token(tok)
    ptx_examples, _ = prepare_sft(tok, [m for m in map(_messages, sft_records(8))], 64)
    prompt_ids = [
        tok(render(tok, [{"role": "user", "content": q}], True), add_special_tokens=False)["input_ids"]
        for q in ("你好", "Say thanks.", "一加一等于几？", "Name a color.")
    ]

    def actor_after(ptx):
        torch.manual_seed(0)
        if layout == "lean":
            base = loader.load_model(tiny_model, preset, "sft", "cpu", adapters=False).model
            models = lean.Lean(base, preset, str(tiny_reward_model), str(tiny_model), "cpu", tok, info=lambda m: None)
        else:
            cfg = SimpleNamespace(model=str(tiny_model), reward=str(tiny_reward_model))
            models = separate.Separate(preset, cfg, "cpu", tok, info=lambda m: None)
        naive = strategy.Naive("cpu", "fp32")
        models.setup(naive, preset, preset.ppo)
        models.opts = {w: torch.optim.SGD(models.own[w], lr=1.0) for w in ADAPTERS}
        rollout = ppo_rollout.Rollout(
            models,
            preset.ppo,
            [end_id],
            tok.pad_token_id,
            "cpu",
            ppo_rollout.generation_config(preset.ppo, [end_id], tok.pad_token_id),
        )
        with torch.no_grad():
            exp = rollout.make(prompt_ids, kl_coef=0.1)
        before = [p.detach().clone() for p in models.own["actor"]]
        stats = ppo_update.update(
            models, exp, preset.ppo, preset, ptx, ppo_recipe.PPOState(), tok.pad_token_id, "cpu", naive
        )
        return [p.detach() - b for p, b in zip(models.own["actor"], before)], stats

    plain, stats_plain = actor_after([])
    mixed, stats_mixed = actor_after(ptx_examples)
    assert "ptx_loss" not in stats_plain and stats_mixed["ptx_loss"] > 0
    assert stats_plain["skipped_updates"] == 0
    assert any(float(d.abs().sum()) > 0 for d in plain)  # the policy loss alone moves the actor
    assert any(not torch.allclose(p, m) for p, m in zip(plain, mixed))  # and PTX changes the step


def _messages(rec):
    from coati_tui.data.formats import sft_messages

    return sft_messages(rec)


def test_ppo_cli_errors(tiny_model, prompts, tmp_path):
    proc = cli("train", "ppo", "--model", str(tiny_model), "--prompts", prompts)
    assert proc.returncode == 2 and "--reward" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"from": "user", "content": "hi"}]}\n{"answer": "no prompt here"}\n')
    proc = cli("train", "ppo", "--model", str(tiny_model), "--reward", str(tiny_model), "--prompts", str(bad))
    assert proc.returncode == 2 and "bad.jsonl: line 2" in proc.stderr
    # Gemini's auto placement cannot generate before its first training step: refused before any start
    auto = tmp_path / "gemini_auto.toml"
    auto.write_text(
        'strategy = "gemini"\n[lora]\nrank = 0\n[offload]\nplacement = "auto"\n'
        "[train]\naccumulation_steps = 1\n[needs]\ncuda = true\ncolossalai = true\n"
    )
    proc = cli(
        "train",
        "ppo",
        "--model",
        str(tiny_model),
        "--reward",
        str(tiny_model),
        "--prompts",
        prompts,
        "--preset",
        str(auto),
        "--out",
        str(tmp_path / "auto"),
    )
    assert proc.returncode == 2 and 'offload.placement = "static"' in proc.stderr
    assert not (tmp_path / "auto").exists()
    # a Gemini preset is a PPO preset like any other; here it is refused for the machine, with the fix
    proc = cli(
        "train",
        "ppo",
        "--model",
        str(tiny_model),
        "--reward",
        str(tiny_model),
        "--prompts",
        prompts,
        "--preset",
        "gemini_offload",
    )
    assert proc.returncode == 2 and "preset gemini_offload" in proc.stderr and "GPU" in proc.stderr


def test_full_finetune_ppo_runs_four_models_and_writes_a_full_model(tiny_model, tiny_reward_model, prompts, tmp_path):
    out = tmp_path / "r"
    proc = cli(
        "train",
        "ppo",
        "--model",
        str(tiny_model),
        "--reward",
        str(tiny_reward_model),
        "--prompts",
        prompts,
        "--out",
        str(out),
        *PPO_SMALL,
        "--lora-rank",
        "0",
        "--max-steps",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events.read(out / "events.jsonl")
    (start,) = of(evs, "start")
    assert start["layout"] == "four_models" and start["trainable_params"] > start["params"] / 3
    assert [e["step"] for e in of(evs, "step")] == [1, 2]
    assert all(e["skipped_updates"] == 0 and e["value_loss"] >= 0 for e in of(evs, "step"))

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"


@pytest.mark.parametrize("layout", ["lean", pytest.param("four_models", marks=pytest.mark.slow)])
def test_ppo_under_torchrun_checkpoint_and_resume(tiny_model, tiny_reward_model, prompts, tmp_path, layout):
    """Two processes (gloo on CPU), each answering its share of the prompts. Memory-lean: adapters on one
    base, gradients averaged by hand. Four models: boosted by the strategy (colossalai's DDP plugin where
    colossalai is installed, torch DDP otherwise), the checkpoint holding actor and critic with their
    optimizers, the final actor a full model. Either way a resumed run makes the first process's next
    step exactly as the uninterrupted run did."""
    import importlib.util

    colossal = importlib.util.find_spec("colossalai") is not None
    a = tmp_path / "a"
    launch = ["--nproc-per-node", "2", "--json"]
    args = [
        "--model",
        str(tiny_model),
        "--reward",
        str(tiny_reward_model),
        "--prompts",
        prompts,
        *PPO_SMALL,
        *(["--lora-rank", "0"] if layout == "four_models" else []),
        *launch,
    ]
    proc = cli("train", "ppo", *args, "--out", str(a), "--max-steps", "3", "--save-interval", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events.read(a / "events.jsonl")
    (start,) = of(evs, "start")
    assert start["layout"] == layout
    assert start["strategy"] == ("colossalai_ddp" if colossal and layout == "four_models" else "naive+ddp")
    assert start["total_steps"] == 3 and [e["step"] for e in of(evs, "step")] == [1, 2, 3]
    ckpt = a / "checkpoints" / "step-2"
    assert (ckpt / "rng.pt").is_file() and (ckpt / "rng-1.pt").is_file()  # each process's own random state
    if layout == "four_models":
        assert (ckpt / "actor").is_dir() and (ckpt / "critic").is_dir()
        from transformers import AutoModelForCausalLM

        assert AutoModelForCausalLM.from_pretrained(a / "final").config.vocab_size > 0
    else:
        assert (ckpt / "trainable.safetensors").is_file()
        assert (a / "final" / "adapter_config.json").is_file()

    b = tmp_path / "b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns("final", "events.jsonl"))
    proc = cli("train", "ppo", "--resume", str(b), *launch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs_b = events.read(b / "events.jsonl")
    assert of(evs_b, "start")[0]["resumed_from"] == 2
    (step_a,) = [e for e in of(evs, "step") if e["step"] == 3]
    (step_b,) = of(evs_b, "step")
    for key in ("reward_mean", "kl", "policy_loss", "value_loss"):
        assert step_b[key] == pytest.approx(step_a[key], abs=1e-4), key
    assert not [e for e in of(evs_b, "log") if e["level"] == "warning"]
    if layout == "lean":  # resumed by one process: it goes on, and says the data split changed
        c = tmp_path / "c"
        shutil.copytree(a, c, ignore=shutil.ignore_patterns("final", "events.jsonl"))
        proc = cli("train", "ppo", "--resume", str(c), "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        warned = [e["message"] for e in of(events.read(c / "events.jsonl"), "log") if e["level"] == "warning"]
        assert warned and "written by 2 process(es), this run has 1" in warned[0]
