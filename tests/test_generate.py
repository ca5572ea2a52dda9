"""The generation worker as the CLI and the app use it: a real child, JSON lines both ways."""

import json
import subprocess
import sys

import pytest
from conftest import transformers_major

from coati_tui.core import events
from coati_tui.worker.generate import spawn


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "coati_tui", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A tiny Llama whose linear widths are multiples of 64 (bitsandbytes' CPU kernels want that)."""
    from coati_tui.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gen") / "m", intermediate=256)


def request(proc, **req):
    proc.stdin.write(json.dumps({"op": "generate", "id": "r", **req}, ensure_ascii=False) + "\n")
    proc.stdin.flush()


def read_until(proc, kinds):
    seen = []
    for ev in events.follow(proc.stdout):
        seen.append(ev)
        if ev["type"] in kinds:
            return seen
    raise AssertionError(f"worker ended: {proc.stderr.read()[-2000:]}")


def test_streams_an_answer_and_can_be_cancelled(wide_model):
    proc = spawn(str(wide_model))
    try:
        loaded = read_until(proc, {"loaded", "error"})[-1]
        assert loaded["type"] == "loaded" and loaded["device"] == "cpu" and loaded["quant"] == "none"
        assert loaded["memory_bytes"] > 0
        request(proc, messages=[{"role": "user", "content": "你好"}], max_new_tokens=12, temperature=0, seed=0)
        evs = read_until(proc, {"answer", "error"})
        answer = evs[-1]
        assert answer["type"] == "answer", answer
        tokens = [e["text"] for e in evs if e["type"] == "token"]
        assert "".join(tokens) == answer["text"] and 0 < answer["tokens"] <= 12
        assert answer["stop"] in ("end_token", "max_new_tokens")
        # a long answer, cancelled after its first piece: the worker stops it and serves the next request
        request(proc, messages=[{"role": "user", "content": "Say thanks."}], max_new_tokens=5000, temperature=1.0,
                seed=1)
        first = read_until(proc, {"token", "answer"})[-1]
        proc.stdin.write(json.dumps({"op": "cancel", "id": "r"}) + "\n")
        proc.stdin.flush()
        answer = first if first["type"] == "answer" else read_until(proc, {"answer"})[-1]
        assert answer["stop"] in ("cancelled", "end_token") and answer["tokens"] < 5000
        request(proc, messages=[{"role": "user", "content": "hi"}], max_new_tokens=3, temperature=0)
        assert read_until(proc, {"answer"})[-1]["tokens"] <= 3
        proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantized_loads_on_cpu_where_the_stack_allows(wide_model, quant):
    proc = cli("generate", str(wide_model), "--prompt", "你好", "--quant", quant, "--max-new-tokens", "4",
               "--temperature", "0", "--json")
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
            "memory_bytes"]
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
    from coati_tui.worker.generate import stop

    def child(code: str):
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, bufsize=1)

    obeys = child("import json, sys\nfor line in sys.stdin:\n    if json.loads(line)['op'] == 'quit':\n"
                  "        sys.exit(3)\n")
    ignores = child("import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\ntime.sleep(600)\n")
    assert ignores.stdout.readline().strip() == "ready"
    done = child("pass")
    done.wait()
    stop(obeys, None, ignores, done, timeout=3)
    assert obeys.returncode == 3  # it read the quit request and left by itself
    assert ignores.returncode is not None and ignores.returncode < 0  # killed
    assert done.returncode == 0
