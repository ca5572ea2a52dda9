"""What every stage's recipe shares: the run folder, events, signals, batches, checkpoints, errors.

Runs in the trainer child (imports torch). A recipe (sft.py, rm.py) reads top to bottom:
``with Run(run_dir) as run:`` prepare data, load the model, then ``run.loop(...)`` with its own
``loss_fn``; the loop owns accumulation, the optimizer, the schedule, events, checkpoints and resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from coati_tui.core import events, procenv
from coati_tui.core.errors import ConfigError, MissingDependency, error_kind
from coati_tui.core.run_config import RunConfig

log = logging.getLogger("coati_tui.train")


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of this epoch already consumed


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
    def __enter__(self) -> "Run":
        handlers = [logging.StreamHandler(sys.stderr)]
        if self.main:
            handlers.append(logging.FileHandler(self.dir / "train.log", encoding="utf-8"))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers,
                            force=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        if self.main:  # so a watcher that attaches later can find (and cancel) this process
            (self.dir / "pid").write_text(str(os.getpid()))
        return self

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self.stop_requested = True
        log.info("signal %s: finishing this step, then a checkpoint", signal.Signals(signum).name)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and not isinstance(exc, SystemExit):
            log.error("".join(traceback.format_exception(exc_type, exc, tb)))
            for h in logging.getLogger().handlers:
                h.flush()
            self.emit("error", kind=error_kind(exc), message=f"{type(exc).__name__}: {exc}",
                      log_tail=self.log_tail())
            self.emit.close()
            raise SystemExit(1)
        self.emit.close()
        if self.tb:
            self.tb.close()
        return False

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
        folder = self.dir / "checkpoints"
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if p.name.startswith("step-") and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

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
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()},
                   tmp / ("rng.pt" if rank == 0 else f"rng-{rank}.pt"))
        strategy.barrier()
        if self.main:
            (tmp / "state.json").write_text(json.dumps(state.__dict__))
            (tmp / "launch.json").write_text(json.dumps({"processes": procenv.world()}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # atomic: a crash leaves the previous checkpoint whole
            for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            self.emit("checkpoint", step=state.step, path=str(final))
        strategy.barrier()
        return final

    def load_checkpoint(self, read: Callable[[Path], None], state_cls=LoopState):
        """The last checkpoint's state (``read(folder)`` restores the model parts), or a fresh state."""
        import torch

        found = self.checkpoints()
        if not found:
            return state_cls()
        ckpt = found[-1]
        read(ckpt)
        own = ckpt / f"rng-{procenv.rank()}.pt"
        rng = torch.load(own if own.is_file() else ckpt / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        state = state_cls(**json.loads((ckpt / "state.json").read_text()))
        self.info(f"resumed from {ckpt} (step {state.step})", step=state.step)
        launch = ckpt / "launch.json"
        before = json.loads(launch.read_text())["processes"] if launch.is_file() else procenv.world()
        if before != procenv.world():
            message = (f"{ckpt} was written by {before} process(es), this run has {procenv.world()}: each process's "
                       f"share of the data from here on differs from the uninterrupted run's (resume with "
                       f"--nproc-per-node / --nnodes as before to repeat it)")
            log.warning(message)
            self.emit("log", level="warning", message=message)
        return state

    # ---- the loop ------------------------------------------------------------------------------
    def loop(self, *, model, strategy, train_set: list, collate: Callable, loss_fn: Callable,
             evaluate: Callable | None, length: Callable[[object], int], save_final: Callable,
             counts: Callable[[dict], tuple[int, int]], extra_start: dict) -> None:
        """Train: ``loss_fn(model, batch) -> (loss, metrics)``; ``counts(batch) -> (tokens, samples)``;
        ``save_final(model, folder, weights_dir)`` writes the final folder (weights_dir: weights a sharded
        strategy already wrote collectively, else None)."""
        import torch

        cfg, p = self.cfg, self.cfg.preset
        accum = p.train.accumulation_steps
        micro_per_epoch = math.ceil(len(train_set) / p.train.batch_size) // strategy.world
        steps_per_epoch = math.ceil(micro_per_epoch / accum)
        total = steps_per_epoch * p.train.max_epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        trainable = [q for q in model.parameters() if q.requires_grad]
        optimizer = strategy.optimizer(trainable, lr=p.train.lr, weight_decay=p.train.weight_decay)
        warmup = int(total * p.train.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(warmup, total))
        model, optimizer, scheduler = strategy.boost(model, optimizer, scheduler)

        def write(folder: Path) -> None:
            strategy.save(model, optimizer, folder)
            if self.main:
                torch.save(scheduler.state_dict(), folder / "scheduler.pt")

        def read(folder: Path) -> None:
            strategy.load(model, optimizer, folder)
            scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))

        state = self.load_checkpoint(read)
        self.open_tensorboard()
        n_params = sum(q.numel() for q in model.parameters())
        self.emit("start", stage=cfg.stage, config=cfg.to_dict(), params=n_params,
                  trainable_params=sum(q.numel() for q in trainable), strategy=strategy.name,
                  device=strategy.device, precision=strategy.precision, total_steps=total,
                  resumed_from=state.step, run_dir=str(self.dir), **extra_start)
        model.train()
        started, steps_timed = time.perf_counter(), 0
        while state.step < total and not self.stop_requested:
            order = batches(len(train_set), p.train.batch_size, cfg.seed + state.epoch,
                            [length(x) for x in train_set])
            order = order[strategy.rank: micro_per_epoch * strategy.world: strategy.world]  # this rank's share
            while state.micro_in_epoch < len(order) and state.step < total and not self.stop_requested:
                t0 = time.perf_counter()
                group = order[state.micro_in_epoch: state.micro_in_epoch + accum]
                loss_total, tokens, samples, metrics_sum = 0.0, 0, 0, {}
                for i, idx in enumerate(group):
                    batch = collate([train_set[j] for j in idx])
                    with strategy.no_sync(model, last=i == len(group) - 1):
                        loss, metrics = loss_fn(model, batch)
                        strategy.backward(loss / len(group), optimizer)
                    loss_total += float(loss.detach()) / len(group)
                    for k, v in metrics.items():
                        metrics_sum[k] = metrics_sum.get(k, 0.0) + float(v) / len(group)
                    t, s = counts(batch)
                    tokens, samples = tokens + t, samples + s
                strategy.step(model, optimizer)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.micro_in_epoch += len(group)
                state.step += 1
                dt = time.perf_counter() - t0
                steps_timed += 1
                avg = (time.perf_counter() - started) / steps_timed
                self.emit("step", step=state.step, total_steps=total, epoch=state.epoch, loss=loss_total,
                          lr=scheduler.get_last_lr()[0], tokens=tokens, tokens_per_s=tokens / dt, samples_per_s=samples / dt,
                          eta_s=avg * (total - state.step), **strategy.memory(), **metrics_sum)
                self.scalars("train", state.step, {"loss": loss_total, **metrics_sum})
                if cfg.save_interval and state.step % cfg.save_interval == 0 and state.step < total:
                    self.save_checkpoint(state, strategy, write)
                if evaluate and cfg.eval_interval and state.step % cfg.eval_interval == 0:
                    self._eval(evaluate, model, state.step)
            if state.micro_in_epoch >= len(order):
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
                if evaluate and not cfg.eval_interval and state.step < total:
                    self._eval(evaluate, model, state.step)
        if self.stop_requested and state.step < total:
            self.save_checkpoint(state, strategy, write)
            self.emit("done", status="cancelled", step=state.step, total_steps=total,
                      resume=f"coati-tui train {cfg.stage} --resume {self.dir}")
            return
        if evaluate:
            self._eval(evaluate, model, state.step)
        final = self.dir / "final"
        strategy.save_final(model, final, save_final)
        self.emit("done", status="completed", step=state.step, total_steps=total, final=str(final))

    def _eval(self, evaluate: Callable, model, step: int) -> None:
        import torch

        model.eval()
        with torch.no_grad():
            metrics = evaluate(model)
        model.train()
        if metrics:
            self.emit("eval", step=step, metrics=metrics)
            self.scalars("eval", step, metrics)


def _cosine(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # decays to 10%
    return f


def batches(n: int, batch_size: int, seed: int, lengths: list[int]) -> list[list[int]]:
    """This epoch's micro-batches: a seeded shuffle, then lengths grouped within windows of 32 batches
    so a batch pads little; the same seed gives the same order (resume depends on it)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * 32
    out = []
    for start in range(0, n, window):
        chunk = sorted(order[start: start + window], key=lambda i: -lengths[i])
        out.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def split(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a seeded split; at least one held-out item when fraction > 0 and n >= 10."""
    if fraction <= 0 or len(items) < 10:
        return items, []
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    k = max(1, round(len(items) * fraction))
    held = set(idx[:k])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def pad(seqs: list[list[int]], value: int) -> list[list[int]]:
    width = max(len(s) for s in seqs)
    return [s + [value] * (width - len(s)) for s in seqs]
