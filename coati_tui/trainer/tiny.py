"""Tiny but real model folders, built on the spot: the demo and the tests use them; nothing is downloaded.

``build_tiny_model`` trains a byte-level BPE tokenizer with ``tokenizers`` on a small bilingual
corpus (English and Chinese), gives it special tokens and a chat template whose assistant turns end
with an explicit ``<|end|>`` token (also the generation config's EOS, so generation stops there), builds
a 2-4 layer Llama with random weights, and ``save_pretrained``s both. ``kind="reward"`` builds the
one-label sequence-classification variant used as a reward model.

Imports torch and transformers inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from coati_tui.core.tiny import config_dict

SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<unk>"]
END_TOKEN = "<|end|>"

# Each turn: <|role|>\n content <|end|>\n. The assistant's content and its <|end|> are inside
# {% generation %} so transformers can return the assistant-token mask; the trainer checks that the
# end token closes every assistant turn before training starts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A reward model scores answers; the policy learns to write better ones.",
    "Supervised fine-tuning teaches the model to follow instructions.",
    "What is the capital of France? The capital of France is Paris.",
    "Please answer briefly and politely. Thank you for your help!",
    "Count from one to ten: one two three four five six seven eight nine ten.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 + - = * / 12 + 7 = 19, 3 * 4 = 12.",
    "def add(a, b):\n    return a + b\n",
    "你好，世界！今天天气很好。",
    "请用中文回答下面的问题。",
    "中国的首都是北京。上海是一个大城市。",
    "奖励模型给回答打分，策略模型学习写出更好的回答。",
    "监督微调让模型学会遵循指令。谢谢你的帮助！",
    "一二三四五六七八九十，我们一起学习人工智能。",
]


def train_tokenizer(vocab_size: int = 1024, corpus: list[str] | None = None):
    """A ``PreTrainedTokenizerFast`` with byte-level BPE, special tokens and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (corpus or CORPUS) * 4
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token=END_TOKEN,
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        model_max_length=2048,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: Llama takes none
    )


def llama_config(
    vocab_size: int,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_positions: int = 1024,
    **extra,
):
    from transformers import LlamaConfig

    cfg = config_dict(vocab_size, layers, hidden, heads, kv_heads, intermediate, max_positions)
    cfg.pop("model_type")
    return LlamaConfig(**cfg, **extra)


def build_tiny_model(
    out_dir: str | Path,
    kind: str = "causal",
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int = 1024,
    seed: int = 0,
    corpus: list[str] | None = None,
    tokenizer=None,
    stored: str = "float32",
) -> Path:
    """Write a tiny model folder (``kind``: "causal" or "reward"; weights ``stored`` in that dtype, as
    config.json then says) and return its path."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if kind not in ("causal", "reward"):
        raise ValueError(f"kind must be 'causal' or 'reward', not {kind!r}")
    out = Path(out_dir)
    tok = tokenizer or train_tokenizer(vocab_size, corpus)
    cfg = llama_config(
        len(tok),
        layers,
        hidden,
        heads,
        kv_heads,
        intermediate,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    if kind == "reward":
        cfg.num_labels = 1
        model = LlamaForSequenceClassification(cfg)
    else:
        model = LlamaForCausalLM(cfg)
        model.generation_config = GenerationConfig(
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            max_new_tokens=64,
        )
    model.to(getattr(torch, stored)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
