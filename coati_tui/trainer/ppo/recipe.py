"""Stage 3: PPO with the PTX loss, memory-lean on one GPU: a recipe on the shared loop.

One PPO step: answer ``ppo.rollout_batch`` prompts with the actor (batched ``generate`` with a KV cache,
left-padded prompts, stopping on the template's end token), score each answer with the reward model at
its last token, take per-token log-probabilities of actor and reference and the critic's values, turn
them into per-token rewards (score minus ``kl_coef`` times the k1 KL estimate) and GAE advantages, then
``ppo.ppo_epochs`` passes of mini-batches (``train.batch_size``): PPO-clip policy loss (+ ``ptx_coef`` x
the LM loss on a batch of SFT data, - ``entropy_coef`` x entropy) for the actor, clipped value loss for
the critic. A mini-batch whose largest ratio exceeds ``ppo.ratio_limit`` is skipped and counted.

The layouts (``layout.Layout``; ``Preset.ppo_lean`` picks one, for planner and trainer alike).
Memory-lean layout (``lean.py``, naive and QLoRA presets): ONE base model (the SFT output, 4-bit under QLoRA)
carries LoRA adapters ``actor`` and ``critic`` (+ a value head); the reference model is that base with
adapters disabled (the actor adapter starts at zero, so actor == SFT model at step 0); the reward model
is a third adapter ``reward`` + its score head when it was trained from the same model (an RM run over
this SFT output writes its adapter beside the merged weights), else a separate model that waits in CPU
RAM between rollouts on a GPU. The critic starts from the reward adapter and head when they are shared
(as ColossalChat initialises its critic from the reward model). Four models' worth of weights become one.

Full fine-tuning (lora.rank 0), ``ppo.memory_lean = false`` and the Gemini / ZeRO-2 presets take
ColossalChat's layout instead: four models (``separate.py``). Actor and critic are boosted by the strategy
(plain PyTorch, torch DDP, or a colossalai Booster: its DDP plugin, Gemini, ZeRO-2 with CPU offload),
and every use of them (generation, log-probs, the training forward with the PTX batch, values) goes
through their own forward, so the wrapper sees it; under Gemini / ZeRO-2 the frozen reference and
reward model wait in CPU RAM and visit the GPU one at a time to score a finished rollout.

Under torchrun every process makes its own rollouts from its share of the prompts; gradients are
averaged across processes before each optimizer step (by hand in the memory-lean layout, by the
wrapper in the four-model one), and a skipped update is skipped by every process alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coati_tui.trainer.loop import split, train
from coati_tui.trainer.ppo import guard
from coati_tui.trainer.ppo.layout import Layout
from coati_tui.trainer.ppo.rollout import Experience, Rollout, generation_config
from coati_tui.trainer.recipe import Recipe, Step
from coati_tui.trainer.run import Run


@dataclass
class PPOState:
    step: int = 0  # PPO steps (rollouts) done
    epoch: int = 0
    micro_in_epoch: int = 0  # rollout batches of this epoch already used
    ptx_pos: int = 0  # PTX batches drawn
    kl_coef: float = -1.0  # the adaptive controller's coefficient (-1: not started, ppo.kl_coef)
    first: dict[str, list[float]] = field(default_factory=dict)  # guard.Watch's counters (resume keeps them)
    signs: dict[str, int] = field(default_factory=dict)
    fired: list[str] = field(default_factory=list)


class PPO(Recipe):
    state_cls = PPOState
    scalar_prefix = "ppo"
    eval_at_start = True  # the actor equals the reference at step 0: the baseline for the reward's gain
    eval_each_epoch = False

    @property
    def batch_size(self) -> int:
        return int(self.preset.ppo.rollout_batch)

    @property
    def accumulation(self) -> int:
        return 1  # one rollout per PPO step

    def length(self, item: Any) -> int:
        return len(item[1])

    @property
    def has_eval(self) -> bool:
        return bool(self.held)

    # ---- setup: data, then models ----------------------------------------------------------------
    def setup(self) -> None:
        import torch

        from coati_tui.trainer import strategy as strat

        strat.check_requirements(self.preset)
        torch.manual_seed(self.cfg.seed)
        self._data()
        self._models()

    def _data(self) -> None:
        from coati_tui.data import formats
        from coati_tui.data.tokenize import end_token, load_tokenizer, prepare_sft, render

        cfg, pp = self.cfg, self.preset.ppo
        tok, self.template = load_tokenizer(cfg.model, cfg.template or None)
        self.tokenizer, self.pad_id = tok, tok.pad_token_id
        self.end_id, _ = end_token(tok)
        self.stop_ids = sorted({self.end_id} | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))

        def encode(messages: list[dict[str, Any]]) -> list[int]:
            ids = tok(render(tok, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            return list(ids[-pp.max_prompt_len :])

        prompts = [(m, encode(m)) for m in formats.load_prompts(cfg.data, cfg.max_datasets_size)]
        if cfg.eval_data:
            self.items, self.held = prompts, [(m, encode(m)) for m in formats.load_prompts(cfg.eval_data)]
        else:
            self.items, self.held = split(prompts, cfg.eval_split, cfg.seed)
        self.ptx: list[Any] = []
        if cfg.ptx_data and pp.ptx_coef > 0:
            self.ptx, _ = prepare_sft(tok, formats.load_sft(cfg.ptx_data), self.preset.train.max_len, cfg.ptx_data)
        self.run.info(f"data: {len(self.items)} prompts, {len(self.held)} held out, {len(self.ptx)} PTX examples")

    def _models(self) -> None:
        from coati_tui.trainer import models as loader
        from coati_tui.trainer import strategy as strat

        cfg, preset = self.cfg, self.preset
        self.device = device = loader.pick_device()
        precision = loader.pick_precision(preset, device)
        self.models: Layout
        if preset.ppo_lean:  # adapters on one base: its parts are called directly, gradients averaged by hand
            from coati_tui.trainer.ppo.lean import Lean

            self.strategy = strat.Naive(device, precision)
            base = loader.load_model(cfg.model, preset, "sft", device, pad_token_id=self.pad_id, adapters=False).model
            self.models = Lean(base, preset, cfg.reward, cfg.model, device, self.tokenizer, self.run.info)
        else:  # one backward per optimizer step: nothing to accumulate
            from coati_tui.trainer.ppo.separate import Separate

            self.strategy = strat.make_strategy(
                preset.with_overrides({"train.accumulation_steps": 1}), device, precision
            )
            self.models = Separate(preset, cfg, device, self.tokenizer, self.run.info)
        stats = guard.read_stats(cfg.reward)
        self.watch = guard.Watch(preset.ppo, stats)
        self.rollout = Rollout(
            self.models,
            preset.ppo,
            self.stop_ids,
            self.pad_id,
            device,
            generation_config(preset.ppo, self.stop_ids, self.pad_id),
            guard.Shaper(preset.ppo, stats),
        )
        self.run.info(
            "reward: "
            + (
                f"the RM's eval scores (mean {stats['mean']:+.2f}, std {stats['std']:.2f}, range "
                f"{stats['min']:+.2f}..{stats['max']:+.2f}, margin {stats['margin']:+.2f})"
                + (" normalize it" if self.rollout.shaper.normalize else "")
                if stats
                else "raw scores (the reward model has no reward_stats: not trained here, or before they were kept)"
            )
        )

    def configure(self, total_steps: int) -> None:
        self.models.setup(self.strategy, self.preset, self.preset.ppo)

    # ---- one PPO step: a rollout, then the update ------------------------------------------------
    def train_step(self, group: list[list[Any]], state: Any) -> Step:
        import torch

        from coati_tui.trainer.ppo.update import update

        pp, (chunk,) = self.preset.ppo, group
        coef = state.kl_coef if state.kl_coef >= 0 else pp.kl_coef
        self.models.train(False)
        with torch.no_grad():
            exp = self.rollout.make([ids for _, ids in chunk], kl_coef=coef)
            gap = self._gap(exp, chunk) if pp.gap_every and (state.step + 1) % pp.gap_every == 0 else {}
        self.models.train(True)
        kl = float(exp.kl_per_answer("k1").mean())
        answers = len(chunk) * self.strategy.world
        state.kl_coef = guard.next_kl_coef(coef, self.strategy.reduce_mean(kl), pp.kl_target, pp.kl_horizon, answers)
        stats = update(self.models, exp, pp, self.preset, self.ptx, state, self.pad_id, self.device, self.strategy)
        self.last, self.last_chunk = exp, chunk
        tokens = exp.answer_tokens
        metrics = {
            "reward_mean": float(exp.score.mean()),
            "reward_std": float(exp.score.std()) if len(chunk) > 1 else 0.0,
            "reward_raw": float(exp.raw_score.mean()),
            "kl": kl,
            "kl_k3": float(exp.kl_per_answer("k3").mean()),
            "kl_coef": coef,
            **gap,
            "response_len": tokens / len(chunk),
            "rollout_tokens_per_s": tokens / max(exp.gen_s, 1e-9),
            "rollout_s": exp.gen_s,
            **stats,
        }
        self.metrics = metrics
        return Step(
            loss=stats["policy_loss"], lr=self.preset.train.lr, tokens=int(tokens), samples=len(chunk), metrics=metrics
        )

    def _gap(self, exp: Experience, chunk: list[Any]) -> dict[str, float]:
        """The SFT model's answers to this rollout's prompts, scored by the same RM: the policy's own gain."""
        sft = float(self.rollout.reference_scores([ids for _, ids in chunk]).mean())
        return {"reward_sft": sft, "reward_gap": float(exp.raw_score.mean()) - sft}

    def after_step(self, state: Any) -> None:
        self.raise_alarms(state.step, self.watch.check(state, self.metrics), self.preset.ppo.stop_on_alarm)
        every = self.preset.ppo.sample_every
        if every and state.step % every == 0:
            exp: Experience = self.last
            self.run.emit(
                "sample",
                step=state.step,
                prompt=self.last_chunk[0][0][-1]["content"],
                response=exp.texts(self.tokenizer)[0],
                reward=float(exp.score[0]),
            )

    def evaluate(self) -> dict[str, Any]:
        """Held-out prompts answered by the actor (the same sampling seed every time): reward, KL,
        length, and the built-in task's true score when the run has one."""
        import torch

        scorer = None
        if self.cfg.task == "demo":
            from coati_tui.data.demo import true_score as scorer
        out: dict[str, Any] = {"reward": 0.0, "reward_raw": 0.0, "kl": 0.0, "response_len": 0.0}
        if scorer:
            out["true_score"] = 0.0
        held, rb = self.held, self.preset.ppo.rollout_batch
        self.models.train(False)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.cfg.seed + 1)
            for i in range(0, len(held), rb):
                chunk = held[i : i + rb]
                exp = self.rollout.make([ids for _, ids in chunk], kl_coef=0.0, values=False)
                n = len(chunk) / len(held)
                out["reward"] += float(exp.score.mean()) * n
                out["reward_raw"] += float(exp.raw_score.mean()) * n
                out["kl"] += float(exp.kl_per_answer("k1").mean()) * n
                out["response_len"] += float(exp.rmask.sum(-1).mean()) * n
                if scorer:
                    texts = exp.texts(self.tokenizer)
                    out["true_score"] += sum(scorer(m, t) for (m, _), t in zip(chunk, texts)) / len(held)
        return out

    # ---- checkpoints and the final folder ---------------------------------------------------------
    def save(self, folder: Path) -> None:
        self.models.save(folder, self.run.main)

    def load(self, folder: Path) -> None:
        self.models.load(folder)

    def save_final(self, folder: Path) -> None:
        self.models.save_final(self.tokenizer, folder, self.end_id, self.cfg, self.run.main)

    def start_info(self) -> dict[str, Any]:
        return {
            "params": self.models.n_params,
            "trainable_params": self.models.trainable_count,
            "template": self.template,
            "end_token_id": self.end_id,
            "held_out": len(self.held),
            "prompts": len(self.items),
            "ptx_examples": len(self.ptx),
            "layout": "lean" if self.preset.ppo_lean else "four_models",
            "shared_reward": self.models.separate_rm is None,
        }


def main(run_dir: str | Path) -> None:
    with Run(run_dir) as run:
        train(PPO(run))
