"""`coati-tui serve` as its users meet it: the real server in a child process (uvicorn, the real generation
worker behind it) on a tiny model, asked by the official ``openai`` client and by raw HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "sk-test-0123"
DELAY = 0.03  # seconds each generated token takes (COATI_TUI_WORKER_TOKEN_DELAY): a long answer takes ~30 s
CHINESE = [{"role": "system", "content": "请用中文回答。"}, {"role": "user", "content": "中国的首都是哪里？"}]


class Server:
    """``coati-tui serve MODEL --port 0 ...`` in a child; ``url`` from its start-up line."""

    def __init__(self, model, log_dir, *args, env=None):
        self.log = log_dir / "serve.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coati_tui", "serve", str(model), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=open(self.log, "w"),
            text=True,
            env={**os.environ, **(env or {})},
        )
        found: dict = {}
        reader = threading.Thread(target=lambda: found.update(line=self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(120)
        match = re.search(r" at (http://\S+/v1)$", found.get("line", "").strip())
        if not match:
            self.stop()
            raise AssertionError(f"no start-up line: {found.get('line')!r}\n{self.log.read_text()}")
        self.line, self.url = found["line"], match.group(1)
        self.base = self.url[: -len("/v1")]

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60, **kw)

    def health(self):
        return httpx.get(self.base + "/health", timeout=10).json()

    def post(self, path, body, key=KEY, **kw):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(self.url + path, content=content, headers=headers, timeout=60, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    s = Server(
        tiny_model,
        tmp_path_factory.mktemp("serve"),
        "--api-key",
        KEY,
        "--max-queue",
        "1",
        "--name",
        "tiny",
        env={"COATI_TUI_WORKER_TOKEN_DELAY": str(DELAY)},
    )
    yield s
    s.stop()


def natural(client, messages, limit=40):
    """The greedy answer with room to spare: (text, completion tokens, finish_reason)."""
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=limit, temperature=0, seed=0)
    return r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason


def test_start_up_line_models_and_a_chinese_chat(server, tiny_model):
    from coati_tui.data.tokenize import load_tokenizer, render

    assert "tiny" in server.line and "none" in server.line and "MiB on cpu" in server.line
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(model="tiny", messages=CHINESE, max_tokens=8, temperature=0, seed=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and 0 < r.usage.completion_tokens <= 8
    # the Chinese prompt reached the model intact: its token count is the chat template's, counted here
    tokenizer, _ = load_tokenizer(str(tiny_model))
    ids = tokenizer(render(tokenizer, CHINESE, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_stream_is_the_whole_answer_in_pieces(server):
    client = server.client()
    whole, tokens, finish = natural(client, CHINESE)
    stream = client.chat.completions.create(
        model="tiny",
        messages=CHINESE,
        max_tokens=40,
        temperature=0,
        seed=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == whole and len([p for p in pieces if p]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[-1].usage.completion_tokens == tokens
    # on the wire: server-sent events ending in [DONE]
    raw = server.post("/chat/completions", {"messages": CHINESE, "max_tokens": 4, "stream": True})
    lines = [x for x in raw.text.splitlines() if x]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert all(x.startswith("data: ") for x in lines) and lines[-1] == "data: [DONE]"


def test_max_tokens_ends_with_length_and_a_stop_sequence_with_stop(server):
    client = server.client()
    text, tokens, _ = natural(client, [{"role": "user", "content": "Count from one to ten."}])
    assert tokens >= 4, text
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Count from one to ten."}], max_tokens=3, temperature=0
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    # a stop sequence taken from the middle of the greedy answer: the answer ends just before it
    clean = [i for i in range(2, len(text) - 2) if "\ufffd" not in text[i : i + 2] and text.find(text[i : i + 2]) == i]
    assert clean, text
    cut = clean[0]
    stop = text[cut : cut + 2]
    for stream in (False, True):
        r = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Count from one to ten."}],
            max_tokens=40,
            temperature=0,
            stop=[stop, "never appears"],
            stream=stream,
        )
        if stream:
            chunks = [c for c in r if c.choices]
            got = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            got, finish = r.choices[0].message.content, r.choices[0].finish_reason
        assert (got, finish) == (text[:cut], "stop"), (stop, text)


def test_plain_completions(server):
    client = server.client()
    r = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=6, temperature=0, seed=0)
    assert r.object == "text_completion" and r.usage.prompt_tokens > 0
    streamed = client.completions.create(
        model="tiny", prompt="The quick brown", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_two_clients_at_once_are_both_answered(server):
    results: dict = {}

    def ask(i):
        messages = [{"role": "user", "content": f"第{i}个问题: hello"}]
        r = server.client().chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0)
        results[i] = r

    threads = [threading.Thread(target=ask, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [1, 2]
    assert all(r.usage.completion_tokens > 0 and r.choices[0].finish_reason for r in results.values())
    assert results[1].id != results[2].id


def _open_stream(server, content=True):
    """A long streamed answer (1000 tokens, the end token held off: ~30 s at DELAY), read up to its first
    content piece (``content=False``: up to the role chunk, which comes at once even while it waits)."""
    client = httpx.Client(timeout=60)
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1000}
    request = client.build_request(
        "POST",
        server.url + "/chat/completions",
        json={**body, "stream": True, "temperature": 1.0, "seed": 3, "ignore_eos": True},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    response = client.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()  # kept: a generator closed early closes the response with it
    for line in lines:
        if not content or ('"content"' in line and '"content":""' not in line.replace(" ", "")):
            break
    return client, response, lines


def test_a_client_that_goes_away_cancels_its_generation(server):
    client, response, _ = _open_stream(server)
    response.close()
    client.close()
    t0 = time.perf_counter()
    r = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0
    )
    assert r.usage.completion_tokens > 0
    # the abandoned answer (1000 tokens, ~30 s) did not run to its end before this one was served
    assert time.perf_counter() - t0 < 10
    deadline = time.time() + 10
    while "the client went away" not in server.log.read_text() and time.time() < deadline:
        time.sleep(0.2)
    assert "the client went away; its generation is cancelled" in server.log.read_text()


def test_a_full_queue_answers_429(server):
    first = _open_stream(server)  # being answered
    second = _open_stream(server, content=False)  # waits (--max-queue 1): its role chunk came
    try:
        with pytest.raises(openai.RateLimitError) as err:
            server.client().chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert err.value.status_code == 429 and "--max-queue 1" in err.value.body["message"]
    finally:
        for client, response, _ in (first, second):
            response.close()
            client.close()
    deadline = time.time() + 20  # both were cancelled: the queue empties
    while (server.health()["answering"] or server.health()["waiting"]) and time.time() < deadline:
        time.sleep(0.1)
    assert server.health()["waiting"] == 0 and not server.health()["answering"]
    r = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert r.usage.completion_tokens > 0


def test_wrong_key_is_401_and_bad_bodies_are_400_naming_the_field(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    assert server.post("/chat/completions", {"messages": CHINESE}, key=None).status_code == 401
    bad_json = server.post("/chat/completions", b'{"messages": [')
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["error"]["message"]
    cases = {
        "messages": {"model": "tiny"},
        "temperature": {"messages": CHINESE, "temperature": "hot"},
        "max_tokens": {"messages": CHINESE, "max_tokens": 0},
        "stop": {"messages": CHINESE, "stop": ["a", "b", "c", "d", "e"]},
        "messages[0]": {"messages": [{"role": "robot", "content": "hi"}]},
        "n": {"messages": CHINESE, "n": 2},
    }
    for field, body in cases.items():
        r = server.post("/chat/completions", body)
        assert r.status_code == 400, (field, r.text)
        assert r.json()["error"]["param"] == field and r.json()["error"]["type"] == "invalid_request_error"
    # a prompt longer than the model's context (1024 positions): 400 from the worker, which goes on serving
    long = server.post("/chat/completions", {"messages": [{"role": "user", "content": "你好，世界！" * 400}]})
    assert long.status_code == 400 and long.json()["error"]["param"] == "messages", long.text
    assert "context is 1024" in long.json()["error"]["message"]
    assert server.post("/completions", {"prompt": "ok", "max_tokens": 2}).status_code == 200


def test_a_worker_that_dies_is_a_503_and_is_started_again(server):
    pid = server.health()["worker_pid"]
    out: dict = {}

    def ask():
        try:
            server.client().chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "a long one"}],
                max_tokens=1000,
                extra_body={"ignore_eos": True},
            )
        except openai.APIStatusError as exc:
            out["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(1.0)  # it is being answered (1000 tokens take ~30 s)
    os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert out["error"].status_code == 503 and "died" in out["error"].message
    deadline = time.time() + 120
    while time.time() < deadline and (server.health()["status"] != "ok" or server.health()["worker_pid"] == pid):
        time.sleep(0.3)
    assert server.health()["status"] == "ok" and server.health()["worker_pid"] not in (None, pid)
    r = server.client().chat.completions.create(model="tiny", messages=CHINESE, max_tokens=3)
    assert r.usage.completion_tokens > 0
    assert "starting it again" in server.log.read_text()


def test_a_model_that_does_not_load_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", "serve", str(tmp_path / "nope"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"error: {tmp_path / 'nope'} did not load" in proc.stderr and "Traceback" not in proc.stderr
