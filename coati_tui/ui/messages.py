"""What screens ask of each other, as messages: a screen posts one (``self.post_message(...)``), it
bubbles to the App, and the App opens, switches and fills screens (app.py, ``on_<name>``). No screen
sets another screen's widgets, calls its methods or imports it.

    OpenRun       Home (a stage started, the demo, a run re-attached), Runs (enter)   -> the Train screen
    ShowRuns      Home (u)                                                           -> the Runs screen
    PrefillStage  Runs (n after SFT or RM), Rank (ctrl+t: train RM on the labels)    -> Home, filled in
    ChatWith      Runs (n after PPO)                                                 -> Chat, model loading
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message


@dataclass
class OpenRun(Message):
    """Show one run on a Train screen pushed over the current one. ``run_dir`` None with ``demo``: the
    demo's first stage not yet completed; ``start`` launches its trainer (a prepared run or the demo).
    The totals scale the memory bars (0: unknown, the bars scale to the run's own peak)."""

    run_dir: Path | None
    start: bool = False
    demo: bool = False
    gpu_total: int = 0
    ram_total: int = 0


@dataclass
class ShowRuns(Message):
    """Open the list of runs."""


@dataclass
class PrefillStage(Message):
    """Set up the next stage on Home (the Train mode's first screen, shown): the model (a folder, run
    folder or hub id), its data, the reward model for PPO, a hint to show, and ``then``: a stage
    ("sft", "rm", "ppo") to start with the planner's pick as soon as the plan is made ("": wait)."""

    model: str
    data: str = ""
    reward: str = ""
    hint: str = ""
    then: str = ""


@dataclass
class ChatWith(Message):
    """Switch to Chat and load this model (a run's final/ folder), then show the hint."""

    model: str
    hint: str = ""
