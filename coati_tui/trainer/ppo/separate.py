"""ColossalChat's four-model layout: actor, reference, critic and reward model, each its own weights.

What each model is asked for: a trained model runs these through its own forward (``route``), so the
strategy's wrapper sees every use: DDP and the DDP plugin sync on it, Gemini fetches its weight chunks
around it, ZeRO casts the inputs.
"""

from __future__ import annotations

from pathlib import Path

from coati_tui.core.errors import ConfigError
from coati_tui.trainer.ppo.layout import ADAPTERS, answer_hidden, positions, prefilled


def _inner_decoder(model):
    """The transformers model under any peft wrapper, and its decoder."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner, getattr(inner, inner.base_model_prefix)


def _decoder_hidden(model, ids, mask):
    inner, decoder = _inner_decoder(model)
    return inner, decoder(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state


def _task_logits(model, ids, mask, start: int, width: int, temperature: float, group: int = 1):
    inner, decoder = _inner_decoder(model)
    h = answer_hidden(decoder, ids, mask, start, width, group)
    return inner.get_output_embeddings()(h).float() / temperature


def _task_train(model, ids, mask, start: int, width: int, temperature: float, ptx=None):
    """The policy's logits and, in the same forward, the PTX loss: one forward per backward, as DDP needs."""
    from coati_tui.trainer.sft import label_only_loss

    logits = _task_logits(model, ids, mask, start, width, temperature)
    return logits, (label_only_loss(model, ptx) if ptx is not None else None)


def _task_values(model, ids, mask, start: int, width: int):
    inner, h = _decoder_hidden(model, ids, mask)
    return inner.score(h[:, start - 1 : start - 1 + width]).float().squeeze(-1)


def _task_scores(model, ids, mask, last):
    import torch

    inner, h = _decoder_hidden(model, ids, mask)
    return inner.score(h[torch.arange(ids.shape[0], device=ids.device), last]).float().squeeze(-1)


def _task_generate(model, ids, mask, gen_config, group: int = 1):
    cache = prefilled(_inner_decoder(model)[1], ids, mask, group)
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config, **cache)


TASKS = {
    "logits": _task_logits,
    "train": _task_train,
    "values": _task_values,
    "scores": _task_scores,
    "generate": _task_generate,
}


def route(model):
    """``model(task=NAME, **kw)`` runs ``TASKS[NAME](model, **kw)`` inside the model's forward; a call
    without ``task`` (transformers' generate calling the model) is the model's own forward. The instance's
    ``forward`` is replaced, not wrapped in another module: the state dict keeps the model's own names."""
    import functools

    original = model.forward

    @functools.wraps(original)  # generate reads the forward's signature
    def forward(*args, task: str | None = None, **kw):
        return original(*args, **kw) if task is None else TASKS[task](model, **kw)

    model.forward = forward
    return model


class Parked:
    """A frozen model that waits in CPU RAM and visits ``device`` only for the call at hand (``park``),
    or simply lives on ``device``."""

    def __init__(self, model, device: str, park: bool):
        self.model, self.device, self.park = model.eval(), device, park

    def run(self, task: str, **kw):
        if self.park:
            self.model.to(self.device)
        try:
            return TASKS[task](self.model, **kw)
        finally:
            if self.park:
                self.model.to("cpu")


