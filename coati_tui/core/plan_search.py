"""When a preset's own settings do not fit: the settings that make it fit, cheapest first (issue 20).

The planner walks :func:`candidates` in order and takes the first that fits. What each costs:

1. the micro-batch, halved down to 1, with accumulation raised so micro-batch x accumulation stays as the
   preset says: the same optimization, somewhat slower per token on a GPU (PPO / GRPO: the update's
   mini-batch, so more and smaller updates per rollout);
2. gradient checkpointing on: activations recomputed in backward, ~30% slower;
3. Gemini with static placement: the optimizer states, then a quarter of the weights at a time, to CPU
   RAM (the weights then cross PCIe every step).

Only with ``allow_shorter`` (``--allow-shorter``): PPO's rollout batch / GRPO's prompts per step halved
(noisier steps), then the max length halved down to 128 tokens (longer sequences are truncated). Keys the
user set are fixed: never changed, and named when they are why nothing fits.

Pure functions on presets, no torch; the same search serves every stage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from typing import Any

from coati_tui.core.presets import Preset

MIN_LEN = 128  # the shortest max length the search goes to
GC_SPEED = 1 / 1.3  # train.grad_checkpointing's help: "costs ~30% speed"
WEIGHTS_IN_RAM_SPEED = 0.25 / 0.4  # gemini_offload_all's speed over gemini_offload's: all weights in RAM
OPTIM_IN_RAM_SPEED = 0.8  # CPU Adam instead of the GPU's (an estimate: gemini_offload keeps it in RAM)
STEPPED = ("ppo", "grpo")  # stages that step once per mini-batch: no accumulation to raise

LABELS = {
    "train.batch_size": "batch",
    "train.accumulation_steps": "accumulation",
    "train.grad_checkpointing": "checkpointing",
    "train.max_len": "max length",
    "offload.optim_frac": "optimizer in RAM",
    "offload.param_frac": "weights in RAM",
    "ppo.rollout_batch": "rollout batch",
    "grpo.prompts_per_step": "prompts per step",
}
COSTS = {
    "train.max_len": "longer sequences are truncated",
    "ppo.rollout_batch": "fewer prompts per PPO step: noisier advantages",
    "grpo.prompts_per_step": "fewer prompts per step: noisier updates",
}
SHORTER = tuple(COSTS)  # the keys only allow_shorter changes
# the settings a plan row reports as chosen (--json's "settings"), where they apply to the preset
SETTINGS = (
    "train.batch_size",
    "train.accumulation_steps",
    "train.grad_checkpointing",
    "train.max_len",
    "offload.optim_frac",
    "offload.param_frac",
)


def known(key: str) -> bool:
    """Whether ``key`` names a preset setting (``train.batch_size``)."""
    section, _, name = key.partition(".")
    return bool(name) and hasattr(getattr(Preset(), section, None), name)


def applies(p: Preset, key: str) -> bool:
    return not key.startswith("offload.") or p.strategy == "gemini"


def get(preset: Preset, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(preset, section), name)


def _halvings(value: int, floor: int) -> list[int]:
    out = [value]
    while out[-1] > floor:
        out.append(max(floor, out[-1] // 2))
    return out


def _batches(p: Preset, stage: str, fixed: Collection[str]) -> list[dict[str, Any]]:
    b, acc = p.train.batch_size, p.train.accumulation_steps
    if "train.batch_size" in fixed or (stage not in STEPPED and "train.accumulation_steps" in fixed):
        return [{}]
    out: list[dict[str, Any]] = [{}]
    for smaller in _halvings(b, 1)[1:]:
        step = {"train.batch_size": smaller}
        if stage not in STEPPED:
            step["train.accumulation_steps"] = math.ceil(b * acc / smaller)
        out.append(step)
    return out


def _checkpointing(p: Preset, fixed: Collection[str]) -> list[dict[str, Any]]:
    if p.train.grad_checkpointing or "train.grad_checkpointing" in fixed:
        return [{}]
    return [{}, {"train.grad_checkpointing": True}]


def _offload(p: Preset, fixed: Collection[str]) -> list[dict[str, Any]]:
    if p.strategy != "gemini" or p.offload.placement != "static":
        return [{}]
    out: list[dict[str, Any]] = [{}]
    base: dict[str, Any] = {}
    if p.offload.optim_frac < 1 and "offload.optim_frac" not in fixed:
        base = {"offload.optim_frac": 1.0}
        out.append(base)
    if "offload.param_frac" not in fixed:
        out += [{**base, "offload.param_frac": f} for f in (0.25, 0.5, 0.75, 1.0) if f > p.offload.param_frac]
    return out


def _shorter(p: Preset, stage: str, fixed: Collection[str]) -> list[dict[str, Any]]:
    lengths: list[dict[str, Any]] = [{}] + [
        {"train.max_len": n} for n in _halvings(p.train.max_len, min(MIN_LEN, p.train.max_len))[1:]
    ]
    if "train.max_len" in fixed:
        lengths = [{}]
    key = {"ppo": "ppo.rollout_batch", "grpo": "grpo.prompts_per_step"}.get(stage)
    batches: list[dict[str, Any]] = [{}]
    if key and key not in fixed:
        batches += [{key: n} for n in _halvings(get(p, key), 1)[1:]]
    return [{**length, **batch} for length, batch in itertools.product(lengths, batches)]


def candidates(p: Preset, stage: str, fixed: Collection[str] = (), allow_shorter: bool = False) -> list[dict[str, Any]]:
    """Override dicts to try on ``p`` for ``stage``, cheapest first; the first is ``{}`` (the preset as is)."""
    shorter = _shorter(p, stage, fixed) if allow_shorter else [{}]
    out = []
    for dims in itertools.product(shorter, _offload(p, fixed), _checkpointing(p, fixed), _batches(p, stage, fixed)):
        merged: dict[str, Any] = {}
        for d in dims:
            merged.update(d)
        out.append(merged)
    return out


def furthest(p: Preset, stage: str, fixed: Collection[str] = ()) -> dict[str, Any]:
    """Every knob that costs no quality at its end (micro-batch 1, checkpointing on, all offloaded)."""
    return candidates(p, stage, fixed)[-1]


def shorter_fixes(p: Preset, stage: str, fixed: Collection[str] = ()) -> list[dict[str, Any]]:
    """What ``allow_shorter`` would try beyond ``furthest``: for the "would fit if shorter" hint."""
    base = furthest(p, stage, fixed)
    return [{**base, **s} for s in _shorter(p, stage, fixed)[1:]]


def changes(p: Preset, overrides: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [preset's value, chosen value]}`` for the overrides that change something."""
    return {k: [get(p, k), v] for k, v in overrides.items() if get(p, k) != v}


