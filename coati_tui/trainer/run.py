"""A run folder, live, in the trainer child: events, the log, SIGINT/SIGTERM, checkpoints, errors.

``with Run(run_dir) as run:`` sets up logging and signals; an exception leaving the block becomes one
``error`` event (its kind from ``core.errors.error_kind``) with the log's tail. Checkpoints are written to
a temporary folder and renamed (atomic); each process keeps its own random state.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from coati_tui.core import errors, events, paths, procenv, runlock
from coati_tui.core.errors import MissingDependency, error_kind
from coati_tui.core.run_config import RunConfig

log = logging.getLogger("coati_tui.train")


class Run:
    """A run folder, live: events, the log, SIGINT/SIGTERM, checkpoints, and error reporting."""

    def __init__(self, run_dir: str | Path, echo=sys.stdout):
        self.dir = Path(run_dir).absolute()
        self.cfg = RunConfig.read(self.dir)
        self.main = procenv.rank() == 0
        self.emit = events.Emitter(self.dir / "events.jsonl", echo=echo, enabled=self.main)
        self.stop_requested = False
        self.tb = None

    # ---- context: logging, signals, errors ------------------------------------------------------
    def __enter__(self) -> Run:
        self.lock = self._lock() if self.main else None  # one writer per run folder, before writing a byte
        from coati_tui.trainer import models

        models.TRUST_REMOTE_CODE = self.cfg.trust_remote_code
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over a file-size limit a write fails (EFBIG), not us
        handlers = [logging.StreamHandler(sys.stderr)]
        if self.main:
            handlers.append(logging.FileHandler(self.dir / "train.log", encoding="utf-8"))
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        if self.main:  # so a watcher that attaches later can find (and cancel) this process
            (self.dir / "pid").write_text(str(os.getpid()))
            self._mend_events()
        return self

    def _mend_events(self) -> None:
        """A trainer killed mid-write leaves a torn last line in events.jsonl: end it, so that the next
        event starts a line of its own (readers skip the torn one), and name it in a log event."""
        torn = events.torn_tail(self.dir / "events.jsonl")
        if torn and self.emit.file is not None:
            self.emit.file.write("\n")
        if torn and events.parse(torn[1]) is None:
            self.warn(
                f"events.jsonl line {torn[0]} was cut short when the last trainer stopped ({torn[1][:60]!r}): "
                f"readers skip it"
            )

    def _lock(self) -> runlock.RunLock:
        try:
            return runlock.acquire(self.dir)
        except runlock.RunLocked as exc:  # the holder's events.jsonl is not ours to write: stdout only
            if self.emit.file:
                self.emit.file.close()
            self.emit.file = None
            self.emit("error", kind="config", message=str(exc), log_tail=[])
            raise SystemExit(1) from exc

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self.stop_requested = True
        log.info("signal %s: finishing this step, then a checkpoint", signal.Signals(signum).name)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and not isinstance(exc, SystemExit):
            own = isinstance(exc, errors.CoatiError)  # its message is fit to show as it is: no traceback
            log.error(f"{type(exc).__name__}: {exc}" if own else "".join(traceback.format_exception(exc_type, exc, tb)))
            for h in logging.getLogger().handlers:
                h.flush()
            kind, message = error_kind(exc), f"{type(exc).__name__}: {exc}"
            if self.main:
                message = self._partial_writes(exc, kind) or message
            self.emit("error", kind=kind, message=message, log_tail=self.log_tail())
            self.emit.close()
            raise SystemExit(1)
        self.emit.close()
        if self.lock:
            self.lock.release()
        if self.tb:
            self.tb.close()
        return False

    def _partial_writes(self, exc: BaseException, kind: str) -> str:
        """Remove what a failed write left (``checkpoints/.tmp-step-N``, ``final.tmp``: the finished ones
        stand); on a full disk, the message that names it."""
        partial = paths.partial_writes(self.dir)
        for folder in partial:
            shutil.rmtree(folder, ignore_errors=True)
        if kind != "disk_full":
            return ""
        last = self.checkpoints()
        target = partial[0].with_name(partial[0].name.removeprefix(".tmp-").removesuffix(".tmp")) if partial else None
        stands = f"; the partial write is removed, {last[-1]} stands" if last else ""
        like = last[-1] if last and target and target.parent.name == "checkpoints" else None
        message = errors.disk_full_message(exc, target, like)
        return f"{message}{stands}. Free space there, then resume"

    def log_tail(self, n: int = 20) -> list[str]:
        path = self.dir / "train.log"
        if not path.exists():
            return []
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]

    def info(self, message: str, **extra) -> None:
        log.info(message)
        self.emit("log", level="info", message=message, **extra)

    def open_tensorboard(self) -> None:
        if not (self.cfg.tensorboard and self.main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise MissingDependency("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
        self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def scalars(self, prefix: str, step: int, values: dict) -> None:
        if self.tb:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    # ---- checkpoints -------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        return paths.checkpoints(self.dir)

    def save_checkpoint(self, state, strategy, write: Callable[[Path], None]) -> Path:
        """``write(folder)`` stores the model and optimizer parts (every process calls it: sharded
        strategies save collectively); the run adds the RNG states and ``state`` (a dataclass)."""
        import torch

        final = self.dir / "checkpoints" / f"step-{state.step}"
        tmp = self.dir / "checkpoints" / f".tmp-step-{state.step}"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        strategy.barrier()
        write(tmp)
        rank = procenv.rank()  # each process's own random state: its own samples resume
        torch.save(
            {"torch": torch.get_rng_state(), "python": random.getstate()},
            tmp / ("rng.pt" if rank == 0 else f"rng-{rank}.pt"),
        )
        strategy.barrier()
        if self.main:
            (tmp / "state.json").write_text(json.dumps(state.__dict__))
            (tmp / "launch.json").write_text(json.dumps({"processes": procenv.world()}))
            paths.write_manifest(tmp)  # last: a checkpoint whose manifest is whole was written whole
            _remove(final)
            os.replace(tmp, final)  # atomic: a crash leaves the previous checkpoint whole
            for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
                _remove(old)
            self.emit("checkpoint", step=state.step, path=str(final))
        strategy.barrier()
        return final

    def load_checkpoint(self, read: Callable[[Path], None], state_cls: type):
        """The newest whole checkpoint's state (``read(folder)`` restores the model parts), or a fresh state
        when there is none. A damaged one (``paths.checkpoint_damage``: a file missing or cut short, or one
        its loader cannot read) is skipped with a warning naming it and the file; once an older one loads,
        those its manifest proved damaged move aside to ``step-N.damaged``. None whole: a ConfigError
        saying what each one lacks."""
        if self.main:
            self._remove_partial_writes()
        damaged: list[tuple[Path, str]] = []
        for ckpt in reversed(self.checkpoints()):
            damage = paths.checkpoint_damage(ckpt)
            if not damage:
                try:
                    state = self._restore(ckpt, read, state_cls)
                except Exception as exc:
                    if error_kind(exc) != "crash" or isinstance(exc, errors.CoatiError):
                        raise  # out of memory, a missing package: not the checkpoint's fault
                    damage = f"{ckpt}: cannot be read ({type(exc).__name__}: {exc})"
                else:
                    self._set_aside(damaged, ckpt)
                    return state
            damaged.append((ckpt, damage))
            self.warn(f"checkpoint {ckpt.name} is damaged, trying the one before it: {damage}")
        if damaged:
            raise errors.ConfigError(
                f"no whole checkpoint to resume from in {self.dir / 'checkpoints'}: "
                + "; ".join(why for _, why in damaged)
                + ". Restore the files named, or start the run again in a new folder (without --resume)"
            )
        return state_cls()

    def _restore(self, ckpt: Path, read: Callable[[Path], None], state_cls: type):
        import torch

        read(ckpt)
        own = ckpt / f"rng-{procenv.rank()}.pt"
        rng = torch.load(own if own.is_file() else ckpt / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        state = state_cls(**json.loads((ckpt / "state.json").read_text()))
        self.info(f"resumed from {ckpt} (step {state.step})", step=state.step)
        launch = ckpt / "launch.json"
        before = json.loads(launch.read_text())["processes"] if launch.is_file() else procenv.world()
        if before != procenv.world():
            self.warn(
                f"{ckpt} was written by {before} process(es), this run has {procenv.world()}: each process's "
                f"share of the data from here on differs from the uninterrupted run's (resume with "
                f"--nproc-per-node / --nnodes as before to repeat it)"
            )
        return state

    def _set_aside(self, damaged: list[tuple[Path, str]], loaded: Path) -> None:
        """Checkpoints newer than the one that loaded, damaged by their manifest: out of the listing (the
        run writes their steps again; pruning must never keep them in place of a whole one)."""
        if not self.main:
            return
        for ckpt, why in damaged:
            if ckpt.is_dir() and "cannot be read" not in why:
                aside = ckpt.with_name(ckpt.name + ".damaged")
                _remove(aside)
                os.replace(ckpt, aside)
                self.warn(f"resumed from {loaded.name}; the damaged {ckpt.name} is moved to {aside}")

    def _remove_partial_writes(self) -> None:
        for folder in paths.partial_writes(self.dir):
            _remove(folder)
            self.info(f"removed {folder}: a write the last trainer did not finish")

    def warn(self, message: str) -> None:
        log.warning(message)
        self.emit("log", level="warning", message=message)


def _remove(folder: Path) -> None:
    """Out of the listing at once (a rename), then deleted: a kill midway leaves a ``.tmp-`` folder, not a
    checkpoint with half its files."""
    if not folder.exists():
        return
    gone = folder.with_name(f".tmp-gone-{folder.name}") if folder.parent.name == "checkpoints" else folder
    if gone != folder:
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)
