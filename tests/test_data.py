"""Data formats and their errors (no torch)."""

import csv
import json

import pytest
from sample_data import write_jsonl

from coati_tui.data.formats import DataError, load_preferences, load_sft

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

CHAT = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！Hello."}]


def test_sft_formats_in_every_file_type(tmp_path):
    colossal = {"messages": [{"from": "human", "content": "你好"}, {"from": "assistant", "content": "你好！Hello."}]}
    chat = {"messages": CHAT}
    sharegpt = {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！Hello."}]}
    alpaca = {"instruction": "你好", "input": "", "output": "你好！Hello."}
    prompt = {"prompt": "你好", "response": "你好！Hello."}
    for rec in (colossal, chat, sharegpt, alpaca, prompt):
        assert load_sft(write_jsonl(tmp_path / "a.jsonl", [rec])) == [CHAT]
    (tmp_path / "b.json").write_text(json.dumps([chat, alpaca], ensure_ascii=False), encoding="utf-8")
    assert load_sft(tmp_path / "b.json") == [CHAT, CHAT]
    with open(tmp_path / "c.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["instruction", "input", "output"])
        w.writeheader()
        w.writerow(alpaca)
        w.writerow({"instruction": "翻译", "input": "cat", "output": "猫"})
    rows = load_sft(tmp_path / "c.csv")
    assert rows[0] == CHAT and rows[1][0]["content"] == "翻译\n\ncat"
    with open(tmp_path / "m.csv", "w", encoding="utf-8", newline="") as f:  # message lists as JSON cells
        w = csv.DictWriter(f, ["messages"])
        w.writeheader()
        w.writerow({"messages": json.dumps(CHAT, ensure_ascii=False)})
    assert load_sft(tmp_path / "m.csv") == [CHAT]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([alpaca, alpaca]), tmp_path / "d.parquet")
    assert load_sft(tmp_path / "d.parquet") == [CHAT, CHAT]
    hf = pytest.importorskip("datasets", reason="saved datasets folders need the datasets package")
    hf.Dataset.from_list([chat]).save_to_disk(str(tmp_path / "saved"))
    assert load_sft(tmp_path / "saved") == [CHAT]
    assert len(load_sft(write_jsonl(tmp_path / "e.jsonl", [chat] * 5), limit=2)) == 2


def test_preference_formats(tmp_path):
    recs = [
        {
            "context": [{"from": "user", "content": "北京？"}],
            "chosen": [{"from": "assistant", "content": "首都。"}],
            "rejected": [{"from": "assistant", "content": "不知道"}],
        },
        {"prompt": "北京？", "chosen": "首都。", "rejected": "不知道"},
        {
            "prompt": [{"role": "user", "content": "北京？"}],
            "chosen": [{"role": "assistant", "content": "首都。"}],
            "rejected": [{"role": "assistant", "content": "不知道"}],
        },
        {
            "chosen": [{"role": "user", "content": "北京？"}, {"role": "assistant", "content": "首都。"}],
            "rejected": [{"role": "user", "content": "北京？"}, {"role": "assistant", "content": "不知道"}],
        },
    ]
    pairs = load_preferences(write_jsonl(tmp_path / "p.jsonl", recs))
    for p in pairs:
        assert p.prompt == [{"role": "user", "content": "北京？"}]
        assert p.chosen == [{"role": "assistant", "content": "首都。"}]
        assert p.rejected == [{"role": "assistant", "content": "不知道"}]


@pytest.mark.parametrize(
    "lines, where, field, words",
    [
        ([json.dumps({"messages": CHAT}), "{not json"], "line 2", None, "not valid JSON"),
        (
            [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})],
            "line 1",
            "messages[1]",
            'needs "content"',
        ),
        (
            [json.dumps({"messages": CHAT}), json.dumps({"messages": [{"role": "老师", "content": "x"}]})],
            "line 2",
            "messages[0].role",
            "unknown role",
        ),
        ([json.dumps({"instruction": "x"})], "line 1", "output", "needs an output"),
        ([json.dumps({"text": "x"})], "line 1", None, "not an SFT record"),
        (
            [json.dumps({"messages": [{"role": "user", "content": "only a question"}]})],
            "line 1",
            "messages",
            "no assistant message",
        ),
        (
            [json.dumps({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]})],
            "line 1",
            "messages[0].content",
            "expected text",
        ),
    ],
)
def test_malformed_sft_names_file_line_and_field(tmp_path, lines, where, field, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_sft(path)
    err = info.value
    assert (err.file, err.where, err.field) == (str(path), where, field)
    assert str(path) in str(err) and where in str(err) and words in str(err)


def test_malformed_csv_row_and_preference_field(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("instruction,output\nhello,world\nonly,\n", encoding="utf-8")
    assert len(load_sft(path)) == 2  # an empty output is still text
    path.write_text("prompt,chosen\nhello,world\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2, field 'rejected'"):
        load_preferences(path)
    with pytest.raises(DataError, match="no such file"):
        load_sft(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown data format"):
        (tmp_path / "x.txt").write_text("hi")
        load_sft(tmp_path / "x.txt")
    (tmp_path / "d.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="must hold a list"):
        load_sft(tmp_path / "d.json")


def test_prompts_in_every_accepted_form(tmp_path):
    from coati_tui.data.formats import DataError, load_prompts, sniff

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        "\n".join(
            [
                '{"messages": [{"from": "user", "content": "请列出三种水果。"}, {"from": "assistant", "content": "苹果"}]}',  # noqa: E501
                '{"prompt": "List three fruits."}',
                '{"instruction": "Translate", "input": "你好"}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    got = load_prompts(jsonl)
    assert got[0] == [{"role": "user", "content": "请列出三种水果。"}]  # a trailing answer is dropped
    assert got[1] == [{"role": "user", "content": "List three fruits."}]
    assert got[2][0]["content"] == "Translate\n\n你好"
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt\n1,你好\n2,Hello there\n", encoding="utf-8")
    assert [m[-1]["content"] for m in load_prompts(csv)] == ["你好", "Hello there"]
    assert sniff(csv)[:2] == ("prompts", 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"messages": [{"from": "assistant", "content": "no question"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2, field 'messages': a prompt must end with a user"):
        load_prompts(bad)
