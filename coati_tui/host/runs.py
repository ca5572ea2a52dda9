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
from typing import IO, TYPE_CHECKING, Any

from coati_tui.core import events, paths
from coati_tui.core.procenv import child_env, free_port

if TYPE_CHECKING:
    from coati_tui.core.presets import Preset
    from coati_tui.core.run_config import RunConfig


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
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={launch.nproc_per_node}",
        f"--nnodes={launch.nnodes}",
        f"--node-rank={launch.node_rank}",
        f"--master-addr={launch.master_addr}",
        f"--master-port={port}",
        "-m",
        "coati_tui.train",
        str(run_dir),
    ]


def launch(
    run_dir: Path, launch: Launch | None = None, stderr: IO[Any] | int | None = None, detached: bool = False
) -> subprocess.Popen[str]:
    """Start the trainer; its stdout carries the events (one JSON object per line).

    ``detached`` (the app): stdout is not read (the app tails events.jsonl instead) and the child gets its
    own session, so it trains on when the app closes and the app re-attaches from the run folder."""
    log = open(Path(run_dir) / "child.log", "ab") if stderr is None else stderr
    return subprocess.Popen(
        command(run_dir, launch),
        stdout=subprocess.DEVNULL if detached else subprocess.PIPE,
        stderr=log,
        text=True,
        encoding="utf-8",
        env=child_env(),
        bufsize=1,
        start_new_session=detached,
    )


def spawn(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a coati-tui command (e.g. the demo) detached from the app: its own session, output to a log.
    The app follows its run folders' events.jsonl, and SIGINT to the session cancels it cleanly."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"), env=child_env(), start_new_session=True
    )


def demo_command(resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "coati_tui", "demo"] + (["--resume"] if resume else [])


DEMO_STAGES = ("sft", "rm", "ppo")


def demo_runs(root: Path | None = None) -> list[Path]:
    root = root or paths.runs_dir()
    return [root / f"demo-{s}" for s in DEMO_STAGES]