def describe(changed: dict[str, list[Any]]) -> str:
    """``batch 4 -> 1, accumulation 8 -> 32, checkpointing on``."""
    parts = []
    for key, (before, after) in changed.items():
        label = LABELS.get(key, key)
        if isinstance(after, bool):
            parts.append(f"{label} {'on' if after else 'off'}")
        elif key.startswith("offload."):
            parts.append(f"{label} {before:.0%} -> {after:.0%}")
        else:
            parts.append(f"{label} {before} -> {after}")
        if key in COSTS:
            parts[-1] += f" ({COSTS[key]})"
    return ", ".join(parts)


def expected_speed(p: Preset, overrides: dict[str, Any]) -> float:
    """The preset's relative throughput after these overrides (ranks what fits, as ``speed`` does)."""
    speed = p.speed
    if overrides.get("train.grad_checkpointing") and not p.train.grad_checkpointing:
        speed *= GC_SPEED
    if "offload.param_frac" in overrides:
        speed *= 1 - (1 - WEIGHTS_IN_RAM_SPEED) * (overrides["offload.param_frac"] - p.offload.param_frac)
    if "offload.optim_frac" in overrides:
        speed *= 1 - (1 - OPTIM_IN_RAM_SPEED) * (overrides["offload.optim_frac"] - p.offload.optim_frac)
    return speed
