"""The final folder every stage writes, in standard Hugging Face / PEFT form."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_final(
    model: Any,
    tokenizer: Any,
    folder: Path,
    end_id: int,
    stage: str,
    base: str,
    weights: Path | None = None,
    extra: Callable[[Path], None] | None = None,
    info: dict[str, Any] | None = None,
) -> None:
    """Standard form: a PEFT adapter (LoRA) or a full model, with tokenizer and a generation config that
    stops on the template's end token. Written to a temp folder, then renamed. ``weights``: safetensors
    shards a sharded strategy already gathered (then only the config is written beside them)."""
    import json
    import shutil

    from transformers import GenerationConfig

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if weights is not None:
        shutil.move(str(weights), str(tmp))
        model.config.save_pretrained(tmp)
    else:
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    gen = getattr(inner, "generation_config", None) or GenerationConfig()
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    gen.eos_token_id = sorted({e for e in eos if e is not None} | {end_id})
    gen.pad_token_id = tokenizer.pad_token_id
    gen.save_pretrained(tmp)
    (tmp / "coati.json").write_text(json.dumps({"stage": stage, "base": base, "end_token_id": end_id, **(info or {})}))
    if extra:
        extra(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
