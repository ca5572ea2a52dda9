"""The naive strategy loads a preset exactly as the planner counts it."""

import pytest
from conftest import transformers_major

from coati_tui.core import modelinfo, presets
from coati_tui.trainer.models import load_model

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_lora_trainable_params_match_the_planner(tiny_model, stage):
    preset = presets.load("lora_naive").with_overrides({"lora.rank": 8})
    prepared = load_model(tiny_model, preset, stage, "cpu")
    arch = modelinfo.Arch.from_config(modelinfo.read_config(tiny_model))
    expected = arch.lora_params(8, "all-linear") + (arch.hidden if stage == "rm" else 0)  # + score head
    assert prepared.trainable_params == expected
    assert prepared.dtype_name == "fp32"  # CPU runs train in fp32
    assert all(p.dtype == torch.float32 for p in prepared.model.parameters() if p.requires_grad)


def test_one_step_changes_only_the_adapters(tiny_model):
    preset = presets.load("lora_naive")
    model = load_model(tiny_model, preset, "sft", "cpu").model
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(8, 200, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


@pytest.mark.skipif(transformers_major() < 5, reason="bitsandbytes 4-bit on CPU needs transformers >= 5")
def test_qlora_base_is_4bit_on_cpu(tiny_model):
    prepared = load_model(tiny_model, presets.load("qlora_naive"), "sft", "cpu")
    kinds = {type(m).__name__ for m in prepared.model.modules()}
    assert "Linear4bit" in kinds
    ids = torch.randint(8, 200, (2, 16))
    loss = prepared.model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