def alive(run_dir: Path) -> int | None:
    """The pid of the run's trainer while it lives, else None."""
    import psutil

    try:
        pid = int((Path(run_dir) / "pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        return pid if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def list_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Every run folder under ``root``, newest first, with ``status`` (see ``status``)."""
    root = root or paths.runs_dir()
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "config.toml").is_file()]
    return [status(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def rm_base(spec: str) -> str:
    """The model a reward model for ``spec`` starts from: a PPO/RM run's own starting model, else ``spec``."""
    cfg = config_of(spec)
    if cfg is None:
        return spec
    return cfg.model if cfg.stage in ("ppo", "rm") else spec


def newest_output(stages: tuple[str, ...], root: Path | None = None) -> str | None:
    """The final/ folder of the newest completed run of one of ``stages``, or None."""
    for run in list_runs(root):
        if run["stage"] in stages and run["status"] == "completed" and run["final"]:
            return str(Path(run["run"]) / "final")
    return None


class Tail:
    """Reads the events appended to a run's events.jsonl since the last call (whole lines only)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "events.jsonl"
        self.offset = 0
        self.partial = ""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            f.seek(self.offset)
            chunk = f.read()
            self.offset = f.tell()
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        return [e for e in map(events.parse, lines) if e is not None]


def status(run_dir: Path) -> dict[str, Any]:
    """A run's state from its files: stage, status (running/completed/cancelled/failed/stopped/unknown),
    step and loss as they stand (``events.latest_steps``: a resumed run's redone steps count once), and
    ``resume_from``, the newest whole checkpoint's step (0: none, a resume starts over). The last trainer's
    events decide the status; "stopped" is one that died without a word (kill -9, power loss)."""
    evs = events.read(Path(run_dir) / "events.jsonl")
    starts = [i for i, e in enumerate(evs) if e["type"] == "start"]
    end = next((e for e in reversed(evs[starts[-1] if starts else 0 :]) if e["type"] in ("done", "error")), None)
    steps = events.latest_steps(evs)
    state = "unknown" if not evs else "running"
    if end is not None:
        state = end["status"] if end["type"] == "done" else "failed"
    elif evs and alive(run_dir) is None:
        state = "stopped"
    resume_from = resume_point(run_dir)
    note = ""
    if state == "stopped":
        where = f"checkpoint step-{resume_from}" if resume_from else "the start (no whole checkpoint)"
        note = f"the trainer stopped without a word at step {steps[-1]['step'] if steps else 0}: resumable from {where}"
    return {
        "run": str(run_dir),
        "stage": evs[starts[0]]["stage"] if starts else None,
        "status": state,
        "step": steps[-1]["step"] if steps else 0,
        "loss": steps[-1]["loss"] if steps else None,
        "final": (Path(run_dir) / "final").is_dir(),
        "resume_from": resume_from,
        "note": note,
    }


def resume_point(run_dir: Path) -> int:
    """The step of the checkpoint a resume starts from: the newest whole one (the trainer skips damaged
    ones the same way), 0 for none."""
    good = last_good_checkpoint(run_dir)
    return int(good.name[5:]) if good else 0


def last_good_checkpoint(run_dir: Path) -> Path | None:
    return next((c for c in reversed(paths.checkpoints(run_dir)) if not paths.checkpoint_damage(c)), None)


def config_of(spec: str | Path) -> RunConfig | None:
    """The RunConfig of the run ``spec`` names (a run folder or its final/), or None for anything else."""
    from coati_tui.core.run_config import RunConfig

    run = Path(spec).expanduser()
    run = run.parent if run.name == "final" else run
    if not (run / "config.toml").is_file():
        return None
    try:
        return RunConfig.read(run)
    except ValueError:
        return None


def blocked(preset: Preset) -> str | None:
    """Why this machine cannot run ``preset`` (with the fix), or None."""
    from coati_tui.core import hardware, planner

    why = planner.unavailable(preset, planner.Machine.from_profile(hardware.profile()))
    return f"preset {preset.name}: {why[0]}. Fix: {why[1]}" if why else None


def prepare(cfg: RunConfig, run_dir: Path | None = None) -> Path:
    """Check the data's format (raises DataError naming file, line, field), then write the run folder."""
    from coati_tui.data import formats

    formats.load_for(cfg.stage, cfg.data, cfg.max_datasets_size)
    if cfg.eval_data:
        formats.load_for(cfg.stage, cfg.eval_data)
    if getattr(cfg, "ptx_data", ""):
        formats.load_sft(cfg.ptx_data)
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg.stage, cfg.model)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = snapshot_stores(cfg, run_dir)
    cfg.write(run_dir)
    return run_dir


def snapshot_stores(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """A preference store (.sqlite) keeps growing while the user labels; the run trains on (and resumes
    with) the labels as they were at its start: ``prefs-<store>.jsonl`` in the run folder, which the
    config then names. Nothing changes for other data files."""
    import dataclasses

    from coati_tui.data import prefstore

    changes: dict[str, Any] = {}
    for field in ("data", "eval_data"):
        value = getattr(cfg, field)
        if value and prefstore.is_store_path(value) and Path(value).expanduser().is_file():
            out = Path(run_dir) / f"prefs-{Path(value).stem}{'-eval' if field == 'eval_data' else ''}.jsonl"
            if not out.exists():  # a resumed run keeps its first snapshot
                prefstore.export(value, "coati", out)
            changes[field] = str(out)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def retry_with(run_dir: Path, preset_name: str) -> tuple[Path, bool]:
    """A new run folder: ``run_dir``'s settings with another preset. When both presets train the same
    adapters on plain PyTorch (e.g. lora_naive -> qlora_naive), the last checkpoint comes along and the
    new run resumes from it. Returns (new folder, resumed)."""
    import dataclasses
    import shutil

    from coati_tui.core import presets
    from coati_tui.core.run_config import RunConfig

    cfg = RunConfig.read(run_dir)
    new = presets.load(preset_name)
    train = {f"train.{k}": v for k, v in dataclasses.asdict(cfg.preset.train).items()}
    ppo = {f"ppo.{k}": v for k, v in dataclasses.asdict(cfg.preset.ppo).items()}
    keep = {**train, **ppo, "lora.rank": cfg.preset.lora.rank} if not new.full_finetune else {**train, **ppo}
    if new.strategy != "naive":
        keep = {k: v for k, v in keep.items() if k != "lora.rank"}
    try:
        new = new.with_overrides(keep, f"{run_dir}/config.toml")
    except Exception:  # a setting the new preset refuses (e.g. accumulation under Gemini auto): its own defaults
        pass
    cfg = dataclasses.replace(cfg, preset=new)
    out = new_run_dir(cfg.stage, cfg.model)
    cfg.write(out)
    same_adapters = (
        new.strategy == "naive"
        and RunConfig.read(run_dir).preset.strategy == "naive"
        and not new.full_finetune
        and new.lora.rank == RunConfig.read(run_dir).preset.lora.rank
    )
    good = last_good_checkpoint(run_dir)
    if same_adapters and good:
        shutil.copytree(good, out / "checkpoints" / good.name)
        return out, True
    return out, False
