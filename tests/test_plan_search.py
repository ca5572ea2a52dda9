"""The planner's search (issue 20): when a preset's settings do not fit, the ones that do, cheapest first."""

import json
import subprocess
import sys

import pytest
from arch_configs import ARCHS
from sample_data import sft_records, write_jsonl

from coati_tui.core import events, plan_search, planner, presets
from coati_tui.core.modelinfo import Arch
from coati_tui.core.run_config import RunConfig

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

GIB = 1024**3
SEVEN_B = ("llama2-7b", "mistral-7b", "qwen2.5-7b")


def _plan(name, gpu_gib, cpu_gib, **kw):
    machine = planner.Machine.described_as(int(gpu_gib * GIB), int(cpu_gib * GIB))
    return planner.plan(Arch.from_config(ARCHS[name][0]), presets.load_all(), machine, **kw)


def _row(result, preset, stage):
    return next(r for r in result.rows if r.preset == preset and r.stage == stage)


@pytest.mark.parametrize("name", [*SEVEN_B, "tinyllama-1.1b"])
@pytest.mark.parametrize("gpu_gib", [12, 24])
def test_a_7b_trains_every_stage_on_a_12gib_card(name, gpu_gib):
    result = _plan(name, gpu_gib, 64)
    assert result.recommended, [r.reason for r in result.rows]
    for stage in planner.STAGES:
        row = _row(result, result.recommended_by_stage[stage], stage)
        assert row.fits and row.gpu_bytes + planner.CUDA_CONTEXT <= gpu_gib * GIB
        assert row.gpu_bytes <= result.machine.gpu_usable_bytes and row.cpu_bytes <= result.machine.cpu_usable_bytes


def test_qwen_7b_on_12gib_fits_by_a_smaller_micro_batch_at_the_same_effective_batch():
    """The issue's case: qlora_naive at its 4 x 512 needs over 12 GiB; a smaller micro-batch fits."""
    arch = Arch.from_config(ARCHS["qwen2.5-7b"][0])
    machine = planner.Machine.described_as(12 * GIB, 64 * GIB)
    qlora = presets.load("qlora_naive")
    as_is = planner.estimate_row(arch, qlora, "sft", machine, {})
    assert not as_is.fits
    row = planner.plan_row(arch, qlora, "sft", machine)
    assert row.fits and row.batch_size < qlora.train.batch_size
    b, acc = row.changes["train.batch_size"][1], row.changes["train.accumulation_steps"][1]
    assert b * acc == qlora.train.batch_size * qlora.train.accumulation_steps
    assert row.reason.startswith(f"with batch 4 -> {b}, accumulation 8 -> {acc}: ")
    assert row.settings["train.batch_size"] == b and row.overrides == {k: v[1] for k, v in row.changes.items()}
    # the largest micro-batch that fits: the next one up does not
    bigger = planner.estimate_row(arch, qlora, "sft", machine, {"train.batch_size": b * 2})
    assert not bigger.fits


def test_the_order_is_micro_batch_then_checkpointing_then_offload():
    p = presets.load("gemini_offload").with_overrides(
        {"train.batch_size": 4, "train.grad_checkpointing": False, "offload.optim_frac": 0.0}
    )
    tried = plan_search.candidates(p, "sft")
    assert tried[0] == {}
    assert tried[1] == {"train.batch_size": 2, "train.accumulation_steps": 16}
    assert tried[2] == {"train.batch_size": 1, "train.accumulation_steps": 32}
    assert tried[3] == {"train.grad_checkpointing": True}
    assert tried[6] == {"offload.optim_frac": 1.0}
    assert tried[-1] == {
        "offload.optim_frac": 1.0,
        "offload.param_frac": 1.0,
        "train.grad_checkpointing": True,
        "train.batch_size": 1,
        "train.accumulation_steps": 32,
    }
    assert not any(k in plan_search.SHORTER for c in tried for k in c)  # only with allow_shorter
    # PPO steps once per mini-batch: no accumulation to raise
    assert plan_search.candidates(p, "ppo")[1] == {"train.batch_size": 2}


def test_user_flags_stay_fixed_and_are_named_when_they_are_why_nothing_fits():
    arch = Arch.from_config(ARCHS["qwen2.5-7b"][0])
    machine = planner.Machine.described_as(12 * GIB, 64 * GIB)
    mine = presets.load("qlora_naive").with_overrides({"train.batch_size": 4})
    row = planner.plan_row(arch, mine, "sft", machine, fixed={"train.batch_size"})
    assert not row.fits and row.batch_size == 4 and "train.batch_size" not in row.changes
    assert row.fixed == {"train.batch_size": 4}
    assert "your train.batch_size = 4 keeps it from fitting" in row.fix
    # the CLI's --batch-size is one of them
    result = _plan("qwen2.5-7b", 12, 64, batch_size=4)
    assert all(r.batch_size == 4 for r in result.rows if r.status != "unavailable")


