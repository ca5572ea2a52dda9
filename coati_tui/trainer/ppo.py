"""Stage 3: PPO with the PTX loss, memory-lean on one GPU.

One PPO step: answer ``ppo.rollout_batch`` prompts with the actor (batched ``generate`` with a KV cache,
left-padded prompts, stopping on the template's end token), score each answer with the reward model at
its last token, take per-token log-probabilities of actor and reference and the critic's values, turn
them into per-token rewards (score minus ``kl_coef`` times the k1 KL estimate) and GAE advantages, then
``ppo.ppo_epochs`` passes of mini-batches (``train.batch_size``): PPO-clip policy loss (+ ``ptx_coef`` x
the LM loss on a batch of SFT data, - ``entropy_coef`` x entropy) for the actor, clipped value loss for
the critic. A mini-batch whose largest ratio exceeds ``ppo.ratio_limit`` is skipped and counted.

Memory-lean layout (naive and QLoRA presets): ONE base model (the SFT output, 4-bit under QLoRA)
carries LoRA adapters ``actor`` and ``critic`` (+ a value head); the reference model is that base with
adapters disabled (the actor adapter starts at zero, so actor == SFT model at step 0); the reward model
is a third adapter ``reward`` + its score head when it was trained from the same model (an RM run over
this SFT output writes its adapter beside the merged weights), else a separate model that waits in CPU
RAM between rollouts on a GPU. The critic starts from the reward adapter and head when they are shared
(as ColossalChat initialises its critic from the reward model). Four models' worth of weights become one.

Full fine-tuning (lora.rank 0), ``ppo.memory_lean = false`` and the Gemini / ZeRO-2 presets take
ColossalChat's layout instead: four models (``Separate``). Actor and critic are boosted by the strategy
(plain PyTorch, torch DDP, or a colossalai Booster: its DDP plugin, Gemini, ZeRO-2 with CPU offload),
and every use of them (generation, log-probs, the training forward with the PTX batch, values) goes
through their own forward, so the wrapper sees it; under Gemini / ZeRO-2 the frozen reference and
reward model wait in CPU RAM and visit the GPU one at a time to score a finished rollout.

Under torchrun every process makes its own rollouts from its share of the prompts; gradients are
averaged across processes before each optimizer step (by hand in the memory-lean layout, by the
wrapper in the four-model one), and a skipped update is skipped by every process alike.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from coati_tui.trainer.loop import ConfigError, Run, batches, split

ADAPTERS = ("actor", "critic")


@dataclass
class PPOState:
    step: int = 0  # PPO steps (rollouts) done
    epoch: int = 0
    micro_in_epoch: int = 0  # rollout batches of this epoch already used
    ptx_pos: int = 0  # PTX batches drawn


def _positions(mask):
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def shared_reward_adapter(reward_dir: str | Path, actor_model: str | Path) -> Path | None:
    """The reward model's LoRA adapter when it was trained on ``actor_model`` itself (so it can ride on
    the actor's base), else None."""
    reward_dir = Path(reward_dir)
    adapter = reward_dir if (reward_dir / "adapter_config.json").is_file() else reward_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        return None
    info = reward_dir / "coati.json"
    base = json.loads(info.read_text()).get("base") if info.is_file() else None
    base = base or json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return adapter if base and _same_path(base, actor_model) else None


