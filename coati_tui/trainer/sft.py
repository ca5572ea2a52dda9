"""Stage 1: supervised fine-tuning. Loss on assistant tokens only.

Features: every preset (LoRA / QLoRA / full on plain PyTorch; Gemini; ZeRO-2 + CPU offload), the data
formats of ``coati_tui.data.formats``, truncation counted, length-grouped batches padded to the longest
in the batch (not to max_len), gradient accumulation, cosine schedule, eval loss on a held-out split,
checkpoint / cancel / resume with the same data order.

Speed: on a single process the loss is computed from the decoder's hidden states at the positions that
carry a label only, so prompt and padding positions never go through the LM head (the vocabulary-sized
matmul and softmax). Under a wrapped model (DDP, Gemini, ZeRO) the model's own forward is used.
"""

from __future__ import annotations

from pathlib import Path

from coati_tui.trainer.loop import Run, pad, split


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        import torch
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_sft
        from coati_tui.trainer import strategy as strat

        cfg, preset = run.cfg, run.cfg.preset
        strat.check_requirements(preset)
        torch.manual_seed(cfg.seed)

        # data first: nothing starts half-prepared
        tokenizer, template = load_tokenizer(cfg.model, cfg.template or None)
        conversations = formats.load_sft(cfg.data, cfg.max_datasets_size)
        examples, stats = prepare_sft(tokenizer, conversations, preset.train.max_len, cfg.data)
        if cfg.eval_data:
            train_set = examples
            held, _ = prepare_sft(tokenizer, formats.load_sft(cfg.eval_data), preset.train.max_len, cfg.eval_data)
        else:
            train_set, held = split(examples, cfg.eval_split, cfg.seed)
        run.info(f"data: {stats['examples']} examples, {stats['truncated']} truncated to {preset.train.max_len} "
                 f"tokens, {stats['dropped_no_assistant_tokens']} dropped (no assistant token left); "
                 f"{len(held)} held out", data=stats)

        device = strat.pick_device()
        prepared = strat.load_model(cfg.model, preset, "sft", device, pad_token_id=tokenizer.pad_token_id)
        strategy = strat.make_strategy(preset, device, prepared.dtype_name)
        end_id, stops = end_token(tokenizer, _stop_ids(prepared.model, tokenizer))
        pad_id = tokenizer.pad_token_id

        def collate(items):
            return {
                "input_ids": torch.tensor(pad([e.input_ids for e in items], pad_id), device=device),
                "labels": torch.tensor(pad([e.labels for e in items], -100), device=device),
                "attention_mask": torch.tensor(pad([[1] * len(e.input_ids) for e in items], 0), device=device),
            }

        def loss_fn(model, batch):
            if strategy.fast_path:
                return _label_only_loss(model, batch), {}
            return model(**batch).loss, {}

        def evaluate(model):
            if not held:
                return {}
            total, n = 0.0, 0
            for i in range(0, len(held), preset.train.batch_size):
                batch = collate(held[i: i + preset.train.batch_size])
                loss = loss_fn(model, batch)[0]
                k = int((batch["labels"][:, 1:] != -100).sum())
                total, n = total + float(loss) * k, n + k
            return {"loss": total / max(n, 1)}

        def save_final(model, folder: Path, weights: Path | None):
            _save_final(model, tokenizer, folder, end_id, stage="sft", base=cfg.model, weights=weights)

        run.loop(model=prepared.model, strategy=strategy, train_set=train_set, collate=collate,
                 loss_fn=loss_fn, evaluate=evaluate if held else None, length=lambda e: len(e.input_ids),
                 save_final=save_final,
                 counts=lambda b: (int(b["attention_mask"].sum()), int(b["input_ids"].shape[0])),
                 extra_start={"template": template, "end_token_id": end_id, "stops_on_end_token": stops,
                              "data": stats, "held_out": len(held)})


def _stop_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _label_only_loss(model, batch):
    """Cross-entropy from the hidden states at labelled positions only (see the module docstring)."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep])


def _save_final(model, tokenizer, folder: Path, end_id: int, stage: str, base: str,
                weights: Path | None = None, extra=None, info: dict | None = None) -> None:
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
