"""PPO's update: ``ppo_epochs`` passes of mini-batches over one rollout, PPO-clip policy loss (+ PTX,
- entropy) for the actor, clipped value loss for the critic; ratio explosions skipped by every process."""

from __future__ import annotations

from typing import Any

from coati_tui.trainer.ppo.layout import Layout
from coati_tui.trainer.ppo.rollout import Experience


def update(
    models: Layout,
    exp: Experience,
    pp: Any,
    preset: Any,
    ptx: list[Any],
    state: Any,
    pad_id: int,
    device: str,
    strategy: Any,
) -> dict[str, float]:
    """``ppo_epochs`` passes of mini-batches over one rollout; returns the averaged statistics."""
    import torch

    from coati_tui.trainer.ppo import math as M
    from coati_tui.trainer.sft import sft_batch

    B, start, T = exp.ids.shape[0], exp.start, exp.resp.shape[1]
    mb_size = max(1, min(preset.train.batch_size, B))
    sums: dict[str, float] = {}
    n_mb, skipped = 0, 0
    for _ in range(pp.ppo_epochs):
        perm = torch.randperm(B)
        for i in range(0, B, mb_size):
            idx = perm[i : i + mb_size].to(device)
            ids, mask, resp, rmask = exp.ids[idx], exp.mask[idx], exp.resp[idx], exp.rmask[idx]
            batch = None
            if ptx:
                items = [ptx[(state.ptx_pos + k) % len(ptx)] for k in range(mb_size)]
                state.ptx_pos += mb_size
                batch = sft_batch(items, pad_id, device)
            logits, ptx_loss = models.actor_forward(ids, mask, start, T, batch)
            logp_all = torch.log_softmax(logits, -1)  # one vocab-wide copy
            del logits
            logp = logp_all.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
            pl, st = M.policy_loss(logp, exp.logp[idx], exp.adv[idx], rmask, pp.clip_eps)
            with torch.set_grad_enabled(pp.entropy_coef > 0):  # reported always, in the graph only when weighted
                ent = M.masked_mean(-(logp_all.exp() * logp_all).sum(-1), rmask)
            del logp_all
            n_mb += 1
            loss = pl - pp.entropy_coef * ent
            if ptx_loss is not None:
                loss = loss + pp.ptx_coef * ptx_loss
            # every process skips together, or their gradient syncs would wait on each other forever
            max_ratio = strategy.reduce_max(st["max_ratio"])
            if max_ratio > pp.ratio_limit:
                skipped += 1  # a ratio explosion: this mini-batch would wreck the policy
                models.discard("actor", loss)
                _acc(sums, {"max_ratio": st["max_ratio"]})
                continue
            models.update("actor", loss)

            v = models.values(ids, mask, start, T)
            vl = M.value_loss(v, exp.values[idx], exp.returns[idx], rmask, pp.value_clip)
            models.update("critic", vl)
            _acc(
                sums,
                {
                    "policy_loss": float(pl.detach()),
                    "value_loss": float(vl.detach()),
                    "entropy": float(ent.detach()),
                    **({"ptx_loss": float(ptx_loss.detach())} if ptx_loss is not None else {}),
                    **st,
                },
            )
    done = max(1, n_mb - skipped)
    out = {k: v if k == "max_ratio" else v / done for k, v in sums.items()}
    out.setdefault("policy_loss", float("nan"))
    out["skipped_updates"] = skipped
    return out


def _acc(into: dict, values: dict) -> None:
    for k, v in values.items():
        into[k] = max(into.get(k, 0.0), v) if k == "max_ratio" else into.get(k, 0.0) + v
