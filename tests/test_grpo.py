"""GRPO: its arithmetic against numbers worked by hand, then the recipe in real trainer children."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from coati_tui.trainer import grpo_math as G

# ---- arithmetic, by hand ---------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    # two prompts, G = 3: rewards (1, 0, 2) and (5, 5, 5)
    adv, tied = G.group_advantages(torch.tensor([1.0, 0.0, 2.0, 5.0, 5.0, 5.0]), 3)
    # group 1: mean 1, sample std sqrt(((0)^2 + 1 + 1) / 2) = 1 -> (0, -1, 1) / (1 + 1e-4)
    assert torch.allclose(adv[:3], torch.tensor([0.0, -1.0, 1.0]) / (1 + G.EPS))
    assert torch.equal(adv[3:], torch.zeros(3)) and tied.tolist() == [False, True]
    # Dr. GRPO: the mean only
    adv, _ = G.group_advantages(torch.tensor([1.0, 0.0, 2.0, 4.0]), 2, scale=False)
    assert adv.tolist() == [0.5, -0.5, -1.0, 1.0]


def test_the_three_loss_normalisations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # sequence: answers' means (2, 4) -> 3; token: 10 / 4 tokens; constant: 10 / (2 answers x 8)
    assert G.normalise(per_token, mask, "sequence", 8).item() == pytest.approx(3.0)
    assert G.normalise(per_token, mask, "token", 8).item() == pytest.approx(2.5)
    assert G.normalise(per_token, mask, "constant", 8).item() == pytest.approx(10 / 16)
    with pytest.raises(ValueError, match="loss_norm"):
        G.normalise(per_token, mask, "mean", 8)


def test_policy_loss_clips_low_and_high_apart_and_adds_k3():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    mask = torch.ones(1, 3)
    # A = +1: the high clip (0.3) caps 1.5 at 1.3; 0.5 and 1.1 pass: per token -(1.3, 0.5, 1.1)
    loss, st = G.policy_loss(logp, old, logp, torch.tensor([1.0]), mask, 0.2, 0.3, 0.0, "token", 3)
    assert loss.item() == pytest.approx(-(1.3 + 0.5 + 1.1) / 3, rel=1e-5)
    assert st["clip_frac"] == pytest.approx(1 / 3) and st["max_ratio"] == pytest.approx(1.5)
    # A = -1: the low clip (0.2) floors 0.5 at 0.8: -min(-r, -clip(r)) = max(r, clip(r)) = (1.5, 0.8, 1.1)
    loss, _ = G.policy_loss(logp, old, logp, torch.tensor([-1.0]), mask, 0.2, 0.3, 0.0, "token", 3)
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.1) / 3, rel=1e-5)
    # k3 against a reference: exp(q - p) - (q - p) - 1, weighted by beta
    ref = torch.zeros(1, 3)
    d = ref - logp
    k3 = (torch.exp(d) - d - 1).mean().item()
    loss_kl, st = G.policy_loss(logp, logp.detach(), ref, torch.tensor([0.0]), mask, 0.2, 0.2, 0.5, "token", 3)
    assert loss_kl.item() == pytest.approx(0.5 * k3, rel=1e-5) and st["kl"] == pytest.approx(k3, rel=1e-5)


def test_the_loss_gradient_moves_probability_toward_the_better_answer():
    logits = torch.zeros(2, 1, 4, requires_grad=True)  # two answers of one token, uniform policy
    tokens = torch.tensor([[0], [1]])
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    adv, _ = G.group_advantages(torch.tensor([1.0, 0.0]), 2)
    loss, _ = G.policy_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(2, 1), 0.2, 0.2, 0.0, "sequence", 1)
    loss.backward()
    assert logits.grad[0, 0, 0] < 0 < logits.grad[1, 0, 1]  # descent raises token 0 of the better answer
    assert not math.isnan(loss.item())


# ---- the recipe, in real trainer children ---------------------------------------------------------------
SMALL = [
    "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "8", "--batch-size", "4",
    "--lora-rank", "4", "--no-grad-checkpointing", "--preset", "lora_naive", "--temperature", "1.0",
]  # fmt: skip
# a reward a program computes from the text and a column, with Chinese in it
REWARDS = """
def length_to(prompts, completions, target, **columns):
    return [-abs(len(c) - int(t)) / 10 for c, t in zip(completions, target)]

def has_han(prompts, completions, **columns):
    return [float(any("\\u4e00" <= ch <= "\\u9fff" for ch in c)) for c in completions]

CALLS = []

def breaks_later(prompts, completions, **columns):
    CALLS.append(1)
    if len(CALLS) > 2:
        raise KeyError("no such label")
    return [0.0] * len(completions)
