import pytest

transformers = pytest.importorskip("transformers")

from coati_tui.data.formats import Pair  # noqa: E402
from coati_tui.data.tokenize import TemplateError, end_token, ensure_template, prepare_pairs, prepare_sft, tokenize_sft  # noqa: E402


@pytest.fixture()
def tok(tiny_model):
    return transformers.AutoTokenizer.from_pretrained(tiny_model)


def test_loss_only_on_assistant_turns_multi_turn_bilingual(tok):
    msgs = [
        {"role": "system", "content": "简短回答。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": "5, 五。"},
    ]
    t = tokenize_sft(tok, msgs, 512, "<|end|>")
    learnt = [i for i, lab in zip(t.input_ids, t.labels) if lab != -100]
    assert tok.decode(learnt) == "你好！<|end|>5, 五。<|end|>"
    assert all(lab in (-100, i) for i, lab in zip(t.input_ids, t.labels))
    assert not t.truncated


def test_end_token_is_checked(tok):
    end_id, stops = end_token(tok)
    assert end_id == tok.convert_tokens_to_ids("<|end|>") and stops
    _, stops = end_token(tok, stop_ids=[tok.pad_token_id])
    assert not stops  # reported, so the final generation config gets the end token added
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(TemplateError, match="never learn to stop"):
        end_token(tok)


def test_fallback_template_for_a_tokenizer_without_one(tok):
    tok.chat_template = None
    with pytest.raises(TemplateError, match="--template coati"):
        ensure_template(tok)
    assert ensure_template(tok, "coati") == "coati"
    end_id, _ = end_token(tok)
    assert end_id == tok.eos_token_id
    with pytest.raises(TemplateError, match="no template"):
        ensure_template(tok, "nope")


def test_truncation_is_counted_and_empty_examples_dropped(tok):
    long_prompt = "很长的问题。" * 50
    convs = [
        [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "好"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "回答" * 40}],
    ]
    examples, stats = prepare_sft(tok, convs, 32)
    assert stats["truncated"] == 2 and stats["dropped_no_assistant_tokens"] == 1
    assert len(examples) == 1 and len(examples[0].input_ids) == 32


def test_pairs_keep_their_end_when_truncated(tok):
    pair = Pair(
        [{"role": "user", "content": "问题" * 40}],
        [{"role": "assistant", "content": "好答案"}],
        [{"role": "assistant", "content": "坏"}],
    )
    ((c, r),) = prepare_pairs(tok, [pair], 16)[0]
    assert len(c) == 16 and tok.decode(c).endswith("好答案<|end|>")
    # the score is read at the end token itself, as PPO reads it on a generated answer
    assert c[-1] == r[-1] == tok.convert_tokens_to_ids("<|end|>")
