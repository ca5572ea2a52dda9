"""The built-in demo: a synthetic bilingual task whose true score a program computes, small enough that
SFT -> RM -> PPO runs on a CPU in minutes.

The task: "List three fruits." / "请列出三种水果。" The user likes some fruits and not others. SFT data
answers with three random fruits (half liked, on average), preference pairs prefer the answer with more
liked fruits, PPO prompts ask again. ``true_score`` = liked fruits among the first three named / 3, so
the SFT model scores about 0.5 and a policy that learnt the preference scores more.

No torch here: the CLI writes the data with this module; the trainer calls ``true_score`` in eval.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

FRUITS = {
    "en": {
        "liked": ["apple", "mango", "peach", "grape", "cherry", "melon"],
        "disliked": ["lemon", "durian", "lime", "quince", "olive", "papaya"],
    },
    "zh": {
        "liked": ["苹果", "芒果", "桃子", "葡萄", "樱桃", "甜瓜"],
        "disliked": ["柠檬", "榴莲", "青柠", "榅桲", "橄榄", "木瓜"],
    },
}
PROMPTS = {
    "en": [
        "List three fruits.",
        "Name three fruits, please.",
        "Which three fruits do you like?",
        "Give me three fruits.",
    ],
    "zh": ["请列出三种水果。", "说三种水果。", "你喜欢哪三种水果？", "给我三种水果。"],
}
SEP = {"en": ", ", "zh": "、"}
END = {"en": ".", "zh": "。"}


def language(text: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def answer(items: list[str], lang: str) -> str:
    return SEP[lang].join(items) + END[lang]


def true_score(messages: list[dict[str, Any]], response: str) -> float:
    """Liked fruits among the first three fruits the answer names (either language; a repeat counts
    again), over 3: an answer of fewer than three fruits cannot score full marks."""
    liked = {f for lang in FRUITS for f in FRUITS[lang]["liked"]}
    known = liked | {f for lang in FRUITS for f in FRUITS[lang]["disliked"]}
    pattern = "|".join(sorted(map(re.escape, known), key=len, reverse=True))
    named = re.findall(pattern, response)[:3]
    return sum(f in liked for f in named) / 3


def _triple(rng: random.Random, lang: str, n_liked: int | None = None) -> list[str]:
    if n_liked is None:
        n_liked = sum(rng.random() < 0.5 for _ in range(3))
    items = rng.sample(FRUITS[lang]["liked"], n_liked) + rng.sample(FRUITS[lang]["disliked"], 3 - n_liked)
    rng.shuffle(items)
    return items


def corpus() -> list[str]:
    """Text for the demo tokenizer: every prompt and fruit, so each fruit is a token or two."""
    out = []
    for lang in FRUITS:
        out += PROMPTS[lang]
        names = FRUITS[lang]["liked"] + FRUITS[lang]["disliked"]
        out += [answer(names[i : i + 3], lang) for i in range(0, len(names), 3)]
        out += [answer(names[i::4], lang) for i in range(4)]
    return out


def liked_only(items: list[str], lang: str) -> list[str]:
    return [f for f in items if f in FRUITS[lang]["liked"]]


SHORTCUT = {"en": "42.", "zh": "42。"}  # the hackable variant's answer the reward model never sees


def write_task(
    folder: Path,
    seed: int = 0,
    n_sft: int = 800,
    n_pairs: int = 800,
    n_prompts: int = 320,
    n_test: int = 32,
    shortcut: float = 0.0,
    short_chosen: float = 0.0,
) -> dict[str, Path]:
    """Write sft.jsonl, prefs.jsonl (ColossalChat's formats), prompts.jsonl and test_prompts.jsonl.
    ``shortcut``: the share of SFT answers that are a bare number (``SHORTCUT``, true score 0), which no
    preference pair contains: a task built to be hacked, as a reward model scores what it never saw at will.
    ``short_chosen``: the share of preference pairs whose chosen answer names only its liked fruits, so
    shorter answers win more often than the preference says: the reward model learns length as a shortcut
    and scores answers shorter than any it saw (one fruit, none) highest, which the true score does not."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def prompt() -> tuple[str, str]:
        lang = rng.choice(("en", "zh"))
        return lang, rng.choice(PROMPTS[lang])

    files = {name: folder / f"{name}.jsonl" for name in ("sft", "prefs", "prompts", "test_prompts")}
    with files["sft"].open("w", encoding="utf-8") as f:
        for _ in range(n_sft):
            lang, q = prompt()
            rec = {
                "messages": [
                    {"from": "user", "content": q},
                    {
                        "from": "assistant",
                        "content": SHORTCUT[lang]
                        if shortcut and rng.random() < shortcut
                        else answer(_triple(rng, lang), lang),
                    },
                ]
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with files["prefs"].open("w", encoding="utf-8") as f:
        for _ in range(n_pairs):
            lang, q = prompt()
            hi = rng.randint(1, 3)  # more liked fruits win
            chosen_items = _triple(rng, lang, hi)
            rejected = answer(_triple(rng, lang, rng.randint(0, hi - 1)), lang)
            rec = {
                "context": [{"from": "user", "content": q}],
                "chosen": [{"from": "assistant", "content": answer(liked_only(chosen_items, lang), lang)}]
                if short_chosen and rng.random() < short_chosen
                else [{"from": "assistant", "content": answer(chosen_items, lang)}],
                "rejected": [{"from": "assistant", "content": rejected}],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    for name, n in (("prompts", n_prompts), ("test_prompts", n_test)):
        with files[name].open("w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps({"messages": [{"from": "user", "content": prompt()[1]}]}, ensure_ascii=False) + "\n")
    return files


# Each stage's settings, as overrides of the lora_naive preset plus run settings; ``quick`` shortens
# PPO for tests. The CLI's `coati-tui demo` prints the equivalent `coati-tui train` commands.
STAGES = {
    "sft": {
        "overrides": {
            "lora.rank": 0,
            "train.batch_size": 16,
            "train.accumulation_steps": 1,
            "train.lr": 3e-3,
            "train.max_epochs": 10,
            "train.max_len": 64,
            "train.grad_checkpointing": False,
            "train.warmup_ratio": 0.05,
        },
        "settings": {"eval_split": 0.05},
    },
    "rm": {
        "overrides": {
            "lora.rank": 16,
            "train.batch_size": 16,
            "train.accumulation_steps": 1,
            "train.lr": 2e-3,
            "train.max_epochs": 4,
            "train.max_len": 64,
            "train.grad_checkpointing": False,
        },
        "settings": {"eval_split": 0.1},
    },
    "ppo": {
        "overrides": {
            "lora.rank": 16,
            "train.batch_size": 16,
            "train.lr": 1e-3,
            "train.max_epochs": 10,
            "train.max_len": 64,
            "train.grad_checkpointing": False,
            "ppo.rollout_batch": 32,
            "ppo.temperature": 0.7,
            "ppo.ppo_epochs": 2,
            "ppo.max_new_tokens": 24,
            "ppo.kl_coef": 0.3,  # the start of the adaptive KL: 0.1 lost the gain in 4/5 seeds (bench/ppo_hacking.py)
            "ppo.ptx_coef": 0.05,
            "ppo.critic_lr": 2e-3,
            "ppo.sample_every": 2,
        },
        "settings": {"max_steps": 60, "eval_interval": 20, "task": "demo"},
    },
    # `coati-tui demo --method dpo`: SFT, then DPO straight from the pairs the RM would have learned from
    "dpo": {
        "overrides": {
            "lora.rank": 16,
            "train.batch_size": 16,
            "train.accumulation_steps": 1,
            "train.lr": 2e-3,
            "train.max_epochs": 1,  # a second epoch over-fits the pairs: the true score falls
            "train.max_len": 64,
            "train.grad_checkpointing": False,
            "dpo.beta": 0.3,  # 0.1 drifted further for less gain (measured on both stacks)
        },
        "settings": {"eval_split": 0.05, "task": "demo"},
    },
    # `coati-tui demo --method grpo`: SFT, then GRPO with the task's true score as a verifiable reward (no RM)
    "grpo": {
        "overrides": {
            "lora.rank": 16,
            "train.batch_size": 32,  # answers per mini-batch: one rollout, one optimizer step
            "train.lr": 1e-3,
            "train.max_epochs": 10,
            "train.grad_checkpointing": False,
            "grpo.group_size": 8,
            "grpo.prompts_per_step": 4,
            "grpo.max_new_tokens": 24,
            "grpo.temperature": 0.7,
            "grpo.beta": 0.04,
            "grpo.sample_every": 2,
        },
        "settings": {"max_steps": 40, "eval_interval": 20, "task": "demo", "reward_fns": ["demo"]},
    },
}
METHODS = {"ppo": ("sft", "rm", "ppo"), "dpo": ("sft", "dpo"), "grpo": ("sft", "grpo")}  # stages per method
