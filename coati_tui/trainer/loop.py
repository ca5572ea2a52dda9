"""The one training loop, for every recipe: epochs, sharding, cancel, checkpoints, resume, events.

``train(recipe)`` runs a ``trainer.recipe.Recipe`` inside its ``Run``: it asks the recipe to set up,
counts the steps, resumes from the last checkpoint, then for each optimizer step hands the recipe this
process's next ``accumulation`` micro-batches (a seeded, length-grouped order that resume repeats) and
emits the step event with throughput, ETA and memory. Cancel (SIGINT/SIGTERM) finishes the step and
writes a checkpoint; the end writes the final folder.
"""

from __future__ import annotations

import math
import random
import time

from coati_tui.core import flops as model_flops
from coati_tui.core.errors import ConfigError
from coati_tui.trainer import malloc, measure
from coati_tui.trainer.recipe import Recipe, Step
from coati_tui.trainer.run import Run


def train(recipe: Recipe) -> None:
    run, cfg = recipe.run, recipe.cfg
    recipe.setup()
    strategy, items = recipe.strategy, recipe.items
    micro_per_epoch = math.ceil(len(items) / recipe.batch_size) // strategy.world
    if micro_per_epoch == 0:
        raise ConfigError(
            f"{len(items)} training items make fewer batches of {recipe.batch_size} than the "
            f"{strategy.world} processes: add data, lower the batch size or use fewer processes"
        )
    total = math.ceil(micro_per_epoch / recipe.accumulation) * recipe.preset.train.max_epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    recipe.configure(total)
    state = run.load_checkpoint(recipe.load, recipe.state_cls)
    run.open_tensorboard()
    run.emit(
        "start",
        stage=cfg.stage,
        config=cfg.to_dict(),
        strategy=strategy.name,
        device=strategy.device,
        precision=strategy.precision,
        total_steps=total,
        resumed_from=state.step,
        run_dir=str(run.dir),
        allocator=malloc.describe(),
        **recipe.start_info(),
    )
    if recipe.eval_at_start and state.step == 0 and recipe.has_eval and cfg.eval_interval >= 0:
        _eval(run, recipe, 0)
    started, timed, peak = time.perf_counter(), 0, _Peak(strategy)
    while state.step < total and not run.stop_requested and not recipe.halt:
        order = batches(len(items), recipe.batch_size, cfg.seed + state.epoch, [recipe.length(x) for x in items])
        order = order[strategy.rank : micro_per_epoch * strategy.world : strategy.world]  # this process's share
        while state.micro_in_epoch < len(order) and state.step < total and not (run.stop_requested or recipe.halt):
            t0 = time.perf_counter()
            group = order[state.micro_in_epoch : state.micro_in_epoch + recipe.accumulation]
            step = recipe.train_step([[items[j] for j in idx] for idx in group], state)
            state.micro_in_epoch += len(group)
            state.step += 1
            dt = time.perf_counter() - t0
            timed += 1
            avg = (time.perf_counter() - started) / timed
            run.emit(
                "step",
                step=state.step,
                total_steps=total,
                epoch=state.epoch,
                loss=step.loss,
                lr=step.lr,
                tokens=step.tokens,
                tokens_per_s=step.tokens / dt,
                samples_per_s=step.samples / dt,
                eta_s=avg * (total - state.step),
                **strategy.memory(),
                **peak.mfu(step, dt),
                **step.metrics,
            )
            run.scalars(recipe.scalar_prefix, state.step, {"loss": step.loss, **step.metrics})
            recipe.after_step(state)
            if recipe.halt:  # an alarm under stop_on_alarm: this step is not kept
                break
            if cfg.save_interval and state.step % cfg.save_interval == 0 and state.step < total:
                run.save_checkpoint(state, strategy, recipe.save)
            if recipe.has_eval and cfg.eval_interval > 0 and state.step % cfg.eval_interval == 0 and state.step < total:
                _eval(run, recipe, state.step)
        if state.micro_in_epoch >= len(order):
            state.epoch, state.micro_in_epoch = state.epoch + 1, 0
            if recipe.eval_each_epoch and recipe.has_eval and not cfg.eval_interval and state.step < total:
                _eval(run, recipe, state.step)
    if run.stop_requested and state.step < total:
        run.save_checkpoint(state, strategy, recipe.save)
        run.emit(
            "done",
            status="cancelled",
            step=state.step,
            total_steps=total,
            resume=f"coati-tui train {cfg.stage} --resume {run.dir}",
        )
        return
    if recipe.halt:
        return _halted(run, recipe, state.step, total)
    if recipe.has_eval:
        _eval(run, recipe, state.step)
    final = run.dir / "final"
    recipe.save_final(final)
    strategy.barrier()
    run.emit("done", status="completed", step=state.step, total_steps=total, final=str(final))


def _halted(run: Run, recipe: Recipe, step: int, total: int) -> None:
    """The recipe stopped the run (an alarm under stop_on_alarm): no checkpoint of this step; the final
    folder is the newest checkpoint's model, the last before the alarm, when there is one."""
    final, kept_step = None, 0
    if run.checkpoints():
        kept_step = run.load_checkpoint(recipe.load, recipe.state_cls).step
        final = run.dir / "final"
        recipe.save_final(final)
        recipe.strategy.barrier()
        run.info(f"stopped: {recipe.halt}; final/ holds step {kept_step}, the last checkpoint before it")
    else:
        run.warn(f"stopped: {recipe.halt}; no checkpoint was written before it, so no final model")
    run.emit(
        "done",
        status="stopped",
        step=step,
        total_steps=total,
        reason=recipe.halt,
        kept_step=kept_step,
        resume=f"coati-tui train {recipe.cfg.stage} --resume {run.dir}",
        **({"final": str(final)} if final else {}),
    )


class _Peak:
    """The device's peak FLOP/s, looked up (or on a CPU measured) at the first step that counts FLOPs."""

    def __init__(self, strategy) -> None:
        self.strategy, self.flops, self.known = strategy, None, False

    def mfu(self, step: Step, seconds: float) -> dict[str, float]:
        if step.flops <= 0:
            return {}
        if not self.known:
            self.flops, self.known = measure.peak_flops(self.strategy.device, self.strategy.precision), True
        value = model_flops.mfu(step.flops, seconds, self.flops)
        return {} if value is None else {"mfu": value, "flops_per_s": step.flops / seconds}


def _eval(run: Run, recipe: Recipe, step: int) -> None:
    metrics = recipe.evaluate()
    if metrics:
        run.emit("eval", step=step, metrics=metrics)
        run.scalars("eval", step, metrics)


def batches(n: int, batch_size: int, seed: int, lengths: list[int]) -> list[list[int]]:
    """This epoch's micro-batches: a seeded shuffle, then lengths grouped within windows of 32 batches
    so a batch pads little; the same seed gives the same order (resume depends on it)."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    window = batch_size * 32
    out = []
    for start in range(0, n, window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
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
