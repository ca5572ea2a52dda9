"""bench/gpu_check.py planned on a CPU (its --dry-run, as a child process) and bench/gpu_carry.sh --print-only.

The check itself needs a CUDA machine; what can go wrong before one is lent is tested here: every part is
planned, every command is one the real CLI accepts, the folders and data it names exist, the planner's
figures are in the plan, and the arithmetic of MFU and of the card table.
"""

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from arch_configs import QWEN25_05B

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
CARRY = ROOT / "bench" / "gpu_carry.sh"


def load_check():
    """bench/gpu_check.py as a module (it is a script, not part of the package)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = mod  # its dataclasses look their module up while being made
        spec.loader.exec_module(mod)
    return sys.modules["gpu_check"]


def dry_run(tmp: Path, *extra: str):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp / "out"), "--work", str(tmp / "work"), *extra],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads((tmp / "out" / "plan.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    out, plan = dry_run(tmp)
    return tmp, out, plan


def jobs(plan):
    return [j for part in plan["parts"].values() for j in part["jobs"]]


def parse_cli(argv):
    """Parse a `python -m coati_tui ...` command line with the real CLI, without running it."""
    import click
    import typer.main

    from coati_tui.cli import app

    group = typer.main.get_command(app)
    name, *rest = argv
    command = group.get_command(click.Context(group), name)
    assert command is not None, name
    return command.make_context(name, rest, parent=click.Context(group)).params


def test_every_part_is_planned_and_said(full):
    _, out, plan = full
    assert plan["dry_run"] is True and "nothing was run" in out
    assert sorted(plan["parts"]) == ["0", "1", "2", "3", "4", "5"]
    for part in ("1", "3", "4", "5"):
        assert plan["parts"][part]["jobs"], part
        assert f"part {part}: " in out
    assert plan["parts"]["2"]["derived"], "part 2 is derived from part 1's SFT/RM rows"
    keys = {j["key"] for j in jobs(plan)}
    for key in (
        "sft-lora-0.5b",
        "rm-lora-0.5b",
        "ppo-lora-0.5b",
        "sft-qlora-0.5b",
        "sft-gemini-0.5b",
        "sft-zero2-0.5b",
        "ppo4-gemini-0.5b",
        "gen-16bit",
        "gen-int8",
        "gen-nf4",
        "quantize",
        "gen-gptq",
        "resume-gemini-0.5b",
        "resume-zero2-0.5b",
        "sft-lora-1.5b",
    ):
        assert key in keys, key
    # every command is printed as it would run
    for j in jobs(plan):
        assert f"$ {shlex.join(j['cmd'])}" in out, j["key"]


def test_commands_are_ones_the_cli_accepts(full):
    _, _, plan = full
    by_key = {j["key"]: j for j in jobs(plan)}
    for j in jobs(plan):
        cmd = j["cmd"]
        assert cmd[0] == sys.executable
        if j["kind"] == "gen":
            assert cmd[1] == str(SCRIPT) and cmd[2:4] == ["--child", "gen"]
            assert cmd[cmd.index("--quant") + 1] in ("none", "8bit", "4bit", "gptq")
            continue
        assert cmd[1:3] == ["-m", "coati_tui"]
        params = parse_cli(cmd[3:])
        if j["kind"] == "quantize":
            assert params["group_size"] == 64 and Path(params["calib"]).is_file()
            continue
        assert cmd[-1] == "--json" and params["as_json"]
        if j["kind"] == "resume":
            assert Path(params["resume"]) == Path(by_key[j["deps"][0]]["run_dir"])
            continue
        assert params["stage"] in ("sft", "rm", "ppo") and 1 <= params["max_steps"] <= 3
        assert params["eval_split"] == 0 and Path(params["data"]).is_file()
        model = Path(params["model"])
        # the model is a built folder, or the run folder of a job this one waits for
        assert (model / "config.json").is_file() or any(Path(by_key[d]["run_dir"]) == model for d in j["deps"]), j[
            "key"
        ]
        if params["stage"] == "ppo":
            assert Path(params["ptx"]).is_file() and params["reward"]
        assert (j["planned"]["gpu_bytes"] > 0) and (j["planned"]["cpu_bytes"] > 0)


def test_resumed_runs_checkpoint_at_step_two(full):
    _, _, plan = full
    by_key = {j["key"]: j for j in jobs(plan)}
    for j in plan["parts"]["5"]["jobs"]:
        src = by_key[j["deps"][0]]
        cmd = src["cmd"]
        assert cmd[cmd.index("--save-interval") + 1] == "2" and cmd[cmd.index("--max-steps") + 1] == "3"


def test_ppo_rows_use_a_preset_file_with_the_short_lengths(full):
    from coati_tui.core import presets

    _, _, plan = full
    for j in jobs(plan):
        if j["kind"] == "train" and j["cmd"][4] == "ppo":
            p = presets.load(j["cmd"][j["cmd"].index("--preset") + 1])
            assert p.ppo.max_prompt_len == 128 and j["planned"]["seq_len"] == 256
            assert (p.ppo_lean, j["planned"]["ppo_lean"]) == (p.ppo_lean, p.strategy == "naive")


def test_model_folders_real_configs_without_weights_and_a_tiny_one_with(full):
    from coati_tui.core.modelinfo import Arch, read_config

    tmp, out, plan = full
    check = load_check()
    models = tmp / "work" / "models"
    for key, params in check.PUBLISHED.items():
        folder = models / key
        assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
        assert not list(folder.glob("*.safetensors")), "a dry run writes no weights for the real shapes"
        assert Arch.from_config(read_config(folder)).param_count() == params
        assert plan["models"][key]["params"] == params
    assert list((models / "tiny").glob("*.safetensors")), "the builder's weight path ran on the tiny shape"
    assert "config + tokenizer only" in out
    # the data is long enough that every sequence is cut at the lengths planned (512; PPO prompts 128)
    lengths = plan["models"]["qwen2.5-0.5b"]["min_tokens"]
    assert lengths["sft"] > 512 and lengths["prefs"] > 512 and lengths["prompts"] > 128


def test_the_qwen_shape_is_the_one_the_tests_know():
    check = load_check()
    cfg = check.ARCHS["qwen2.5-0.5b"]
    for k in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
    ):
        assert cfg[k] == QWEN25_05B[k], k


def test_only_what_a_part_needs_when_parts_are_chosen(tmp_path):
    _, plan = dry_run(tmp_path, "--quick", "--parts", "5")
    keys = {j["key"] for j in jobs(plan)}
    assert keys == {"sft-gemini-0.5b", "sft-zero2-0.5b", "resume-gemini-0.5b", "resume-zero2-0.5b"}


def test_mfu_arithmetic_and_card_table():
    from coati_tui.core.modelinfo import Arch

    check = load_check()
    arch = Arch.from_config(check.ARCHS["qwen2.5-0.5b"])
    n = arch.layers * arch.layer_linear_params + arch.vocab * arch.hidden  # decoder linears + the (tied) LM head
    attn = 4 * arch.layers * 512 * arch.heads * arch.head_dim
    assert check.flops_per_token(arch, "sft", True, 512) == 6 * n + 3 * attn
    assert check.flops_per_token(arch, "sft", False, 512) == 4 * n + 3 * attn
    n_rm = arch.layers * arch.layer_linear_params + arch.hidden
    assert check.flops_per_token(arch, "rm", False, 512) == 4 * n_rm + 3 * attn
    assert check.card_spec("NVIDIA H200") == (989e12, 4800e9)
    assert check.card_spec("NVIDIA H100 80GB HBM3") == (989e12, 3350e9)
    assert check.card_spec("NVIDIA H100 PCIe")[1] == 2000e9
    assert check.card_spec("NVIDIA A100-SXM4-40GB") == (312e12, 1555e9)
    assert check.card_spec("NVIDIA L40S")[0] == 362e12 and check.card_spec("NVIDIA L4")[0] == 121e12
    assert check.card_spec("NVIDIA GeForce RTX 3060")[1] == 360e9
    assert check.card_spec("Some Future GPU") is None


def test_step_events_become_rows():
    """Memory is read before the first checkpoint (saving allocates), throughput without the first step."""
    check = load_check()
    job = check.Job(
        "sft-x", 1, "train", "t", planned={"device": "cuda", "gpu_bytes": 110, "cpu_bytes": 200, "flops_per_token": 1e9}
    )

    def step(n, peak, tps):
        return {
            "type": "step",
            "step": n,
            "loss": 1.0 / n,
            "tokens": 1000,
            "tokens_per_s": tps,
            "cpu_rss": 180,
            "gpu_peak": peak,
        }

    evs = [
        {"type": "start", "strategy": "colossalai_gemini", "resumed_from": 0},
        step(1, 90, 10.0),
        step(2, 100, 2000.0),
        {"type": "checkpoint", "step": 2},
        step(3, 500, 4000.0),
        {"type": "done", "status": "completed"},
    ]
    machine = SimpleNamespace(machine={"spec_flops": 1e15, "matmul_flops": 5e14})
    r = check.analyse_train(machine, job, evs)
    assert r["gpu_peak"] == 100 and r["gpu_peak_at_step"] == 2 and r["checkpoints"] == [2]
    assert r["mem_error"] == pytest.approx(0.10) and r["tokens_per_s"] == 3000.0
    assert r["mfu"] == pytest.approx(1e9 * 3000 / 1e15) and r["mfu_of_matmul"] == pytest.approx(1e9 * 3000 / 5e14)
    assert r["losses"] == {1: 1.0, 2: 0.5, 3: 1 / 3} and r["done"] == "completed"


def test_carry_script_prints_its_steps_and_the_command(tmp_path):
    out = tmp_path / "carry"
    proc = subprocess.run(
        ["bash", str(CARRY), "--print-only", "--out", str(out)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for needle in (
        "wheel -q --no-deps -w",
        "colossalai==0.5.0",
        "einops==0.8.2 galore-torch==1.0",
        "bitsandbytes==0.50.2",
        "gptqmodel==7.6.0",
        "--python-version 3.12",
        f"pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site {out}/*.whl",
        "bench/gpu_check.py --out",
    ):
        assert needle in text, needle
    assert not out.exists(), "--print-only downloads and writes nothing"
