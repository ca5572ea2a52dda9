"""Stage 2: the reward model. A causal-LM backbone with a one-number head, scored at the last non-pad token.

Features: every preset; ColossalChat and TRL preference formats; chosen and rejected in one padded
batch; log-sigmoid loss (default) or log-exp (ColossalChat's name for the same Bradley-Terry loss written
as log(1 + exp(r - c))); held-out accuracy, mean chosen / rejected reward and margin.

The final folder loads on its own with ``AutoModelForSequenceClassification.from_pretrained``: a LoRA
run is merged into its base (over a 4-bit base it stays an adapter, loadable with
``AutoPeftModelForSequenceClassification``).
"""

from __future__ import annotations

from pathlib import Path

from coati_tui.trainer.loop import Run, pad, split


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        import torch
        import torch.nn.functional as F
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_pairs
        from coati_tui.trainer import strategy as strat
        from coati_tui.trainer.sft import _save_final

        cfg, preset = run.cfg, run.cfg.preset
        strat.check_requirements(preset)
        torch.manual_seed(cfg.seed)

        tokenizer, template = load_tokenizer(cfg.model, cfg.template or None)
        end_id, _ = end_token(tokenizer)
        pairs = formats.load_preferences(cfg.data, cfg.max_datasets_size)
        examples, stats = prepare_pairs(tokenizer, pairs, preset.train.max_len, cfg.data)
        if cfg.eval_data:
            train_set = examples
            held, _ = prepare_pairs(tokenizer, formats.load_preferences(cfg.eval_data), preset.train.max_len,
                                    cfg.eval_data)
        else:
            train_set, held = split(examples, cfg.eval_split, cfg.seed)
        run.info(f"data: {stats['examples']} pairs, {stats['truncated']} truncated to {preset.train.max_len} "
                 f"tokens; {len(held)} held out", data=stats)

        device = strat.pick_device()
        prepared = strat.load_model(cfg.model, preset, "rm", device, pad_token_id=tokenizer.pad_token_id)
        strategy = strat.make_strategy(preset, device, prepared.dtype_name)
        pad_id = tokenizer.pad_token_id

        def collate(items):
            seqs = [c for c, _ in items] + [r for _, r in items]  # chosen first, then rejected
            return {
                "input_ids": torch.tensor(pad(seqs, pad_id), device=device),
                "attention_mask": torch.tensor(pad([[1] * len(s) for s in seqs], 0), device=device),
            }

        def scores(model, batch):
            return model(**batch).logits.squeeze(-1).float()

        def loss_fn(model, batch):
            s = scores(model, batch)
            chosen, rejected = s.chunk(2)
            if cfg.loss == "log_exp":
                loss = torch.log1p(torch.exp(rejected - chosen)).mean()
            else:
                loss = -F.logsigmoid(chosen - rejected).mean()
            return loss, {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean()}

        def evaluate(model):
            c_all, r_all = [], []
            for i in range(0, len(held), preset.train.batch_size):
                c, r = scores(model, collate(held[i: i + preset.train.batch_size])).chunk(2)
                c_all.append(c)
                r_all.append(r)
            c, r = torch.cat(c_all), torch.cat(r_all)
            return {"accuracy": float((c > r).float().mean()), "chosen_reward": float(c.mean()),
                    "rejected_reward": float(r.mean()), "margin": float((c - r).mean()),
                    "loss": float(-F.logsigmoid(c - r).mean()), "pairs": len(held)}

        def save_final(model, folder: Path, weights: Path | None):
            adapter = None
            if hasattr(model, "merge_and_unload") and not preset.quant.bits:
                # the adapter too: PPO puts it on the actor's base when both come from the same model
                adapter = folder.with_name(folder.name + ".adapter")
                model.save_pretrained(adapter)
                model = model.merge_and_unload()
            _save_final(model, tokenizer, folder, end_id, stage="rm", base=cfg.model, weights=weights,
                        extra=(lambda tmp: adapter.rename(tmp / "adapter")) if adapter else None)

        run.loop(model=prepared.model, strategy=strategy, train_set=train_set, collate=collate,
                 loss_fn=loss_fn, evaluate=evaluate if held else None,
                 length=lambda e: max(len(e[0]), len(e[1])), save_final=save_final,
                 counts=lambda b: (int(b["attention_mask"].sum()), int(b["input_ids"].shape[0]) // 2),
                 extra_start={"template": template, "data": stats, "held_out": len(held), "loss_fn": cfg.loss})
