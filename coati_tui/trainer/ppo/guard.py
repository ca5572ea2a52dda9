"""Against reward hacking (issue 21): the RM's own score statistics, reward shaping, adaptive KL, alarms.

A policy that finds answers the reward model never saw can score high while getting worse. Four guards,
each a ``[ppo]`` key (GRPO applies the reward and alarm keys when it scores with a reward model):

- ``stats``: the RM's scores on its eval pairs, written by the RM run into its final folder's coati.json
  (``reward_stats``: mean, std, min, max of every answer's score, and the chosen - rejected margin).
- ``Shaper``: score -> (score - mean) / std (``reward_normalize``), clipped to the range the RM gave its
  eval pairs (``reward_clip_seen``), clamped to +-``reward_clip``, minus ``length_penalty`` per token.
- ``next_kl_coef``: Ziegler et al. (2019)'s proportional controller: the coefficient moves by
  ``clip(KL / kl_target - 1, -0.2, 0.2) * answers / kl_horizon`` a step, so the KL per answer settles
  near the target (``kl_target = 0``: the coefficient stays ``kl_coef``).
- ``Watch``: alarms, each fired once a run when its sign lasts ``alarm_patience`` steps (see ``SIGNS``).

No torch here: scores and metrics arrive as floats.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def stats_of(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    """What the RM run stores: its scores on its eval pairs, summed up."""
    every = chosen + rejected
    mean = sum(every) / len(every)
    std = math.sqrt(sum((x - mean) ** 2 for x in every) / max(1, len(every) - 1))
    margin = sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)
    return {"mean": mean, "std": std, "min": min(every), "max": max(every), "margin": margin, "pairs": len(chosen)}


def read_stats(reward_dir: str) -> dict[str, float] | None:
    """The RM's ``reward_stats`` from its coati.json, or None (a model not trained here, an old run)."""
    path = Path(reward_dir) / "coati.json"
    try:
        stats = json.loads(path.read_text(encoding="utf-8")).get("reward_stats")
    except (OSError, ValueError):
        return None
    keys = ("mean", "std", "min", "max", "margin")
    return stats if isinstance(stats, dict) and all(isinstance(stats.get(k), (int, float)) for k in keys) else None


class Shaper:
    """Raw RM scores -> the rewards PPO learns from (``shape``), per the ``[ppo]`` keys."""

    def __init__(self, pp: Any, stats: dict[str, float] | None) -> None:
        self.pp, self.stats = pp, stats
        self.normalize = stats is not None and pp.reward_normalize and stats["std"] > 0

    def norm(self, x: Any) -> Any:
        """A raw score (a float or a tensor) on the scale PPO learns from."""
        if not self.normalize or self.stats is None:
            return x
        return (x - self.stats["mean"]) / self.stats["std"]

    def shape(self, scores: Any, lengths: Any) -> Any:
        """``scores`` (B,) raw RM scores and ``lengths`` (B,) answer tokens (tensors) -> (B,) rewards."""
        pp, out = self.pp, self.norm(scores)
        if pp.reward_clip_seen and self.stats:
            out = out.clamp(self.norm(self.stats["min"]), self.norm(self.stats["max"]))
        if pp.reward_clip:
            out = out.clamp(-pp.reward_clip, pp.reward_clip)
        if pp.length_penalty:
            out = out - pp.length_penalty * lengths
        return out


def next_kl_coef(coef: float, kl: float, target: float, horizon: int, answers: int) -> float:
    """The adaptive controller's next coefficient after a rollout of ``answers`` with mean ``kl`` per answer."""
    if target <= 0 or not math.isfinite(kl):
        return coef
    error = min(0.2, max(-0.2, kl / target - 1))
    return coef * (1 + error * answers / horizon)


@dataclass(frozen=True)
class Sign:
    kind: str
    hint: str


SIGNS = {
    "kl": Sign("kl", "raise ppo.kl_coef or lower ppo.kl_target; or stop here and keep the last good checkpoint"),
    "length": Sign(
        "length", "the policy may be trading content for reward: set ppo.length_penalty below 0, or stop here"
    ),
    "reward_range": Sign(
        "reward_range", "answers the RM never saw: turn on ppo.reward_clip_seen, raise ppo.kl_coef, or stop here"
    ),
    "gap": Sign(
        "gap", "check the samples: if they got worse, stop here, keep the last good checkpoint and retrain the RM"
    ),
}


