"""The generation worker as the CLI and the app use it: a real child, JSON lines both ways."""

import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import transformers_major

from coati_tui.core import events, paths
from coati_tui.host import gen_client
from coati_tui.host.gen_client import GenerationClient, generate_request
from coati_tui.worker.__main__ import NOISE_ENV, NOISE_LINE

MB = 2**20


def cli(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "coati_tui", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny Llama whose linear widths are multiples of 64 (bitsandbytes' CPU kernels want that)."""
    from coati_tui.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gen") / "m", intermediate=256)


def read_until(stream, kinds, timeout=120.0):
    """The events up to the first of ``kinds``; a worker that stalls fails the test instead of hanging it."""
    out: dict = {}

    def read():
        seen = []
        try:
            for ev in stream:
                seen.append(ev)
                if ev["type"] in kinds:
                    out["seen"] = seen
                    return
            out["error"] = AssertionError(f"worker ended: {seen[-3:]}")
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"no {sorted(kinds)} event within {timeout:.0f} s: the worker is stuck")
    if "error" in out:
        raise out["error"]
    return out["seen"]


def test_streams_an_answer_and_can_be_cancelled(wide_model, tmp_path):
    client = GenerationClient(str(wide_model), log=tmp_path / "w.log")
    stream = client.events()
    try:
        loaded = read_until(stream, {"loaded", "error"})[-1]
        assert loaded["type"] == "loaded" and loaded["device"] == "cpu" and loaded["quant"] == "none"
        assert loaded["memory_bytes"] > 0
        rid = client.generate([{"role": "user", "content": "你好"}], max_new_tokens=12, temperature=0, seed=0)
        evs = read_until(stream, {"answer", "error"})
        answer = evs[-1]
        assert answer["type"] == "answer" and answer["id"] == rid, answer
        tokens = [e["text"] for e in evs if e["type"] == "token"]
        assert "".join(tokens) == answer["text"] and 0 < answer["tokens"] <= 12
        assert answer["stop"] in ("end_token", "max_new_tokens")
        # a long answer, cancelled after its first piece: the worker stops it and serves the next request
        client.generate(
            [{"role": "user", "content": "Say thanks."}], rid="r", max_new_tokens=5000, temperature=1.0, seed=1
        )
        first = read_until(stream, {"token", "answer"})[-1]
        assert client.cancel("r")
        answer = first if first["type"] == "answer" else read_until(stream, {"answer"})[-1]
        assert answer["stop"] in ("cancelled", "end_token") and answer["tokens"] < 5000
        client.generate([{"role": "user", "content": "hi"}], max_new_tokens=3, temperature=0)
        assert read_until(stream, {"answer"})[-1]["tokens"] <= 3
        assert client.quit()
        assert client.wait(timeout=30) == 0
        assert list(stream) == []  # asked to quit: no crash reported
    finally:
        if client.poll() is None:
            client.kill()


def test_a_request_names_only_sampling_settings():
    req = generate_request("7", [{"role": "user", "content": "嗨"}], temperature=0.5, seed=None)
    assert req == {
        "op": "generate",
        "id": "7",
        "messages": [{"role": "user", "content": "嗨"}],
        "temperature": 0.5,
        "seed": None,
    }
    with pytest.raises(TypeError, match="temprature"):
        generate_request("7", [], temprature=0.5)
    with pytest.raises(ValueError, match="quant"):
        GenerationClient("m", quant="3bit")


@pytest.mark.slow  # the loop's logic, not the stack's: CI runs it once
def test_megabytes_of_stderr_do_not_block_the_answer_and_land_in_the_log(tiny_model, tmp_path, monkeypatch):
    """The bug: bitsandbytes writes a warning per 8-bit matmul on a CPU; nobody read the worker's stderr,
    the pipe filled and the worker blocked inside a warning while its client waited for the answer."""
    monkeypatch.setenv(NOISE_ENV, str(4 * MB))
    monkeypatch.setattr(gen_client, "LOG_LIMIT", 3 * MB)  # the log keeps its head and, past the cap, its tail
    client = GenerationClient(str(tiny_model), log=tmp_path / "logs" / "w.log")
    stream = client.events()
    try:
        assert read_until(stream, {"loaded", "error"})[-1]["type"] == "loaded"
        client.generate([{"role": "user", "content": "hi"}], max_new_tokens=4, temperature=0)
        assert read_until(stream, {"answer", "error"})[-1]["type"] == "answer"
        tail = client.stderr_tail(4)
        assert any(line.startswith(NOISE_LINE.strip() + " (x") for line in tail), tail  # a run of lines: once
    finally:
        client.stop()
    log = (tmp_path / "logs" / "w.log").read_bytes()
    assert 3 * MB < len(log) < 3 * MB + 64 * 1024
    assert b"more bytes of stderr" in log and NOISE_LINE.encode() in log[-1000:]


def test_a_worker_that_dies_ends_with_a_crash_event_and_its_stderr(tiny_model, tmp_path):
    client = GenerationClient(str(tiny_model), log=tmp_path / "w.log")
    stream = client.events()
    assert read_until(stream, {"loaded", "error"})[-1]["type"] == "loaded"
    os.kill(client.pid, signal.SIGKILL)
    crash = read_until(stream, {"error"})[-1]
    assert crash["kind"] == "crash" and crash["exit_code"] == -signal.SIGKILL and "exited with -9" in crash["message"]
    assert list(stream) == [] and not client.send({"op": "quit"})  # gone: a request is refused, not raised
    client.stop()


@pytest.mark.slow  # the loop's logic, not the stack's: CI runs it once
def test_cli_generate_streams_through_megabytes_of_stderr(tiny_model):
    """`coati-tui generate MODEL --quant 8bit` on a CPU hung forever (see above); the same flood, made on
    purpose, from the CLI: it answers, and the worker's stderr is in ~/coati-tui/logs/generate.log."""
    proc = cli(
        "generate",
        str(tiny_model),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
        "--json",
        env={NOISE_ENV: str(4 * MB)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [e for e in map(events.parse, proc.stdout.splitlines()) if e][-1]["type"] == "answer"
    log = paths.home() / "logs" / "generate.log"
    # all of the flood is in the log (what follows it, e.g. transformers' warnings, differs between stacks)
    assert log.read_text(encoding="utf-8").count(NOISE_LINE) >= 4 * MB // len(NOISE_LINE)


def test_cli_generate_8bit_on_cpu_answers_at_length(wide_model):
    """The real thing where the stack allows it: hundreds of 8-bit matmuls, each with its warning."""
    if transformers_major() < 5:
        pytest.skip("bitsandbytes on CPU needs transformers 5")
    proc = cli(
        "generate",
        str(wide_model),
        "--prompt",
        "你好",
        "--quant",
        "8bit",
        "--max-new-tokens",
        "200",
        "--temperature",
        "1",
        "--seed",
        "3",
        "--json",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = [e for e in map(events.parse, proc.stdout.splitlines()) if e][-1]
    assert answer["type"] == "answer" and answer["tokens"] > 0


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantized_loads_on_cpu_where_the_stack_allows(wide_model, quant):
    proc = cli(
        "generate",
        str(wide_model),
        "--prompt",
        "你好",
        "--quant",
        quant,
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
        "--json",
    )
    evs = [e for e in map(events.parse, proc.stdout.splitlines()) if e]
    if transformers_major() < 5:  # bitsandbytes on CPU needs transformers 5: one clear error
        err = evs[-1]
        assert proc.returncode == 1 and err["kind"] == "missing_dependency" and "transformers >= 5" in err["message"]
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = next(e for e in evs if e["type"] == "loaded")
    assert loaded["quant"] == quant
    assert evs[-1]["type"] == "answer" and evs[-1]["tokens"] > 0


def test_full_precision_footprint_is_larger_than_4bit(wide_model):
    if transformers_major() < 5:
        pytest.skip("bitsandbytes on CPU needs transformers 5")
    sizes = {}
    for quant in ("none", "4bit"):
        proc = cli("generate", str(wide_model), "--prompt", "hi", "--quant", quant, "--max-new-tokens", "1", "--json")
        sizes[quant] = next(e for e in map(events.parse, proc.stdout.splitlines()) if e and e["type"] == "loaded")[
            "memory_bytes"
        ]
    assert sizes["4bit"] < sizes["none"]


def test_bad_model_path_is_one_clear_error(tmp_path):
    proc = cli("generate", str(tmp_path / "没有这个模型"), "--prompt", "hi")
    assert proc.returncode == 2
    assert "没有这个模型" in proc.stderr and "no such folder" in proc.stderr


def test_quant_gptq_on_a_plain_folder_says_how_to_make_one(tiny_model):
    proc = cli("generate", str(tiny_model), "--prompt", "hi", "--quant", "gptq")
    assert proc.returncode == 2 and "not a GPTQ checkpoint" in proc.stderr and "coati-tui quantize" in proc.stderr


def test_stop_asks_workers_to_quit_and_kills_one_that_will_not(tmp_path):
    """``stop`` (Chat and Rank leaving, or loading another model): a worker that obeys quit exits on its
    own; one that ignores it is killed at the deadline; a finished process and None are left be."""
    from coati_tui.host.gen_client import stop

    def child(code: str):
        return subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    obeys = child(
        "import json, sys\nfor line in sys.stdin:\n    if json.loads(line)['op'] == 'quit':\n        sys.exit(3)\n"
    )
    ignores = child("import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\ntime.sleep(600)\n")
    assert ignores.stdout.readline().strip() == "ready"
    done = child("pass")
    done.wait()
    stop(obeys, None, ignores, done, timeout=3)
    assert obeys.returncode == 3  # it read the quit request and left by itself
    assert ignores.returncode is not None and ignores.returncode < 0  # killed
    assert done.returncode == 0
