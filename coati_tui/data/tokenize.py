"""Chat templates and tokenization: loss only on assistant tokens, and a template that stops.

Works with any tokenizer whose chat template renders a conversation as a prefix of its continuation
(true of the common templates). Assistant spans are found by rendering turn by turn and are mapped to
tokens with the fast tokenizer's offsets, so the text is tokenized once, as generation will see it.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from coati_tui.data.formats import DataError, Labelled, Message, Pair

# A transformers (fast) tokenizer; typed loosely so that this module imports no transformers.
Tokenizer: TypeAlias = Any

# Named fallbacks for tokenizers without a chat template. They end assistant turns with the tokenizer's
# own EOS token, so no token has to be added (and no embedding row trained from scratch).
FALLBACK_TEMPLATES = {
    # ColossalChat's classic format
    "coati": (
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
        "{% elif m['role'] == 'user' %}{{ 'Human: ' + m['content'] + '\n\n' }}"
        "{% else %}{{ 'Assistant: ' + m['content'] + eos_token + '\n\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    ),
}


class TemplateError(ValueError):
    kind = "config"

    """The chat template cannot be trained on safely; the message says why and what to do."""


def ensure_template(tokenizer: Tokenizer, fallback: str | None = None) -> str:
    """Make sure ``tokenizer`` has a chat template; returns where it came from."""
    if fallback:
        if fallback not in FALLBACK_TEMPLATES:
            raise TemplateError(f"no template {fallback!r} (have: {', '.join(FALLBACK_TEMPLATES)})")
        tokenizer.chat_template = FALLBACK_TEMPLATES[fallback]
        return fallback
    if getattr(tokenizer, "chat_template", None):
        return "tokenizer"
    raise TemplateError(
        "the tokenizer has no chat template; pass --template " + " or --template ".join(FALLBACK_TEMPLATES)
    )


def load_tokenizer(model: str, fallback: str | None = None) -> tuple[Tokenizer, str]:
    """(tokenizer, where its chat template came from): the model's tokenizer with a chat template (its
    own, or the named fallback) and a pad token (EOS when it has none). Imports transformers."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    source = ensure_template(tokenizer, fallback)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, source


def render(tokenizer: Tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text


def end_token(tokenizer: Tokenizer, stop_ids: list[int] | None = None) -> tuple[int, bool]:
    """The token that closes assistant turns, and whether generation already stops on it.

    Raises TemplateError when assistant turns end without a special token: a model trained on such a
    template never learns to stop (the endless-output bug).
    """
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "PROBE"}]
    prefix = render(tokenizer, probe[:1], add_generation_prompt=True)
    full = render(tokenizer, probe)
    if not full.startswith(prefix) or "PROBE" not in full[len(prefix) :]:
        raise TemplateError("the chat template does not render a conversation as a prefix of its continuation")
    suffix = full[len(prefix) :].split("PROBE", 1)[1]
    ids = tokenizer(suffix.lstrip(" "), add_special_tokens=False)["input_ids"] if suffix.strip() else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if not ids or ids[0] not in special:
        raise TemplateError(
            f"the chat template ends assistant turns with {suffix!r}, not with a special token the tokenizer "
            "has: the model would never learn to stop. Use a template that closes turns with an end token "
            f"(or --template {next(iter(FALLBACK_TEMPLATES))})."
        )
    stops = set(stop_ids if stop_ids is not None else [tokenizer.eos_token_id])
    return ids[0], ids[0] in stops


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken
    truncated: bool


