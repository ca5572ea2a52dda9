"""GRPO's arithmetic, apart from models so each piece is checked by hand (tests/test_grpo.py).

Rewards come grouped: the G answers to one prompt are consecutive, ``[p0a0, p0a1, ..., p1a0, ...]``.
Token tensors are ``[answers, T]`` with ``mask`` 1 on answer tokens (as in ``ppo.math``).
"""

from __future__ import annotations

import torch

from coati_tui.trainer.ppo.math import masked_mean

EPS = 1e-4  # added to a group's std, as TRL and the DeepSeekMath paper's code do


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage per answer, tied per group). An answer's advantage is its reward minus its group's mean,
    divided by the group's (sample) std + EPS when ``scale`` (Dr. GRPO: not). A group whose rewards all
    tie has advantage 0 everywhere: no signal."""
    r = rewards.float().view(-1, group)
    mean = r.mean(-1, keepdim=True)
    adv = r - mean
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + EPS)
    tied = (r.max(-1).values - r.min(-1).values) <= 1e-9
    return adv.reshape(-1), tied


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(policy || reference) per token: exp(q - p) - (q - p) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def normalise(per_token: torch.Tensor, mask: torch.Tensor, norm: str, max_new_tokens: int) -> torch.Tensor:
    """One loss from per-token losses: ``sequence`` = the mean over answers of each answer's token mean
    (GRPO); ``token`` = the mean over every answer token (DAPO); ``constant`` = the sum over (answers x
    max_new_tokens) (Dr. GRPO: no length bias)."""
    if norm == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if norm == "token":
        return masked_mean(per_token, mask)
    if norm == "constant":
        return (per_token * mask).sum() / (mask.shape[0] * max_new_tokens)
    raise ValueError(f"loss_norm must be sequence, token or constant, not {norm!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    beta: float,
    norm: str,
    max_new_tokens: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped loss: per token -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) + beta k3, with
    r = exp(logp - old_logp) and A the answer's advantage (``adv``: one per answer), then ``normalise``."""
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(-1)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * a
    per_token = -torch.minimum(unclipped, clipped)
    kl = k3(logp, ref_logp)
    if beta:
        per_token = per_token + beta * kl
    loss = normalise(per_token, mask, norm, max_new_tokens)
    with torch.no_grad():
        stats = {
            "clip_frac": float(masked_mean((clipped < unclipped).float(), mask)),
            "kl": float(masked_mean(kl, mask)),
            "max_ratio": float((ratio * mask).max()) if mask.any() else 1.0,
        }
    return loss, stats
