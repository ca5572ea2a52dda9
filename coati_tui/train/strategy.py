"""How a preset becomes a trainable model. Runs in the trainer process (imports torch lazily).

This file holds the ``naive`` strategy (plain PyTorch + peft: LoRA, QLoRA on a bitsandbytes 4-bit base,
or full fine-tune). The planner's estimate reads the same preset fields used here: precision, LoRA
rank/alpha/dropout/targets, quantization bits and double quantization, gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coati_tui.presets import Preset


@dataclass
class Prepared:
    model: object  # torch.nn.Module (a PeftModel under LoRA)
    device: str
    dtype_name: str  # fp32 | bf16 | fp16
    trainable_params: int
    total_params: int


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_precision(preset: Preset, device: str) -> str:
    """The preset's precision on a GPU (fp16 where bf16 is missing); fp32 on CPU."""
    import torch

    if device == "cpu":
        return "fp32"
    if preset.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return preset.precision


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_naive(model_dir: str | Path, preset: Preset, stage: str, device: str | None = None) -> Prepared:
    """Load ``model_dir`` for ``stage`` ("sft" = causal LM, "rm" = one-label classifier) as ``preset`` says."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if preset.strategy != "naive":
        raise ValueError(f"load_naive got a {preset.strategy} preset")
    device = device or pick_device()
    precision = pick_precision(preset, device)
    dtype = torch_dtype(precision)
    kwargs: dict = {"dtype": dtype} if _transformers_major() >= 5 else {"torch_dtype": dtype}
    kwargs["attn_implementation"] = "sdpa"
    if preset.quant.bits:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=preset.quant.bits == 4,
            load_in_8bit=preset.quant.bits == 8,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=preset.quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    if stage == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if not preset.quant.bits:
        model.to(device)
    if preset.train.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not preset.full_finetune:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=preset.lora.rank,
            lora_alpha=preset.lora.alpha,
            lora_dropout=preset.lora.dropout,
            target_modules=preset.lora.targets,
            task_type="SEQ_CLS" if stage == "rm" else "CAUSAL_LM",  # SEQ_CLS trains the score head too
        )
        model = get_peft_model(model, config)
        for p in model.parameters():  # adapters train in fp32 whatever the base dtype
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Prepared(model, device, precision, trainable, total)


def _transformers_major() -> int:
    import importlib.metadata as md

    return int(md.version("transformers").split(".")[0])
