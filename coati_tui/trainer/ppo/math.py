"""PPO's arithmetic on response-aligned tensors, kept apart from models so each piece is tested by hand.

Shapes: ``[batch, T]`` where column t is the t-th generated token; ``mask`` is 1 on tokens that belong
to the answer (up to and including its stop token) and 0 on padding and anything after the stop.
Means over tokens are taken over every answer token of the batch (each token weighs the same).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean 0, std 1 over the answer tokens; padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def response_mask(tokens: torch.Tensor, stop_ids: list[int] | set[int], pad_id: int | None) -> torch.Tensor:
    """1 up to and including the first stop token, 0 after it; a pad token that is not a stop is 0."""
    stops = torch.zeros_like(tokens, dtype=torch.bool)
    for s in stop_ids:
        stops |= tokens == s
    seen_before = (stops.long().cumsum(-1) - stops.long()) > 0  # a stop strictly earlier
    mask = ~seen_before
    if pad_id is not None and pad_id not in set(stop_ids):
        mask &= tokens != pad_id
    return mask.float()


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last answer token (0 for an empty answer)."""
    cols = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (cols * (mask > 0)).max(-1).values


def kl_terms(logp: torch.Tensor, ref_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL(actor || reference) estimates from sampled tokens: k1 = log p - log q (unbiased,
    can be negative) and k3 = (q/p) - 1 - log(q/p) (unbiased, always >= 0, lower variance)."""
    k1 = logp - ref_logp
    log_ratio = ref_logp - logp
    k3 = torch.exp(log_ratio) - 1 - log_ratio
    return k1, k3


def token_rewards(score: torch.Tensor, k1: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef * k1 on every answer token, plus the reward model's score on the last one."""
    rewards = -kl_coef * k1 * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_index(mask)] += score * (mask.sum(-1) > 0)
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation along each answer; the value after the last token is 0.
    Returns (advantages, returns = advantages + values), both 0 off the mask."""
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    carry = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        nxt = mask[:, t + 1] if t + 1 < T else torch.zeros_like(carry)
        next_value = values[:, t + 1] * nxt if t + 1 < T else torch.zeros_like(carry)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        carry = delta + gamma * lam * carry * nxt
        adv[:, t] = carry * mask[:, t]
    return adv, (adv + values) * mask


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, dict]:
    """PPO-clip: mean over answer tokens of max(-A r, -A clip(r, 1 - eps, 1 + eps))."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_frac": float(masked_mean((clipped > unclipped).float(), mask)),
            "max_ratio": float((ratio * mask).max()) if mask.any() else 1.0,
            "approx_kl": float(masked_mean(0.5 * (logp - old_logp) ** 2, mask)),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """0.5 * mean over answer tokens of max((v - R)^2, (v_clipped - R)^2), v_clipped within +-clip of
    the rollout's values."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the softmax over the last dimension."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
