"""One model loader for both child processes (the trainer and the generation worker).

What both need decided the same way: the device and dtype, the ``from_pretrained`` keyword arguments
(the dtype keyword changed name in transformers 5; bitsandbytes 4/8-bit), and whether a folder is a
LoRA adapter over a base named in its ``adapter_config.json``. ``load_model`` builds the trainer's model
for every strategy (plain PyTorch + peft: LoRA, QLoRA on a bitsandbytes 4-bit base, or full fine-tune);
the planner's estimate reads the same preset fields used here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coati_tui.core import modelinfo
from coati_tui.core.errors import ConfigError, transformers_major
from coati_tui.core.presets import Preset
from coati_tui.trainer import fast_lora

# May a model folder run its own code (its config.json's auto_map)? The run's ``trust_remote_code``, set
# once per trainer process by ``Run``; off everywhere else.
TRUST_REMOTE_CODE = False


@dataclass
class Prepared:
    model: Any  # torch.nn.Module (a PeftModel under LoRA)
    device: str
    dtype_name: str  # fp32 | bf16 | fp16
    trainable_params: int
    total_params: int


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_precision(preset: Preset, device: str) -> str:
    """The preset's precision on a GPU (fp16 where bf16 is missing); fp32 on CPU."""
    return auto_precision(device, preset.precision)


def auto_precision(device: str, wanted: str = "bf16") -> str:
    import torch

    if device == "cpu":
        return "fp32"
    if wanted == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return wanted


def torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_kwargs(precision: str, bits: int = 0, device: str = "cpu", double_quant: bool = True) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for this dtype and bitsandbytes width (0: none)."""
    dtype = torch_dtype(precision)
    kwargs: dict[str, Any] = {"dtype" if transformers_major() >= 5 else "torch_dtype": dtype}
    if bits:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=bits == 4,
            load_in_8bit=bits == 8,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    return kwargs


def adapter_base(folder: str | Path) -> str | None:
    """The base model a LoRA adapter folder (a run's ``final/`` without weights of its own) was trained
    on, or None when ``folder`` is a full model."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
        return None
    try:
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path ({exc})") from exc
    return str(base)


def load_model(
    model_dir: str | Path,
    preset: Preset,
    stage: str,
    device: str | None = None,
    pad_token_id: int | None = None,
    adapters: bool = True,
) -> Prepared:
    """Load ``model_dir`` for ``stage`` ("sft" = causal LM, "rm" = one-label classifier) as ``preset`` says,
    for every strategy: naive models go to ``device``; under Gemini / ZeRO-2 they stay in CPU RAM in the
    preset's dtype until the booster wraps them (moving a model that only fits with offload would OOM).
    ``adapters=False``: the (frozen, possibly quantized) base only; the caller adds its own adapters."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    modelinfo.check_model(model_dir, TRUST_REMOTE_CODE)  # a cut-short file is named, not a safetensors traceback
    device = device or pick_device()
    precision = pick_precision(preset, device)
    kwargs = load_kwargs(precision, preset.quant.bits, device, preset.quant.double_quant)
    kwargs["attn_implementation"] = "sdpa"
    kwargs["trust_remote_code"] = TRUST_REMOTE_CODE
    base = adapter_base(model_dir)
    if base and preset.quant.bits:
        raise ConfigError(
            f"{model_dir} is a LoRA adapter; merging it into a quantized base is lossy. "
            "Train this stage from a merged model, or with a non-quantized preset."
        )
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    source = base or model_dir  # a LoRA run's output: its base with the adapter merged in
    if stage == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if base:
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(model_dir)
        config.task_type = None  # an SFT (causal) adapter also merges into a reward model's backbone
        model = PeftModel.from_pretrained(model, model_dir, config=config).merge_and_unload()
    if not preset.quant.bits and preset.strategy == "naive":
        model.to(device)  # Gemini / ZeRO place the weights themselves when the booster wraps the model
    if preset.train.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not adapters:
        model.requires_grad_(False)
    elif not preset.full_finetune:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=preset.lora.rank,
            lora_alpha=preset.lora.alpha,
            lora_dropout=preset.lora.dropout,
            target_modules=preset.lora.targets,
            task_type="SEQ_CLS" if stage == "rm" else "CAUSAL_LM",  # SEQ_CLS trains the score head too
        )
        model = get_peft_model(model, config)
        fast_lora.fuse(model)
        for p in model.parameters():  # adapters train in fp32 whatever the base dtype
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Prepared(model, device, precision, trainable, total)
