"""Shared test set-up. Threads: one per process (with 2 cores, fighting threads make a LoRA step 100x slower)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever downloaded
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import importlib.metadata as md  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def transformers_major() -> int:
    return int(md.version("transformers").split(".")[0])


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own COATI_TUI_HOME: no test reads or writes the user's runs or presets."""
    monkeypatch.setenv("COATI_TUI_HOME", str(tmp_path / "coati-home"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from coati_tui.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "causal", "causal")


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    from coati_tui.trainer.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "reward", "reward")


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A COATI_TUI_HOME where `coati-tui demo --ppo-steps 20` ran (a real child, once per session)."""
    import subprocess
    import sys

    home = tmp_path_factory.mktemp("demo-home")
    proc = subprocess.run(
        [sys.executable, "-m", "coati_tui", "demo", "--ppo-steps", "20"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COATI_TUI_HOME": str(home)},
    )
    (home / "demo-stdout.txt").write_text(proc.stdout, encoding="utf-8")
    (home / "demo-stderr.txt").write_text(proc.stderr, encoding="utf-8")
    (home / "demo-rc.txt").write_text(str(proc.returncode))
    return home