class Watch:
    """The alarms. ``state`` (the recipe's checkpointed state) holds their counters, so resume keeps them:
    ``first`` (the first steps' answer lengths and raw scores: the SFT model's, nearly), ``signs`` (kind ->
    consecutive steps), ``fired``."""

    FIRST = 3  # steps whose means are the baselines

    def __init__(self, pp: Any, stats: dict[str, float] | None) -> None:
        self.pp, self.stats = pp, stats

    def kl_limit(self) -> float:
        pp = self.pp
        return pp.alarm_kl or (2 * pp.kl_target if pp.kl_target > 0 else 4.0)

    def check(self, state: Any, m: dict[str, float]) -> list[dict[str, Any]]:
        """This step's alarms (dicts for an ``alarm`` event) from its metrics: ``kl``, ``response_len``,
        ``reward_raw`` (the mean raw RM score) and, on steps that measured it, ``reward_gap``."""
        for key in ("response_len", "reward_raw"):
            seen = state.first.setdefault(key, [])
            if len(seen) < self.FIRST and key in m:
                seen.append(m[key])
        found: dict[str, tuple[float, float, str]] = {}
        for kind, sign in (
            ("kl", self._kl),
            ("length", self._length),
            ("reward_range", self._range),
            ("gap", self._gap),
        ):
            seen = sign(state, m)
            if seen:
                found[kind] = seen
        return self._fire(state, found)

    def _kl(self, state: Any, m: dict[str, float]) -> tuple[float, float, str] | None:
        """The KL per answer the controller steers (k1; k3's heavy tail would cry wolf in healthy runs)."""
        kl, limit = m.get("kl", 0.0), self.kl_limit()
        if kl > limit:
            return kl, limit, f"KL {kl:.2f} nats per answer, above {limit:.2f}"
        return None

    def _length(self, state: Any, m: dict[str, float]) -> tuple[float, float, str] | None:
        base = self._baseline(state, "response_len")
        if not self.pp.alarm_length_drop or base is None:
            return None
        floor = base * (1 - self.pp.alarm_length_drop)
        if m["response_len"] < floor:
            return m["response_len"], floor, f"answers shrank to {m['response_len']:.1f} tokens from {base:.1f}"
        return None

    def _baseline(self, state: Any, key: str) -> float | None:
        """The mean of the first steps' ``key``, once there were FIRST of them."""
        seen = state.first.get(key, [])
        return sum(seen) / len(seen) if len(seen) >= self.FIRST else None

    def _range(self, state: Any, m: dict[str, float]) -> tuple[float, float, str] | None:
        """Above any score the RM gave its eval pairs and a std above where the run started (prompts the
        SFT model already answers above that range are the prompts' doing, not the policy's)."""
        start = self._baseline(state, "reward_raw")
        if not self.stats or start is None:
            return None
        top = max(self.stats["max"], start + self.stats["std"])
        if m.get("reward_raw", -math.inf) <= top:
            return None
        message = f"mean RM score {m['reward_raw']:+.2f}, above its eval pairs' and the start's range ({top:+.2f})"
        return m["reward_raw"], top, message

    def _gap(self, state: Any, m: dict[str, float]) -> tuple[float, float, str] | None:
        if not (self.stats and self.pp.alarm_gap and "reward_gap" in m):
            return None
        limit = self.pp.alarm_gap * abs(self.stats["margin"])
        if m["reward_gap"] <= limit:
            return None
        return (
            m["reward_gap"],
            limit,
            f"the policy outscores the SFT model's answers to the same prompts by {m['reward_gap']:+.2f}, over "
            f"{self.pp.alarm_gap:g} x the RM's chosen-rejected margin ({limit:.2f})",
        )

    def _fire(self, state: Any, found: dict[str, tuple[float, float, str]]) -> list[dict[str, Any]]:
        out = []
        for kind in SIGNS:
            if kind == "gap" and kind not in found:
                continue  # measured every gap_every steps, and fires on one measurement
            state.signs[kind] = state.signs.get(kind, 0) + 1 if kind in found else 0
            lasted = state.signs[kind] >= (1 if kind == "gap" else self.pp.alarm_patience)
            if kind in found and lasted and kind not in state.fired:
                state.fired.append(kind)
                value, limit, message = found[kind]
                out.append({"kind": kind, "message": message, "hint": SIGNS[kind].hint, "value": value, "limit": limit})
        return out
