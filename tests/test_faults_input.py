"""Faults of the inputs a real machine hands us, injected into real child processes: broken or hostile
model folders, a damaged final/, config.toml and presets with wrong keys, and custom model code.

Every fault must end in one clear message that names the file (or key), exit 2 for the user's input
(nothing started, no run folder left) or an error event from the child, never a traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from sample_data import sft_records, write_jsonl

from coati_tui.core import events, modelinfo, presets
from coati_tui.core.errors import ConfigError
from coati_tui.core.run_config import RunConfig

SMALL = ["--batch-size", "4", "--accumulation-steps", "1", "--max-len", "64", "--preset", "lora_naive"]


def cli(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "coati_tui", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def evs_of(text):
    return [e for e in map(events.parse, text.splitlines()) if e]


def cut_short(file, keep=0.5):
    """A copy or download that stopped early: the file's first ``keep`` share."""
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", sft_records(16))


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


def refused_everywhere(model, sft_data, tmp_path, *words):
    """`train` and `generate` both refuse ``model`` with exit 2, one message holding ``words``, and
    `train` leaves no run folder."""
    out = tmp_path / "run"
    proc = cli("train", "sft", "--model", str(model), "--data", sft_data, "--out", str(out), *SMALL)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert all(w in proc.stderr for w in words), proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = cli("generate", str(model), "--prompt", "hi", "--max-new-tokens", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert all(w in proc.stderr for w in words) and "error (config)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---- model folders ---------------------------------------------------------------------------------
def test_a_model_folder_without_config_json_is_refused(model_copy, sft_data, tmp_path):
    (model_copy / "config.json").unlink()
    refused_everywhere(model_copy, sft_data, tmp_path, str(model_copy), "no config.json")


def test_a_cut_short_safetensors_file_is_named(model_copy, sft_data, tmp_path):
    """What a user measured: `train` wrote a run folder and ended in `incomplete metadata, file not fully
    covered`; `generate` said `Error while deserializing header` without naming the file."""
    weights = model_copy / "model.safetensors"
    cut_short(weights)
    refused_everywhere(model_copy, sft_data, tmp_path, str(weights), "truncated", "missing")


def test_an_index_naming_a_missing_shard_is_named(model_copy, sft_data, tmp_path):
    (model_copy / "model.safetensors").rename(model_copy / "model-00001-of-00002.safetensors")
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"a": names[0], "b": names[1]}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    refused_everywhere(model_copy, sft_data, tmp_path, "model.safetensors.index.json", names[1])


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:4],  # not even the header's length
        lambda b: (10**9).to_bytes(8, "little") + b[8:],  # a header longer than the file
        lambda b: b[:8] + b"{not json" + b[17:],  # a damaged header
        lambda b: b + b"\0" * 16,  # bytes past the last tensor
    ],
)
def test_the_header_check_names_each_kind_of_damage(model_copy, damage):
    weights = model_copy / "model.safetensors"
    modelinfo.check_weights(model_copy)  # whole: passes
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(modelinfo.ModelError, match=str(weights)):
        modelinfo.check_weights(model_copy)


def test_a_cut_short_torch_bin_is_named(model_copy, tmp_path):
    import torch

    weights = model_copy / "pytorch_model.bin"
    torch.save({"w": torch.zeros(4096)}, weights)
    modelinfo.check_weights(model_copy)  # whole: passes
    cut_short(weights, 0.6)
    with pytest.raises(modelinfo.ModelError, match=f"{weights}: truncated"):
        modelinfo.check_weights(model_copy)


def test_an_unreadable_config_json_is_named(model_copy, sft_data, tmp_path):
    (model_copy / "config.json").write_text('{"model_type": "llama", ')
    refused_everywhere(model_copy, sft_data, tmp_path, str(model_copy / "config.json"), "unreadable")


