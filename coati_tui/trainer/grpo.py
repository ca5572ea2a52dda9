"""GRPO: reinforcement learning without a critic, with rewards a program can check: a recipe on the loop.

One GRPO step: ``grpo.prompts_per_step`` prompts, each answered ``grpo.group_size`` (G) times in one
batched ``generate`` with a KV cache (PPO's rollout, ``ppo.rollout``); each answer scored by the reward
functions (``trainer.rewards``: plain Python, weighted) and/or a reward model; advantages taken within
each group (reward minus the group's mean, over its std unless ``scale_rewards`` is off); then
``updates_per_rollout`` passes of mini-batches (``train.batch_size`` answers) of the clipped loss with
separate low / high bounds, + ``beta`` x the k3 KL to the reference, normalised per answer, per token or
by a constant (``grpo_math``). A group whose answers all tie teaches nothing: counted, and under
``dynamic_sampling`` sampled again (up to ``max_resample`` rounds).

The models: PPO's memory-lean layout without a critic (``ppo.lean.Lean``): one base carries the actor's
LoRA adapter, the reference is the base with adapters off, a reward model (if any) is an adapter on it
or a separate model. GRPO therefore trains LoRA presets on plain PyTorch (naive, QLoRA); under torchrun
each process samples its own share of the prompts and gradients are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coati_tui.core.errors import ConfigError
from coati_tui.trainer.loop import split
from coati_tui.trainer.ppo import guard
from coati_tui.trainer.recipe import Recipe, Step


@dataclass
class GRPOState:
    step: int = 0  # GRPO steps (rollouts) done
    epoch: int = 0
    micro_in_epoch: int = 0  # prompt batches of this epoch already used
    first: dict[str, list[float]] = field(default_factory=dict)  # ppo.guard.Watch's counters (with a reward model)
    signs: dict[str, int] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)


@dataclass
class Group:
    """A rollout's answers with their rewards and advantages (one row per answer)."""

    exp: Any  # ppo.rollout.Experience
    rows: list[Any]  # the prompts' (messages, columns, ids), each repeated G times
    texts: list[str]
    reward: Any  # (B,) float tensor: the weighted total
    per_fn: dict[str, list[float]]
    adv: Any  # (B,)
    tied: Any  # (B / G,) bool


