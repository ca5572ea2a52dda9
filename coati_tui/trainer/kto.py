"""KTO (Ethayarajh et al. 2024): learning from answers labelled good or bad one at a time, no pairs needed.

Data: TRL's unpaired ``{"prompt", "completion", "label": true|false}`` rows, or preference pairs (each
gives one desirable and one undesirable example), or the Rank pane's store. The loss for a desirable
answer is ``1 - sigmoid(beta (logratio - z))``, for an undesirable one ``1 - sigmoid(beta (z - logratio))``,
weighted by ``kto.desirable_weight`` / ``kto.undesirable_weight``; ``z`` is the batch's KL estimate: the
mean log-ratio of mismatched (prompt, another example's answer) sequences, clamped at 0 and not
differentiated. Each answer and its mismatched sequence go through the model in one batch. The reference
and everything else are the pair recipe of ``dpo.py`` (adapters off, or precomputed with
``kto.precompute_ref``; the shared loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coati_tui.trainer import prefs_math
from coati_tui.trainer.dpo import PairRecipe, PrefItem
from coati_tui.trainer.loop import split, train
from coati_tui.trainer.run import Run


@dataclass
class LabelledItem(PrefItem):
    desirable: bool = True  # ``chosen`` holds the answer, ``rejected`` the mismatched one for the KL estimate


class KTO(PairRecipe):
    def prepare_data(self) -> tuple[list[Any], list[Any]]:
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_labelled

        cfg, max_len = self.cfg, self.preset.train.max_len
        self.tokenizer, self.template = load_tokenizer(cfg.model, cfg.template or None)
        self.end_id, _ = end_token(self.tokenizer)
        examples = formats.load_for("kto", cfg.data, cfg.max_datasets_size)
        prepared, self.stats = prepare_labelled(self.tokenizer, examples, max_len, cfg.seed, cfg.data)
        if cfg.eval_data:
            train_set = prepared
            held = prepare_labelled(
                self.tokenizer, formats.load_for("kto", cfg.eval_data), max_len, cfg.seed, cfg.eval_data
            )[0]
        else:
            train_set, held = split(prepared, cfg.eval_split, cfg.seed)
        self.held_prompts = []
        items = [LabelledItem(a, kl, i, d) for i, (a, kl, d) in enumerate(train_set + held)]
        s = self.stats
        self.run.info(
            f"data: {s['examples']} answers ({s['desirable']} desirable), {s['truncated']} truncated to "
            f"{max_len} tokens; {len(held)} held out",
            data=s,
        )
        return items[: len(train_set)], items[len(train_set) :]

    def collate(self, items: list[Any]) -> dict[str, Any]:
        import torch

        batch = super().collate(items)
        batch["desirable"] = torch.tensor([i.desirable for i in items], device=self.device)
        return batch

    def pair_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        k = self.preset.kto
        logps, n = self.answer_logps(batch)
        ref = self.reference_logps(batch)
        answer, mismatched = logps.chunk(2)
        ref_answer, ref_mismatched = ref.chunk(2)
        kl = (mismatched - ref_mismatched).detach().mean()
        loss, reward = prefs_math.kto(
            answer, ref_answer, batch["desirable"], kl, k.beta, k.desirable_weight, k.undesirable_weight
        )
        good, bad = batch["desirable"], ~batch["desirable"]
        mean = lambda x, m: float(x[m].mean()) if bool(m.any()) else float("nan")  # noqa: E731
        return loss.mean(), {
            "kl": float(kl.clamp(min=0)),
            "reward_desirable": mean(reward, good),
            "reward_undesirable": mean(reward, bad),
            "logp_answer": float((answer.detach() / n.chunk(2)[0].clamp(min=1)).mean()),
        }

    def eval_metrics(self) -> dict[str, Any]:
        out = super().eval_metrics()
        # desirable answers should score above undesirable ones: the unpaired analogue of preference accuracy
        out["margin"] = out.get("reward_desirable", 0.0) - out.get("reward_undesirable", 0.0)
        return out

    @property
    def loss_name(self) -> str:
        return "kto"

    @property
    def precompute_wanted(self) -> bool:
        return bool(self.preset.kto.precompute_ref)


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        train(KTO(run))
