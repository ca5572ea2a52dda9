"""Stage 2: the reward model. A causal-LM backbone with a one-number head, scored at the last non-pad token.

Features: every preset; ColossalChat and TRL preference formats and the Rank pane's store; chosen and
rejected in one padded batch; log-sigmoid loss (default) or log-exp (ColossalChat's name for the same
Bradley-Terry loss written as log(1 + exp(r - c))); held-out accuracy, mean chosen / rejected reward and
margin. Accumulation, schedule, checkpoints and resume are the shared ``SupervisedRecipe`` and loop.

The final folder loads on its own with ``AutoModelForSequenceClassification.from_pretrained``: a LoRA
run is merged into its base (over a 4-bit base it stays an adapter, loadable with
``AutoPeftModelForSequenceClassification``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coati_tui.trainer.loop import pad, split, train
from coati_tui.trainer.recipe import SupervisedRecipe
from coati_tui.trainer.run import Run


class RewardModel(SupervisedRecipe):
    head = "score"
    reward_stats: dict[str, float] | None = None  # its scores on the held-out pairs (trainer/ppo/guard.py)

    def prepare_data(self) -> tuple[list[Any], list[Any]]:
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_pairs

        cfg, max_len = self.cfg, self.preset.train.max_len
        self.tokenizer, self.template = load_tokenizer(cfg.model, cfg.template or None)
        self.end_id, _ = end_token(self.tokenizer)
        pairs = formats.load_preferences(cfg.data, cfg.max_datasets_size)
        examples, self.stats = prepare_pairs(self.tokenizer, pairs, max_len, cfg.data)
        if cfg.eval_data:
            train_set = examples
            held, _ = prepare_pairs(self.tokenizer, formats.load_preferences(cfg.eval_data), max_len, cfg.eval_data)
        else:
            train_set, held = split(examples, cfg.eval_split, cfg.seed)
        self.run.info(
            f"data: {self.stats['examples']} pairs, {self.stats['truncated']} truncated to {max_len} "
            f"tokens; {len(held)} held out",
            data=self.stats,
        )
        return train_set, held

    def load_model(self) -> None:
        from coati_tui.trainer import models, strategy

        self.device = models.pick_device()
        prepared = models.load_model(
            self.cfg.model, self.preset, "rm", self.device, pad_token_id=self.tokenizer.pad_token_id
        )
        self.model = prepared.model
        self.strategy = strategy.make_strategy(self.preset, self.device, prepared.dtype_name)

    def length(self, item: Any) -> int:
        return max(len(item[0]), len(item[1]))

    def collate(self, items: list[Any]) -> dict[str, Any]:
        import torch

        seqs = [c for c, _ in items] + [r for _, r in items]  # chosen first, then rejected
        return {
            "input_ids": torch.tensor(pad(seqs, self.tokenizer.pad_token_id), device=self.device),
            "attention_mask": torch.tensor(pad([[1] * len(s) for s in seqs], 0), device=self.device),
        }

    def scores(self, batch: dict[str, Any]) -> Any:
        return self.model(**batch).logits.squeeze(-1).float()

    def loss_step(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        import torch
        import torch.nn.functional as F

        chosen, rejected = self.scores(batch).chunk(2)
        if self.cfg.loss == "log_exp":
            loss = torch.log1p(torch.exp(rejected - chosen)).mean()
        else:
            loss = -F.logsigmoid(chosen - rejected).mean()
        return loss, {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean()}

    def counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0]) // 2

    def eval_metrics(self) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        from coati_tui.trainer.ppo import guard

        c_all, r_all = [], []
        for i in range(0, len(self.held), self.batch_size):
            c, r = self.scores(self.collate(self.held[i : i + self.batch_size])).chunk(2)
            c_all.append(c)
            r_all.append(r)
        c, r = torch.cat(c_all), torch.cat(r_all)
        # the last eval's scores go with the final model: PPO normalizes by them and knows the range seen
        self.reward_stats = guard.stats_of(c.tolist(), r.tolist())
        return {
            "accuracy": float((c > r).float().mean()),
            "chosen_reward": float(c.mean()),
            "rejected_reward": float(r.mean()),
            "margin": float((c - r).mean()),
            "loss": float(-F.logsigmoid(c - r).mean()),
            "pairs": len(self.held),
        }

    def write_final(self, model: Any, folder: Path, weights: Path | None) -> None:
        from coati_tui.trainer.final import write_final

        adapter = None
        if hasattr(model, "merge_and_unload") and not self.preset.quant.bits:
            # the adapter too: PPO puts it on the actor's base when both come from the same model
            adapter = folder.with_name(folder.name + ".adapter")
            model.save_pretrained(adapter)
            model = model.merge_and_unload()
        write_final(
            model,
            self.tokenizer,
            folder,
            self.end_id,
            stage="rm",
            base=self.cfg.model,
            weights=weights,
            extra=(lambda tmp: adapter.rename(tmp / "adapter")) if adapter else None,
            info={"reward_stats": self.reward_stats} if self.reward_stats else None,
        )

    def start_info(self) -> dict[str, Any]:
        return {**super().start_info(), "template": self.template, "data": self.stats, "loss_fn": self.cfg.loss}


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        train(RewardModel(run))