class Lean:
    """The memory-lean set of models (see the module docstring)."""

    def __init__(self, base, preset, reward_dir: str, actor_model: str, device: str, tokenizer, info=print):
        import torch
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        from coati_tui.trainer.strategy import linear_targets

        self.device, self.temperature = device, preset.ppo.temperature
        hidden = base.config.hidden_size
        targets = linear_targets(base, preset.lora.targets)
        actor_cfg = LoraConfig(r=preset.lora.rank, lora_alpha=preset.lora.alpha, lora_dropout=0.0,
                               target_modules=targets)
        self.model = get_peft_model(base, actor_cfg, adapter_name="actor")
        self.value_head = torch.nn.Linear(hidden, 1).to(device)
        self.reward_head, self.separate_rm = None, None
        adapter = shared_reward_adapter(reward_dir, actor_model)
        if adapter is not None:
            saved = json.loads((adapter / "adapter_config.json").read_text())
            rcfg = LoraConfig(r=saved["r"], lora_alpha=saved["lora_alpha"], lora_dropout=0.0,
                              target_modules=linear_targets(base, saved["target_modules"]))
            files = list(adapter.glob("adapter_model.safetensors"))
            state = load_file(str(files[0])) if files else torch.load(adapter / "adapter_model.bin")
            head = {k.rsplit(".", 1)[-1]: v for k, v in state.items() if ".score." in k or k.endswith("score.weight")}
            lora = {k: v for k, v in state.items() if "lora_" in k}
            if "weight" not in head:
                raise ConfigError(f"{adapter}: no score head in the reward adapter")
            self.reward_head = torch.nn.Linear(hidden, 1, bias="bias" in head).to(device)
            self.reward_head.load_state_dict({k: v.float() for k, v in head.items()})
            self.reward_head.requires_grad_(False)
            for name in ("reward", "critic"):  # the critic starts as the reward model
                self.model.add_adapter(name, rcfg)
                set_peft_model_state_dict(self.model, lora, adapter_name=name)
            self.value_head.load_state_dict(self.reward_head.state_dict() if "bias" in head else
                                            {"weight": head["weight"].float(), "bias": torch.zeros(1)})
            info(f"reward model: adapter {adapter} on the actor's base (shared weights); critic starts from it")
        else:
            self.model.add_adapter("critic", actor_cfg)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            self.separate_rm = SeparateReward(reward_dir, preset, device, tokenizer)
            info(f"reward model: {reward_dir} as a separate model"
                     + (" (kept in CPU RAM between rollouts)" if self.separate_rm.offload else ""))
        for n, p in self.model.named_parameters():  # adapters train in fp32 whatever the base dtype
            if "lora_" in n and p.dtype != torch.float32:
                p.data = p.data.float()
        self.model.set_adapter("actor")
        self.inner = self.model.get_base_model()

    # ---- parameters --------------------------------------------------------------------------------
    def params(self, which: str) -> list:
        own = [p for n, p in self.model.named_parameters() if f".{which}." in n and "lora_" in n]
        return own + (list(self.value_head.parameters()) if which == "critic" else [])

    def trainable_state(self) -> dict:
        state = {n: p.detach() for n, p in self.model.named_parameters()
                 if "lora_" in n and any(f".{a}." in n for a in ADAPTERS)}
        state.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        return state

    def load_trainable(self, state: dict) -> None:
        head = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("value_head.")}
        self.value_head.load_state_dict(head)
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise ConfigError(f"checkpoint lacks {sorted(missing)[:3]} (another preset?)")
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("value_head.")}, strict=False)

    # ---- forwards ----------------------------------------------------------------------------------
    def hidden(self, adapter: str | None, ids, mask):
        """Last hidden states with ``adapter`` active (None: the reference, adapters disabled)."""
        import contextlib

        decoder = self.inner.get_decoder()
        ctx = self.model.disable_adapter() if adapter is None else contextlib.nullcontext()
        if adapter is not None:
            self.model.set_adapter(adapter)
        with ctx:
            return decoder(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state

    def logits(self, adapter: str | None, ids, mask, start: int, width: int):
        """Next-token logits (temperature applied) predicting columns start..start+width-1."""
        h = self.hidden(adapter, ids, mask)[:, start - 1: start - 1 + width]
        return self.inner.get_output_embeddings()(h).float() / self.temperature

    def values(self, ids, mask, start: int, width: int):
        h = self.hidden("critic", ids, mask)[:, start - 1: start - 1 + width]
        return self.value_head(h.float()).squeeze(-1)

    def scores(self, ids, mask, last):
        """The reward model's score at column ``last`` of each row."""
        import torch

        rows = torch.arange(ids.shape[0], device=ids.device)
        if self.separate_rm is not None:
            return self.separate_rm.scores(ids, mask, last)
        h = self.hidden("reward", ids, mask)[rows, last]
        return self.reward_head(h.float()).squeeze(-1)

    def generate(self, ids, mask, gen_config):
        self.model.set_adapter("actor")
        return self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)

    def train(self, on: bool) -> None:
        self.model.train(on)
        self.value_head.train(on)

    def ptx_loss(self, batch):
        from coati_tui.trainer.sft import _label_only_loss

        self.model.set_adapter("actor")
        return _label_only_loss(self.model, batch)

    def save_final(self, tokenizer, final: Path, end_id: int, cfg, main: bool) -> None:
        if main:
            _save_actor(self, tokenizer, final, end_id, cfg)

    # ---- optimizers and steps (the interface ``_update`` and ``main`` use; Separate has the same) ----
    def setup(self, strategy, preset, pp) -> None:
        import torch

        self.strategy, wd = strategy, preset.train.weight_decay
        self.own = {w: self.params(w) for w in ADAPTERS}
        self.opts = {"actor": torch.optim.AdamW(self.own["actor"], lr=preset.train.lr, weight_decay=wd),
                     "critic": torch.optim.AdamW(self.own["critic"], lr=pp.critic_lr, weight_decay=wd)}
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.trainable_count = sum(p.numel() for w in ADAPTERS for p in self.own[w])

    def actor_forward(self, ids, mask, start: int, width: int, ptx):
        """(the actor's logits over the answer, the PTX loss on ``ptx`` or None)."""
        return self.logits("actor", ids, mask, start, width), (self.ptx_loss(ptx) if ptx is not None else None)

    def update(self, which: str, loss) -> None:
        import torch

        loss.backward()
        _sync(self.own[which], self.strategy)
        torch.nn.utils.clip_grad_norm_(self.own[which], 1.0)
        self.opts[which].step()
        self.opts[which].zero_grad(set_to_none=True)

    def discard(self, which: str, loss) -> None:
        self.opts[which].zero_grad(set_to_none=True)

    def save(self, folder: Path, main: bool) -> None:
        import torch
        from safetensors.torch import save_file

        if main:
            save_file({k: v.contiguous() for k, v in self.trainable_state().items()},
                      str(folder / "trainable.safetensors"))
            torch.save({w: self.opts[w].state_dict() for w in ADAPTERS}, folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        self.load_trainable(load_file(str(folder / "trainable.safetensors"), device=self.device))
        saved = torch.load(folder / "optimizer.pt", weights_only=False)
        for w in ADAPTERS:
            self.opts[w].load_state_dict(saved[w])


# ---- the four-model layout --------------------------------------------------------------------------
# What each model is asked for. A trained model of the four-model layout runs these through its own
# forward (``_route``), so the strategy's wrapper sees every use: DDP and the DDP plugin sync on it,
# Gemini fetches its weight chunks around it, ZeRO casts the inputs.

def _decoder_hidden(model, ids, mask):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, inner.base_model_prefix)
    return inner, decoder(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).last_hidden_state


