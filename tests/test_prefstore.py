"""The preference store: judgments, undo, stats, export, migrations, bad files, and durability under kill -9
and two writers, with real SQLite files and real child processes."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from coati_tui.data import formats, prefstore
from coati_tui.data.prefstore import Store, StoreError

ZH = [{"role": "user", "content": "请列出三种水果。"}]
EN = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List three fruits."}]


def ans(text, model="m"):
    return {"text": text, "model": model, "sampling": {"temperature": 0.8, "seed": 1}, "gen_s": 0.1}


def filled(path):
    """Four pairs: A chosen (swapped), B chosen, a tie, a skip."""
    s = Store(path)
    zh, en = s.add_prompt(ZH, "prompts.jsonl"), s.add_prompt(EN, "typed")
    p1 = s.add_pair(zh, ans("苹果、香蕉、橙子"), ans("石头"), swapped=True)  # first answer shown right
    p2 = s.add_pair(en, ans("apple, pear, fig"), ans("rock"), swapped=False)
    p3 = s.add_pair(zh, ans("梨"), ans("桃"), swapped=False)
    p4 = s.add_pair(en, ans("x"), ans("y"), swapped=False)
    s.judge(p1, "B", "ann")  # B is the right one = the first answer
    s.judge(p2, "A", "ann", note="clearer", time_taken_s=1.5)
    s.judge(p3, "tie", "ann")
    s.judge(p4, "skip", "ann")
    return s, (p1, p2, p3, p4)


def test_judgments_undo_stats_and_preferences(tmp_path):
    s, (p1, p2, p3, p4) = filled(tmp_path / "p.sqlite")
    v = s.pair(p1)
    assert (v.left, v.right, v.prompt) == ("石头", "苹果、香蕉、橙子", ZH)  # swapped: the first answer went right
    st = s.stats()
    assert (st["labeled"], st["A"], st["B"], st["tie"], st["skip"], st["pairs"]) == (3, 1, 1, 1, 1, 4)
    records, left_out = s.preferences()
    assert left_out == {"tie": 1, "skip": 1, "conflict": 0}
    assert records[0] == {
        "context": [{"from": "user", "content": "请列出三种水果。"}],
        "chosen": [{"from": "assistant", "content": "苹果、香蕉、橙子"}],
        "rejected": [{"from": "assistant", "content": "石头"}],
    }
    assert records[1]["context"][0] == {"from": "system", "content": "Be brief."}
    assert records[1]["chosen"][0]["content"] == "apple, pear, fig"
    assert s.pending("ann") == [] and s.pending("other") == [p1, p2, p3, p4]
    # undo takes back the last judgment only, keeps it on file, and the pair is pending again
    assert s.undo("ann") == p4 and s.pending("ann") == [p4]
    assert s.db.execute("SELECT count(*) FROM comparisons WHERE undone IS NOT NULL").fetchone()[0] == 1
    assert s.undo("ann") == p3 and s.stats()["tie"] == 0
    s.judge(p3, "A", "ann")
    assert len(s.preferences()[0]) == 3
    note = s.db.execute("SELECT note, time_taken_s FROM comparisons WHERE pair_id = ?", (p2,)).fetchone()
    assert note == ("clearer", 1.5)
    with pytest.raises(ValueError):
        s.judge(p1, "C", "ann")


def test_two_annotators_agreement_and_conflicts(tmp_path):
    s, (p1, p2, p3, _) = filled(tmp_path / "p.sqlite")
    s.judge(p1, "B", "bob")  # agrees
    s.judge(p2, "B", "bob")  # disagrees: the pair is left out of the export
    st = s.stats()
    assert st["annotators"] == {"ann": 3, "bob": 2}
    assert st["shared_pairs"] == 2 and st["agreement"] == 0.5
    records, left_out = s.preferences()
    assert left_out["conflict"] == 1 and len(records) == 1
    s.judge(p2, "A", "bob")  # bob changes his mind: his latest judgment stands
    assert s.stats()["agreement"] == 1.0 and len(s.preferences()[0]) == 2


def test_export_both_formats_and_the_trainer_reads_the_store(tmp_path):
    s, _ = filled(tmp_path / "p.sqlite")
    s.close()
    n, left_out = prefstore.export(tmp_path / "p.sqlite", "trl", tmp_path / "trl.jsonl")
    trl = [json.loads(x) for x in (tmp_path / "trl.jsonl").read_text(encoding="utf-8").splitlines()]
    assert n == 2 and trl[0] == {
        "prompt": ZH,
        "chosen": [{"role": "assistant", "content": "苹果、香蕉、橙子"}],
        "rejected": [{"role": "assistant", "content": "石头"}],
    }
    # the same pairs through every reader: the store itself, and both export files
    direct = formats.load_preferences(tmp_path / "p.sqlite")
    prefstore.export(tmp_path / "p.sqlite", "coati", tmp_path / "coati.jsonl")
    assert (
        formats.load_preferences(tmp_path / "coati.jsonl") == direct == formats.load_preferences(tmp_path / "trl.jsonl")
    )
    assert formats.sniff(tmp_path / "p.sqlite")[:2] == ("preferences", 2)
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "coati.jsonl"), split="train")
    assert ds.num_rows == 2 and ds[0]["chosen"][0]["content"] == "苹果、香蕉、橙子"


def test_cli_export_counts_and_errors(tmp_path):
    s, _ = filled(tmp_path / "p.sqlite")
    s.close()
    run = [sys.executable, "-m", "coati_tui", "export", "prefs"]
    out = subprocess.run(run + [str(tmp_path / "p.sqlite"), "--format", "trl"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 pairs" in out.stdout and "1 ties, 1 skipped" in out.stdout
    assert len((tmp_path / "p-trl.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    (tmp_path / "bad.sqlite").write_bytes(b"not a database at all")
    out = subprocess.run(run + [str(tmp_path / "bad.sqlite")], capture_output=True, text=True)
    assert out.returncode == 2 and "bad.sqlite: not an SQLite file" in out.stderr


def test_runs_snapshot_the_store_at_their_start(tmp_path, tiny_model):
    from coati_tui.core.run_config import RunConfig
    from coati_tui.host import runs
    from coati_tui.host.build import build

    s, (p1, *_) = filled(tmp_path / "p.sqlite")
    cfg = build("rm", str(tiny_model), str(tmp_path / "p.sqlite"), "lora_naive", {})
    run_dir = runs.prepare(cfg, tmp_path / "run")
    snap = tmp_path / "run" / "prefs-p.jsonl"
    assert RunConfig.read(run_dir).data == str(snap)
    assert len(formats.load_preferences(snap)) == 2
    s.judge(s.pair(s.add_pair(1, ans("a"), ans("b"), False)).id, "A", "ann")  # labels go on after the start
    assert len(formats.load_preferences(snap)) == 2 and len(formats.load_preferences(tmp_path / "p.sqlite")) == 3


def test_migrations_bring_an_old_file_up_to_date_and_keep_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # a version-1 store, as the first release wrote it
    for stmt in filter(str.strip, prefstore.MIGRATIONS[0].split(";")):
        db.execute(stmt)
    db.execute("INSERT INTO coati_meta VALUES ('app', ?)", (prefstore.APP,))
    db.execute("INSERT INTO prompts(messages, source, created) VALUES (?, 'typed', 0)", (prefstore.prompt_key(ZH),))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = Store(path)
    assert s.version == prefstore.VERSION == 3
    assert "round" in {r[1] for r in s.db.execute("PRAGMA table_info(comparisons)")}  # 3: labeling rounds
    indexes = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"comparisons_pair", "pairs_prompt"} <= indexes
    assert s.add_prompt([{"content": ZH[0]["content"], "role": "user"}], "again") == 1  # the old row is kept


@pytest.mark.parametrize("kind", ["text", "foreign", "newer", "truncated"])
def test_bad_files_give_one_clear_error(tmp_path, kind):
    path = tmp_path / "x.sqlite"
    if kind == "text":
        path.write_text("hello", encoding="utf-8")
        expect = "not an SQLite file"
    elif kind == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE moz_places(id INTEGER)")
        db.commit()
        db.close()
        expect = "something else \\(tables: moz_places\\)"
    elif kind == "newer":
        Store(path).close()
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version = 99")
        db.commit()
        db.close()
        expect = "newer coati-tui"
    else:
        filled(path)[0].close()
        data = path.read_bytes()
        path.write_bytes(data[:100] + b"\xff" * 3000 + data[3100:])  # a clobbered header and first page
        expect = "unreadable|something else"
    with pytest.raises(StoreError, match=expect) as err:
        Store(path)
    assert str(path) in str(err.value)
    with pytest.raises(formats.DataError, match="x.sqlite"):
        formats.load_preferences(path)


WRITER = textwrap.dedent("""
    import sys
    from coati_tui.data.prefstore import Store
    s = Store(sys.argv[1])
    who, n = sys.argv[2], int(sys.argv[3])
    prompt = s.add_prompt([{"role": "user", "content": "题目 " + who}], "typed")
    for i in range(n):
        a, b = {"text": f"{who} a{i}", "model": who}, {"text": f"{who} b{i}", "model": who}
        pair = s.add_pair(prompt, a, b, i % 2 == 0)
        cid = s.judge(pair, "AB"[i % 2], who)
        print(cid, pair, flush=True)  # printed only after the judgment was committed
