"""The Recipe contract: what a training method gives the one loop (``trainer.loop.train``).

A recipe is a class, one per method (sft.py, rm.py, ppo/recipe.py, ...), read top to bottom. The loop
calls, in this order:

1. ``setup()`` once: data first (a bad record stops the run before a model is loaded), then the model
   and the strategy. It sets ``items`` (the training set: examples, pairs or prompts) and ``strategy``.
2. ``configure(total_steps)``: optimizers and schedules (they need the step count).
3. ``load(folder)`` when resuming from a checkpoint, ``save(folder)`` at each checkpoint (every process
   calls both: sharded strategies save collectively).
4. ``train_step(group, state) -> Step`` once per optimizer step: ``group`` is ``accumulation`` micro-
   batches of ``batch_size`` items, this process's share, in the seeded order resume repeats;
   ``after_step(state)`` after its step event (samples and the like).
5. ``evaluate() -> metrics`` at the eval points the run config sets (and at the start when
   ``eval_at_start``), ``save_final(folder)`` at the end.

The loop owns everything else: the epoch order and its sharding across processes, cancel, checkpoint
intervals, resume, the start / step / eval / done events, tensorboard.

``SupervisedRecipe`` is the shape of the stages that learn from batches by gradient accumulation (SFT,
the reward model, the preference methods): they give ``prepare_data``, ``collate``, ``loss_step``,
``eval_metrics`` and ``write_final``; it owns the optimizer, the cosine schedule and accumulation.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from coati_tui.trainer.run import Run


@dataclass
class LoopState:
    """Where a run is; saved in every checkpoint's state.json. A recipe may extend it."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of this epoch already consumed


@dataclass
class Step:
    """What one optimizer step reports to the loop's step event."""

    loss: float
    lr: float
    tokens: int  # tokens processed (throughput)
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    flops: float = 0.0  # model FLOPs of the step (core/flops.py), 0 where not counted: no MFU then


