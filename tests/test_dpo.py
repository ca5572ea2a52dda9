"""DPO, IPO, SimPO and ORPO: each loss against its formula worked by hand and (DPO, IPO) against TRL on the
same batch; DPO learning a bilingual preference through the real CLI and trainer child; the reference
precomputed equals adapters off; resume; the Rank pane's store as input; malformed rows."""

import json
import math
import shutil
import subprocess
import sys

import pytest
from sample_data import preference_records, write_jsonl

from coati_tui.core import events

torch = pytest.importorskip("torch")

SMALL = [
    "--batch-size",
    "4",
    "--accumulation-steps",
    "1",
    "--max-len",
    "64",
    "--lora-rank",
    "8",
    "--lr",
    "3e-3",
    "--eval-split",
    "0.2",
]


def train(stage, *args, timeout=600):
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", "train", stage, *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, [e for e in map(events.parse, proc.stdout.splitlines()) if e]


def of(evs, kind):
    return [e for e in evs if e["type"] == kind]


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def _logsig(x):
    return -math.log1p(math.exp(-x))


def _recipe_on(model, cls, preset, tok):
    """A recipe's own loss code on ``model`` (a PEFT model from a peer's trainer, its adapters moved off zero
    so the policy differs from the reference), without a run folder."""
    from coati_tui.trainer import strategy

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    recipe = cls.__new__(cls)
    recipe.preset, recipe.device, recipe.tokenizer, recipe.ref_cache, recipe.model = preset, "cpu", tok, None, model
    recipe.strategy = strategy.Naive("cpu", "fp32")
    return recipe


