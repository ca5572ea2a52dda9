"""The rollout PPO (and GRPO) learn from: answers sampled in one batched ``generate`` with a KV cache,
scored by the reward model at their last token, with the log-probabilities of actor and reference."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from coati_tui.trainer.ppo.layout import Layout


@dataclass
class Experience:
    """One rollout. B answers; P = the prompts' padded width (left padding, so every answer starts in
    column P); T = the longest answer. Float masks are 1.0 on answer tokens up to and including the
    stop token, 0.0 after it."""

    ids: Any  # (B, P+T) long: prompts + answers, pad after each answer's end
    mask: Any  # (B, P+T) long: attention mask
    resp: Any  # (B, T) long: the answers alone
    rmask: Any  # (B, T) float: answer-token mask
    start: int  # P
    logp: Any  # (B, T) float: the actor's log-probabilities of the sampled tokens (at sampling time)
    ref_logp: Any  # (B, T) float: the reference's
    score: Any  # (B,) float: the reward model's score of each answer (clipped to +-reward_clip if set)
    k1: Any  # (B, T) float: per-token KL estimate logp - ref_logp
    k3: Any  # (B, T) float: the k3 estimator (non-negative, lower variance)
    gen_s: float  # seconds spent in generate
    values: Any = None  # (B, T) float: the critic's values (PPO only)
    adv: Any = None  # (B, T) float: GAE advantages (whitened when the preset says so)
    returns: Any = None  # (B, T) float: advantages + values
    raw_score: Any = None  # (B,) float: the reward model's own scores, before guard.Shaper
    group: int = 1  # rows come in runs of this many with the same prompt (GRPO's G; layout.answer_hidden)

    @property
    def answer_tokens(self) -> float:
        return float(self.rmask.sum())

    def kl_per_answer(self, estimator: str = "k1") -> Any:
        """(B,) the KL estimate summed over each answer."""
        return ((self.k1 if estimator == "k1" else self.k3) * self.rmask).sum(-1)

    def texts(self, tokenizer: Any) -> list[str]:
        rows = (self.resp * self.rmask.long()).tolist()
        lens = self.rmask.sum(-1).long().tolist()
        return [tokenizer.decode(r[:n], skip_special_tokens=True) for r, n in zip(rows, lens)]


def generation_config(pp: Any, stop_ids: list[int], pad_id: int) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,
        temperature=pp.temperature,
        top_k=pp.top_k,  # 0 = off (None would let the model's generation config or transformers' 50 in)
        top_p=pp.top_p,
        max_new_tokens=pp.max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )


class Rollout:
    def __init__(
        self,
        models: Layout,
        pp: Any,
        stop_ids: list[int],
        pad_id: int,
        device: str,
        gen_config: Any,
        shaper: Any = None,
    ) -> None:
        self.models, self.pp, self.stop_ids, self.pad_id = models, pp, stop_ids, pad_id
        self.device, self.gen_config, self.shaper = device, gen_config, shaper

    def _prompts(self, prompt_ids: list[list[int]]) -> tuple[Any, Any, int]:
        import torch

        width = max(len(p) for p in prompt_ids)  # left padding: every answer starts in the same column
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompt_ids], device=self.device)
        pmask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=self.device)
        return ids, pmask, width

    def reference_scores(self, prompt_ids: list[list[int]]) -> Any:
        """The reward model's raw scores of the reference (SFT) model's answers to these prompts."""
        import torch

        from coati_tui.trainer.ppo import math as M

        ids, pmask, width = self._prompts(prompt_ids)
        resp = self.models.generate(ids, pmask, self.gen_config, reference=True)[:, width:]
        rmask = M.response_mask(resp, self.stop_ids, self.pad_id)
        resp = torch.where(rmask > 0, resp, torch.full_like(resp, self.pad_id))
        full, mask = torch.cat([ids, resp], 1), torch.cat([pmask, rmask.long()], 1)
        return self.models.scores(full, mask, width + M.last_index(rmask)).float()

    def make(
        self,
        prompt_ids: list[list[int]],
        kl_coef: float,
        values: bool = True,
        score: bool = True,
        ref: bool = True,
        old: bool = True,
        group: int = 1,
    ) -> Experience:
        """A rollout of ``prompt_ids`` (GRPO repeats each prompt G times). ``values``: the critic's values
        and GAE (PPO); ``score``: the reward model's scores (else 0: GRPO's reward functions score the
        texts); ``ref``: the reference's log-probs (else the actor's: no KL, no reference pass); ``old``:
        the actor's at sampling time (GRPO with one update over the whole rollout skips this pass and takes
        them from its training forward: the same weights; ``logp`` and the KL terms are then None);
        ``group``: ``prompt_ids`` come in runs of this many copies of one prompt, whose log-prob passes then
        run each prompt once."""
        import torch

        from coati_tui.trainer.ppo import math as M

        ids, pmask, width = self._prompts(prompt_ids)
        t0 = time.perf_counter()
        out = self.models.generate(ids, pmask, self.gen_config, group=group)
        gen_s = time.perf_counter() - t0
        resp = out[:, width:]
        rmask = M.response_mask(resp, self.stop_ids, self.pad_id)
        T = max(1, int(rmask.sum(-1).max()))
        resp, rmask = resp[:, :T], rmask[:, :T]
        resp = torch.where(rmask > 0, resp, torch.full_like(resp, self.pad_id))
        full = torch.cat([ids, resp], 1)
        mask = torch.cat([pmask, rmask.long()], 1)
        logp = M.gather_logprobs(self.models.logits("actor", full, mask, width, T, group), resp) if old else None
        ref_logp = M.gather_logprobs(self.models.logits(None, full, mask, width, T, group), resp) if ref else logp
        last = width + M.last_index(rmask)
        raw = self.models.scores(full, mask, last).float() if score else torch.zeros(len(prompt_ids))
        scores = self.shaper.shape(raw, rmask.sum(-1).to(raw.device)) if self.shaper and score else raw
        k1, k3 = M.kl_terms(logp, ref_logp) if logp is not None and ref_logp is not None else (None, None)
        exp = Experience(
            ids=full,
            mask=mask,
            resp=resp,
            rmask=rmask,
            start=width,
            logp=logp,
            ref_logp=ref_logp,
            score=scores.to(resp.device),
            k1=k1,
            k3=k3,
            gen_s=gen_s,
            raw_score=raw.to(resp.device),
            group=group,
        )
        if values:
            v = self.models.values(full, mask, width, T) * rmask
            rewards = M.token_rewards(exp.score, k1, rmask, kl_coef)
            adv, returns = M.gae(rewards, v, rmask, self.pp.gamma, self.pp.lam)
            if self.pp.whiten_advantages and rmask.sum() > 1:
                adv = M.masked_whiten(adv, rmask)
            exp.values, exp.adv, exp.returns = v, adv, returns
        return exp