""")


def test_kill_9_loses_no_submitted_judgment(tmp_path):
    """A real labeling process killed with SIGKILL at several moments: every judgment it reported as
    submitted is in the file, whole."""
    path = tmp_path / "p.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    reported = []
    for round_, kill_after in enumerate((1, 7, 40)):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), f"w{round_}", "100000"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(kill_after):
            reported.append(tuple(map(int, proc.stdout.readline().split())))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    s = Store(path)
    assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {(c, p) for c, p in s.db.execute("SELECT id, pair_id FROM comparisons")}
    assert set(reported) <= stored
    assert all(s.pair(p).left for _, p in reported)  # the pairs' answers were committed with them


def test_two_processes_writing_one_file_do_not_corrupt_it(tmp_path):
    path = tmp_path / "p.sqlite"
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    Store(path).close()
    procs = [
        subprocess.Popen([sys.executable, str(script), str(path), who, "150"], stdout=subprocess.PIPE, text=True)
        for who in ("ann", "bob")
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    s = Store(path)
    assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert s.stats()["annotators"] == {"ann": 150, "bob": 150}
    assert sum(len(o.splitlines()) for o in outs) == 300 == s.stats()["labeled"]
    assert len(s.preferences()[0]) == 300


def test_trl_reward_trainer_prepares_the_trl_export(tmp_path, tiny_reward_model):
    """TRL's own data preparation accepts the export (where trl is installed; CI's default stack has it)."""
    trl = pytest.importorskip("trl")
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    filled(tmp_path / "p.sqlite")[0].close()
    prefstore.export(tmp_path / "p.sqlite", "trl", tmp_path / "trl.jsonl")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "trl.jsonl"), split="train")
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model)
    args = trl.RewardConfig(output_dir=str(tmp_path / "out"), report_to=[], max_length=256, use_cpu=True)
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    prepared = trainer.train_dataset
    assert prepared.num_rows == 2 and {"chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    first = tok.decode(prepared[0]["chosen_ids"])
    assert "请列出三种水果。" in first and "苹果、香蕉、橙子" in first


def test_rounds_are_recorded_with_each_judgment(tmp_path):
    s, _ = filled(tmp_path / "p.sqlite")  # four judgments in round 1
    assert s.current_round() == 1 and s.rounds() == {1: 4}
    assert s.next_round("runs/dpo-1/final", "base") == 2
    p = s.add_pair(s.add_prompt(ZH, "typed"), ans("苹果", "dpo"), ans("石头", "base"), swapped=False)
    s.judge(p, "A", "ann")
    s.close()
    again = Store(tmp_path / "p.sqlite")  # what was committed is what a new session sees
    assert again.current_round() == 2 and again.rounds() == {1: 4, 2: 1}
