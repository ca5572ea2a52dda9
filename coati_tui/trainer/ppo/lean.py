"""The memory-lean layout: one base model carries the actor and critic LoRA adapters (+ a value head);
the reference is that base with adapters disabled; the reward model is a third adapter + its score head
when it was trained from the same model, else a separate model (``separate.SeparateReward``: in CPU RAM
between rollouts on a GPU). GRPO uses it without a critic (``critic=False``), and with a reward model
only when it has one (``reward_dir`` empty: none; its rewards then come from functions)."""

from __future__ import annotations

import json
from pathlib import Path

from coati_tui.core.errors import ConfigError
from coati_tui.trainer import fast_lora
from coati_tui.trainer.malloc import PHASES
from coati_tui.trainer.ppo.layout import (
    ADAPTERS,
    answer_hidden,
    positions,
    prefilled,
    shared_reward_adapter,
    sync_grads,
)


class Lean:
    """The memory-lean set of models (see the module docstring)."""

    def __init__(
        self,
        base,
        preset,
        reward_dir: str,
        actor_model: str,
        device: str,
        tokenizer,
        info=print,
        critic: bool = True,
        temperature: float | None = None,
    ):
        import torch
        from peft import LoraConfig, get_peft_model

        from coati_tui.trainer.strategy import linear_targets

        self.device = device
        self.temperature = preset.ppo.temperature if temperature is None else temperature
        self.adapters = ADAPTERS if critic else ("actor",)
        hidden = base.config.hidden_size
        targets = linear_targets(base, preset.lora.targets)
        actor_cfg = LoraConfig(
            r=preset.lora.rank, lora_alpha=preset.lora.alpha, lora_dropout=0.0, target_modules=targets
        )
        self.model = get_peft_model(base, actor_cfg, adapter_name="actor")
        self.value_head = torch.nn.Linear(hidden, 1).to(device) if critic else None
        self.reward_head, self.separate_rm = None, None
        adapter = shared_reward_adapter(reward_dir, actor_model) if reward_dir else None
        if adapter is not None:
            self._shared_reward(adapter, base, hidden, critic)
            info(
                f"reward model: adapter {adapter} on the actor's base (shared weights)"
                + ("; critic starts from it" if critic else "")
            )
        else:
            if critic:
                self.model.add_adapter("critic", actor_cfg)
                torch.nn.init.zeros_(self.value_head.weight)
                torch.nn.init.zeros_(self.value_head.bias)
            if reward_dir:
                from coati_tui.trainer.ppo.separate import SeparateReward

                self.separate_rm = SeparateReward(reward_dir, preset, device, tokenizer)
                info(
                    f"reward model: {reward_dir} as a separate model"
                    + (" (kept in CPU RAM between rollouts)" if self.separate_rm.offload else "")
                )
        for n, p in self.model.named_parameters():  # adapters train in fp32 whatever the base dtype
            if "lora_" in n and p.dtype != torch.float32:
                p.data = p.data.float()
        self.model.set_adapter("actor")
        fast_lora.fuse(self.model)
        self.inner = self.model.get_base_model()

    def _shared_reward(self, adapter: Path, base, hidden: int, critic: bool) -> None:
        """The reward model as an adapter + score head on this base (and the critic started from it)."""
        import torch
        from peft import LoraConfig, set_peft_model_state_dict
        from safetensors.torch import load_file

        from coati_tui.trainer.strategy import linear_targets

        saved = json.loads((adapter / "adapter_config.json").read_text())
        rcfg = LoraConfig(
            r=saved["r"],
            lora_alpha=saved["lora_alpha"],
            lora_dropout=0.0,
            target_modules=linear_targets(base, saved["target_modules"]),
        )
        files = list(adapter.glob("adapter_model.safetensors"))
        state = load_file(str(files[0])) if files else torch.load(adapter / "adapter_model.bin", weights_only=True)
        head = {k.rsplit(".", 1)[-1]: v for k, v in state.items() if ".score." in k or k.endswith("score.weight")}
        lora = {k: v for k, v in state.items() if "lora_" in k}
        if "weight" not in head:
            raise ConfigError(f"{adapter}: no score head in the reward adapter")
        self.reward_head = torch.nn.Linear(hidden, 1, bias="bias" in head).to(self.device)
        self.reward_head.load_state_dict({k: v.float() for k, v in head.items()})
        self.reward_head.requires_grad_(False)
        for name in ("reward", "critic") if critic else ("reward",):  # the critic starts as the reward model
            self.model.add_adapter(name, rcfg)
            set_peft_model_state_dict(self.model, lora, adapter_name=name)
        if critic:
            self.value_head.load_state_dict(
                self.reward_head.state_dict()
                if "bias" in head
                else {"weight": head["weight"].float(), "bias": torch.zeros(1)}
            )

    # ---- parameters --------------------------------------------------------------------------------
    def params(self, which: str) -> list:
        own = [p for n, p in self.model.named_parameters() if f".{which}." in n and "lora_" in n]
        return own + (list(self.value_head.parameters()) if which == "critic" and self.value_head else [])

    def trainable_state(self) -> dict:
        state = {
            n: p.detach()
            for n, p in self.model.named_parameters()
            if "lora_" in n and any(f".{a}." in n for a in self.adapters)
        }
        if self.value_head is not None:
            state.update({f"value_head.{k}": v for k, v in self.value_head.state_dict().items()})
        return state

    def load_trainable(self, state: dict) -> None:
        head = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("value_head.")}
        if self.value_head is not None:
            self.value_head.load_state_dict(head)
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise ConfigError(f"checkpoint lacks {sorted(missing)[:3]} (another preset?)")
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("value_head.")}, strict=False)

    # ---- forwards ----------------------------------------------------------------------------------
    def _with(self, adapter: str | None):
        """A context with ``adapter`` active (None: the reference, every adapter off)."""
        import contextlib

        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def hidden(self, adapter: str | None, ids, mask):
        """Last hidden states with ``adapter`` active (None: the reference, adapters disabled)."""
        with self._with(adapter):
            decoder = self.inner.get_decoder()
            return decoder(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).last_hidden_state

    def logits(self, adapter: str | None, ids, mask, start: int, width: int, group: int = 1):
        """Next-token logits (temperature applied) predicting columns start..start+width-1."""
        with self._with(adapter):
            h = answer_hidden(self.inner.get_decoder(), ids, mask, start, width, group)
        return self.inner.get_output_embeddings()(h).float() / self.temperature

    def values(self, ids, mask, start: int, width: int):
        h = self.hidden("critic", ids, mask)[:, start - 1 : start - 1 + width]
        return self.value_head(h.float()).squeeze(-1)

    def scores(self, ids, mask, last):
        """The reward model's score at column ``last`` of each row."""
        import torch

        rows = torch.arange(ids.shape[0], device=ids.device)
        if self.separate_rm is not None:
            return self.separate_rm.scores(ids, mask, last)
        if self.reward_head is None:
            raise ConfigError("no reward model: this run scores answers with reward functions only")
        h = self.hidden("reward", ids, mask)[rows, last]
        return self.reward_head(h.float()).squeeze(-1)

    def generate(self, ids, mask, gen_config, reference: bool = False, group: int = 1):
        with self._with(None if reference else "actor"):  # reference: the SFT model
            cache = prefilled(self.inner.get_decoder(), ids, mask, group)
            return self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config, **cache)

    def train(self, on: bool) -> None:
        self.model.train(on)
        if self.value_head is not None:
            self.value_head.train(on)

    def ptx_loss(self, batch):
        from coati_tui.trainer.sft import label_only_loss

        self.model.set_adapter("actor")
        return label_only_loss(self.model, batch)

    def save_final(self, tokenizer, final: Path, end_id: int, cfg, main: bool) -> None:
        if main:
            save_actor(self, tokenizer, final, end_id, cfg)

    # ---- optimizers and steps (the interface ``_update`` and ``main`` use; Separate has the same) ----
    def setup(self, strategy, preset, pp) -> None:
        import torch

        self.strategy, wd = strategy, preset.train.weight_decay
        self.own = {w: self.params(w) for w in self.adapters}
        rates = {"actor": preset.train.lr, "critic": getattr(pp, "critic_lr", 0.0)}
        self.opts = {w: torch.optim.AdamW(self.own[w], lr=rates[w], weight_decay=wd) for w in self.adapters}
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.trainable_count = sum(p.numel() for w in self.adapters for p in self.own[w])

    def actor_forward(self, ids, mask, start: int, width: int, ptx):
        """(the actor's logits over the answer, the PTX loss on ``ptx`` or None)."""
        return self.logits("actor", ids, mask, start, width), (self.ptx_loss(ptx) if ptx is not None else None)

    def update(self, which: str, loss) -> None:
        import torch

        with PHASES.backward():
            loss.backward()
        sync_grads(self.own[which], self.strategy)
        torch.nn.utils.clip_grad_norm_(self.own[which], 1.0)
        self.opts[which].step()
        self.opts[which].zero_grad(set_to_none=True)

    def discard(self, which: str, loss) -> None:
        self.opts[which].zero_grad(set_to_none=True)

    def save(self, folder: Path, main: bool) -> None:
        import torch
        from safetensors.torch import save_file

        if main:
            save_file(
                {k: v.contiguous() for k, v in self.trainable_state().items()}, str(folder / "trainable.safetensors")
            )
            torch.save({w: self.opts[w].state_dict() for w in self.adapters}, folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        self.load_trainable(load_file(str(folder / "trainable.safetensors"), device=self.device))
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        for w in self.adapters:
            self.opts[w].load_state_dict(saved[w])


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


def save_actor(models: Lean, tokenizer, final: Path, end_id: int, cfg) -> None:
    """A PEFT adapter over ``cfg.model`` when that is a full model folder; when it is itself an adapter
    (a LoRA SFT run), the actor merged into base + SFT adapter as a full model."""
    from coati_tui.trainer.final import write_final

    if (Path(cfg.model) / "config.json").is_file():
        write_final(_ActorAdapter(models, cfg.model), tokenizer, final, end_id, stage=cfg.stage, base=cfg.model)
        return
    for name in [n for n in models.model.peft_config if n != "actor"]:
        models.model.delete_adapter(name)
    merged = models.model.merge_and_unload()
    write_final(merged, tokenizer, final, end_id, stage=cfg.stage, base=cfg.model)
