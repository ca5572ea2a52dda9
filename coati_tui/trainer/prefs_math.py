"""The preference losses as pure functions of sequence log-probabilities (torch tensors, shape (B,)).

``logp`` is an answer's summed token log-probability under the policy, ``ref`` under the reference,
``n`` its token count. Each function returns (per-example loss (B,), chosen reward (B,), rejected reward
(B,)); the rewards are what "preference accuracy" compares (chosen > rejected).

- DPO (Rafailov et al. 2023): -log sigmoid(beta * ((c - ref_c) - (r - ref_r))); with label smoothing
  e, the conservative form -(1-e) log sigmoid(beta d) - e log sigmoid(-beta d). Rewards beta (logp - ref).
- IPO (Azar et al. 2023): (d - 1 / (2 beta))^2 on per-token (length-averaged) log-ratios, as TRL does.
- SimPO (Meng et al. 2024): no reference; -log sigmoid(beta (c/n_c - r/n_r) - gamma), gamma the target
  reward margin (as in the paper and TRL's CPO trainer). Rewards beta * logp / n.
- ORPO (Hong et al. 2024): no reference; -log sigmoid(log odds(c) - log odds(r)) with odds(p) = p/(1-p)
  of the length-averaged log-prob, weighted by beta and added to the SFT loss on the chosen answer
  (the recipe adds that). Rewards beta * logp / n.
- KTO (Ethayarajh et al. 2024): unpaired; desirable answers 1 - sigmoid(beta (logratio - z)), undesirable
  1 - sigmoid(beta (z - logratio)), z = max(0, mean KL estimate of mismatched pairs), weighted.
"""

from __future__ import annotations

from typing import Any

Tensor = Any  # torch.Tensor; typed loosely so the module can be read without torch


def dpo(
    c: Tensor, r: Tensor, ref_c: Tensor, ref_r: Tensor, beta: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    import torch.nn.functional as F

    d = (c - ref_c) - (r - ref_r)
    loss = -(1 - label_smoothing) * F.logsigmoid(beta * d) - label_smoothing * F.logsigmoid(-beta * d)
    return loss, beta * (c - ref_c).detach(), beta * (r - ref_r).detach()


def ipo(
    c: Tensor, r: Tensor, ref_c: Tensor, ref_r: Tensor, n_c: Tensor, n_r: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    d = (c - ref_c) / n_c.clamp(min=1) - (r - ref_r) / n_r.clamp(min=1)
    return (d - 1 / (2 * beta)) ** 2, beta * (c - ref_c).detach(), beta * (r - ref_r).detach()


def simpo(
    c: Tensor, r: Tensor, n_c: Tensor, n_r: Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    import torch.nn.functional as F

    avg_c, avg_r = c / n_c.clamp(min=1), r / n_r.clamp(min=1)
    z = beta * (avg_c - avg_r) - gamma
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return loss, beta * avg_c.detach(), beta * avg_r.detach()


def orpo(c: Tensor, r: Tensor, n_c: Tensor, n_r: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(odds-ratio loss (B,) = -beta log sigmoid(log odds ratio), chosen reward, rejected reward, log odds
    ratio (B,)); the recipe adds the SFT loss on the chosen answer."""
    import torch
    import torch.nn.functional as F

    avg_c, avg_r = c / n_c.clamp(min=1), r / n_r.clamp(min=1)
    log_odds = (avg_c - avg_r) - (torch.log1p(-torch.exp(avg_c)) - torch.log1p(-torch.exp(avg_r)))
    return -beta * F.logsigmoid(log_odds), beta * avg_c.detach(), beta * avg_r.detach(), log_odds.detach()


def kto(
    logp: Tensor,
    ref: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> tuple[Tensor, Tensor]:
    """(per-example loss (B,), reward beta * logratio (B,)). ``desirable``: (B,) bool; ``kl``: a scalar,
    the batch's mean log-ratio on mismatched (prompt, answer) pairs, clamped at 0 and not differentiated."""
    import torch

    z = kl.detach().clamp(min=0)
    ratio = logp - ref
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z - ratio)))
    return torch.where(desirable, good, bad), beta * ratio.detach()