def assistant_spans(
    tokenizer: Tokenizer, messages: list[Message], end_text: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant turn (its content + end token)."""
    full = render(tokenizer, messages)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not upto.startswith(prefix) or not full.startswith(upto):
            raise TemplateError(
                "the chat template changes earlier turns as the conversation grows; cannot tell assistant tokens apart"
            )
        start, end = len(prefix), len(upto)
        if end_text and end_text in full[start:end]:  # stop after the end token (not the newline after it)
            end = full.rindex(end_text, start, end) + len(end_text)
        spans.append((start, end))
    return full, spans


def tokenize_sft(tokenizer: Tokenizer, messages: list[Message], max_len: int, end_text: str | None = None) -> Tokenized:
    text, spans = assistant_spans(tokenizer, messages, end_text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [-100] * len(ids)
    for k, (s, _e) in enumerate(enc["offset_mapping"]):
        if any(a <= s < b for a, b in spans):
            labels[k] = ids[k]
    truncated = len(ids) > max_len
    return Tokenized(ids[:max_len], labels[:max_len], truncated)


def tokenize_pair(
    tokenizer: Tokenizer, pair: Pair, max_len: int, end_text: str | None = None
) -> tuple[list[int], list[int], bool]:
    """(chosen ids, rejected ids, truncated). Each ends at the answer's end token (what follows it in the
    template is cut), where PPO reads the score of a generated answer too. Over-long sequences keep their
    end: the score is read there."""
    out, truncated = [], False
    for side in (pair.chosen, pair.rejected):
        text = render(tokenizer, pair.prompt + side)
        if end_text and end_text in text:
            text = text[: text.rindex(end_text) + len(end_text)]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_len:
            ids, truncated = ids[-max_len:], True
        out.append(ids)
    return out[0], out[1], truncated


def prepare_sft(
    tokenizer: Tokenizer, conversations: list[list[Message]], max_len: int, source: str = "<data>"
) -> tuple[list[Tokenized], dict[str, int]]:
    """Tokenize all; returns (examples, stats). Examples that lost every assistant token are dropped."""
    end_id, _ = end_token(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end_id)
    examples, truncated, dropped = [], 0, 0
    for n, msgs in enumerate(conversations, 1):
        try:
            tok = tokenize_sft(tokenizer, msgs, max_len, end_text)
        except TemplateError:
            raise
        except Exception as exc:  # a template that raises on this conversation (e.g. role order)
            raise DataError(source, f"record {n}", "messages", f"the chat template refused it: {exc}") from exc
        truncated += tok.truncated
        if all(x == -100 for x in tok.labels):
            dropped += 1
            continue
        examples.append(tok)
    stats = {
        "examples": len(examples),
        "truncated": truncated,
        "dropped_no_assistant_tokens": dropped,
        "tokens": sum(len(e.input_ids) for e in examples),
        "loss_tokens": sum(sum(x != -100 for x in e.labels) for e in examples),
    }
    if not examples:
        raise DataError(source, None, None, f"no example keeps an assistant token within max_len={max_len}")
    return examples, stats


def prepare_pairs(
    tokenizer: Tokenizer, pairs: list[Pair], max_len: int, source: str = "<data>"
) -> tuple[list[tuple[list[int], list[int]]], dict[str, int]]:
    end_id, _ = end_token(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end_id)
    examples, truncated = [], 0
    for n, pair in enumerate(pairs, 1):
        try:
            c, r, t = tokenize_pair(tokenizer, pair, max_len, end_text)
        except Exception as exc:
            raise DataError(source, f"record {n}", None, f"the chat template refused it: {exc}") from exc
        truncated += t
        examples.append((c, r))
    stats = {"examples": len(examples), "truncated": truncated, "tokens": sum(len(c) + len(r) for c, r in examples)}
    return examples, stats


def tokenize_answer(
    tokenizer: Tokenizer, prompt: list[Message], answer: list[Message], max_len: int, end_text: str | None = None
) -> Tokenized:
    """``prompt + answer`` with labels on the answer's tokens only (the last turns, up to and including
    its end token). Too long: the prompt loses tokens from its start (one is always kept), then the
    answer is cut at its end. Used by the preference methods (DPO, SimPO, ORPO, KTO)."""
    prefix = render(tokenizer, prompt, add_generation_prompt=True)
    text = render(tokenizer, prompt + answer)
    if not text.startswith(prefix):
        raise TemplateError(
            "the chat template changes the prompt when an answer follows; cannot tell the answer's tokens apart"
        )
    if end_text and end_text in text[len(prefix) :]:
        text = text[: text.rindex(end_text) + len(end_text)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [t if s >= len(prefix) else -100 for t, (s, _e) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > max_len
    if truncated:
        n_prompt = next((k for k, x in enumerate(labels) if x != -100), len(labels))
        drop = min(len(ids) - max_len, max(0, n_prompt - 1))
        ids, labels = ids[drop:][:max_len], labels[drop:][:max_len]
    return Tokenized(ids, labels, truncated)


def prepare_preferences(
    tokenizer: Tokenizer, pairs: list[Pair], max_len: int, source: str = "<data>"
) -> tuple[list[tuple[Tokenized, Tokenized]], dict[str, int]]:
    """(chosen, rejected) with answer-only labels, and stats. A pair whose answer lost every token stops
    the run naming the record."""
    end_id, _ = end_token(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end_id)
    examples: list[tuple[Tokenized, Tokenized]] = []
    truncated = 0
    for n, pair in enumerate(pairs, 1):
        try:
            sides = [
                tokenize_answer(tokenizer, pair.prompt, side, max_len, end_text)
                for side in (pair.chosen, pair.rejected)
            ]
        except TemplateError:
            raise
        except Exception as exc:
            raise DataError(source, f"record {n}", None, f"the chat template refused it: {exc}") from exc
        for name, tok in zip(("chosen", "rejected"), sides):
            if all(x == -100 for x in tok.labels):
                raise DataError(source, f"record {n}", name, f"no answer token left within max_len={max_len}")
        truncated += any(t.truncated for t in sides)
        examples.append((sides[0], sides[1]))
    stats = {
        "examples": len(examples),
        "truncated": truncated,
        "tokens": sum(len(c.input_ids) + len(r.input_ids) for c, r in examples),
    }
    if not examples:
        raise DataError(source, None, None, "no preference pairs")
    return examples, stats


def prepare_labelled(
    tokenizer: Tokenizer, examples: list[Labelled], max_len: int, seed: int = 0, source: str = "<data>"
) -> tuple[list[tuple[Tokenized, Tokenized, bool]], dict[str, int]]:
    """KTO: (answer, mismatched answer, desirable) per example. The mismatched one is another example's
    answer to this prompt (a fixed seeded pairing, so its reference log-probs can be cached): the batch's
    KL estimate reads them."""
    import random

    end_id, _ = end_token(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end_id)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # a cycle: never itself
    out: list[tuple[Tokenized, Tokenized, bool]] = []
    truncated = 0
    for n, ex in enumerate(examples):
        try:
            answer = tokenize_answer(tokenizer, ex.prompt, ex.completion, max_len, end_text)
            other = tokenize_answer(tokenizer, ex.prompt, examples[partner[n]].completion, max_len, end_text)
        except TemplateError:
            raise
        except Exception as exc:
            raise DataError(source, f"example {n + 1}", None, f"the chat template refused it: {exc}") from exc
        if all(x == -100 for x in answer.labels):
            raise DataError(source, f"example {n + 1}", "completion", f"no answer token left within max_len={max_len}")
        truncated += answer.truncated
        out.append((answer, other, ex.desirable))
    stats = {
        "examples": len(out),
        "desirable": sum(d for *_, d in out),
        "truncated": truncated,
        "tokens": sum(len(a.input_ids) for a, _, _ in out),
    }
    return out, stats