class GRPO(Recipe):
    state_cls = GRPOState
    scalar_prefix = "grpo"
    eval_at_start = True
    eval_each_epoch = False

    @property
    def batch_size(self) -> int:
        return int(self.preset.grpo.prompts_per_step)

    @property
    def accumulation(self) -> int:
        return 1

    def length(self, item: Any) -> int:
        return len(item[2])

    @property
    def has_eval(self) -> bool:
        return bool(self.held)

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch

        from coati_tui.trainer import rewards

        p = self.preset
        if p.full_finetune or p.strategy != "naive":
            raise ConfigError(
                f"preset {p.name}: GRPO trains LoRA adapters on plain PyTorch (the reference is the base with "
                "adapters off); pick lora_naive or qlora_naive, or set lora.rank > 0"
            )
        torch.manual_seed(self.cfg.seed)
        self.fns = rewards.load(
            list(self.cfg.reward_fns), {"format_regex": p.grpo.format_regex, "length_target": p.grpo.length_target}
        )
        self._data()
        self._models()

    def _data(self) -> None:
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, render

        cfg, g = self.cfg, self.preset.grpo
        tok, self.template = load_tokenizer(cfg.model, cfg.template or None)
        self.tokenizer, self.pad_id = tok, tok.pad_token_id
        self.end_id, _ = end_token(tok)
        self.stop_ids = sorted({self.end_id} | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))

        def rows(path: str, limit: int = 0) -> list[Any]:
            out = []
            for messages, columns in formats.load_prompt_rows(path, limit):
                ids = tok(render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                out.append((messages, columns, list(ids[-g.max_prompt_len :])))
            return out

        prompts = rows(cfg.data, cfg.max_datasets_size)
        if cfg.eval_data:
            self.items, self.held = prompts, rows(cfg.eval_data)
        else:
            self.items, self.held = split(prompts, cfg.eval_split, cfg.seed)
        names = ", ".join(f.name for f in self.fns) or "none"
        self.run.info(f"data: {len(self.items)} prompts, {len(self.held)} held out; reward functions: {names}")

    def _models(self) -> None:
        from coati_tui.trainer import models as loader
        from coati_tui.trainer import strategy as strat
        from coati_tui.trainer.ppo.lean import Lean
        from coati_tui.trainer.ppo.rollout import Rollout, generation_config

        cfg, preset, g = self.cfg, self.preset, self.preset.grpo
        self.device = device = loader.pick_device()
        self.strategy = strat.Naive(device, loader.pick_precision(preset, device))
        base = loader.load_model(cfg.model, preset, "sft", device, pad_token_id=self.pad_id, adapters=False).model
        self.models = Lean(
            base,
            preset,
            cfg.reward,
            cfg.model,
            device,
            self.tokenizer,
            self.run.info,
            critic=False,
            temperature=g.temperature,
        )
        # scored by a reward model: PPO's reward normalization and alarms ([ppo] keys), on its eval statistics
        stats = guard.read_stats(cfg.reward) if cfg.reward else None
        self.watch = guard.Watch(preset.ppo, stats) if cfg.reward else None
        shaper = guard.Shaper(preset.ppo, stats) if cfg.reward else None
        self.rollout = Rollout(
            self.models, g, self.stop_ids, self.pad_id, device, generation_config(g, self.stop_ids, self.pad_id), shaper
        )

    def configure(self, total_steps: int) -> None:
        self.models.setup(self.strategy, self.preset, self.preset.grpo)

    # ---- one step: sample, score, update -------------------------------------------------------------
    def sample(self, chunk: list[Any], group_size: int) -> Group:
        """G answers to each prompt of ``chunk``, scored, with group advantages."""
        import torch

        from coati_tui.trainer import grpo_math, rewards

        g = self.preset.grpo
        rows = [r for r in chunk for _ in range(group_size)]
        self.models.train(False)
        with torch.no_grad():
            exp = self.rollout.make(
                [ids for _, _, ids in rows],
                kl_coef=0.0,
                values=False,
                score=bool(self.cfg.reward),
                ref=g.beta > 0,
                old=not self.on_policy(len(rows)),
                group=group_size,
            )
        texts = exp.texts(self.tokenizer)
        prompts = [messages[-1]["content"] for messages, _, _ in rows]
        columns = {k: [cols.get(k) for _, cols, _ in rows] for k in {k for _, cols, _ in rows for k in cols}}
        total, per_fn = rewards.score(self.fns, prompts, texts, columns) if self.fns else ([0.0] * len(rows), {})
        reward = torch.tensor(total, dtype=torch.float32, device=exp.score.device)
        if self.cfg.reward:
            reward = reward + g.reward_model_weight * exp.score
            per_fn["reward_model"] = exp.score.tolist()
        if group_size > 1:
            adv, tied = grpo_math.group_advantages(reward, group_size, g.scale_rewards)
        else:  # eval: one answer a prompt, no group
            adv, tied = torch.zeros_like(reward), torch.zeros(len(chunk), dtype=torch.bool)
        return Group(exp, rows, texts, reward, per_fn, adv, tied)

    def on_policy(self, answers: int) -> bool:
        """One update over the whole rollout in one mini-batch: the old log-probs are the training forward's
        own (the same weights), so the rollout's extra actor pass is skipped, as TRL does."""
        g = self.preset.grpo
        return g.updates_per_rollout == 1 and self.preset.train.batch_size >= answers and not g.dynamic_sampling

    def train_step(self, group: list[list[Any]], state: Any) -> Step:
        (chunk,) = group
        g = self.preset.grpo
        pending, groups = chunk, [self.sample(chunk, g.group_size)]
        self.last, tied_first, resampled = groups[0], float(groups[0].tied.float().mean()), 0
        for _ in range(g.max_resample if g.dynamic_sampling else 0):  # tied prompts again; the rest are kept
            tied = [pending[i] for i, t in enumerate(groups[-1].tied.tolist()) if t]
            if not tied:
                break
            resampled += len(tied)
            groups[-1], pending = _drop_tied(groups[-1], g.group_size), tied
            groups.append(self.sample(pending, g.group_size))
        self.models.train(True)
        stats = self._update([x for x in groups if x.exp.ids.shape[0]])
        return Step(
            loss=stats.pop("loss"),
            lr=self.preset.train.lr,
            tokens=int(stats["tokens"]),
            samples=len(chunk) * g.group_size,
            metrics=self._metrics(groups, stats, tied_first, resampled),
        )

    def _update(self, groups: list[Group]) -> dict[str, float]:
        import torch

        from coati_tui.trainer import grpo_math
        from coati_tui.trainer.ppo import math as M

        g, mb = self.preset.grpo, max(1, self.preset.train.batch_size)
        sums: dict[str, float] = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "entropy": 0.0}
        n, max_ratio = 0, 1.0
        for _ in range(g.updates_per_rollout):
            for grp in groups:
                exp, T = grp.exp, grp.exp.resp.shape[1]
                for idx, run in _minibatches(exp.ids.shape[0], exp.group, mb):
                    idx = idx.to(exp.ids.device)
                    logits = self.models.logits("actor", exp.ids[idx], exp.mask[idx], exp.start, T, run)
                    logp_all = torch.log_softmax(logits, -1)
                    del logits
                    logp = logp_all.gather(-1, exp.resp[idx].unsqueeze(-1)).squeeze(-1)
                    with torch.no_grad():
                        ent = float(M.masked_mean(-(logp_all.exp() * logp_all).sum(-1), exp.rmask[idx]))
                    del logp_all
                    old = exp.logp[idx] if exp.logp is not None else logp.detach()
                    ref = exp.ref_logp[idx] if exp.ref_logp is not None else logp.detach()
                    loss, st = grpo_math.policy_loss(
                        logp,
                        old,
                        ref,
                        grp.adv[idx],
                        exp.rmask[idx],
                        g.clip_low,
                        g.clip_high,
                        g.beta,
                        g.loss_norm,
                        g.max_new_tokens,
                    )
                    self.models.update("actor", loss)
                    n += 1
                    max_ratio = max(max_ratio, st.pop("max_ratio"))
                    for k, v in {"loss": float(loss.detach()), "entropy": ent, **st}.items():
                        sums[k] += v
        out = {k: v / max(1, n) for k, v in sums.items()}
        out.update(max_ratio=max_ratio, updates=n, tokens=sum(x.exp.answer_tokens for x in groups))
        return out

    def _metrics(self, groups: list[Group], stats: dict[str, float], tied: float, resampled: int) -> dict[str, Any]:
        import torch

        reward = torch.cat([x.reward for x in groups])
        per_fn: dict[str, list[float]] = {}
        for x in groups:
            for k, v in x.per_fn.items():
                per_fn.setdefault(k, []).extend(v)
        exp = groups[0].exp
        return {
            "reward_mean": float(reward.mean()),
            "reward_std": float(reward.std()) if reward.numel() > 1 else 0.0,
            **{f"reward/{k}": sum(v) / len(v) for k, v in per_fn.items() if v},
            "tied_frac": tied,
            "resampled": resampled,
            "response_len": float(exp.rmask.sum(-1).mean()),
            "rollout_s": sum(x.exp.gen_s for x in groups),
            "rollout_tokens_per_s": exp.answer_tokens / max(exp.gen_s, 1e-9),
            **{k: v for k, v in stats.items() if k != "tokens"},
        }

    def after_step(self, state: Any) -> None:
        if self.watch is not None:  # the KL alarm is PPO's (per answer); GRPO's KL is a loss term per token
            exp = self.last.exp
            seen = {"response_len": float(exp.rmask.sum(-1).mean()), "reward_raw": float(exp.raw_score.mean())}
            self.raise_alarms(state.step, self.watch.check(state, seen), self.preset.ppo.stop_on_alarm)
        every = self.preset.grpo.sample_every
        if every and state.step % every == 0:
            grp: Group = self.last
            scores = {k: round(v[0], 4) for k, v in grp.per_fn.items()}
            self.run.emit(
                "sample",
                step=state.step,
                prompt=grp.rows[0][0][-1]["content"],
                response=grp.texts[0],
                reward=float(grp.reward[0]),
                rewards=scores,
            )

    def evaluate(self) -> dict[str, Any]:
        """Held-out prompts, one answer each (the same sampling seed every time): reward, per function."""
        import torch

        out: dict[str, float] = {}
        held, k = self.held, self.preset.grpo.prompts_per_step * self.preset.grpo.group_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            for i in range(0, len(held), k):
                chunk = held[i : i + k]
                grp = self.sample(chunk, 1) if len(chunk) else None
                if grp is None:
                    continue
                w = len(chunk) / len(held)
                out["reward"] = out.get("reward", 0.0) + float(grp.reward.mean()) * w
                out["response_len"] = out.get("response_len", 0.0) + float(grp.exp.rmask.sum(-1).mean()) * w
                for name, v in grp.per_fn.items():
                    out[f"reward/{name}"] = out.get(f"reward/{name}", 0.0) + sum(v) / len(v) * w
        if self.cfg.task == "demo":
            out["true_score"] = out.get("reward/demo", float("nan"))
        return out

    # ---- checkpoints and the final folder ----------------------------------------------------------
    def save(self, folder: Path) -> None:
        self.models.save(folder, self.run.main)

    def load(self, folder: Path) -> None:
        self.models.load(folder)

    def save_final(self, folder: Path) -> None:
        self.models.save_final(self.tokenizer, folder, self.end_id, self.cfg, self.run.main)

    def start_info(self) -> dict[str, Any]:
        g = self.preset.grpo
        return {
            "params": self.models.n_params,
            "trainable_params": self.models.trainable_count,
            "template": self.template,
            "end_token_id": self.end_id,
            "held_out": len(self.held),
            "prompts": len(self.items),
            "group_size": g.group_size,
            "reward_functions": [{"name": f.name, "weight": f.weight, "source": f.source} for f in self.fns],
            "reward_model": self.cfg.reward,
        }


