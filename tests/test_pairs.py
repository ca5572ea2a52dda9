"""The Rank pane's pair writer without processes: fake workers stand in for the generation workers."""

import json

import pytest

from coati_tui.data import prefstore
from coati_tui.host import chats, pairs

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


class FakeWorker:
    def __init__(self):
        self.asked, self.code = [], None

    def generate(self, messages, rid=None, **sampling):
        self.asked.append((rid, messages, sampling))
        return rid

    def poll(self):
        return self.code


def answer(rid, text):
    return {"type": "answer", "id": rid, "text": text, "tokens": 4, "tokens_per_s": 8.0, "stop": "end_token"}


def test_one_model_writes_two_samples_per_prompt_into_a_pair(tmp_path):
    store = prefstore.Store(tmp_path / "p.sqlite")
    writer = pairs.PairWriter()
    worker = FakeWorker()
    writer.workers = [worker]
    writer.queue([[{"role": "user", "content": "水果？"}]], "file.jsonl", store)
    writer.add_typed("typed first")
    assert writer.state() == "loading model A…"
    assert not writer.pump(store, lambda: 0)  # not loaded yet
    assert writer.handle(worker, {"type": "loaded", "model": "/m"}, store) == "loaded"
    assert writer.pump(store, lambda: 0) and writer.state() == "writing the next pair…"
    (r0, msgs, s0), (r1, _, s1) = worker.asked
    assert msgs == [{"role": "user", "content": "typed first"}] and s0["seed"] != s1["seed"]  # two samples
    assert s0["max_new_tokens"] == pairs.SAMPLING["max_new_tokens"]
    assert not writer.pump(store, lambda: 0)  # one prompt at a time
    assert writer.handle(worker, answer(r0, " 苹果 "), store) == "answer"
    assert writer.handle(worker, answer(r1, "石头"), store) == "pair"
    (pair_id,) = store.pending("a")
    view = store.pair(pair_id)
    assert {view.left, view.right} == {"苹果", "石头"} and view.left_model == "/m"
    assert not writer.pump(store, lambda: pairs.AHEAD)  # enough pairs ready
    assert writer.handle(FakeWorker(), answer(r0, "x"), store) == ""  # not one of ours: ignored
    store.close()


def test_a_worker_that_dies_is_named_and_its_requests_dropped(tmp_path):
    store = prefstore.Store(tmp_path / "p.sqlite")
    writer = pairs.PairWriter()
    a, b = FakeWorker(), FakeWorker()
    writer.workers = [a, b]
    writer.add_typed("hi")
    for w in (a, b):
        writer.handle(w, {"type": "loaded", "model": "/m"}, store)
    assert writer.pump(store, lambda: 0) and len(a.asked) == len(b.asked) == 1  # two models: one answer each
    b.code = -9
    assert writer.handle(b, {"type": "error", "kind": "crash", "message": "gone", "log_tail": []}, store) == "error"
    assert list(writer.inflight) == [a.asked[0][0]]  # A's request still counts, B's is dropped
    assert "model B's worker stopped" in writer.state()
    assert pairs.worker_log(tmp_path / "prefs.sqlite", "B") == tmp_path / "prefs-worker-B.log"
    store.close()


def test_chat_prompts_are_every_user_turn_with_what_came_before():
    folder = chats.chats_dir()
    folder.mkdir(parents=True)
    lines = [
        {"model": "/m", "system": "简短"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "嗨"},
        {"role": "user", "content": "再见"},
    ]
    (folder / "chat-1.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    (folder / "worker.log").write_text("noise")
    got = chats.chat_prompts()
    system = {"role": "system", "content": "简短"}
    assert got == [[system, lines[1]], [system, *lines[1:]]]