class Separate:
    """ColossalChat's layout: actor, reference, critic and reward model, each its own weights: full
    fine-tuning (lora.rank 0), ``ppo.memory_lean = false``, and the Gemini / ZeRO-2 presets. The reference
    is a frozen copy of the actor's start; the critic starts as the reward model (its score head gives a
    value per token). The actor and critic are boosted by the strategy with their own optimizers; the
    reference and reward model stay unwrapped, and under Gemini / ZeRO-2 wait in CPU RAM, each visiting
    the GPU alone to score a finished rollout (as the planner counts them)."""

    def __init__(self, preset, cfg, device: str, tokenizer, info=print):
        from coati_tui.trainer.models import load_model

        pad_id = tokenizer.pad_token_id
        self.device, self.temperature = device, preset.ppo.temperature
        actor = load_model(cfg.model, preset, "sft", device, pad_id).model
        critic = load_model(cfg.reward, preset, "rm", device, pad_id).model
        ref = load_model(cfg.model, preset, "sft", device, pad_id, adapters=False).model
        rm = load_model(cfg.reward, preset, "rm", device, pad_id, adapters=False).model
        for name, model in (("reward model", rm), ("critic", critic)):
            if getattr(model.config, "vocab_size", None) != actor.config.vocab_size:
                raise ConfigError(
                    f"the {name} ({cfg.reward}) has another vocabulary than the actor: train it "
                    "from the same base (or from the SFT run)"
                )
        self.n_params = sum(p.numel() for m in (actor, critic, ref, rm) for p in m.parameters())
        park = preset.strategy != "naive"
        self.actor, self.critic = route(actor), route(critic)
        self.ref, self.rm = Parked(ref, device, park), Parked(rm, device, park)
        self.separate_rm = self.rm
        info(
            "layout: four models (actor, reference, critic from the reward model, reward model)"
            + ("; reference and reward model wait in CPU RAM between rollouts" if park else "")
        )

    def setup(self, strategy, preset, pp) -> None:
        self.strategy, wd = strategy, preset.train.weight_decay
        self.own = {w: [p for p in getattr(self, w).parameters() if p.requires_grad] for w in ADAPTERS}
        self.trainable_count = sum(p.numel() for w in ADAPTERS for p in self.own[w])
        a_opt = strategy.optimizer(self.own["actor"], lr=preset.train.lr, weight_decay=wd)
        c_opt = strategy.optimizer(self.own["critic"], lr=pp.critic_lr, weight_decay=wd)
        self.actor, a_opt, _ = strategy.boost(self.actor, a_opt, None)
        self.critic, c_opt, _ = strategy.boost(self.critic, c_opt, None)
        self.opts = {"actor": a_opt, "critic": c_opt}

    def logits(self, which: str | None, ids, mask, start: int, width: int, group: int = 1):
        kw = dict(ids=ids, mask=mask, start=start, width=width, temperature=self.temperature, group=group)
        return self.actor(task="logits", **kw) if which == "actor" else self.ref.run("logits", **kw)

    def actor_forward(self, ids, mask, start: int, width: int, ptx):
        return self.actor(
            task="train", ids=ids, mask=mask, start=start, width=width, temperature=self.temperature, ptx=ptx
        )

    def values(self, ids, mask, start: int, width: int):
        return self.critic(task="values", ids=ids, mask=mask, start=start, width=width)

    def scores(self, ids, mask, last):
        return self.rm.run("scores", ids=ids, mask=mask, last=last)

    def generate(self, ids, mask, gen_config, reference: bool = False, group: int = 1):
        if reference:
            return self.ref.run("generate", ids=ids, mask=mask, gen_config=gen_config, group=group)
        return self.actor(task="generate", ids=ids, mask=mask, gen_config=gen_config, group=group)

    def train(self, on: bool) -> None:
        self.actor.train(on)
        self.critic.train(on)

    def update(self, which: str, loss) -> None:
        model, opt = getattr(self, which), self.opts[which]
        self.strategy.backward(loss, opt)
        self.strategy.step(model, opt)
        opt.zero_grad(set_to_none=True)

    def discard(self, which: str, loss) -> None:
        """A skipped update. A wrapped model still takes a (zero) backward: every wrapper expects one
        after a forward with gradients, and every process skips together (the decision is global)."""
        if not self.strategy.fast_path:
            self.strategy.backward(loss * 0.0, self.opts[which])
        self.opts[which].zero_grad(set_to_none=True)

    def save(self, folder: Path, main: bool) -> None:
        for which in ADAPTERS:  # every process: sharded strategies save collectively
            (folder / which).mkdir(parents=True, exist_ok=True)
            self.strategy.save(getattr(self, which), self.opts[which], folder / which)

    def load(self, folder: Path) -> None:
        for which in ADAPTERS:
            self.strategy.load(getattr(self, which), self.opts[which], folder / which)

    def save_final(self, tokenizer, final: Path, end_id: int, cfg, main: bool) -> None:
        from coati_tui.trainer.final import write_final

        def write(model, folder: Path, weights: Path | None) -> None:
            write_final(model, tokenizer, folder, end_id, stage="ppo", base=cfg.model, weights=weights)

        self.strategy.save_final(self.actor, final, write)


class SeparateReward:
    """A reward model that is not on the actor's base: its own weights, on the GPU only while scoring
    (when it is not quantized), in CPU RAM otherwise."""

    def __init__(self, reward_dir: str, preset, device: str, tokenizer):
        from transformers import AutoTokenizer

        from coati_tui.trainer.models import load_model

        theirs = AutoTokenizer.from_pretrained(reward_dir)
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                f"{reward_dir}: the reward model's tokenizer differs from the actor's; "
                "train the reward model from the same base (or from the SFT run)"
            )
        rm_preset = preset
        if (Path(reward_dir) / "adapter_config.json").is_file() and preset.quant.bits:
            rm_preset = preset.with_overrides({"quant.bits": 0})
        self.offload = device == "cuda" and not rm_preset.quant.bits
        prepared = load_model(
            reward_dir,
            rm_preset,
            "rm",
            "cpu" if self.offload else device,
            pad_token_id=tokenizer.pad_token_id,
            adapters=False,
        )
        self.model = Parked(prepared.model, device, self.offload)

    def scores(self, ids, mask, last):
        return self.model.run("scores", ids=ids, mask=mask, last=last)