def _minibatches(rows: int, group: int, size: int) -> list[tuple[Any, int]]:
    """A shuffled epoch of ``rows`` in mini-batches of ``size``: (row indices, run). Where ``size`` holds
    whole groups, whole groups are shuffled (each mini-batch keeps a prompt's answers together, so its
    forward runs the prompt once: run = ``group``); otherwise rows are, with run 1."""
    import torch

    if group > 1 and size % group == 0 and rows % group == 0:
        order = (torch.randperm(rows // group)[:, None] * group + torch.arange(group)).flatten()
        return [(order[i : i + size], group) for i in range(0, rows, size)]
    order = torch.randperm(rows)
    return [(order[i : i + size], 1) for i in range(0, rows, size)]


def _drop_tied(grp: Group, group_size: int) -> Group:
    """``grp`` without its tied groups (they are sampled again)."""
    import torch

    keep_groups = (~grp.tied).nonzero().flatten().tolist()
    keep = [i * group_size + j for i in keep_groups for j in range(group_size)]
    idx = torch.tensor(keep, dtype=torch.long, device=grp.exp.ids.device)
    e = grp.exp
    exp = type(e)(
        **{
            **e.__dict__,
            **{
                k: None if getattr(e, k) is None else getattr(e, k)[idx]
                for k in ("ids", "mask", "resp", "rmask", "logp", "ref_logp", "score", "k1", "k3")
            },
        }
    )
    return Group(
        exp,
        [grp.rows[i] for i in keep],
        [grp.texts[i] for i in keep],
        grp.reward[idx],
        {k: [v[i] for i in keep] for k, v in grp.per_fn.items()},
        grp.adv[idx],
        grp.tied[~grp.tied],
    )
