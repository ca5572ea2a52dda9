"""`coati-tui quantize`: a GPTQ checkpoint written by gptqmodel on the CPU loads in plain transformers and
answers through the generation worker (where gptqmodel is installed: CI's default stack installs it
for these tests). Errors that need no gptqmodel are checked everywhere."""

import json
import subprocess
import sys

import pytest

from coati_tui.worker import quantize as q


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "coati_tui", *args], capture_output=True, text=True, timeout=timeout)


def test_group_size_must_split_the_widths():
    q.check_group_size({"hidden_size": 128, "intermediate_size": 256}, 128)
    with pytest.raises(
        q.QuantizeError,
        match="hidden_size 64, intermediate_size 192 is not a multiple of --group-size 128: use --group-size 64",
    ):
        q.check_group_size({"hidden_size": 64, "intermediate_size": 192}, 128)
    with pytest.raises(q.QuantizeError, match="use --group-size -1"):
        q.check_group_size({"hidden_size": 64, "intermediate_size": 176}, 64)
    q.check_group_size({"hidden_size": 64, "intermediate_size": 176}, -1)


def test_the_calibration_data_defaults_to_the_runs_own(demo_home):
    sft, ppo = demo_home / "runs" / "demo-sft", demo_home / "runs" / "demo-ppo"
    from coati_tui.core.run_config import RunConfig

    assert q.default_calib(str(sft / "final")) == RunConfig.read(sft).data
    assert q.default_calib(str(ppo)) == RunConfig.read(ppo).ptx_data
    assert q.default_calib(str(demo_home)) is None


def test_quantize_a_lora_run_loads_in_transformers_and_answers(demo_home, tmp_path):
    """The demo's PPO output is a LoRA adapter over the SFT model: merged, then quantized, calibrated on
    the run's own PTX (SFT) data."""
    pytest.importorskip("gptqmodel")
    ppo = demo_home / "runs" / "demo-ppo"
    assert (ppo / "final" / "adapter_config.json").is_file()
    bad = run("quantize", str(ppo), "--out", str(tmp_path / "x"))  # the demo's hidden size is 64
    assert bad.returncode == 2 and "use --group-size 64" in bad.stderr
    out = tmp_path / "gptq"
    done = run("quantize", str(ppo), "--group-size", "64", "--samples", "16", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "merging the LoRA adapter" in done.stderr and "done" in done.stderr
    meta = json.loads((out / "coati.json").read_text())
    assert meta["bits"] == 4 and meta["calibration_texts"] == 16 and not list(tmp_path.glob(".*merged"))
    assert list((out / "logs").glob("*.log"))  # gptqmodel's own log stays with the checkpoint, not in the cwd
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, device_map={"": "cpu"})
    assert model.config.quantization_config.quant_method.value == "gptq"
    assert any("qweight" in n for n, _ in model.named_buffers())
    answer = run(
        "generate",
        str(out),
        "--prompt",
        "请列出三种水果。",
        "--quant",
        "gptq",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--json",
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    evs = [json.loads(x) for x in answer.stdout.splitlines() if x.startswith("{")]
    assert evs[0]["type"] == "loaded" and evs[0]["quant"] == "gptq"
    assert evs[-1]["type"] == "answer" and 0 < evs[-1]["tokens"] <= 8


def test_without_gptqmodel_or_data_the_error_says_what_to_do(tiny_model):
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is None:
        out = run("quantize", str(tiny_model))
        assert out.returncode == 2 and "pip install 'coati-tui[gptq]'" in out.stderr
    else:
        out = run("quantize", str(tiny_model), "--group-size", "64")
        assert out.returncode == 2 and "give --calib DATA" in out.stderr
