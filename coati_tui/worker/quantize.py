"""GPTQ quantization with gptqmodel: ``coati-tui quantize MODEL_OR_RUN --bits 4 --group-size 128``.

The result is a model folder with a ``quantization_config`` that plain transformers loads (gptqmodel
installed), and so do the chat pane and ``coati-tui generate``. Calibration text defaults to the run's
own training data (an SFT run's conversations; a PPO run's PTX data, else its prompts; an RM run's
prompts with their chosen answers), rendered with the model's chat template, as the model will see text.
A run whose output is a LoRA adapter is merged into its base first (GPTQ quantizes whole weights).

auto-gptq is not used: it is abandoned, does not import with current transformers, and cannot
quantize without CUDA. gptqmodel quantizes on the CPU too (slowly: minutes for ~100M parameters).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path


class QuantizeError(Exception):
    pass


def default_calib(spec: str) -> str | None:
    """The training data of the run ``spec`` points at (a run folder or its final/), else None."""
    from coati_tui.host.runs import config_of

    cfg = config_of(spec)
    if cfg is None:
        return None
    if cfg.stage == "ppo" and cfg.ptx_data:
        return cfg.ptx_data
    return cfg.data or None


def calib_texts(path: str, tokenizer, samples: int) -> list[str]:
    """Up to ``samples`` texts from any data file coati-tui reads, in the chat template's form."""
    from coati_tui.data import formats
    from coati_tui.data.tokenize import render

    kind, _, _ = formats.sniff(path, preview=0)
    if kind == "sft":
        convs = formats.load_sft(path, samples)
    elif kind == "prompts":
        convs = formats.load_prompts(path, samples)
    else:
        convs = [p.prompt + p.chosen for p in formats.load_preferences(path, samples)]
    return [render(tokenizer, c, add_generation_prompt=c[-1]["role"] == "user") for c in convs]


def check_group_size(config: dict, group_size: int) -> None:
    """Every quantized linear's input width must split into whole groups (the CPU and GPU kernels
    both require it); say which width does not, before minutes of work."""
    if group_size == -1:
        return
    widths = {"hidden_size": config.get("hidden_size"), "intermediate_size": config.get("intermediate_size")}
    bad = {k: v for k, v in widths.items() if isinstance(v, int) and v % group_size}
    if bad:
        sizes = ", ".join(f"{k} {v}" for k, v in bad.items())
        # 32 / 64 / 128 are the group sizes every int4 kernel takes (torch's CPU one takes only those and 256)
        divisors = [g for g in (128, 64, 32) if all(v % g == 0 for v in widths.values() if isinstance(v, int))]
        hint = f"use --group-size {divisors[0]}" if divisors else "use --group-size -1 (one group per row)"
        raise QuantizeError(f"{sizes} is not a multiple of --group-size {group_size}: {hint}")


def quantize(
    spec: str,
    bits: int = 4,
    group_size: int = 128,
    calib: str | None = None,
    out: str | None = None,
    samples: int = 128,
    max_len: int = 512,
    say=print,
) -> Path:
    import importlib.util

    from coati_tui.core import modelinfo

    if importlib.util.find_spec("gptqmodel") is None:
        raise QuantizeError("GPTQ needs gptqmodel: pip install 'coati-tui[gptq]'")
    if bits not in (2, 3, 4, 8):
        raise QuantizeError(f"--bits must be 2, 3, 4 or 8, not {bits}")
    try:
        folder = modelinfo.resolve_model(spec).absolute()  # gptqmodel works from the output folder: no relative path
    except modelinfo.ModelError as exc:
        raise QuantizeError(str(exc)) from exc
    calib = calib or default_calib(spec)
    if not calib:
        raise QuantizeError(
            f"{spec} is not a run folder with training data: give --calib DATA "
            "(SFT conversations, prompts or preference pairs)"
        )
    g = "" if group_size == -1 else f"-g{group_size}"
    out_dir = (Path(out) if out else folder.parent / f"{folder.name}-gptq-{bits}bit{g}").expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise QuantizeError(f"{out_dir} exists and is not empty: choose another --out")

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))  # its default oversubscribes small CPUs
    from coati_tui.data.formats import DataError
    from coati_tui.data.tokenize import load_tokenizer

    try:
        check_group_size(modelinfo.read_config(spec), group_size)
    except modelinfo.ModelError as exc:
        raise QuantizeError(str(exc)) from exc
    t0 = time.perf_counter()
    tmp = None
    source = folder
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        tmp = out_dir.parent / f".{out_dir.name}.merged"
        say(f"merging the LoRA adapter {folder} into its base -> {tmp}")
        _merge(folder, tmp)
        source = tmp
    try:
        tokenizer, _ = load_tokenizer(str(source))
        try:
            texts = calib_texts(calib, tokenizer, samples)
        except DataError as exc:
            raise QuantizeError(str(exc)) from exc
        data = [tokenizer(t, truncation=True, max_length=max_len, add_special_tokens=False) for t in texts]
        data = [{"input_ids": d["input_ids"], "attention_mask": d["attention_mask"]} for d in data if d["input_ids"]]
        say(f"calibration: {len(data)} texts from {calib} (up to {max_len} tokens each)")

        import torch
        from gptqmodel import GPTQModel, QuantizeConfig

        device = "cuda" if torch.cuda.is_available() else "cpu"
        say(
            f"quantizing {source} to {bits}-bit GPTQ, group size {group_size}, on {device} (gptqmodel shows the layers)"
        )
        model = GPTQModel.load(str(source), QuantizeConfig(bits=bits, group_size=group_size), device=device)
        out_dir.mkdir(parents=True, exist_ok=True)
        here = os.getcwd()
        os.chdir(out_dir)  # gptqmodel writes its logs/ into the working folder: keep them with the checkpoint
        try:
            model.quantize(data, batch_size=1)
        finally:
            os.chdir(here)
        model.save(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))  # with the chat template coati-tui resolved
        (out_dir / "coati.json").write_text(
            json.dumps(
                {
                    "quantized_from": str(folder),
                    "method": "gptq",
                    "bits": bits,
                    "group_size": group_size,
                    "calibration": str(calib),
                    "calibration_texts": len(data),
                    "seconds": round(time.perf_counter() - t0, 1),
                },
                ensure_ascii=False,
                indent=2,
            ),
            encoding="utf-8",
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _merge(adapter: Path, dest: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    from coati_tui.data.tokenize import load_tokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()
    model.save_pretrained(str(dest))
    load_tokenizer(str(adapter))[0].save_pretrained(str(dest))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))
