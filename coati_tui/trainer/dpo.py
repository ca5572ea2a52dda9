"""Preference optimisation straight from pairs, without a reward model: DPO, IPO and SimPO.

Features: every preset; the preference formats the RM stage reads (ColossalChat context/chosen/rejected,
TRL prompt/chosen/rejected, .jsonl/.json/.csv/.parquet/datasets folder) and the Rank pane's ``.sqlite``
store (snapshotted at the run's start); loss on answer tokens only, prompts truncated from the left;
chosen and rejected in one concatenated batch; accumulation, schedule, checkpoints, resume, torchrun:
the shared ``SupervisedRecipe`` and loop.

The reference costs no second copy of the weights: under LoRA it is the base with the adapters
switched off (one extra no-grad forward per step); with ``dpo.precompute_ref`` (always for a full
fine-tune, whatever the strategy) its log-probs are computed once, before the first step, by the model
as loaded, and cached in the run folder (``ref_logps.safetensors``) so each step runs one model and a
resume reuses them. SimPO needs no reference.

Speed: on a single process only the answer positions go through the LM head (the vocabulary-sized
matmul and log-softmax), as in SFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coati_tui.trainer import prefs_math
from coati_tui.trainer.loop import pad, split, train
from coati_tui.trainer.recipe import SupervisedRecipe
from coati_tui.trainer.run import Run


@dataclass
class PrefItem:
    chosen: Any  # data.tokenize.Tokenized: prompt + chosen answer, labels on the answer
    rejected: Any
    index: int  # position in train + held-out: the row of the reference cache


class PairRecipe(SupervisedRecipe):
    """What the pair methods share: data, the concatenated batch, answer log-probs, the reference."""

    needs_reference = True

    # ---- data and model --------------------------------------------------------------------------
    def prepare_data(self) -> tuple[list[Any], list[Any]]:
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_preferences

        cfg, max_len = self.cfg, self.preset.train.max_len
        self.tokenizer, self.template = load_tokenizer(cfg.model, cfg.template or None)
        self.end_id, _ = end_token(self.tokenizer)
        pairs = formats.load_for(cfg.stage, cfg.data, cfg.max_datasets_size)
        examples, self.stats = prepare_preferences(self.tokenizer, pairs, max_len, cfg.data)
        if cfg.eval_data:
            train_set = list(zip(examples, pairs))
            held_pairs = formats.load_for(cfg.stage, cfg.eval_data)
            held = list(zip(prepare_preferences(self.tokenizer, held_pairs, max_len, cfg.eval_data)[0], held_pairs))
        else:
            train_set, held = split(list(zip(examples, pairs)), cfg.eval_split, cfg.seed)
        self.held_prompts = [pair.prompt for _, pair in held]  # the demo task's true score answers them
        items = [PrefItem(c, r, i) for i, ((c, r), _) in enumerate(train_set + held)]
        self.run.info(
            f"data: {self.stats['examples']} pairs, {self.stats['truncated']} truncated to {max_len} "
            f"tokens; {len(held)} held out",
            data=self.stats,
        )
        return items[: len(train_set)], items[len(train_set) :]

    def load_model(self) -> None:
        from coati_tui.trainer import models, strategy

        self.device = models.pick_device()
        prepared = models.load_model(
            self.cfg.model, self.preset, "sft", self.device, pad_token_id=self.tokenizer.pad_token_id
        )
        self.model = prepared.model
        self.strategy = strategy.make_strategy(self.preset, self.device, prepared.dtype_name)
        self.ref_cache: Any = None

    @property
    def eval_at_start(self) -> bool:  # type: ignore[override]
        return bool(self.cfg.task)  # a built-in task's score before any step: the baseline of the gain

    @property
    def reference(self) -> str:
        """none | adapters_off | precomputed."""
        if not self.needs_reference:
            return "none"
        if self.preset.full_finetune or self.precompute_wanted:
            return "precomputed"
        return "adapters_off"

    def configure(self, total_steps: int) -> None:
        super().configure(total_steps)
        if self.reference == "precomputed":
            self.ref_cache = self._reference_cache()

    def length(self, item: Any) -> int:
        return max(len(item.chosen.input_ids), len(item.rejected.input_ids))

    def collate(self, items: list[Any]) -> dict[str, Any]:
        """Chosen answers first, then rejected (KTO: answers, then their mismatched ones): 2B rows."""
        import torch

        seqs = [i.chosen for i in items] + [i.rejected for i in items]
        dev, pad_id = self.device, self.tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor(pad([s.input_ids for s in seqs], pad_id), device=dev),
            "labels": torch.tensor(pad([s.labels for s in seqs], -100), device=dev),
            "attention_mask": torch.tensor(pad([[1] * len(s.input_ids) for s in seqs], 0), device=dev),
            "index": torch.tensor([i.index for i in items], device=dev),
        }

    def counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0]) // 2

    # ---- log-probabilities ---------------------------------------------------------------------------
    def answer_logps(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """(summed log-prob of each row's answer tokens (2B,), their count (2B,)) under the model as it is."""
        import torch

        labels = batch["labels"][:, 1:]
        keep = labels != -100
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.strategy.fast_path:  # the LM head at answer positions only
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            hidden = base.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1][keep].float()
        tok = torch.log_softmax(logits, -1).gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
        rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)[keep]
        sums = torch.zeros(labels.shape[0], device=labels.device, dtype=tok.dtype).index_add(0, rows, tok)
        return sums, keep.sum(-1)

    def reference_logps(self, batch: dict[str, Any]) -> Any:
        """(2B,) the reference's summed answer log-probs: from the cache, or the adapters switched off."""
        import torch

        if self.ref_cache is not None:
            rows = self.ref_cache[batch["index"].cpu()].to(self.device)
            return torch.cat([rows[:, 0], rows[:, 1]])
        inner = self.strategy.unwrap(self.model)
        with torch.no_grad(), inner.disable_adapter():
            return self.answer_logps(batch)[0]

    def _reference_cache(self) -> Any:
        """(N, 2) chosen / rejected reference log-probs of every train and held-out pair, computed once
        by the model as loaded (before any step it is the reference) and kept in the run folder."""
        import torch
        from safetensors.torch import load_file, save_file

        path = self.run.dir / "ref_logps.safetensors"
        every = self.items + self.held
        if path.is_file():
            cached = load_file(str(path))["logps"]
            if cached.shape[0] == len(every):
                return cached
            self.run.info(f"{path} holds {cached.shape[0]} pairs, the data {len(every)}: computing it again")
        self.run.info(f"reference log-probs: computing them once for {len(every)} pairs")
        out = torch.zeros(len(every), 2)
        self.model.eval()
        with torch.no_grad():
            for i in range(0, len(every), self.batch_size):
                chunk = every[i : i + self.batch_size]
                c, r = self.answer_logps(self.collate(chunk))[0].float().cpu().chunk(2)
                out[[x.index for x in chunk]] = torch.stack([c, r], 1)
        self.model.train()
        if self.run.main:
            tmp = path.with_suffix(".tmp")
            save_file({"logps": out}, str(tmp))
            tmp.replace(path)
        return out

    # ---- the loss -------------------------------------------------------------------------------------
    def pair_loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(loss, metrics) for DPO / IPO / SimPO; ORPO overrides it."""
        d = self.preset.dpo
        logps, n = self.answer_logps(batch)
        c, r = logps.chunk(2)
        n_c, n_r = n.chunk(2)
        metrics: dict[str, Any] = {}
        if d.loss == "simpo":
            loss, rc, rr = prefs_math.simpo(c, r, n_c, n_r, d.beta, d.simpo_gamma, d.label_smoothing)
        else:
            ref_c, ref_r = self.reference_logps(batch).chunk(2)
            if d.loss == "ipo":
                loss, rc, rr = prefs_math.ipo(c, r, ref_c, ref_r, n_c, n_r, d.beta)
            else:
                loss, rc, rr = prefs_math.dpo(c, r, ref_c, ref_r, d.beta, d.label_smoothing)
            # drift from the reference on the data's answers, per token (not an on-policy KL)
            drift = (c - ref_c).detach().sum() + (r - ref_r).detach().sum()
            metrics["kl"] = float(drift / n.sum().clamp(min=1))
        return loss.mean(), {**metrics, **_pair_metrics(rc, rr, c, r, n_c, n_r)}

    def loss_step(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return self.pair_loss(batch)

    def eval_metrics(self) -> dict[str, Any]:
        sums: dict[str, float] = {}
        for i in range(0, len(self.held), self.batch_size):
            chunk = self.held[i : i + self.batch_size]
            loss, m = self.pair_loss(self.collate(chunk))
            for k, v in {"loss": loss, **m}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(chunk)
        out = {**{k: v / len(self.held) for k, v in sums.items()}, "pairs": len(self.held)}
        if self.cfg.task == "demo":
            out["true_score"] = self._demo_true_score()
        return out

    def _demo_true_score(self, samples: int = 4) -> float:
        """The demo task's true score (a program) of ``samples`` answers sampled to each held-out prompt, with
        the same seed at every eval: the gain DPO made, in the task's own terms."""
        import torch
        from transformers import GenerationConfig

        from coati_tui.data.demo import true_score
        from coati_tui.data.tokenize import render

        model = self.strategy.unwrap(self.model)
        gen = GenerationConfig(
            do_sample=True,
            temperature=0.7,
            max_new_tokens=24,
            eos_token_id=self.end_id,
            pad_token_id=self.tokenizer.pad_token_id,
            num_return_sequences=samples,
        )
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            for messages in self.held_prompts:
                ids = self.tokenizer(
                    render(self.tokenizer, messages, add_generation_prompt=True),
                    add_special_tokens=False,
                    return_tensors="pt",
                )["input_ids"].to(self.device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
                for row in out[:, ids.shape[1] :]:
                    total += true_score(messages, self.tokenizer.decode(row, skip_special_tokens=True))
        return total / max(1, len(self.held_prompts) * samples)

    def write_final(self, model: Any, folder: Path, weights: Path | None) -> None:
        from coati_tui.trainer.final import write_final

        write_final(
            model, self.tokenizer, folder, self.end_id, stage=self.cfg.stage, base=self.cfg.model, weights=weights
        )

    def start_info(self) -> dict[str, Any]:
        return {
            **super().start_info(),
            "template": self.template,
            "data": self.stats,
            "loss_type": self.loss_name,
            "reference": self.reference,
        }

    @property
    def loss_name(self) -> str:
        return str(self.preset.dpo.loss)

    @property
    def precompute_wanted(self) -> bool:
        return bool(self.preset.dpo.precompute_ref)


class DPO(PairRecipe):
    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        return self.preset.dpo.loss != "simpo"


def _pair_metrics(rc: Any, rr: Any, c: Any, r: Any, n_c: Any, n_r: Any) -> dict[str, Any]:
    """Rewards of chosen and rejected, their margin, preference accuracy, per-token log-probs."""
    return {
        "accuracy": (rc > rr).float().mean(),
        "margin": (rc - rr).mean(),
        "chosen_reward": rc.mean(),
        "rejected_reward": rr.mean(),
        "logp_chosen": (c.detach() / n_c.clamp(min=1)).mean(),
        "logp_rejected": (r.detach() / n_r.clamp(min=1)).mean(),
    }


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        train(DPO(run))
