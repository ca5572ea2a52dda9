"""The trainer as users run it: `coati-tui train ... --json`, a real child process, real files."""

import importlib.util
import os
import signal
import subprocess
import sys

import pytest
from sample_data import preference_records, sft_records, write_jsonl

from coati_tui.core import events
from coati_tui.core.procenv import mimalloc_library

HAVE_COLOSSALAI = importlib.util.find_spec("colossalai") is not None


def train(*args, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", "train", *args, "--json"], capture_output=True, text=True, timeout=timeout
    )
    return proc, [e for e in map(events.parse, proc.stdout.splitlines()) if e]


def of(evs, kind):
    return [e for e in evs if e["type"] == kind]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", sft_records(48))


SMALL = ["--batch-size", "4", "--accumulation-steps", "1", "--max-len", "64", "--lora-rank", "8"]


def test_sft_loss_falls_full_finetune(tiny_model, sft_data, tmp_path):
    out = tmp_path / "run"
    proc, evs = train(
        "sft",
        "--model",
        str(tiny_model),
        "--data",
        sft_data,
        "--out",
        str(out),
        *SMALL,
        "--lora-rank",
        "0",
        "--lr",
        "3e-3",
        "--max-epochs",
        "3",
        "--preset",
        "lora_naive",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (start,) = of(evs, "start")
    assert start["strategy"] == "naive" and start["device"] == "cpu" and start["precision"] == "fp32"
    assert start["trainable_params"] == start["params"]  # full fine-tune
    assert start["allocator"] == "mimalloc" if mimalloc_library() else start["allocator"].startswith("glibc")
    losses = [e["loss"] for e in of(evs, "step")]
    assert len(losses) == start["total_steps"] == 3 * 12  # 46 train examples / 4 per batch, 3 epochs
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    evals = [e["metrics"]["loss"] for e in of(evs, "eval")]
    assert evals[-1] < evals[0]
    assert of(evs, "done")[0]["status"] == "completed"
    assert events.read(out / "events.jsonl") == evs  # the file holds what the parent saw
    assert (out / "config.toml").is_file() and (out / "train.log").is_file()

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"


def test_lora_sft_writes_an_adapter_that_loads_and_stops(tiny_model, sft_data, tmp_path):
    out = tmp_path / "run"
    proc, evs = train(
        "sft",
        "--model",
        str(tiny_model),
        "--data",
        sft_data,
        "--out",
        str(out),
        *SMALL,
        "--lr",
        "3e-3",
        "--max-epochs",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (start,) = of(evs, "start")
    assert 0 < start["trainable_params"] < start["params"] / 2 and start["stops_on_end_token"]
    losses = [e["loss"] for e in of(evs, "step")]
    assert sum(losses[-4:]) < sum(losses[:4])

    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer, GenerationConfig

    final = out / "final"
    model = AutoPeftModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in GenerationConfig.from_pretrained(final).eos_token_id
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "你好"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    # the next stage starts from this run folder: the adapter is merged into its base
    prefs = write_jsonl(tmp_path / "prefs.jsonl", preference_records(24))
    proc, evs = train(
        "rm", "--model", str(out), "--data", prefs, "--out", str(tmp_path / "rm"), *SMALL, "--max-steps", "2"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert of(evs, "start")[0]["config"]["model"] == str(final)
    assert (tmp_path / "rm" / "final" / "config.json").is_file()


def test_rm_learns_a_learnable_preference(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_records(96))
    out = tmp_path / "rm"
    proc, evs = train(
        "rm",
        "--model",
        str(tiny_model),
        "--data",
        data,
        "--out",
        str(out),
        *SMALL,
        "--lr",
        "3e-3",
        "--max-epochs",
        "3",
        "--eval-split",
        "0.2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    final_eval = of(evs, "eval")[-1]["metrics"]
    assert final_eval["pairs"] >= 15
    assert final_eval["accuracy"] >= 0.9 and final_eval["margin"] > 0
    assert final_eval["chosen_reward"] > final_eval["rejected_reward"]

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = AutoModelForSequenceClassification.from_pretrained(out / "final")  # merged: loads on its own
    tok = AutoTokenizer.from_pretrained(out / "final")

    def scored(question: str, answer: str) -> str:
        """As the trainer scores: up to the answer's end token (the template's "\n" after it is cut: a score
        read there carries nothing the RM learned)."""
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
        )
        return text[: text.rindex(tok.eos_token) + len(tok.eos_token)]

    pairs = [("你好", "你好！很高兴见到你。", "zq#xk@w"), ("What is 2 + 3?", "2 + 3 = 5.", "kx@#wyq")]
    texts = [scored(q, a) for q, good, bad in pairs for a in (good, bad)]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        s = rm(**batch).logits.squeeze(-1)
    assert s[0] > s[1] and s[2] > s[3], s.tolist()


def test_cancel_checkpoints_and_resume_matches_an_uninterrupted_run(tiny_model, sft_data, tmp_path):
    common = ["--model", str(tiny_model), "--data", sft_data, *SMALL, "--max-epochs", "2", "--save-interval", "4"]
    proc, whole = train("sft", *common, "--out", str(tmp_path / "whole"))
    assert proc.returncode == 0
    reference = {e["step"]: e["loss"] for e in of(whole, "step")}
    kept = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir())
    assert kept == ["step-16", "step-20"]  # 22 steps, one every 4, the last 2 kept

    out = tmp_path / "cut"
    child = subprocess.Popen(
        [sys.executable, "-m", "coati_tui", "train", "sft", *common, "--out", str(out), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in child.stdout:
        ev = events.parse(line)
        if ev:
            seen.append(ev)
        if ev and ev["type"] == "step" and ev["step"] == 2:
            os.killpg(child.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
    assert child.wait(timeout=120) == 0
    (done,) = of(seen, "done")
    assert done["status"] == "cancelled" and "--resume" in done["resume"]
    ckpt = of(seen, "checkpoint")[-1]
    assert ckpt["step"] == done["step"] < done["total_steps"]
    assert (out / "checkpoints" / f"step-{ckpt['step']}" / "trainable.safetensors").is_file()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]

    proc, resumed = train("sft", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert of(resumed, "start")[0]["resumed_from"] == ckpt["step"]
    steps = of(resumed, "step")
    assert steps[0]["step"] == ckpt["step"] + 1 and steps[-1]["step"] == max(reference)
    for e in steps:
        assert abs(e["loss"] - reference[e["step"]]) < 1e-4, e["step"]


def test_malformed_data_stops_before_anything_starts(tiny_model, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "好"}]}\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n',
        encoding="utf-8",
    )
    proc, evs = train("sft", "--model", str(tiny_model), "--data", str(path), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and evs == []
    assert f"{path}: line 2, field 'messages[1]'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_data_error_in_the_child_is_an_error_event(tiny_model, tmp_path):
    """The child checks too (a run folder can be started by hand or by the app)."""
    from coati_tui.core import presets
    from coati_tui.core.run_config import RunConfig

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    run = tmp_path / "run"
    run.mkdir()
    RunConfig(stage="sft", model=str(tiny_model), data=str(bad), preset=presets.load("lora_naive")).write(run)
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui.train", str(run)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    (err,) = of(events.read(run / "events.jsonl"), "error")
    assert err["kind"] == "data" and "line 1" in err["message"] and err["log_tail"]


def test_colossalai_presets_say_what_is_missing(tiny_model, sft_data, tmp_path):
    proc, _ = train(
        "sft",
        "--model",
        str(tiny_model),
        "--data",
        sft_data,
        "--out",
        str(tmp_path / "r"),
        "--strategy",
        "colossalai_zero2_cpu",
    )
    assert proc.returncode == 2
    assert "zero2_cpu" in proc.stderr and "CUDA" in proc.stderr  # no GPU here: the first thing missing

    from coati_tui.core import presets
    from coati_tui.core.errors import MissingDependency
    from coati_tui.trainer.strategy import check_requirements

    with pytest.raises(MissingDependency) as info:
        check_requirements(presets.load("gemini_offload"))
    expected = "CUDA GPU" if HAVE_COLOSSALAI else "pip install 'coati-tui[colossalai]'"
    assert expected in str(info.value)


def test_two_processes_under_torchrun(tiny_model, sft_data, tmp_path):
    """--nproc-per-node 2 on CPU (gloo): colossalai's TorchDDPPlugin where colossalai is installed,
    torch DDP otherwise. Each process takes half the batches."""
    proc, evs = train(
        "sft",
        "--model",
        str(tiny_model),
        "--data",
        sft_data,
        "--out",
        str(tmp_path / "ddp"),
        *SMALL,
        "--nproc-per-node",
        "2",
        "--max-epochs",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (start,) = of(evs, "start")
    assert start["strategy"] == ("colossalai_ddp" if HAVE_COLOSSALAI else "naive+ddp")
    assert start["total_steps"] == 12 // 2
    assert start["allocator"] == "mimalloc" if mimalloc_library() else start["allocator"].startswith("glibc")
    assert of(evs, "done")[0]["status"] == "completed"
    assert (tmp_path / "ddp" / "final" / "adapter_model.safetensors").is_file()


def test_tensorboard_scalars_or_a_clear_missing_dependency(tiny_model, sft_data, tmp_path):
    out = tmp_path / "tb"
    proc, evs = train(
        "sft",
        "--model",
        str(tiny_model),
        "--data",
        sft_data,
        "--out",
        str(out),
        *SMALL,
        "--max-steps",
        "2",
        "--tensorboard",
    )
    if importlib.util.find_spec("tensorboard") is None:
        (err,) = of(evs, "error")
        assert (
            proc.returncode == 1 and err["kind"] == "missing_dependency" and "pip install tensorboard" in err["message"]
        )
    else:
        assert proc.returncode == 0 and list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_one_tensor_lora_forward_gives_peft_s_logits_and_gradients(dropout):
    """trainer/fast_lora.py against peft's own forward on the same model and seed: the logits and every
    LoRA gradient agree (dropout draws the same masks); with the adapters disabled peft's forward runs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import Linear
    from transformers import LlamaConfig, LlamaForCausalLM

    from coati_tui.trainer import fast_lora

    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    ids = torch.randint(0, 50, (3, 9))
    runs = []
    for fused in (False, True):
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
        model = get_peft_model(LlamaForCausalLM(cfg), lora)
        for p in model.parameters():  # LoRA's B starts at 0: make the update count
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.3)
        if fused:
            assert fast_lora.fuse(model) == sum(isinstance(m, Linear) for m in model.modules()) == 14
        torch.manual_seed(1)
        logits = model(input_ids=ids).logits
        logits.pow(2).mean().backward()
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids).logits
        runs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, base))
    (l0, g0, b0), (l1, g1, b1) = runs
    assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(b0, b1, atol=1e-6)
    assert not torch.allclose(l0, b0, atol=1e-3)  # the adapters change the output: the comparison has teeth
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-4), name
