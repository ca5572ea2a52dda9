"""ColossalChat's own commands (train_sft.py / train_reward_model.py / train_prompts.py) run as written."""

import csv
import json
import os
import subprocess
import sys

import pytest
from sample_data import preference_records, sft_records, write_jsonl

from coati_tui.core import colossalchat_flags as cc
from coati_tui.core import flags


def coati(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "coati_tui", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "120"},
        timeout=timeout,
    )


def params(*args):
    import typer

    from coati_tui.cli import app

    cmd = typer.main.get_command(app).commands["train"]
    return cmd.make_context("train", list(args)).params


def test_every_row_of_the_table_is_a_train_option():
    import typer

    from coati_tui.cli import app

    cmd = typer.main.get_command(app).commands["train"]
    declared = {o for p in cmd.params for o in p.opts}
    for row in cc.TABLE:
        assert row.flag in declared, row.flag
        assert not row.ours or row.ours in declared, row.ours


def test_the_readme_lists_every_spelling_and_strategy():
    from pathlib import Path

    from coati_tui.core import flags

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### ColossalChat's flags", 1)[1].split("\n## ", 1)[0]
    underscored = {n for f in flags.FLAGS for n in f.names if n.startswith("--") and "_" in n}
    for flag in {row.flag for row in cc.TABLE} | underscored:
        assert f"| `{flag}` |" in section, flag
    for name, preset in cc.STRATEGIES.items():
        assert f"`{name}` -> `{preset}`" in section, name


@pytest.mark.parametrize(
    ("argv", "param", "value"),
    [
        (["--pretrain", "M"], "pretrain", "M"),
        (["--model", "bloom"], "model", "bloom"),
        (["--dataset", "d.json"], "data", "d.json"),
        (["--prompt_dataset", "p.csv"], "data", "p.csv"),
        (["--pretrain_dataset", "s.json"], "ptx", "s.json"),
        (["--rm_path", "out/rmstatic.pt"], "reward", "out/rmstatic.pt"),
        (["--rm_pretrain", "R"], "rm_pretrain", "R"),
        (["--rm_model", "llama"], "rm_model", "llama"),
        (["--save_path", "out/rf_model.pt"], "out", "out/rf_model.pt"),
        (["--max_datasets_size", "512"], "max_datasets_size", 512),
        (["--loss_fn", "log_exp"], "loss", "log_exp"),
        (["--strategy", "naive"], "strategy", "naive"),
        (["--nproc_per_node", "2"], "nproc_per_node", 2),
        (["--log_interval", "10"], "log_interval", "10"),
        (["--test", "True"], "test", "True"),
        (["--use_wandb"], "use_wandb", True),
    ],
)
def test_a_colossalchat_flag_parses_to_ours(argv, param, value):
    got = params("sft", *argv)[param]
    assert str(got) == str(value)


@pytest.mark.parametrize(
    ("flag", "key"),
    [
        ("--accimulation_steps", "train.accumulation_steps"),
        ("--accumulation_steps", "train.accumulation_steps"),
        ("--train_batch_size", "train.batch_size"),
    ],
)
def test_a_colossalchat_spelling_sets_our_preset_key(flag, key):
    assert flags.overrides(params("ppo", flag, "3")) == {key: 3}


def test_the_positional_prompt_file_is_the_prompts():
    assert params("ppo", "prompts.csv")["prompt_file"] == "prompts.csv"


def test_the_model_family_is_checked_against_config_json(tiny_model, tmp_path):
    proc = coati("train", "sft", "--pretrain", str(tiny_model), "--model", "bloom", "--dataset", "x.json")
    assert proc.returncode == 2
    assert "--model 'bloom'" in proc.stderr and "'llama'" in proc.stderr and "Traceback" not in proc.stderr
    proc = coati("train", "ppo", "--pretrain", str(tiny_model), "--rm_path", str(tiny_model), "--rm_model", "opt")
    assert proc.returncode == 2 and "--rm_model 'opt'" in proc.stderr and "'llama'" in proc.stderr


def test_family_match():
    assert cc.family_mismatch("--model", "llama", {"model_type": "llama"}, "M") is None
    assert cc.family_mismatch("--model", "bloom", {"model_type": "bloom"}, "M") is None
    assert "model_type 'gpt2'" in cc.family_mismatch("--model", "opt", {"model_type": "gpt2"}, "M")


def test_ignored_flags_say_so():
    for flag in ("--log_interval", "--test", "--use_wandb"):
        assert flag in cc.ignored(flag) and "ignored" in cc.ignored(flag)


