"""MFU: the model FLOPs per token (core/flops.py) against torch's own count, and the figures in step events."""

import json

import pytest

from coati_tui.core import flops
from coati_tui.core.modelinfo import Arch


def _counted(model, seq: int, vocab: int) -> float:
    """FLOPs torch's FlopCounterMode counts in one forward and backward of a ``seq``-token sequence."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, vocab, (1, seq))
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return float(counter.get_total_flops())


def _tiny(hidden=64, layers=2, heads=4, kv_heads=2, vocab=320, tied=False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 16,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tied,
        attn_implementation="eager",  # attention as matmuls the counter sees
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg), Arch.from_config(cfg.to_dict())


@pytest.mark.parametrize("seq", [16, 96])
def test_full_finetune_flops_match_torchs_count(seq):
    model, arch = _tiny()
    want = _counted(model, seq, arch.vocab) / seq
    got = flops.train_flops_per_token(arch, seq, "lm", lora_rank=0)
    assert got == pytest.approx(want, rel=0.01), (got, want)


def test_lora_flops_count_no_gradient_for_frozen_weights():
    from peft import LoraConfig, get_peft_model

    model, arch = _tiny(tied=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    model.enable_input_require_grads()  # the first layer's input gradient too, as the formula counts it
    seq = 48
    want = _counted(model, seq, arch.vocab) / seq
    got = flops.train_flops_per_token(arch, seq, "lm", lora_rank=8, lora_targets=["q_proj", "v_proj"])
    assert got == pytest.approx(want, rel=0.01), (got, want)
    full = flops.train_flops_per_token(arch, seq, "lm", lora_rank=0)
    assert got < 0.8 * full  # frozen weights get no weight gradient


def test_gpu_peak_table():
    assert flops.gpu_peak_flops("NVIDIA GeForce RTX 3060", "bf16") == 25.5e12
    assert flops.gpu_peak_flops("NVIDIA GeForce RTX 3060 Ti", "fp16") == 32.4e12  # the longer name first
    assert flops.gpu_peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 67.0e12
    assert flops.gpu_peak_flops("Some Future Card", "bf16") is None
    assert flops.mfu(1e12, 1.0, None) is None and flops.mfu(5e11, 2.0, 1e12) == 0.25


def test_step_events_carry_mfu_and_the_rss_peak(tiny_model, tmp_path, monkeypatch):
    import subprocess
    import sys

    from sample_data import sft_records, write_jsonl

    from coati_tui.core import events, paths

    data = write_jsonl(tmp_path / "sft.jsonl", sft_records(24))
    cmd = [sys.executable, "-m", "coati_tui", "train", "sft", "--model", str(tiny_model), "--data", data]
    cmd += ["--batch-size", "4", "--accumulation-steps", "1", "--max-len", "64", "--max-steps", "3", "--json"]
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [e for e in map(events.parse, proc.stdout.splitlines()) if e and e["type"] == "step"]
    assert len(steps) == 3
    for ev in steps:
        assert 0 < ev["mfu"] < 1.5, ev  # a CPU step against the measured matmul peak
        assert ev["flops_per_s"] > 0 and ev["cpu_peak"] >= ev["cpu_rss"]
    assert "MFU" in events.describe(steps[-1])
    cache = json.loads((paths.home() / "cache" / "cpu_peak.json").read_text())
    (peak,) = cache.values()  # measured once, cached for the next run
    assert peak > 1e8


def test_measuring_the_cpu_peak_draws_nothing_from_the_runs_random_numbers(tmp_path, monkeypatch):
    """The first run on a machine times a matmul; its inputs must not shift the run's LoRA init and sampling,
    or that run would not repeat (its resume drifted 3e-4 from the uninterrupted run, CI of 2026-12-03)."""
    import torch

    from coati_tui.trainer import measure

    monkeypatch.setenv("COATI_TUI_HOME", str(tmp_path))
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    assert measure.peak_flops("cpu", "fp32") > 0  # nothing cached yet: this one measures
    assert (tmp_path / "cache" / "cpu_peak.json").is_file()
    assert torch.equal(torch.rand(4), expected)