def _task_logits(model, ids, mask, start: int, width: int, temperature: float):
    inner, h = _decoder_hidden(model, ids, mask)
    return inner.get_output_embeddings()(h[:, start - 1: start - 1 + width]).float() / temperature


def _task_train(model, ids, mask, start: int, width: int, temperature: float, ptx=None):
    """The policy's logits and, in the same forward, the PTX loss: one forward per backward, as DDP needs."""
    from coati_tui.trainer.sft import _label_only_loss

    logits = _task_logits(model, ids, mask, start, width, temperature)
    return logits, (_label_only_loss(model, ptx) if ptx is not None else None)


def _task_values(model, ids, mask, start: int, width: int):
    inner, h = _decoder_hidden(model, ids, mask)
    return inner.score(h[:, start - 1: start - 1 + width]).float().squeeze(-1)


def _task_scores(model, ids, mask, last):
    import torch

    inner, h = _decoder_hidden(model, ids, mask)
    return inner.score(h[torch.arange(ids.shape[0], device=ids.device), last]).float().squeeze(-1)


def _task_generate(model, ids, mask, gen_config):
    return model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)


TASKS = {"logits": _task_logits, "train": _task_train, "values": _task_values, "scores": _task_scores,
         "generate": _task_generate}


def _route(model):
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
        from coati_tui.trainer.strategy import load_model

        pad_id = tokenizer.pad_token_id
        self.device, self.temperature = device, preset.ppo.temperature
        actor = load_model(cfg.model, preset, "sft", device, pad_id).model
        critic = load_model(cfg.reward, preset, "rm", device, pad_id).model
        ref = load_model(cfg.model, preset, "sft", device, pad_id, adapters=False).model
        rm = load_model(cfg.reward, preset, "rm", device, pad_id, adapters=False).model
        for name, model in (("reward model", rm), ("critic", critic)):
            if getattr(model.config, "vocab_size", None) != actor.config.vocab_size:
                raise ConfigError(f"the {name} ({cfg.reward}) has another vocabulary than the actor: train it "
                                  "from the same base (or from the SFT run)")
        self.n_params = sum(p.numel() for m in (actor, critic, ref, rm) for p in m.parameters())
        park = preset.strategy != "naive"
        self.actor, self.critic = _route(actor), _route(critic)
        self.ref, self.rm = Parked(ref, device, park), Parked(rm, device, park)
        self.separate_rm = self.rm
        info("layout: four models (actor, reference, critic from the reward model, reward model)"
             + ("; reference and reward model wait in CPU RAM between rollouts" if park else ""))

    def setup(self, strategy, preset, pp) -> None:
        self.strategy, wd = strategy, preset.train.weight_decay
        self.own = {w: [p for p in getattr(self, w).parameters() if p.requires_grad] for w in ADAPTERS}
        self.trainable_count = sum(p.numel() for w in ADAPTERS for p in self.own[w])
        a_opt = strategy.optimizer(self.own["actor"], lr=preset.train.lr, weight_decay=wd)
        c_opt = strategy.optimizer(self.own["critic"], lr=pp.critic_lr, weight_decay=wd)
        self.actor, a_opt, _ = strategy.boost(self.actor, a_opt, None)
        self.critic, c_opt, _ = strategy.boost(self.critic, c_opt, None)
        self.opts = {"actor": a_opt, "critic": c_opt}

    def logits(self, which: str | None, ids, mask, start: int, width: int):
        kw = dict(ids=ids, mask=mask, start=start, width=width, temperature=self.temperature)
        return self.actor(task="logits", **kw) if which == "actor" else self.ref.run("logits", **kw)

    def actor_forward(self, ids, mask, start: int, width: int, ptx):
        return self.actor(task="train", ids=ids, mask=mask, start=start, width=width,
                          temperature=self.temperature, ptx=ptx)

    def values(self, ids, mask, start: int, width: int):
        return self.critic(task="values", ids=ids, mask=mask, start=start, width=width)

    def scores(self, ids, mask, last):
        return self.rm.run("scores", ids=ids, mask=mask, last=last)

    def generate(self, ids, mask, gen_config):
        return self.actor(task="generate", ids=ids, mask=mask, gen_config=gen_config)

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
        from coati_tui.trainer.sft import _save_final

        def write(model, folder: Path, weights: Path | None) -> None:
            _save_final(model, tokenizer, folder, end_id, stage="ppo", base=cfg.model, weights=weights)

        self.strategy.save_final(self.actor, final, write)


