import json

import pytest

transformers = pytest.importorskip("transformers")


def test_tiny_model_loads_back_with_a_trained_tokenizer_and_chat_template(tiny_model):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model)
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["model_type"] == "llama" and 2 <= cfg["num_hidden_layers"] <= 4
    assert 256 < len(tok) == model.config.vocab_size  # byte alphabet + merges + special tokens
    text = "你好，世界！Hello, world."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text.encode())  # merges learnt, Chinese included
    end = tok.convert_tokens_to_ids("<|end|>")
    assert tok.eos_token_id == end == model.generation_config.eos_token_id


def test_chat_template_marks_assistant_tokens_and_ends_them(tiny_model):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    msgs = [{"role": "user", "content": "北京是哪个国家的首都？"}, {"role": "assistant", "content": "中国。China."}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assistant = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(assistant) == "中国。China.<|end|>"
    assert assistant[-1] == tok.eos_token_id
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_reward_variant_is_a_one_label_classifier(tiny_reward_model):
    import torch

    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_reward_model)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_reward_model)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    batch = tok(["good answer", "一个更长的回答，带有填充"], padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1)


def test_seed_makes_weights_reproducible(tmp_path):
    import torch
    from safetensors.torch import load_file

    from coati_tui.trainer.tiny import build_tiny_model

    a = load_file(build_tiny_model(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", seed=4) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
