"""Bilingual SFT rows for the benchmarks (the tests have their own in tests/sample_data.py)."""

import random

PAIRS = [
    ("你好", "你好！很高兴见到你。"),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("中国的首都是哪里？", "北京。"),
    ("Say thanks.", "Thank you! 谢谢！"),
    ("一加一等于几？", "一加一等于二。"),
    ("Name a color.", "Blue, 蓝色."),
]


def sft_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, a = rng.choice(PAIRS)
        k = rng.randint(1, 6)
        out.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join([q] * k)},
                    {"role": "assistant", "content": " ".join([a] * k)},
                ]
            }
        )
    return out
