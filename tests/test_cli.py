"""The headless commands, run as a user runs them: a real child process of the installed script."""

import json
import os
import subprocess
import sys

import pytest
from arch_configs import ARCHS

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def coati(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_profile_json_without_a_gpu():
    out = json.loads(coati("profile", "--json").stdout)
    assert isinstance(out["gpus"], list)
    for gpu in out["gpus"]:  # on a GPU machine the list is filled; here it is empty
        assert {"name", "total_bytes", "free_bytes"} <= set(gpu)
    assert {"ram_total_bytes", "ram_available_bytes", "cores"} <= set(out["cpu"])
    assert out["cpu"]["ram_total_bytes"] >= out["cpu"]["ram_available_bytes"] > 0
    assert out["disk_free_bytes"] > 0
    assert out["stacks"]["torch"]["installed"] and "cuda_build" in out["stacks"]["torch"]


def test_profile_never_imports_torch():
    code = (
        "import sys; from coati_tui.core import hardware; hardware.profile(); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_profile_table():
    assert "torch" in coati("profile").stdout


def test_plan_json_shape_for_a_described_machine(tmp_path):
    model = tmp_path / "llama-7b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(ARCHS["llama2-7b"][0]))
    out = json.loads(coati("plan", "--model", str(model), "--gpu-mem", "12GiB", "--cpu-mem", "64GiB", "--json").stdout)
    assert out["params"] == ARCHS["llama2-7b"][1]
    assert out["recommended"] == "qlora_naive"
    assert len(out["presets"]) == 6 * 3
    for row in out["presets"]:
        assert {"name", "stage", "gpu_bytes", "cpu_bytes", "fits", "reason"} <= set(row)
        assert isinstance(row["fits"], bool) and row["gpu_bytes"] > 0 and row["reason"]


def test_plan_table_for_the_tiny_model_on_this_machine(tiny_model):
    out = coati("plan", "--model", str(tiny_model), "--stage", "sft").stdout
    assert "lora_naive" in out and "Recommended" in out


def test_plan_bad_inputs_exit_2_with_one_clear_line(tmp_path):
    proc = coati("plan", "--model", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
    proc = coati("plan", "--model", str(tmp_path), "--stage", "nope", check=False)
    assert proc.returncode == 2 and "--stage" in proc.stderr
    proc = coati("plan", "--model", str(tmp_path), "--gpu-mem", "twelve", check=False)
    assert proc.returncode == 2


def test_presets_lists_the_shipped_ones():
    out = json.loads(coati("presets", "--json").stdout)
    assert {"lora_naive", "qlora_naive", "gemini_offload", "zero2_cpu"} <= set(out)


def test_tiny_command_builds_a_model(tmp_path):
    path = coati("tiny", str(tmp_path / "t"), "--reward").stdout.strip()
    cfg = json.loads(open(os.path.join(path, "config.json")).read())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and len(cfg["id2label"]) == 1


def _train_params(*args):
    """What `coati-tui train ARGS` parses to, without running it (click's own parser, in-process)."""
    import typer

    from coati_tui.cli import app

    cmd = typer.main.get_command(app).commands["train"]
    return cmd.make_context("train", list(args)).params


def test_the_flag_table_goes_both_ways():
    """One table maps preset keys to `train` flags: the app writes a run's command with it and the CLI
    parses that command back to the same overrides, ColossalChat's spellings included."""
    from coati_tui.core import flags

    values = {
        "lora.rank": 8,
        "train.batch_size": 16,
        "train.accumulation_steps": 2,
        "train.lr": 0.0003,
        "train.max_epochs": 3,
        "train.max_len": 256,
        "train.grad_checkpointing": False,
        "ppo.kl_coef": 0.1,
        "ppo.ptx_coef": 0.2,
        "ppo.clip_eps": 0.3,
        "ppo.value_clip": 0.4,
        "ppo.gamma": 0.99,
        "ppo.lam": 0.9,
        "ppo.rollout_batch": 4,
        "ppo.max_new_tokens": 64,
        "ppo.temperature": 0.8,
        "ppo.top_k": 5,
        "ppo.top_p": 0.9,
        "ppo.ppo_epochs": 1,
        "ppo.critic_lr": 1e-5,
        "ppo.whiten_advantages": False,
        "ppo.reward_clip": 5.0,
        "dpo.beta": 0.2,
        "dpo.label_smoothing": 0.1,
        "dpo.simpo_gamma": 0.7,
        "dpo.precompute_ref": True,
        "kto.desirable_weight": 1.5,
        "kto.undesirable_weight": 0.5,
        "grpo.group_size": 6,
        "grpo.prompts_per_step": 3,
        "grpo.clip_low": 0.1,
        "grpo.clip_high": 0.28,
        "grpo.loss_norm": "constant",
        "grpo.scale_rewards": False,
        "grpo.updates_per_rollout": 2,
        "grpo.dynamic_sampling": True,
        "grpo.reward_model_weight": 0.5,
        "offload.optim_frac": 1.0,
        "offload.param_frac": 0.25,
        "ppo.kl_target": 1.5,
        "ppo.stop_on_alarm": True,
    }
    assert set(values) == {f.key for f in flags.FLAGS}  # every row is exercised
    # a flag that several stages share sets the key of the stage it is given to, and writes back the same
    for stage, key in (("orpo", "orpo.beta"), ("kto", "kto.beta"), ("grpo", "grpo.beta")):
        assert flags.overrides(_train_params(stage, "--beta", "0.3"), stage) == {key: 0.3}
        assert flags.to_flags({key: 0.3}) == ["--beta", "0.3"]
    # PPO's sampling flags set GRPO's own keys in a GRPO run
    grpo = flags.overrides(_train_params("grpo", "--temperature", "0.6", "--max-new-tokens", "32"), "grpo")
    assert grpo == {"grpo.temperature": 0.6, "grpo.max_new_tokens": 32}
    kto = flags.overrides(_train_params("kto", "--precompute-ref"), "kto")
    assert kto == {"kto.precompute_ref": True}
    argv = flags.to_flags(values)
    assert argv[:4] == ["--lora-rank", "8", "--batch-size", "16"] and "--no-grad-checkpointing" in argv
    assert flags.overrides(_train_params("sft", *argv)) == values
    assert flags.to_flags({"train.grad_checkpointing": True, "lora.alpha": 16}) == ["--grad-checkpointing"]
    colossal = _train_params(
        "sft",
        "--batch_size",
        "2",
        "--lora_rank",
        "0",
        "--max_len",
        "64",
        "--grad_checkpoint",
        "--experience_batch_size",
        "3",
        "--kl_coef",
        "0.5",
    )
    assert flags.overrides(colossal) == {
        "lora.rank": 0,
        "train.batch_size": 2,
        "train.max_len": 64,
        "train.grad_checkpointing": True,
        "ppo.kl_coef": 0.5,
        "ppo.rollout_batch": 3,
    }
    assert flags.overrides(_train_params("sft")) == {}  # nothing given: the preset decides


def test_generate_refuses_an_unknown_quant_before_starting_a_worker(tmp_path):
    proc = coati("generate", str(tmp_path), "--prompt", "hi", "--quant", "3bit", check=False)
    assert proc.returncode == 2 and "--quant must be one of none, 8bit, 4bit, gptq" in proc.stderr