def test_each_loss_equals_its_formula():
    from coati_tui.trainer import prefs_math as P

    c, r, ref_c, ref_r, n_c, n_r = _t(-1.0), _t(-4.0), _t(-1.5), _t(-3.0), _t(2.0), _t(4.0)
    # DPO: d = (c - ref_c) - (r - ref_r) = 0.5 - (-1.0) = 1.5; beta 0.1
    loss, rc, rr = P.dpo(c, r, ref_c, ref_r, 0.1)
    assert float(loss) == pytest.approx(-_logsig(0.15), abs=1e-9)
    assert (float(rc), float(rr)) == pytest.approx((0.05, -0.1))
    loss, _, _ = P.dpo(c, r, ref_c, ref_r, 0.1, label_smoothing=0.2)
    assert float(loss) == pytest.approx(-0.8 * _logsig(0.15) - 0.2 * _logsig(-0.15), abs=1e-9)
    # IPO: per-token log-ratios 0.5/2 - (-1)/4 = 0.5; target 1 / (2 beta) = 5
    loss, _, _ = P.ipo(c, r, ref_c, ref_r, n_c, n_r, 0.1)
    assert float(loss) == pytest.approx((0.5 - 5) ** 2)
    # SimPO: averages -0.5 and -1; beta 2 x 0.5 - gamma 1.0 = 0 -> log 2; with gamma 0.5: -log sigmoid(0.5)
    loss, rc, rr = P.simpo(c, r, n_c, n_r, 2.0, 1.0)
    assert float(loss) == pytest.approx(math.log(2))
    assert float(P.simpo(c, r, n_c, n_r, 2.0, 0.5)[0]) == pytest.approx(-_logsig(0.5))
    assert (float(rc), float(rr)) == pytest.approx((-1.0, -2.0))
    # ORPO: log odds(p) = log p - log(1 - p) of the per-token averages
    loss, _, _, log_odds = P.orpo(c, r, n_c, n_r, 0.1)
    want = (-0.5 - math.log(1 - math.exp(-0.5))) - (-1.0 - math.log(1 - math.exp(-1.0)))
    assert float(log_odds) == pytest.approx(want)
    assert float(loss) == pytest.approx(-0.1 * _logsig(want))
    # KTO: log-ratios +0.5 (desirable) and -1.0 (undesirable), batch KL 0.2, beta 0.1, weights 1 and 2
    loss, reward = P.kto(_t(-1.0, -4.0), _t(-1.5, -3.0), torch.tensor([True, False]), _t(0.2), 0.1, 1.0, 2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert loss.tolist() == pytest.approx([1 - sig(0.1 * (0.5 - 0.2)), 2 * (1 - sig(0.1 * (0.2 + 1.0)))])
    assert reward.tolist() == pytest.approx([0.05, -0.1])
    loss, _ = P.kto(_t(-1.0), _t(-1.5), torch.tensor([True]), _t(-3.0), 0.1, 1.0, 1.0)  # a negative KL counts as 0
    assert float(loss) == pytest.approx(1 - sig(0.05))


def test_simpo_and_orpo_equal_trls_losses_on_the_same_log_probs():
    """TRL's CPO trainer (loss_type simpo) and ORPO trainer take length-averaged log-probs; ours take sums
    and lengths. Their loss methods, called on the same numbers, against ours (ORPO: TRL subtracts
    beta * log sigmoid(log odds), ours adds its negative)."""
    pytest.importorskip("trl")
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    from coati_tui.trainer import prefs_math as P

    g = torch.Generator().manual_seed(0)
    n_c, n_r = torch.randint(1, 20, (8,), generator=g).double(), torch.randint(1, 20, (8,), generator=g).double()
    c, r = -torch.rand(8, generator=g).double() * n_c, -torch.rand(8, generator=g).double() * n_r * 2
    trl_self = SimpleNamespace(
        loss_type="simpo",
        beta=2.0,
        simpo_gamma=0.7,
        label_smoothing=0.1,
        alpha=0.0,
        accelerator=SimpleNamespace(device="cpu"),
    )
    theirs, t_c, t_r = CPOTrainer.cpo_loss(trl_self, c / n_c, r / n_r)
    ours, o_c, o_r = P.simpo(c, r, n_c, n_r, 2.0, 0.7, 0.1)
    assert torch.allclose(ours, theirs, atol=1e-5) and torch.allclose(o_c, t_c) and torch.allclose(o_r, t_r)
    trl_self = SimpleNamespace(beta=0.3, accelerator=SimpleNamespace(device="cpu"))
    theirs, t_c, t_r, _, t_odds = ORPOTrainer.odds_ratio_loss(trl_self, c / n_c, r / n_r)
    ours, o_c, o_r, o_odds = P.orpo(c, r, n_c, n_r, 0.3)
    assert torch.allclose(ours, -theirs.double(), atol=1e-5) and torch.allclose(o_odds.mean(), t_odds.double())
    assert torch.allclose(o_c, t_c.double()) and torch.allclose(o_r, t_r.double())


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_and_ipo_equal_trl_on_the_same_batch(loss, tiny_model, tmp_path):
    """The same LoRA model (its adapters moved off zero), the same tokens: coati-tui's loss and TRL's
    DPOTrainer's, the reference being the adapters switched off on both sides."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from coati_tui.core import presets
    from coati_tui.data import formats
    from coati_tui.data.tokenize import load_tokenizer, prepare_preferences
    from coati_tui.trainer.dpo import DPO, PrefItem

    tok, _ = load_tokenizer(str(tiny_model))
    pairs = [formats.preference_pair(r) for r in preference_records(8)]
    examples, _ = prepare_preferences(tok, pairs, 64)
    preset = presets.load("lora_naive").with_overrides({"dpo.loss": loss})
    trl_args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=preset.dpo.beta,
        loss_type=[loss],
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=2,
        max_length=64,
    )
    dummy = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ]
        * 2
    )
    torch.manual_seed(0)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=trl_args,
        train_dataset=dummy,
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"),
    )
    model = trainer.model
    ours = _recipe_on(model, DPO, preset, tok)
    batch = ours.collate([PrefItem(c, r, i) for i, (c, r) in enumerate(examples)])
    with torch.no_grad():
        mine, metrics = ours.pair_loss(batch)
        theirs = trainer._compute_loss(
            model,
            {
                "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"],
                "completion_mask": (batch["labels"] != -100).long(),
            },
            False,
        )
    assert abs(float(mine) - float(theirs)) < 1e-5, (float(mine), float(theirs))
    assert abs(float(mine) - (math.log(2) if loss == "sigmoid" else 25.0)) > 1e-3  # policy != reference


def test_kto_equals_trl_on_the_same_batch(tiny_model, tmp_path):
    """Our collated KTO batch (answers, then their mismatched sequences) handed to TRL's KTOTrainer as its
    completion and KL rows: the same LoRA model (adapters moved off zero), the same loss within 1e-5."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    from coati_tui.core import presets
    from coati_tui.data import formats
    from coati_tui.data.tokenize import load_tokenizer, prepare_labelled
    from coati_tui.trainer.kto import KTO, LabelledItem

    tok, _ = load_tokenizer(str(tiny_model))
    examples = [x for r in _unpaired(8) for x in formats.labelled_examples(r)]
    prepared, _ = prepare_labelled(tok, examples, 64)
    preset = presets.load("lora_naive").with_overrides({"kto.undesirable_weight": 1.5})
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=preset.kto.beta,
        desirable_weight=1.0,
        undesirable_weight=1.5,
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=2,
        max_length=64,
    )
    dummy = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "completion": [{"role": "assistant", "content": "a"}],
                "label": i % 2 == 0,
            }
            for i in range(4)
        ]
    )
    torch.manual_seed(0)
    trainer = KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        train_dataset=dummy,
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"),
    )
    model = trainer.model
    ours = _recipe_on(model, KTO, preset, tok)
    batch = ours.collate([LabelledItem(a, kl, i, d) for i, (a, kl, d) in enumerate(prepared)])
    n = len(prepared)
    mask = (batch["labels"] != -100).long()
    inputs = {
        "input_ids": batch["input_ids"][:n],
        "attention_mask": batch["attention_mask"][:n],
        "completion_mask": mask[:n],
        "label": batch["desirable"],
        "KL_input_ids": batch["input_ids"][n:],
        "KL_attention_mask": batch["attention_mask"][n:],
        "KL_completion_mask": mask[n:],
    }
    with torch.no_grad():
        mine, _ = ours.pair_loss(batch)
        theirs = trainer._compute_loss(model, inputs, False)
    assert abs(float(mine) - float(theirs)) < 1e-5, (float(mine), float(theirs))
    assert abs(float(mine) - 0.5 * (1 + 1.5) / 2) > 1e-3  # policy != reference