def test_a_cut_short_tokenizer_json_is_named(model_copy, sft_data, tmp_path):
    cut_short(model_copy / "tokenizer.json")
    refused_everywhere(model_copy, sft_data, tmp_path, str(model_copy / "tokenizer.json"), "unreadable")


CUSTOM_MODELING = """
import os
from pathlib import Path

from transformers import LlamaForCausalLM

Path(os.environ["COATI_TEST_MARKER"]).write_text("custom code ran")


class CustomLlama(LlamaForCausalLM):
    pass
"""


@pytest.fixture
def custom_code_model(model_copy):
    """A folder whose config.json asks for its own modeling code (auto_map), as many hub models do."""
    (model_copy / "modeling_custom.py").write_text(CUSTOM_MODELING)
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    (model_copy / "config.json").write_text(json.dumps(cfg))
    return model_copy


def test_custom_code_is_refused_without_trust_remote_code(custom_code_model, sft_data, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("COATI_TEST_MARKER", str(marker))
    refused_everywhere(custom_code_model, sft_data, tmp_path, "config.json", "auto_map", "--trust-remote-code")
    assert not marker.exists()  # refused before transformers imported a line of it


def test_trust_remote_code_runs_it_in_the_worker_and_the_trainer(custom_code_model, sft_data, tmp_path):
    marker = tmp_path / "ran"
    env = {"COATI_TEST_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = ("--prompt", "hi", "--max-new-tokens", "2", "--trust-remote-code", "--json")
    proc = cli("generate", str(custom_code_model), *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [e["type"] for e in evs_of(proc.stdout)][0] == "loaded"
    assert marker.read_text() == "custom code ran"
    marker.unlink()

    out = tmp_path / "run"
    train = ("train", "sft", "--model", str(custom_code_model), "--data", sft_data, "--out", str(out))
    proc = cli(*train, *SMALL, "--max-steps", "1", "--trust-remote-code", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert RunConfig.read(out).trust_remote_code is True  # a resume or replay trusts it again, and says so
    assert marker.read_text() == "custom code ran"


# ---- a damaged final/ --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(tiny_model, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    proc = cli("train", "sft", "--model", str(tiny_model), "--data", sft_data, "--out", str(out), *SMALL,
               "--lora-rank", "4", "--max-steps", "1", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_a_damaged_final_is_named_by_every_command_that_opens_it(lora_run, sft_data, tmp_path):
    run = shutil.copytree(lora_run, tmp_path / "run")
    adapter = run / "final" / "adapter_model.safetensors"
    cut_short(adapter, 0.7)

    proc = cli("generate", str(run), "--prompt", "hi", "--max-new-tokens", "2")  # chat and rank: the same worker
    assert proc.returncode == 2 and str(adapter) in proc.stderr and "truncated" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

    nxt = tmp_path / "next"  # the next stage, from the CLI: refused before its run folder exists
    proc = cli("train", "sft", "--model", str(run / "final"), "--data", sft_data, "--out", str(nxt), *SMALL)
    assert proc.returncode == 2 and str(adapter) in proc.stderr and not nxt.exists(), proc.stderr

    nxt.mkdir()  # ... and from a run folder the app (or a user) wrote: the trainer's loader names it
    RunConfig(stage="sft", model=str(run / "final"), data=sft_data, preset=presets.load("lora_naive")).write(nxt)
    proc = subprocess.run([sys.executable, "-m", "coati_tui.train", str(nxt)], capture_output=True, text=True)
    assert proc.returncode == 1
    (err,) = [e for e in events.read(nxt / "events.jsonl") if e["type"] == "error"]
    assert err["kind"] == "config" and str(adapter) in err["message"] and "truncated" in err["message"]
    assert "Traceback" not in err["message"]


# ---- config.toml and presets ---------------------------------------------------------------------------
@pytest.fixture
def run_folder(tiny_model, sft_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(stage="sft", model=str(tiny_model), data=sft_data, preset=presets.load("lora_naive")).write(run)
    return run


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.replace("seed = 42", "seed = 42\nsead = 1"), ["sead", "unknown key"]),
        (lambda t: t.replace("seed = 42", 'seed = "42"'), ["seed", "expected int", "'42'"]),
        (lambda t: t.replace("eval_split = 0.05", "eval_split = true"), ["eval_split", "expected float"]),
        (lambda t: t.replace("batch_size = ", "batch_size = 'x' #"), ["preset.train.batch_size", "expected int"]),
        (lambda t: t.replace("[preset.train]", "[preset.trian]"), ["preset.trian", "unknown key"]),
        (lambda t: t.replace("seed = 42", "seed = "), ["unreadable as TOML", "line"]),
        (lambda t: t.replace('stage = "sft"\n', ""), ["missing stage"]),
    ],
)
def test_a_broken_config_toml_names_the_key_and_the_file(run_folder, edit, words):
    path = run_folder / "config.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as err:
        RunConfig.read(run_folder)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words), str(err.value)


def test_resume_of_a_broken_config_toml_is_one_line(run_folder):
    path = run_folder / "config.toml"
    path.write_text(path.read_text().replace("seed = 42", 'seed = "forty-two"'))
    proc = cli("train", "sft", "--resume", str(run_folder))
    assert proc.returncode == 2 and f"{path}: seed: expected int" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "body, words",
    [
        ('strategy = "naive"\n[train]\nbatch_sise = 4\n', ["train.batch_sise", "unknown key"]),
        ('strategy = "naive"\n[train]\nbatch_size = "4"\n', ["train.batch_size", "expected int"]),
        ('strategy = "naive"\n[lora]\nrank = 1.5\n', ["lora.rank", "expected int"]),
        ('strategy = "naive"\ntrain = 3\n', ["train", "expected a table"]),
        ("strategy = [", ["not valid TOML"]),
    ],
)
def test_a_broken_preset_file_names_the_key_and_the_file(tiny_model, sft_data, tmp_path, body, words):
    preset = tmp_path / "mine.toml"
    preset.write_text(body)
    out = tmp_path / "run"
    proc = cli("train", "sft", "--model", str(tiny_model), "--data", sft_data, "--preset", str(preset),
               "--out", str(out))  # fmt: skip
    assert proc.returncode == 2 and str(preset) in proc.stderr, proc.stderr
    assert all(w in proc.stderr for w in words) and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("trust", [False, True])