def test_rm_without_a_dataset_names_the_download_it_would_have_been(tiny_model):
    proc = coati("train", "rm", "--pretrain", str(tiny_model), "--model", "llama")
    assert proc.returncode == 2 and "--dataset is required" in proc.stderr and "rm-static" in proc.stderr


def test_cuda_only_strategies_are_refused_here_naming_the_one_that_runs(tiny_model, tmp_path):
    from coati_tui.core import hardware

    if hardware.gpus()[0]:
        pytest.skip("this machine has CUDA")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(8))
    for strategy in ("colossalai_gemini", "colossalai_zero2", "colossalai_zero2_cpu"):
        proc = coati("train", "sft", "--pretrain", str(tiny_model), "--dataset", data, "--strategy", strategy)
        assert proc.returncode == 2, proc.stderr
        assert f"--strategy {strategy}" in proc.stderr and "needs CUDA" in proc.stderr
        assert "--strategy naive (preset lora_naive) runs here" in proc.stderr


def test_data_prompts_writes_generate_prompt_datasets_csv(tmp_path):
    sft = tmp_path / "instinwild_en.json"
    sft.write_text(json.dumps(sft_records(12), ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "prompt_samples.csv"
    proc = coati("data", "prompts", "--dataset", str(sft), "--save_path", str(out), "--sample_size", "5")
    assert proc.returncode == 0, proc.stderr
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and set(rows[0]) == {"id", "prompt"}

    from coati_tui.data import formats

    got = formats.load_prompt_rows(out)
    assert len(got) == 5 and all(msgs[-1]["role"] == "user" for msgs, _ in got)
    assert {r["prompt"] for r in rows} <= {m["content"] for c in formats.load_sft(sft) for m in c}


def test_the_walkthroughs_three_commands_as_written(tiny_model, tmp_path):
    """The single-GPU walkthrough's SFT -> RM -> PPO commands, paths changed (a tiny llama for bloom, tiny
    bilingual data), plus --dataset for the RM (its default was a hub download) and knobs that keep it short;
    then the PPO output answers."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "instinwild_en.json").write_text(json.dumps(sft_records(16), ensure_ascii=False), encoding="utf-8")
    write_jsonl(data / "rm_static.jsonl", preference_records(16))
    prep = coati(
        "data", "prompts", "--dataset", "data/instinwild_en.json", "--save_path", "data/prompt_samples_100.csv",
        "--sample_size", "8", cwd=tmp_path,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    m = str(tiny_model)
    short = ["--max_len", "64", "--max-steps", "2", "--no-grad-checkpointing"]
    sft = coati(
        "train", "sft", "--pretrain", m, "--model", "llama", "--strategy", "naive", "--log_interval", "10",
        "--save_path", "out/stage_1", "--dataset", "data/instinwild_en.json", "--batch_size", "1",
        "--accimulation_steps", "8", "--lr", "2e-5", "--max_datasets_size", "512", "--max_epochs", "1",
        "--lora_rank", "16", *short, cwd=tmp_path,
    )  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert "--log_interval: every optimizer step is logged" in sft.stderr
    assert (tmp_path / "out/stage_1/final/adapter_config.json").is_file()
    rm = coati(
        "train", "rm", "--pretrain", "out/stage_1", "--model", "llama", "--strategy", "naive", "--loss_fn",
        "log_exp", "--lora_rank", "16", "--save_path", "out/stage_2/rmstatic.pt", "--test", "True",
        "--dataset", "data/rm_static.jsonl", "--batch_size", "4", *short, cwd=tmp_path,
    )  # fmt: skip
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert (tmp_path / "out/stage_2/rmstatic.pt").is_dir()
    from coati_tui.core.run_config import RunConfig

    assert RunConfig.read(tmp_path / "out/stage_2/rmstatic.pt").loss == "log_exp"
    ppo = coati(
        "train", "ppo", "--pretrain", "out/stage_1", "--prompt_dataset", "data/prompt_samples_100.csv",
        "--pretrain_dataset", "data/instinwild_en.json", "--model", "llama", "--strategy", "naive", "--rm_path",
        "out/stage_2/rmstatic.pt", "--save_path", "out/stage_3/rf_model.pt", "--lora_rank", "16",
        "--train_batch_size", "1", "--max_epochs", "1", "--experience_batch_size", "2", "--max-new-tokens", "6",
        *short, cwd=tmp_path,
    )  # fmt: skip
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    final = tmp_path / "out/stage_3/rf_model.pt"
    assert (final / "final").is_dir()
    gen = coati("generate", str(final), "--prompt", "你好", "--max-new-tokens", "4", "--temperature", "0", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