"""


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "coati_tui", *args], capture_output=True, text=True, timeout=timeout)


def of(evs, kind):
    return [e for e in evs if e["type"] == kind]


@pytest.fixture(scope="module")
def grpo_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo")
    recs = [
        {"prompt": q, "target": t}
        for q, t in (("你好", 6), ("Say thanks.", 12), ("一加一等于几？", 4), ("Name a color.", 8))
    ] * 4
    (d / "prompts.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), "utf-8")
    (d / "rewards.py").write_text(REWARDS, encoding="utf-8")
    return d


def test_grpo_runs_resumes_to_the_same_numbers_and_writes_an_adapter(tiny_model, grpo_data, tmp_path):
    from coati_tui.core import events

    file = grpo_data / "rewards.py"
    fns = ["--reward-fn", f"{file}:length_to", "--reward-fn", f"{file}:has_han=0.5"]
    a = tmp_path / "a"
    common = ["--model", str(tiny_model), "--prompts", str(grpo_data / "prompts.jsonl"), *fns, *SMALL]
    proc = cli("train", "grpo", *common, "--out", str(a), "--max-steps", "4", "--save-interval", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events.read(a / "events.jsonl")
    (start,) = of(evs, "start")
    assert start["group_size"] == 4 and [f["weight"] for f in start["reward_functions"]] == [1.0, 0.5]
    steps = of(evs, "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for s in steps:
        assert s["samples_per_s"] > 0 and 0 <= s["tied_frac"] <= 1 and s["kl"] >= 0
        assert {"reward/length_to", "reward/has_han", "reward_std", "clip_frac", "entropy"} <= set(s)
        # the total is the weighted sum of the functions' means
        assert s["reward_mean"] == pytest.approx(s["reward/length_to"] + 0.5 * s["reward/has_han"], abs=1e-5)
    assert (a / "final" / "adapter_config.json").is_file()
    from coati_tui.core.run_config import RunConfig

    assert RunConfig.read(a).reward_fns == [f"{file}:length_to", f"{file}:has_han=0.5"]  # kept for resume
    # resumed from step 2: the same rollouts and updates as the uninterrupted run
    b = tmp_path / "b"
    import shutil

    shutil.copytree(a, b, ignore=shutil.ignore_patterns("final", "events.jsonl", "*.lock", "pid"))
    proc = cli("train", "grpo", "--resume", str(b), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs_b = events.read(b / "events.jsonl")
    assert of(evs_b, "start")[0]["resumed_from"] == 2
    by_step = {s["step"]: s for s in steps}
    assert [s["step"] for s in of(evs_b, "step")] == [3, 4]
    for s in of(evs_b, "step"):
        for key in ("reward_mean", "loss", "kl", "clip_frac"):
            assert s[key] == pytest.approx(by_step[s["step"]][key], abs=1e-4), key


def test_a_reward_function_that_raises_stops_the_run_naming_it(tiny_model, grpo_data, tmp_path):
    from coati_tui.core import events

    out = tmp_path / "r"
    spec = f"{grpo_data / 'rewards.py'}:breaks_later"
    proc = cli(
        "train", "grpo", "--model", str(tiny_model), "--prompts", str(grpo_data / "prompts.jsonl"),
        "--reward-fn", spec, *SMALL, "--out", str(out), "--max-steps", "6", "--save-interval", "1",
        "--eval-split", "0", "--json",
    )  # fmt: skip
    assert proc.returncode != 0
    (err,) = of(events.read(out / "events.jsonl"), "error")
    assert err["kind"] == "config" and "breaks_later" in err["message"] and "rewards.py" in err["message"]
    assert "KeyError" in err["message"] and "no such label" in err["message"]
    assert (out / "checkpoints" / "step-2").is_dir()  # the steps before it are kept
    assert "Traceback" not in proc.stdout


def test_grpo_cli_refuses_what_cannot_work(tiny_model, grpo_data, tmp_path):
    prompts = str(grpo_data / "prompts.jsonl")
    proc = cli("train", "grpo", "--model", str(tiny_model), "--prompts", prompts, "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "GRPO needs a reward" in proc.stderr
    missing = cli(
        "train", "grpo", "--model", str(tiny_model), "--prompts", prompts, "--reward-fn",
        str(grpo_data / "nope.py") + ":f", *SMALL, "--out", str(tmp_path / "y"), "--json",
    )  # fmt: skip
    assert missing.returncode != 0 and "nope.py" in missing.stdout + missing.stderr
    full = cli(
        "train", "grpo", "--model", str(tiny_model), "--prompts", prompts, "--reward-fn", "length",
        *SMALL, "--lora-rank", "0", "--out", str(tmp_path / "z"), "--json",
    )  # fmt: skip
    assert full.returncode != 0 and "GRPO trains LoRA adapters" in full.stdout


def test_grpo_under_torchrun(tiny_model, grpo_data, tmp_path):
    from coati_tui.core import events

    out = tmp_path / "t"
    proc = cli(
        "train", "grpo", "--model", str(tiny_model), "--prompts", str(grpo_data / "prompts.jsonl"),
        "--reward-fn", f"{grpo_data / 'rewards.py'}:length_to", *SMALL, "--out", str(out), "--max-steps", "2",
        "--nproc-per-node", "2", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    evs = events.read(out / "events.jsonl")
    assert [s["step"] for s in of(evs, "step")] == [1, 2] and of(evs, "start")[0]["strategy"] == "naive+ddp"
    assert (out / "final" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_demo_grpo_raises_the_true_score(demo_home, tmp_path):
    """GRPO from the demo's SFT model with the task's true score as its only reward (no RM stage)."""
    from coati_tui.core import events

    data = demo_home / "demo" / "data"
    out = tmp_path / "g"
    proc = cli(
        "train", "grpo", "--model", str(demo_home / "runs" / "demo-sft"), "--prompts", str(data / "prompts.jsonl"),
        "--eval-data", str(data / "test_prompts.jsonl"), "--reward-fn", "demo", "--task", "demo",
        "--preset", "lora_naive", "--lora-rank", "16", "--batch-size", "32", "--lr", "1e-3", "--group-size", "8",
        "--prompts-per-step", "4", "--max-new-tokens", "24", "--temperature", "0.7", "--no-grad-checkpointing",
        "--max-steps", "40", "--eval-interval", "40", "--out", str(out), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [e["metrics"] for e in of(events.read(out / "events.jsonl"), "eval")]
    assert evals[-1]["true_score"] > evals[0]["true_score"] + 0.05, evals


def test_reward_specs_are_made_absolute_as_the_trainer_reads_them(tmp_path, monkeypatch):
    from coati_tui.host.build import _abs_spec, split_rewards
    from coati_tui.trainer.rewards import parse_spec

    monkeypatch.chdir(tmp_path)
    for spec, weight in (("r.py:f", 1.0), ("r.py:f=0.5", 0.5), ("a=b/r.py:f", 1.0), ("a=b/r.py:f=2", 2.0)):
        source, name, w = parse_spec(_abs_spec(spec))
        assert source == str(tmp_path / spec.split(":")[0]) and name == "f" and w == weight, spec
    assert _abs_spec("length=0.2") == "length=0.2"
    (tmp_path / "rm").mkdir()
    assert split_rewards("rm, r.py:f exact_answer") == ("rm", ["r.py:f", "exact_answer"])


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_groups_prompt_run_once_gives_the_same_logits_and_gradients(kind):
    """layout.answer_hidden with group G: each prompt through the decoder once, its KV cache repeated for
    its G answers, against every row run whole: the same hidden states and the same LoRA gradients,
    with left padding (prompts of different lengths) and answers of different lengths; and generate from
    the prompts' cache so made (layout.prefilled) gives the answers generate gives from the prompts alone."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from coati_tui.trainer.ppo.layout import answer_hidden

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        kind,
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = get_peft_model(
        AutoModelForCausalLM.from_config(cfg),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    for p in model.parameters():  # LoRA's B starts at 0: give the adapters something to differentiate
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    decoder = model.get_base_model().get_decoder()
    G, P, T = 3, 6, 5
    prompts = [torch.randint(1, 97, (n,)) for n in (6, 3)]  # the second is left-padded by 3
    ids = torch.zeros(len(prompts) * G, P + T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, pr in enumerate(prompts):
        for j in range(G):
            r, n = i * G + j, int(torch.randint(1, T + 1, ()))
            ids[r, P - len(pr) : P], mask[r, P - len(pr) : P] = pr, 1
            ids[r, P : P + n], mask[r, P : P + n] = torch.randint(1, 97, (n,)), 1
    weight = torch.randn(len(prompts) * G, T, 32)
    got = {}
    for group in (1, G):
        model.zero_grad()
        h = answer_hidden(decoder, ids, mask, P, T, group)
        (h * weight * mask[:, P:, None]).sum().backward()
        got[group] = h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    # generate from a cache of each prompt run once: the same answers, greedy and sampled under one seed
    from transformers import GenerationConfig

    from coati_tui.trainer.ppo.layout import prefilled

    pids, pmask = ids[:, :P], mask[:, :P]
    for sample in (False, True):
        gen = GenerationConfig(do_sample=sample, top_k=0, max_new_tokens=6, pad_token_id=0, eos_token_id=None)
        outs = []
        for group in (1, G):
            torch.manual_seed(1)
            with torch.no_grad():
                cache = prefilled(decoder, pids, pmask, group)
                outs.append(model.generate(input_ids=pids, attention_mask=pmask, generation_config=gen, **cache))
        assert (group == G and cache) and outs[0].shape == (len(prompts) * G, P + 6)
        assert torch.equal(outs[0], outs[1]), sample
    live = mask[:, P:].bool()  # columns past an answer's end are padding: nobody reads them
    assert torch.allclose(got[1][0][live], got[G][0][live], atol=1e-5)
    for name, grad in got[1][1].items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, got[G][1][name], atol=1e-4, rtol=1e-4), (name, (grad - got[G][1][name]).abs().max())