class SeparateReward:
    """A reward model that is not on the actor's base: its own weights, on the GPU only while scoring
    (when it is not quantized), in CPU RAM otherwise."""

    def __init__(self, reward_dir: str, preset, device: str, tokenizer):
        from transformers import AutoTokenizer

        from coati_tui.trainer.strategy import load_model

        theirs = AutoTokenizer.from_pretrained(reward_dir)
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"{reward_dir}: the reward model's tokenizer differs from the actor's; "
                              "train the reward model from the same base (or from the SFT run)")
        rm_preset = preset
        if (Path(reward_dir) / "adapter_config.json").is_file() and preset.quant.bits:
            rm_preset = preset.with_overrides({"quant.bits": 0})
        self.offload = device == "cuda" and not rm_preset.quant.bits
        prepared = load_model(reward_dir, rm_preset, "rm", "cpu" if self.offload else device,
                              pad_token_id=tokenizer.pad_token_id, adapters=False)
        self.model = Parked(prepared.model, device, self.offload)

    def scores(self, ids, mask, last):
        return self.model.run("scores", ids=ids, mask=mask, last=last)


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        import torch
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_sft, render
        from coati_tui.trainer import strategy as strat

        cfg, preset, pp = run.cfg, run.cfg.preset, run.cfg.preset.ppo
        strat.check_requirements(preset)
        torch.manual_seed(cfg.seed)

        tokenizer, template = load_tokenizer(cfg.model, cfg.template or None)
        end_id, _ = end_token(tokenizer)
        stop_ids = sorted({end_id} | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        pad_id = tokenizer.pad_token_id

        def encode(messages: list[dict]) -> list[int]:
            ids = tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            return ids[-pp.max_prompt_len:]

        prompts = [(m, encode(m)) for m in formats.load_prompts(cfg.data, cfg.max_datasets_size)]
        if cfg.eval_data:
            train_set, held = prompts, [(m, encode(m)) for m in formats.load_prompts(cfg.eval_data)]
        else:
            train_set, held = split(prompts, cfg.eval_split, cfg.seed)
        ptx = []
        if cfg.ptx_data and pp.ptx_coef > 0:
            ptx, _ = prepare_sft(tokenizer, formats.load_sft(cfg.ptx_data), preset.train.max_len, cfg.ptx_data)
        run.info(f"data: {len(train_set)} prompts, {len(held)} held out, {len(ptx)} PTX examples")

        device = strat.pick_device()
        precision = strat.pick_precision(preset, device)
        lean = preset.ppo_lean
        if lean:  # adapters on one base: its parts are called directly, gradients averaged by hand
            strategy = strat.Naive(device, precision)
            base = strat.load_model(cfg.model, preset, "sft", device, pad_token_id=pad_id, adapters=False).model
            models = Lean(base, preset, cfg.reward, cfg.model, device, tokenizer, run.info)
        else:  # one backward per optimizer step: nothing to accumulate
            strategy = strat.make_strategy(preset.with_overrides({"train.accumulation_steps": 1}), device, precision)
            models = Separate(preset, cfg, device, tokenizer, run.info)
        models.setup(strategy, preset, pp)

        per_epoch = max(1, math.ceil(len(train_set) / pp.rollout_batch) // strategy.world)
        total = per_epoch * preset.train.max_epochs
        if cfg.max_steps:
            total = min(total, cfg.max_steps)

        def write(folder: Path) -> None:
            models.save(folder, run.main)

        state = run.load_checkpoint(models.load, PPOState)
        run.open_tensorboard()
        gen_config = _generation_config(pp, stop_ids, pad_id)
        rollout = Rollout(models, pp, stop_ids, pad_id, device, gen_config)

        def evaluate() -> dict:
            """Held-out prompts answered by the actor (the same sampling seed every time): reward, KL,
            length, and the built-in task's true score when the run has one."""
            if not held:
                return {}
            scorer = None
            if cfg.task == "demo":
                from coati_tui.data.demo import true_score as scorer
            out: dict = {"reward": 0.0, "kl": 0.0, "response_len": 0.0}
            if scorer:
                out["true_score"] = 0.0
            models.train(False)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(cfg.seed + 1)
                for i in range(0, len(held), pp.rollout_batch):
                    chunk = held[i: i + pp.rollout_batch]
                    exp = rollout.make([ids for _, ids in chunk], kl_coef=0.0, values=False)
                    n = len(chunk) / len(held)
                    out["reward"] += float(exp["score"].mean()) * n
                    out["kl"] += float((exp["k1"] * exp["rmask"]).sum(-1).mean()) * n
                    out["response_len"] += float(exp["rmask"].sum(-1).mean()) * n
                    if scorer:
                        texts = rollout.texts(tokenizer, exp)
                        out["true_score"] += sum(scorer(m, t) for (m, _), t in zip(chunk, texts)) / len(held)
            return out

        run.emit("start", stage="ppo", config=cfg.to_dict(), params=models.n_params,
                 trainable_params=models.trainable_count, strategy=strategy.name,
                 device=device, precision=strategy.precision, total_steps=total, resumed_from=state.step,
                 run_dir=str(run.dir), template=template, end_token_id=end_id, held_out=len(held),
                 prompts=len(train_set), ptx_examples=len(ptx), layout="lean" if lean else "four_models",
                 shared_reward=models.separate_rm is None)
        if state.step == 0 and held and cfg.eval_interval >= 0:
            _emit_eval(run, 0, evaluate())
        started, timed = time.perf_counter(), 0
        while state.step < total and not run.stop_requested:
            order = batches(len(train_set), pp.rollout_batch, cfg.seed + state.epoch, [len(x[1]) for x in train_set])
            order = order[strategy.rank: per_epoch * strategy.world: strategy.world]
            while state.micro_in_epoch < len(order) and state.step < total and not run.stop_requested:
                t0 = time.perf_counter()
                chunk = [train_set[j] for j in order[state.micro_in_epoch]]
                models.train(False)
                with torch.no_grad():
                    exp = rollout.make([ids for _, ids in chunk], kl_coef=pp.kl_coef)
                gen_s = exp["gen_s"]
                models.train(True)
                stats = _update(models, exp, pp, preset, ptx, state, pad_id, device, strategy)
                state.micro_in_epoch += 1
                state.step += 1
                dt = time.perf_counter() - t0
                timed += 1
                avg = (time.perf_counter() - started) / timed
                answer_tokens = float(exp["rmask"].sum())
                k1_seq = (exp["k1"] * exp["rmask"]).sum(-1)
                k3_seq = (exp["k3"] * exp["rmask"]).sum(-1)
                metrics = {
                    "reward_mean": float(exp["score"].mean()), "reward_std": float(exp["score"].std()) if len(chunk) > 1 else 0.0,
                    "kl": float(k1_seq.mean()), "kl_k3": float(k3_seq.mean()),
                    "response_len": answer_tokens / len(chunk),
                    "rollout_tokens_per_s": answer_tokens / max(gen_s, 1e-9), "rollout_s": gen_s,
                    **stats,
                }
                run.emit("step", step=state.step, total_steps=total, epoch=state.epoch, loss=stats["policy_loss"],
                         lr=preset.train.lr, tokens=int(answer_tokens), tokens_per_s=answer_tokens / dt,
                         samples_per_s=len(chunk) / dt, eta_s=avg * (total - state.step), **strategy.memory(),
                         **metrics)
                run.scalars("ppo", state.step, metrics)
                if pp.sample_every and state.step % pp.sample_every == 0:
                    text = rollout.texts(tokenizer, exp)[0]
                    run.emit("sample", step=state.step, prompt=chunk[0][0][-1]["content"], response=text,
                             reward=float(exp["score"][0]))
                if cfg.save_interval and state.step % cfg.save_interval == 0 and state.step < total:
                    run.save_checkpoint(state, strategy, write)
                if cfg.eval_interval > 0 and state.step % cfg.eval_interval == 0 and state.step < total:
                    _emit_eval(run, state.step, evaluate())
            if state.micro_in_epoch >= len(order):
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
        if run.stop_requested and state.step < total:
            run.save_checkpoint(state, strategy, write)
            run.emit("done", status="cancelled", step=state.step, total_steps=total,
                     resume=f"coati-tui train ppo --resume {run.dir}")
            return
        _emit_eval(run, state.step, evaluate())
        final = run.dir / "final"
        models.save_final(tokenizer, final, end_id, cfg, run.main)
        strategy.barrier()
        run.emit("done", status="completed", step=state.step, total_steps=total, final=str(final))


def _emit_eval(run: Run, step: int, metrics: dict) -> None:
    if metrics:
        run.emit("eval", step=step, metrics=metrics)
        run.scalars("eval", step, metrics)


def _generation_config(pp, stop_ids: list[int], pad_id: int):
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=pp.temperature, top_k=pp.top_k or None,
                            top_p=pp.top_p, max_new_tokens=pp.max_new_tokens, eos_token_id=stop_ids,
                            pad_token_id=pad_id, use_cache=True)


class Rollout:
    """Experience: answers, their mask, old log-probs, reference log-probs, values, score, advantages."""

    def __init__(self, models: Lean, pp, stop_ids: list[int], pad_id: int, device: str, gen_config):
        self.models, self.pp, self.stop_ids, self.pad_id = models, pp, stop_ids, pad_id
        self.device, self.gen_config = device, gen_config

    def make(self, prompt_ids: list[list[int]], kl_coef: float, values: bool = True) -> dict:
        import torch

        from coati_tui.trainer import ppo_math as M

        width = max(len(p) for p in prompt_ids)  # left padding: every answer starts in the same column
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompt_ids], device=self.device)
        pmask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=self.device)
        t0 = time.perf_counter()
        out = self.models.generate(ids, pmask, self.gen_config)
        gen_s = time.perf_counter() - t0
        resp = out[:, width:]
        rmask = M.response_mask(resp, self.stop_ids, self.pad_id)
        T = max(1, int(rmask.sum(-1).max()))
        resp, rmask = resp[:, :T], rmask[:, :T]
        resp = torch.where(rmask > 0, resp, torch.full_like(resp, self.pad_id))
        full = torch.cat([ids, resp], 1)
        mask = torch.cat([pmask, rmask.long()], 1)
        logp = M.gather_logprobs(self.models.logits("actor", full, mask, width, T), resp)
        ref_logp = M.gather_logprobs(self.models.logits(None, full, mask, width, T), resp)
        last = width + M.last_index(rmask)
        score = self.models.scores(full, mask, last).float()
        if self.pp.reward_clip:
            score = score.clamp(-self.pp.reward_clip, self.pp.reward_clip)
        k1, k3 = M.kl_terms(logp, ref_logp)
        exp = {"ids": full, "mask": mask, "resp": resp, "rmask": rmask, "start": width, "logp": logp,
               "ref_logp": ref_logp, "score": score, "k1": k1, "k3": k3, "gen_s": gen_s}
        if values:
            v = self.models.values(full, mask, width, T) * rmask
            rewards = M.token_rewards(score, k1, rmask, kl_coef)
            adv, returns = M.gae(rewards, v, rmask, self.pp.gamma, self.pp.lam)
            if self.pp.whiten_advantages and rmask.sum() > 1:
                adv = M.masked_whiten(adv, rmask)
            exp.update(values=v, adv=adv, returns=returns)
        return exp

    def texts(self, tokenizer, exp: dict) -> list[str]:
        rows = (exp["resp"] * exp["rmask"].long()).tolist()
        lens = exp["rmask"].sum(-1).long().tolist()
        return [tokenizer.decode(r[:n], skip_special_tokens=True) for r, n in zip(rows, lens)]


