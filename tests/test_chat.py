"""The chat screen driven by the Pilot on a tiny model: load through the generation worker (a real child),
a round trip in Chinese, the transcript saved and reopened, a bad model path, and the app stays up."""

import json

import pytest
from test_app_train import wait_for

from coati_tui.ui.app import CoatiApp
from coati_tui.ui.screens.chat import ChatScreen

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)


async def test_chat_round_trip_saves_and_reopens_the_transcript(tiny_model):
    app = CoatiApp(model=str(tiny_model), mode="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_for(pilot, lambda: chat.loaded is not None)
        assert chat.loaded["device"] == "cpu" and chat.loaded["quant"] == "none"
        chat.query_one("#chat-max_new_tokens").value = "8"
        chat.query_one("#chat-system").value = "简短回答。"
        chat.query_one("#chat-input").value = "你好"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not chat.generating and len(chat.messages) == 2)
        assert chat.messages[0] == {"role": "user", "content": "你好"} and chat.messages[1]["role"] == "assistant"
        assert chat.last_answer["tokens"] <= 8
        assert "tok/s" in str(chat.query_one("#chat-status").render())
        lines = [json.loads(x) for x in chat.transcript.read_text(encoding="utf-8").splitlines()]
        assert lines[0]["system"] == "简短回答。" and lines[1:] == chat.messages
        saved = list(chat.messages)
        await pilot.press("ctrl+r")  # regenerate replaces the last answer
        await wait_for(pilot, lambda: not chat.generating and len(chat.messages) == 2)
        await pilot.press("ctrl+n")
        assert chat.messages == [] and not chat.query_one("#chat-log").children
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        assert chat.messages[0] == saved[0] and len(chat.messages) == 2
        assert chat.query_one("#chat-system").value == "简短回答。"


async def test_a_bad_model_path_is_one_clear_error_and_the_app_keeps_working(tmp_path):
    app = CoatiApp()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f2")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        chat.query_one("#chat-model").value = str(tmp_path / "无")
        await pilot.press("ctrl+l")
        status = chat.query_one("#chat-status")
        await wait_for(pilot, lambda: "no such folder" in str(status.render()))
        chat.query_one("#chat-input").value = "hi"
        await pilot.press("enter")  # nothing loaded: a notice, no crash
        assert chat.messages == []
        await pilot.press("f1")
        assert type(app.screen).__name__ == "HomeScreen"


async def test_switch_model_to_a_runs_output_from_the_screen(tiny_model, tmp_path, monkeypatch):
    import shutil

    from coati_tui.core import paths
    from coati_tui.ui.widgets.run_picker import RunPicker

    for name in ("sft-1-模型", "rm-2"):  # two finished runs (the picker needs only config.toml and final/)
        run = paths.runs_dir() / name
        run.mkdir(parents=True)
        (run / "config.toml").write_text('stage = "sft"\n')
        shutil.copytree(tiny_model, run / "final")
    # each token takes 20 ms more, as on a big model: a tiny one on a fast CPU wrote all 900 before ctrl+x landed
    monkeypatch.setenv("COATI_TUI_WORKER_TOKEN_DELAY", "0.02")
    app = CoatiApp(mode="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen))
        chat = app.screen
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, RunPicker) and app.screen.query("OptionList"))
        options = app.screen.query_one("OptionList")
        ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
        want = str(paths.runs_dir() / "sft-1-模型" / "final")
        assert set(ids) == {want, str(paths.runs_dir() / "rm-2" / "final")}
        options.highlighted = ids.index(want)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is chat)
        assert chat.query_one("#chat-model").value == want
        await wait_for(pilot, lambda: chat.loaded is not None, timeout=60)
        assert chat.loaded["model"] == want
        # ctrl+x stops an answer while the message line has focus (the input's own ctrl+x is cut)
        chat.query_one("#chat-max_new_tokens").value = "900"
        chat.query_one("#chat-temperature").value = "1.5"
        chat.query_one("#chat-top_k").value = "20"  # the end token (1 of 1024) rarely among the likeliest 20
        for _ in range(6):  # the answer may end (its end token) before the key lands
            chat.query_one("#chat-input").value = "说很长的话"
            await pilot.press("enter")
            await wait_for(pilot, lambda: chat.buffer or not chat.generating)
            assert app.focused is chat.query_one("#chat-input")
            await pilot.press("ctrl+x")
            await wait_for(pilot, lambda: not chat.generating)
            if chat.last_answer["stop"] == "cancelled":
                break
        assert chat.last_answer["stop"] == "cancelled" and chat.last_answer["tokens"] < 900


async def test_a_worker_writing_megabytes_to_stderr_still_answers(tiny_model, monkeypatch):
    """bitsandbytes on a CPU writes a warning per 8-bit matmul: a worker whose stderr nobody reads blocks
    once the pipe is full. The chat's worker is drained into chats/worker.log."""
    from coati_tui.host.chats import worker_log
    from coati_tui.worker.__main__ import NOISE_ENV

    monkeypatch.setenv(NOISE_ENV, str(3 * 2**20))
    app = CoatiApp(model=str(tiny_model), mode="chat")
    async with app.run_test(size=(120, 40)) as pilot:
        chat = app.screen
        await wait_for(pilot, lambda: chat.loaded is not None)
        chat.query_one("#chat-max_new_tokens").value = "4"
        chat.query_one("#chat-input").value = "hi"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not chat.generating and len(chat.messages) == 2)
        assert chat.worker.log_path == worker_log()
        assert worker_log().stat().st_size > 3 * 2**20
