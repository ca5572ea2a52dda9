"""The pure parts of serving: stop sequences on a stream, and request bodies checked as OpenAI does."""

from __future__ import annotations

import pytest

from coati_tui.serve import openai_api as api
from coati_tui.worker.stops import StopScanner

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


def feed(stops, pieces):
    scan = StopScanner(stops)
    out = [scan.feed(p) for p in pieces]
    if scan.hit is None:
        out.append(scan.finish())
    return out, scan


def test_a_stop_sequence_split_across_pieces_is_never_sent():
    out, scan = feed(["User:"], ["Hello Us", "er: more", " text"])
    assert out == ["Hello ", "", ""] and scan.hit == "User:" and scan.text == "Hello "


def test_text_held_back_is_released_when_it_turns_out_not_to_stop():
    out, scan = feed(["abc"], ["xa", "b", "d", "end"])
    assert out == ["x", "", "abd", "end", ""] and scan.hit is None and "".join(out) == scan.text == "xabdend"
    out, scan = feed(["abc"], ["xa", "b"])  # the stream ends inside a possible stop: it is all released
    assert "".join(out) == "xab" and scan.hit is None


def test_the_earliest_of_several_stops_wins_and_chinese_works():
    out, scan = feed(["。", "\n\n"], ["你好\n", "\n世界。再见"])
    assert "".join(out) == "你好" and scan.hit == "\n\n"
    out, scan = feed(["。", "再"], ["你好世界。再见"])
    assert "".join(out) == "你好世界" and scan.hit == "。"


def test_no_stops_passes_every_piece_through():
    out, scan = feed([], ["a", "", "bc"])
    assert out == ["a", "", "bc", ""] and scan.text == "abc"


def test_a_chat_body_becomes_the_workers_sampling_settings():
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "简短"}]},
            {"role": "user", "content": "hi"},
        ],
        "max_tokens": 12,
        "temperature": 0,
        "stop": "\n",
        "seed": 7,
        "user": "ignored",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = api.parse(body, "chat")
    assert req.prompt == [{"role": "system", "content": "简短"}, {"role": "user", "content": "hi"}]
    assert req.sampling == {
        "max_new_tokens": 12,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 7,
        "stop": ["\n"],
        "min_new_tokens": 0,
    }
    assert req.stream and req.include_usage
    assert (
        api.parse({"prompt": ["one"], "max_completion_tokens": 3, "ignore_eos": True}, "text").sampling[
            "min_new_tokens"
        ]
        == 3
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2.5}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "seed": True}, "seed"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "min_tokens": -1}, "min_tokens"),
    ],
)
def test_a_bad_body_names_its_field(body, param):
    with pytest.raises(api.ApiError) as err:
        api.parse(body, "chat")
    assert err.value.status == 400 and err.value.param == param
    assert api.error_body(err.value)["error"]["param"] == param


def test_finish_reasons_and_usage_follow_openai():
    answer = {"text": "hi", "tokens": 3, "prompt_tokens": 5, "stop": "max_new_tokens"}
    req = api.parse({"messages": [{"role": "user", "content": "x"}]}, "chat")
    whole = api.response(req, "chatcmpl-1", "m", answer)
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert api.finish_reason({**answer, "stop": "stop_sequence"}) == "stop"
    assert api.finish_reason({**answer, "stop": "end_token"}) == "stop"