async def test_chat_runs_custom_code_only_when_told(custom_code_model, tmp_path, monkeypatch, trust):
    from test_app_train import wait_for

    from coati_tui.ui.app import CoatiApp

    marker = tmp_path / "ran"
    monkeypatch.setenv("COATI_TEST_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    app = CoatiApp(model=str(custom_code_model), mode="chat", trust_remote_code=trust)
    async with app.run_test(size=(120, 40)) as pilot:
        chat = app.screen
        status = chat.query_one("#chat-status")
        if trust:
            await wait_for(pilot, lambda: chat.loaded is not None)
            assert marker.read_text() == "custom code ran"
        else:
            await wait_for(pilot, lambda: "--trust-remote-code" in str(status.render()))
            assert "auto_map" in str(status.render()) and chat.loaded is None and not marker.exists()


def test_a_broken_user_preset_is_named_when_the_planner_reads_it(tiny_model, sft_data, tmp_path):
    """No --preset: the planner reads every preset, the user's own among them."""
    home = tmp_path / "home"
    (home / "presets").mkdir(parents=True)
    mine = home / "presets" / "my_lora.toml"
    mine.write_text('strategy = "naive"\n[train]\nbatch_size = -4\n')
    out = tmp_path / "run"
    proc = cli("train", "sft", "--model", str(tiny_model), "--data", sft_data, "--out", str(out),
               env={"COATI_TUI_HOME": str(home)})  # fmt: skip
    assert proc.returncode == 2 and f"{mine}: train.batch_size" in proc.stderr and "minimum" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