class Recipe(ABC):
    state_cls: ClassVar[type] = LoopState
    scalar_prefix: ClassVar[str] = "train"  # tensorboard group of the step metrics
    eval_at_start: ClassVar[bool] = False  # an eval before the first step (PPO: the reference's score)
    eval_each_epoch: ClassVar[bool] = True  # with eval_interval 0: an eval at each epoch's end

    def __init__(self, run: Run) -> None:
        self.run, self.cfg, self.preset = run, run.cfg, run.cfg.preset
        self.items: list[Any] = []
        self.strategy: Any = None
        self.halt = ""  # set by the recipe (an alarm under stop_on_alarm): the loop stops, saying why

    def raise_alarms(self, step: int, alarms: list[dict[str, Any]], stop: bool) -> None:
        """Emit each alarm as its own event; with ``stop`` (stop_on_alarm) the first one halts the loop."""
        for alarm in alarms:
            self.run.emit("alarm", step=step, **alarm)
            if stop and not self.halt:
                self.halt = f"alarm {alarm['kind']} at step {step}: {alarm['message']}"

    @property
    def batch_size(self) -> int:
        """Items per micro-batch."""
        return int(self.preset.train.batch_size)

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step."""
        return int(self.preset.train.accumulation_steps)

    def length(self, item: Any) -> int:
        """An item's length in tokens: batches group similar lengths."""
        return len(item)

    @property
    def has_eval(self) -> bool:
        return True

    @abstractmethod
    def setup(self) -> None: ...

    @abstractmethod
    def configure(self, total_steps: int) -> None: ...

    @abstractmethod
    def train_step(self, group: list[list[Any]], state: Any) -> Step: ...

    def after_step(self, state: Any) -> None:
        return None

    def evaluate(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @abstractmethod
    def load(self, folder: Path) -> None: ...

    @abstractmethod
    def save_final(self, folder: Path) -> None: ...

    def start_info(self) -> dict[str, Any]:
        """Fields of the start event beyond what the loop knows (params, data statistics, ...)."""
        return {}


class SupervisedRecipe(Recipe):
    """Batches -> loss -> accumulated backward -> optimizer step, on one (possibly wrapped) model."""

    model: Any = None
    held: list[Any]
    head: ClassVar[str] = "lm"  # the output matmul MFU counts: "lm" (vocabulary) or "score" (one number)
    arch: Any = None  # core.modelinfo.Arch of the trained model, None where its config does not read

    # ---- what each supervised method gives ---------------------------------------------------------
    @abstractmethod
    def prepare_data(self) -> tuple[list[Any], list[Any]]:
        """(training items, held-out items); logs what it did."""

    @abstractmethod
    def load_model(self) -> None:
        """Sets ``self.model`` and ``self.strategy``."""

    @abstractmethod
    def collate(self, items: list[Any]) -> dict[str, Any]: ...

    @abstractmethod
    def loss_step(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(loss tensor, metrics) of one micro-batch."""

    @abstractmethod
    def counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        """(tokens, samples) in a micro-batch."""

    @abstractmethod
    def eval_metrics(self) -> dict[str, Any]:
        """Metrics on ``self.held`` (called in eval mode, without gradients)."""

    @abstractmethod
    def write_final(self, model: Any, folder: Path, weights: Path | None) -> None:
        """The final folder (``weights``: shards a sharded strategy already wrote, else None)."""

    # ---- the contract ----------------------------------------------------------------------------
    def setup(self) -> None:
        import torch

        from coati_tui.trainer import strategy as strat

        strat.check_requirements(self.preset)
        torch.manual_seed(self.cfg.seed)
        self.items, self.held = self.prepare_data()
        self.load_model()
        self.arch = _arch(self.cfg.model)

    @property
    def has_eval(self) -> bool:
        return bool(self.held)

    def configure(self, total_steps: int) -> None:
        import torch

        train = self.preset.train
        trainable = [q for q in self.model.parameters() if q.requires_grad]
        self.n_params = sum(q.numel() for q in self.model.parameters())
        self.n_trainable = sum(q.numel() for q in trainable)
        optimizer = self.strategy.optimizer(trainable, lr=train.lr, weight_decay=train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine(int(total_steps * train.warmup_ratio), total_steps)
        )
        self.model, self.optimizer, self.scheduler = self.strategy.boost(self.model, optimizer, scheduler)
        self.model.train()

    def train_step(self, group: list[list[Any]], state: Any) -> Step:
        loss_total, tokens, samples, flops, metrics = 0.0, 0, 0, 0.0, {}
        for i, items in enumerate(group):
            batch = self.collate(items)
            with self.strategy.no_sync(self.model, last=i == len(group) - 1):
                loss, m = self.loss_step(batch)
                self.strategy.backward(loss / len(group), self.optimizer)
            loss_total += float(loss.detach()) / len(group)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / len(group)
            t, s = self.counts(batch)
            tokens, samples, flops = tokens + t, samples + s, flops + self.flops(t, s)
        self.strategy.step(self.model, self.optimizer)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return Step(loss_total, float(self.scheduler.get_last_lr()[0]), tokens, samples, metrics, flops)

    def flops(self, tokens: int, samples: int) -> float:
        """Model FLOPs of a micro-batch's forward and backward (``tokens`` over ``samples`` sequences)."""
        if self.arch is None or samples <= 0:
            return 0.0
        from coati_tui.core.flops import train_flops_per_token

        lora = self.preset.lora
        per_token = train_flops_per_token(self.arch, tokens / samples, self.head, lora.rank, lora.targets)
        return tokens * per_token

    def evaluate(self) -> dict[str, Any]:
        import torch

        self.model.eval()
        with torch.no_grad():
            metrics = self.eval_metrics()
        self.model.train()
        return metrics

    def save(self, folder: Path) -> None:
        import torch

        self.strategy.save(self.model, self.optimizer, folder)
        if self.run.main:
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")

    def load(self, folder: Path) -> None:
        import torch

        self.strategy.load(self.model, self.optimizer, folder)
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))

    def save_final(self, folder: Path) -> None:
        self.strategy.save_final(self.model, folder, self.write_final)

    def start_info(self) -> dict[str, Any]:
        return {"params": self.n_params, "trainable_params": self.n_trainable, "held_out": len(self.held)}


def _arch(model: str) -> Any:
    from coati_tui.core import modelinfo

    try:
        return modelinfo.Arch.from_config(modelinfo.read_config(model))
    except (OSError, ValueError, KeyError, TypeError, modelinfo.ModelError):
        return None


def cosine(warmup: int, total: int) -> Any:
    """Linear warm-up, then a cosine decay to 10% of the peak learning rate."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f