def _update(models, exp: dict, pp, preset, ptx, state: PPOState, pad_id: int, device: str, strategy) -> dict:
    """``ppo_epochs`` passes of mini-batches over one rollout; returns the averaged statistics."""
    import torch

    from coati_tui.trainer import ppo_math as M
    from coati_tui.trainer.loop import pad

    B, start, T = exp["ids"].shape[0], exp["start"], exp["resp"].shape[1]
    mb_size = max(1, min(preset.train.batch_size, B))
    sums: dict[str, float] = {}
    n_mb, skipped = 0, 0
    for _ in range(pp.ppo_epochs):
        perm = torch.randperm(B)
        for i in range(0, B, mb_size):
            idx = perm[i: i + mb_size].to(device)
            ids, mask, resp, rmask = exp["ids"][idx], exp["mask"][idx], exp["resp"][idx], exp["rmask"][idx]
            batch = None
            if ptx:
                items = [ptx[(state.ptx_pos + k) % len(ptx)] for k in range(mb_size)]
                state.ptx_pos += mb_size
                batch = {"input_ids": torch.tensor(pad([e.input_ids for e in items], pad_id), device=device),
                         "labels": torch.tensor(pad([e.labels for e in items], -100), device=device),
                         "attention_mask": torch.tensor(pad([[1] * len(e.input_ids) for e in items], 0), device=device)}
            logits, ptx_loss = models.actor_forward(ids, mask, start, T, batch)
            logp_all = torch.log_softmax(logits, -1)  # one vocab-wide copy
            del logits
            logp = logp_all.gather(-1, resp.unsqueeze(-1)).squeeze(-1)
            pl, st = M.policy_loss(logp, exp["logp"][idx], exp["adv"][idx], rmask, pp.clip_eps)
            with torch.set_grad_enabled(pp.entropy_coef > 0):  # reported always, in the graph only when weighted
                ent = M.masked_mean(-(logp_all.exp() * logp_all).sum(-1), rmask)
            del logp_all
            n_mb += 1
            loss = pl - pp.entropy_coef * ent
            if ptx_loss is not None:
                loss = loss + pp.ptx_coef * ptx_loss
            # every process skips together, or their gradient syncs would wait on each other forever
            max_ratio = strategy.reduce_max(st["max_ratio"])
            if max_ratio > pp.ratio_limit:
                skipped += 1  # a ratio explosion: this mini-batch would wreck the policy
                models.discard("actor", loss)
                _acc(sums, {"max_ratio": st["max_ratio"]})
                continue
            models.update("actor", loss)

            v = models.values(ids, mask, start, T)
            vl = M.value_loss(v, exp["values"][idx], exp["returns"][idx], rmask, pp.value_clip)
            models.update("critic", vl)
            _acc(sums, {"policy_loss": float(pl.detach()), "value_loss": float(vl.detach()), "entropy": float(ent.detach()),
                        **({"ptx_loss": float(ptx_loss.detach())} if ptx_loss is not None else {}), **st})
    done = max(1, n_mb - skipped)
    out = {k: v if k == "max_ratio" else v / done for k, v in sums.items()}
    out.setdefault("policy_loss", float("nan"))
    out["skipped_updates"] = skipped
    return out


