"""Stage 1: supervised fine-tuning. Loss on assistant tokens only.

Features: every preset (LoRA / QLoRA / full on plain PyTorch; Gemini; ZeRO-2 + CPU offload), the data
formats of ``coati_tui.data.formats``, truncation counted, length-grouped batches padded to the longest
in the batch (not to max_len), gradient accumulation, cosine schedule, eval loss on a held-out split,
checkpoint / cancel / resume with the same data order (all but the data and the loss are the shared
``SupervisedRecipe`` and loop).

Speed: on a single process the loss is computed from the decoder's hidden states at the positions that
carry a label only, so prompt and padding positions never go through the LM head (the vocabulary-sized
matmul and softmax). Under a wrapped model (DDP, Gemini, ZeRO) the model's own forward is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coati_tui.trainer.loop import pad, split, train
from coati_tui.trainer.recipe import SupervisedRecipe
from coati_tui.trainer.run import Run


class SFT(SupervisedRecipe):
    def prepare_data(self) -> tuple[list[Any], list[Any]]:
        from coati_tui.data import formats
        from coati_tui.data.tokenize import load_tokenizer, prepare_sft

        cfg, max_len = self.cfg, self.preset.train.max_len
        self.tokenizer, self.template = load_tokenizer(cfg.model, cfg.template or None)
        conversations = formats.load_sft(cfg.data, cfg.max_datasets_size)
        examples, self.stats = prepare_sft(self.tokenizer, conversations, max_len, cfg.data)
        if cfg.eval_data:
            train_set = examples
            held, _ = prepare_sft(self.tokenizer, formats.load_sft(cfg.eval_data), max_len, cfg.eval_data)
        else:
            train_set, held = split(examples, cfg.eval_split, cfg.seed)
        s = self.stats
        self.run.info(
            f"data: {s['examples']} examples, {s['truncated']} truncated to {max_len} tokens, "
            f"{s['dropped_no_assistant_tokens']} dropped (no assistant token left); {len(held)} held out",
            data=s,
        )
        return train_set, held

    def load_model(self) -> None:
        from coati_tui.data.tokenize import end_token
        from coati_tui.trainer import models, strategy

        self.device = models.pick_device()
        prepared = models.load_model(
            self.cfg.model, self.preset, "sft", self.device, pad_token_id=self.tokenizer.pad_token_id
        )
        self.model = prepared.model
        self.strategy = strategy.make_strategy(self.preset, self.device, prepared.dtype_name)
        self.end_id, self.stops = end_token(self.tokenizer, stop_ids(prepared.model, self.tokenizer))

    def length(self, item: Any) -> int:
        return len(item.input_ids)

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return sft_batch(items, self.tokenizer.pad_token_id, self.device)

    def loss_step(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.strategy.fast_path:
            return label_only_loss(self.model, batch), {}
        return self.model(**batch).loss, {}

    def counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0])

    def eval_metrics(self) -> dict[str, Any]:
        total, n = 0.0, 0
        for i in range(0, len(self.held), self.batch_size):
            batch = self.collate(self.held[i : i + self.batch_size])
            loss = self.loss_step(batch)[0]
            k = int((batch["labels"][:, 1:] != -100).sum())
            total, n = total + float(loss) * k, n + k
        return {"loss": total / max(n, 1)}

    def write_final(self, model: Any, folder: Path, weights: Path | None) -> None:
        from coati_tui.trainer.final import write_final

        write_final(model, self.tokenizer, folder, self.end_id, stage="sft", base=self.cfg.model, weights=weights)

    def start_info(self) -> dict[str, Any]:
        return {
            **super().start_info(),
            "template": self.template,
            "end_token_id": self.end_id,
            "stops_on_end_token": self.stops,
            "data": self.stats,
        }


def sft_batch(items: list[Any], pad_id: int, device: str) -> dict[str, Any]:
    """Examples (``input_ids``, ``labels``) padded to the longest: ids, labels (-100 = no loss), mask."""
    import torch

    return {
        "input_ids": torch.tensor(pad([e.input_ids for e in items], pad_id), device=device),
        "labels": torch.tensor(pad([e.labels for e in items], -100), device=device),
        "attention_mask": torch.tensor(pad([[1] * len(e.input_ids) for e in items], 0), device=device),
    }


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def label_only_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Cross-entropy from the hidden states at labelled positions only (see the module docstring)."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep])


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        train(SFT(run))
