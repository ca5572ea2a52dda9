"""Run folders and the child-process runner, shared by the CLI and the app. No torch here.

A run folder: ``config.toml`` (resolved), ``events.jsonl``, ``train.log``, ``checkpoints/step-N/``,
``final/``. ``launch`` starts the trainer child on one (``python -m coati_tui.train``) or several
processes (``torchrun``, which also serves colossalai's plugins: ``colossalai run`` is a wrapper of it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from coati_tui import events, paths
from coati_tui.procenv import child_env


@dataclass
class Launch:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free port on a single node, 29500 across nodes

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_run_dir(stage: str, model: str, root: Path | None = None) -> Path:
    """``~/coati-tui/runs/sft-20261123-120501-tiny-llama`` (unique, sortable, readable)."""
    root = root or paths.runs_dir()
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(model).rstrip("/")).name)[:40] or "model"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stage}-{stamp}-{name}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stage}-{stamp}-{name}-{n}"
    path.mkdir(parents=True)
    return path


def command(run_dir: Path, launch: Launch | None = None) -> list[str]:
    launch = launch or Launch()
    if not launch.distributed:
        return [sys.executable, "-m", "coati_tui.train", str(run_dir)]
    port = launch.master_port or (free_port() if launch.nnodes == 1 else 29500)
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}",
            f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}",
            f"--master-addr={launch.master_addr}", f"--master-port={port}",
            "-m", "coati_tui.train", str(run_dir)]


def launch(run_dir: Path, launch: Launch | None = None, stderr=None) -> subprocess.Popen:
    """Start the trainer; its stdout carries the events (one JSON object per line)."""
    log = open(Path(run_dir) / "child.log", "ab") if stderr is None else stderr
    return subprocess.Popen(command(run_dir, launch), stdout=subprocess.PIPE, stderr=log, text=True,
                            encoding="utf-8", env=child_env(), bufsize=1)


def status(run_dir: Path) -> dict:
    """A run's state from its files: stage, status (running/completed/cancelled/failed/unknown), last loss."""
    evs = events.read(Path(run_dir) / "events.jsonl")
    start = next((e for e in evs if e["type"] == "start"), None)
    end = next((e for e in reversed(evs) if e["type"] in ("done", "error")), None)
    steps = [e for e in evs if e["type"] == "step"]
    state = "unknown" if not evs else "running"
    if end is not None:
        state = end["status"] if end["type"] == "done" else "failed"
    return {"run": str(run_dir), "stage": start["stage"] if start else None, "status": state,
            "step": steps[-1]["step"] if steps else 0, "loss": steps[-1]["loss"] if steps else None,
            "final": (Path(run_dir) / "final").is_dir()}