def _acc(into: dict, values: dict) -> None:
    for k, v in values.items():
        into[k] = max(into.get(k, 0.0), v) if k == "max_ratio" else into.get(k, 0.0) + v


def _sync(params, strategy) -> None:
    """Average gradients across torchrun processes (each made its own rollout)."""
    if strategy.world > 1:
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= strategy.world


class _ActorAdapter:
    """What ``_save_final`` needs to write the actor alone as a standard PEFT adapter folder."""

    def __init__(self, models: Lean, base_path: str):
        self.models, self.base_path = models, base_path
        self.generation_config = getattr(models.inner, "generation_config", None)

    def save_pretrained(self, folder: Path) -> None:
        import copy

        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        config = copy.deepcopy(self.models.model.peft_config["actor"])
        config.base_model_name_or_path = self.base_path
        config.task_type = "CAUSAL_LM"
        config.inference_mode = True
        state = get_peft_model_state_dict(self.models.model, adapter_name="actor")
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder))
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))


def _save_actor(models: Lean, tokenizer, final: Path, end_id: int, cfg) -> None:
    """A PEFT adapter over ``cfg.model`` when that is a full model folder; when it is itself an adapter
    (a LoRA SFT run), the actor merged into base + SFT adapter as a full model."""
    from coati_tui.trainer.sft import _save_final

    if (Path(cfg.model) / "config.json").is_file():
        _save_final(_ActorAdapter(models, cfg.model), tokenizer, final, end_id, stage="ppo", base=cfg.model)
        return
    for name in [n for n in models.model.peft_config if n != "actor"]:
        models.model.delete_adapter(name)
    merged = models.model.merge_and_unload()
    _save_final(merged, tokenizer, final, end_id, stage="ppo", base=cfg.model)