def test_dpo_learns_a_bilingual_preference_and_its_output_loads(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(60))
    out = tmp_path / "dpo"
    proc, evs = train(
        "dpo",
        "--model",
        str(tiny_model),
        "--data",
        data,
        "--out",
        str(out),
        *SMALL,
        "--max-epochs",
        "3",
        "--beta",
        "0.1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (start,) = of(evs, "start")
    assert start["loss_type"] == "sigmoid" and start["reference"] == "adapters_off"
    steps = of(evs, "step")
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at the first step
    for key in ("accuracy", "margin", "chosen_reward", "rejected_reward", "logp_chosen", "logp_rejected", "kl"):
        assert key in steps[-1]
    final_eval = of(evs, "eval")[-1]["metrics"]
    assert final_eval["accuracy"] >= 0.9 and final_eval["margin"] > 0, final_eval
    assert steps[-1]["loss"] < steps[0]["loss"]

    from peft import AutoPeftModelForCausalLM
    from transformers import GenerationConfig

    from coati_tui.data.tokenize import end_token, load_tokenizer

    assert AutoPeftModelForCausalLM.from_pretrained(out / "final").peft_config  # a PEFT adapter over the base
    tok, _ = load_tokenizer(str(out / "final"))
    end_id, _ = end_token(tok)
    assert end_id in GenerationConfig.from_pretrained(out / "final").eos_token_id
    assert json.loads((out / "final" / "coati.json").read_text())["stage"] == "dpo"


def test_precomputed_reference_equals_adapters_off_and_resume_repeats_the_run(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(40))
    common = ["--model", str(tiny_model), "--data", data, *SMALL, "--max-epochs", "2", "--save-interval", "4"]
    proc, live = train("dpo", *common, "--out", str(tmp_path / "live"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc, cached = train("dpo", *common, "--precompute-ref", "--out", str(tmp_path / "cached"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert of(cached, "start")[0]["reference"] == "precomputed"
    assert (tmp_path / "cached" / "ref_logps.safetensors").is_file()
    a, b = of(live, "step"), of(cached, "step")
    assert len(a) == len(b) == of(live, "start")[0]["total_steps"]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-4 and abs(x["margin"] - y["margin"]) < 1e-4

    # what a run killed after its older kept checkpoint leaves behind: resume repeats the rest
    whole, cut = tmp_path / "cached", tmp_path / "cut"
    first = min(int(p.name.split("-")[1]) for p in (whole / "checkpoints").iterdir())
    shutil.copytree(whole / "checkpoints" / f"step-{first}", cut / "checkpoints" / f"step-{first}")
    for name in ("config.toml", "ref_logps.safetensors"):
        shutil.copy(whole / name, cut / name)
    proc, resumed = train("dpo", "--resume", str(cut))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert of(resumed, "start")[0]["resumed_from"] == first
    reference = {e["step"]: e["loss"] for e in b}
    steps = of(resumed, "step")
    assert steps[0]["step"] == first + 1 and steps[-1]["step"] == max(reference)
    for e in steps:
        assert abs(e["loss"] - reference[e["step"]]) < 1e-4, e["step"]


@pytest.mark.parametrize("method", ["simpo", "orpo"])
def test_simpo_and_orpo_train_without_a_reference(method, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(40))
    stage, extra = ("dpo", ["--loss", "simpo", "--beta", "2.0"]) if method == "simpo" else ("orpo", [])
    proc, evs = train(
        stage,
        "--model",
        str(tiny_model),
        "--data",
        data,
        "--out",
        str(tmp_path / method),
        *SMALL,
        "--max-epochs",
        "2",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (start,) = of(evs, "start")
    assert start["reference"] == "none" and start["loss_type"] == method
    assert "kl" not in of(evs, "step")[-1]
    if method == "orpo":
        assert of(evs, "step")[-1]["nll"] < of(evs, "step")[0]["nll"]  # its SFT term learns the chosen answers
    assert of(evs, "eval")[-1]["metrics"]["accuracy"] >= 0.75


@pytest.mark.slow  # the loop's logic, not the stack's: CI runs it once
def test_the_rank_panes_store_is_training_data(tiny_model, tmp_path):
    from coati_tui.data.prefstore import Store

    store = tmp_path / "prefs.sqlite"
    s = Store(store)
    for i, rec in enumerate(preference_records(24)):
        q = rec.get("prompt") or rec["context"][0]["content"]
        good = rec["chosen"] if isinstance(rec["chosen"], str) else rec["chosen"][0]["content"]
        bad = rec["rejected"] if isinstance(rec["rejected"], str) else rec["rejected"][0]["content"]
        prompt = s.add_prompt([{"role": "user", "content": q}], "test")
        pair = s.add_pair(prompt, {"text": good, "model": "m"}, {"text": bad, "model": "m"}, swapped=i % 2 == 1)
        s.judge(pair, "B" if i % 2 else "A", "ann")  # the good answer, wherever it was shown
    s.close()
    out = tmp_path / "run"
    proc, evs = train(
        "dpo", "--model", str(tiny_model), "--data", str(store), "--out", str(out), *SMALL, "--max-steps", "2"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert of(evs, "start")[0]["data"]["examples"] == 24
    assert list(out.glob("prefs-*.jsonl"))  # the labels as they were at the start: resume trains on the same


def test_malformed_preference_rows_stop_before_a_run_folder(tiny_model, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"prompt": "你好", "chosen": "你好！", "rejected": "滚"}\n{"prompt": "hi", "chosen": "hello"}\n',
        encoding="utf-8",
    )
    proc, evs = train("dpo", "--model", str(tiny_model), "--data", str(path), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and evs == []
    assert f"{path}: line 2, field 'rejected'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # the loop's logic, not the stack's: CI runs it once
def test_demo_method_dpo_raises_the_true_score(tmp_path):
    """`coati-tui demo --method dpo`: SFT, then DPO on the demo's pairs; the answers' true score (a program)
    rises from the SFT model's."""
    import os

    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", "demo", "--method", "dpo", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COATI_TUI_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["true_score_dpo"] > summary["true_score_sft"], summary
    assert summary["dpo_accuracy"] > 0.6
    evs = events.read(home / "runs" / "demo-dpo" / "events.jsonl")
    assert of(evs, "eval")[0]["step"] == 0 and "true_score" in of(evs, "eval")[0]["metrics"]


def _unpaired(n):
    out = []
    for i, r in enumerate(preference_records(n)):
        q = r.get("prompt") or r["context"][0]["content"]
        side = "chosen" if i % 2 else "rejected"
        text = r[side] if isinstance(r[side], str) else r[side][0]["content"]
        out.append({"prompt": q, "completion": text, "label": bool(i % 2)})
    return out


@pytest.mark.parametrize("source", [pytest.param("unpaired", marks=pytest.mark.slow), "pairs"])
def test_kto_learns_from_answers_labelled_one_at_a_time(source, tiny_model, tmp_path):
    records = _unpaired(60) if source == "unpaired" else preference_records(30)  # a pair gives one of each
    data = write_jsonl(tmp_path / "kto.jsonl", records)
    proc, evs = train(
        "kto", "--model", str(tiny_model), "--data", data, "--out", str(tmp_path / "kto"), *SMALL, "--max-epochs", "3"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (start,) = of(evs, "start")
    assert start["data"]["examples"] == 60 and start["data"]["desirable"] == 30 and start["reference"] == "adapters_off"
    assert of(evs, "step")[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0) at the reference
    final = of(evs, "eval")[-1]["metrics"]
    assert final["reward_desirable"] > 0 > final["reward_undesirable"], final


def test_kto_rows_with_a_bad_label_stop_before_a_run_folder(tiny_model, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"prompt": "你好", "completion": "你好！", "label": true}\n'
        '{"prompt": "hi", "completion": "hello", "label": "maybe"}\n',
        encoding="utf-8",
    )
    proc, evs = train("kto", "--model", str(tiny_model), "--data", str(path), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and evs == []
    assert f"{path}: line 2, field 'label'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("reference", ["adapters_off", pytest.param("precomputed", marks=pytest.mark.slow)])
def test_dpo_under_torchrun_two_processes(reference, tiny_model, tmp_path):
    """--nproc-per-node 2 on CPU (gloo): each process takes half the batches, gradients synced by the
    strategy's wrapper; the reference through the wrapper with adapters off, or the cached log-probs."""
    import importlib.util

    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(40))
    extra = ["--precompute-ref"] if reference == "precomputed" else []
    proc, evs = train(
        "dpo",
        "--model",
        str(tiny_model),
        "--data",
        data,
        "--out",
        str(tmp_path / "ddp"),
        *SMALL,
        "--nproc-per-node",
        "2",
        "--max-epochs",
        "1",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (start,) = of(evs, "start")
    assert start["strategy"] == ("colossalai_ddp" if importlib.util.find_spec("colossalai") else "naive+ddp")
    assert start["reference"] == reference and start["total_steps"] == 32 // 4 // 2
    assert of(evs, "done")[0]["status"] == "completed"
    assert (tmp_path / "ddp" / "final" / "adapter_model.safetensors").is_file()


def test_a_full_fine_tune_precomputes_its_reference_and_writes_a_full_model(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(24))
    out = tmp_path / "full"
    proc, evs = train(
        "dpo",
        "--model",
        str(tiny_model),
        "--data",
        data,
        "--out",
        str(out),
        *SMALL,
        "--lora-rank",
        "0",
        "--max-steps",
        "3",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (start,) = of(evs, "start")
    assert start["reference"] == "precomputed" and start["trainable_params"] == start["params"]
    assert (out / "ref_logps.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"
