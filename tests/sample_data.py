"""Small bilingual datasets written by tests (nothing is downloaded)."""

import json
import random

ZH_EN = [
    ("你好", "你好！很高兴见到你。"),
    ("What is 2 + 3?", "2 + 3 = 5."),
    ("中国的首都是哪里？", "北京。"),
    ("Say thanks.", "Thank you! 谢谢！"),
    ("一加一等于几？", "一加一等于二。"),
    ("Name a color.", "Blue, 蓝色."),
]


def sft_records(n: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q, a = ZH_EN[i % len(ZH_EN)]
        x, y = rng.randint(1, 9), rng.randint(1, 9)
        if i % 3 == 0:
            out.append({"messages": [{"from": "user", "content": q}, {"from": "assistant", "content": a}]})
        elif i % 3 == 1:
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": "简短回答。"},
                        {"role": "user", "content": f"{x} + {y} = ?"},
                        {"role": "assistant", "content": f"{x + y}"},
                    ]
                }
            )
        else:
            out.append({"instruction": f"计算 {x} 加 {y}", "input": "", "output": f"答案是 {x + y}。"})
    return out


def preference_records(n: int = 80, seed: int = 0) -> list[dict]:
    """Learnable: the chosen answer is polite and on topic, the rejected one is noise."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q, a = ZH_EN[i % len(ZH_EN)]
        noise = "".join(rng.choice("xyzqwk#@") for _ in range(rng.randint(4, 12)))
        if i % 2:
            out.append(
                {
                    "context": [{"from": "user", "content": q}],
                    "chosen": [{"from": "assistant", "content": a}],
                    "rejected": [{"from": "assistant", "content": noise}],
                }
            )
        else:
            out.append({"prompt": q, "chosen": a, "rejected": noise})
    return out


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)