def test_nothing_fits_names_the_nearest_miss_and_what_would_fit():
    result = _plan("qwen2.5-7b", 6, 64)
    row = _row(result, "qlora_naive", "sft")
    assert not row.fits and row.changes  # the nearest miss is the furthest the search went
    over = row.gpu_bytes - result.machine.gpu_usable_bytes
    assert over > 0 and row.fix.startswith(f"{planner.fmt_bytes(over)} more GPU memory")
    assert row.fix.endswith("a smaller model")
    shorter = _plan("qwen2.5-7b", 8, 64)
    qlora = _row(shorter, "qlora_naive", "sft")
    assert not qlora.fits and "with --allow-shorter it fits at" in qlora.fix
    allowed = _row(_plan("qwen2.5-7b", 8, 64, allow_shorter=True), "qlora_naive", "sft")
    assert allowed.fits and set(allowed.changes) & set(plan_search.SHORTER)
    assert "max length 512 -> 256 (longer sequences are truncated)" in allowed.reason


@pytest.mark.parametrize("stage", ["dpo", "kto", "grpo"])
def test_the_same_search_serves_the_other_stages(stage):
    arch = Arch.from_config(ARCHS["llama2-7b"][0])
    machine = planner.Machine.described_as(12 * GIB, 64 * GIB)
    row = planner.plan_row(arch, presets.load("qlora_naive"), stage, machine, allow_shorter=True)
    assert row.fits and row.gpu_bytes <= machine.gpu_usable_bytes


def _coati(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "coati_tui", *args], capture_output=True, text=True, timeout=timeout, encoding="utf-8"
    )


def test_plan_json_carries_the_chosen_settings_per_row(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(ARCHS["qwen2.5-7b"][0]))
    proc = _coati("plan", "--model", str(tmp_path), "--gpu-mem", "12GiB", "--cpu-mem", "64GiB", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (row,) = [r for r in out["presets"] if r["preset"] == "qlora_naive" and r["stage"] == "sft"]
    assert row["fits"] and row["changes"]["train.batch_size"][0] == 4
    assert row["settings"]["train.batch_size"] == row["changes"]["train.batch_size"][1] == row["batch_size"]
    assert row["changed"].startswith("batch 4 -> ")
    text = _coati("plan", "--model", str(tmp_path), "--gpu-mem", "12GiB", "--cpu-mem", "64GiB").stdout
    assert "✓*" in text and "* batch 4 -> " in " ".join(text.split())


def test_a_run_on_a_small_ram_budget_trains_what_was_planned_under_the_plan(tiny_model, tmp_path):
    """On this CPU: a budget between the preset's own need and micro-batch 1's; `train` applies the search,
    config.toml carries it, and the child's measured peak RSS stays under the plan."""
    arch = Arch.from_config(json.loads((tiny_model / "config.json").read_text()))
    lora = presets.load("lora_naive").with_overrides({"train.max_len": 256})
    need = {
        b: planner.estimate_row(arch, lora, "sft", planner.Machine.described_as(0, 64 * GIB), {"train.batch_size": b})
        for b in (1, 4)
    }
    assert need[4].cpu_bytes > need[1].cpu_bytes
    budget = int((need[1].cpu_bytes + need[4].cpu_bytes) / 2 / (1 - planner.CPU_MARGIN))
    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(16))
    out = tmp_path / "run"
    args = ["--model", str(tiny_model), "--data", data, "--preset", "lora_naive", "--max-len", "256"]
    proc = _coati("train", "sft", *args, "--cpu-mem", str(budget), "--max-steps", "2", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = RunConfig.read(out)
    assert cfg.preset.train.max_len == 256  # the user's flag: fixed
    b = cfg.preset.train.batch_size
    assert b < 4 and b * cfg.preset.train.accumulation_steps == 4 * 8
    assert cfg.planned.startswith("batch 4 -> ") and "planner: lora_naive sft fits this machine with" in proc.stderr
    planned = planner.estimate_row(arch, cfg.preset, "sft", planner.Machine.described_as(0, budget), {})
    assert planned.fits
    peaks = [e["cpu_peak"] for e in map(events.parse, proc.stdout.splitlines()) if e and e["type"] == "step"]
    assert peaks and max(peaks) <= planned.cpu_bytes, (max(peaks), planned.cpu_bytes)
