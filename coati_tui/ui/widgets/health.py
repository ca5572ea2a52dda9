"""The Train screen's side panel: throughput and, per method, its health (PPO: reward, KL and its adaptive
coefficient, the RM's raw score against the SFT model's, ratio, clipping, losses; GRPO: reward per function,
tied groups; DPO and kin: chosen vs rejected), then the reward-hacking alarms raised so far."""

from __future__ import annotations

from rich.text import Text

from coati_tui.core import events
from coati_tui.core.units import fmt_bytes


def _preference_health(text: Text, ev: dict) -> Text:
    """DPO / IPO / SimPO / ORPO / KTO: are chosen answers pulling ahead, and at what cost in drift?"""
    text.append("loss ", style="bold")
    text.append(f"{ev['loss']:.4f} · lr {ev['lr']:.2e}" + (f" · NLL {ev['nll']:.3f}" if "nll" in ev else "") + "\n")
    if "reward_desirable" in ev:  # KTO: unpaired
        text.append("reward ", style="bold")
        text.append(f"good {ev['reward_desirable']:+.3f} · bad {ev['reward_undesirable']:+.3f}\n")
    else:
        falling = ev.get("logp_chosen", 0) < ev.get("logp_rejected", 0)  # chosen less likely than rejected
        text.append("reward ", style="bold")
        text.append(
            f"chosen {ev['chosen_reward']:+.3f} · rejected {ev['rejected_reward']:+.3f} · margin "
            f"{ev['margin']:+.3f} · accuracy {ev['accuracy']:.0%}\n"
        )
        text.append("log-prob/token ", style="bold")
        text.append(
            f"chosen {ev.get('logp_chosen', 0):.3f} · rejected {ev.get('logp_rejected', 0):.3f}\n",
            style="yellow" if falling else "",
        )
    if "kl" in ev:
        text.append("drift ", style="bold")
        text.append(f"{ev['kl']:+.3f} nats/token from the reference", style="yellow" if abs(ev["kl"]) > 1 else "")
    return text


def _grpo_health(text: Text, ev: dict) -> Text:
    """GRPO: is the reward rising, do the groups still disagree (ties teach nothing), how far the drift?"""
    tied = ev.get("tied_frac", 0)
    text.append("reward ", style="bold")
    text.append(f"{ev['reward_mean']:+.3f} ± {ev.get('reward_std', 0):.2f}")
    fns = [(k.split("/", 1)[1], v) for k, v in ev.items() if k.startswith("reward/")]
    text.append(("  (" + " · ".join(f"{k} {v:+.3f}" for k, v in fns) + ")") if fns else "")
    text.append("\ngroups ", style="bold")
    text.append(
        f"tied {tied:.0%}" + (f" · sampled again {ev['resampled']}" if ev.get("resampled") else "") + "\n",
        style="yellow" if tied > 0.5 else "",
    )
    text.append("KL ", style="bold")
    text.append(f"{ev.get('kl', 0):.4f} · ")
    text.append("ratio ", style="bold")
    text.append(
        f"max {ev.get('max_ratio', 1):.2f} · clip {ev.get('clip_frac', 0):.0%}\n",
        style="yellow" if ev.get("max_ratio", 1) > 2 else "",
    )
    text.append(
        f"loss {ev['loss']:+.4f} · entropy {ev.get('entropy', 0):.3f} · answer {ev.get('response_len', 0):.1f} tok · "
        f"rollout {ev.get('rollout_tokens_per_s', 0):,.0f} tok/s"
    )
    return text


def panel(ev: dict, alarms: list[dict] | None = None, stage: str | None = None) -> Text:
    """Throughput and progress, then the health of ``stage`` (the start event's; without one, the stage is
    told from the step's own fields by ``events.step_view``, the one table of what each stage's steps carry),
    then the alarms raised so far (trainer/ppo/guard.py)."""
    text = _speed(ev)
    HEALTH.get(events.step_view(stage, ev).stage, _loss_only)(text, ev)
    for alarm in alarms or []:
        text.append(f"\nALARM {alarm['kind']} @ {alarm['step']}: ", style="bold red")
        text.append(f"{alarm['message']}. Try: {alarm['hint']}", style="red")
    return text


def _speed(ev: dict) -> Text:
    mfu = f" · MFU {ev['mfu']:.1%}" if isinstance(ev.get("mfu"), (int, float)) else ""
    return Text(
        f"{ev['tokens_per_s']:,.0f} tok/s · {ev['samples_per_s']:.1f} samples/s{mfu}\n"
        f"step {ev['step']}/{ev['total_steps']} · ETA {ev['eta_s']:.0f} s · RSS {fmt_bytes(ev['cpu_rss'])}\n"
    )


def _loss_only(text: Text, ev: dict) -> Text:
    """SFT, RM and any stage without a panel of its own."""
    text.append(f"loss {ev['loss']:.4f} · lr {ev['lr']:.2e}")
    return text


def _ppo_health(text: Text, ev: dict) -> Text:
    """PPO: reward, KL and its coefficient, the RM's raw score against the SFT model's, ratio, losses."""
    ratio_style = "red" if ev.get("skipped_updates") else ("yellow" if ev.get("max_ratio", 1) > 2 else "")
    text.append("reward ", style="bold")
    text.append(f"{ev['reward_mean']:+.3f} ± {ev.get('reward_std', 0):.2f}  ")
    text.append("KL ", style="bold")
    coef = f" · coef {ev['kl_coef']:.3f}" if isinstance(ev.get("kl_coef"), (int, float)) else ""
    text.append(f"{ev['kl']:.3f} (k3 {ev.get('kl_k3', 0):.3f}){coef}\n")
    if isinstance(ev.get("reward_raw"), (int, float)):
        gap = f" · SFT's {ev['reward_sft']:+.2f} (gap {ev['reward_gap']:+.2f})" if "reward_gap" in ev else ""
        text.append("RM score ", style="bold")
        text.append(f"{ev['reward_raw']:+.3f}{gap}\n")
    text.append("ratio ", style="bold")
    text.append(
        f"max {ev.get('max_ratio', 1):.2f} · clip {ev.get('clip_frac', 0):.0%} · skipped "
        f"{ev.get('skipped_updates', 0)}\n",
        style=ratio_style,
    )
    text.append("loss ", style="bold")
    text.append(
        f"policy {ev.get('policy_loss', 0):+.4f} · value {ev.get('value_loss', 0):.4f}"
        + (f" · PTX {ev['ptx_loss']:.3f}" if "ptx_loss" in ev else "")
        + f"\nentropy {ev.get('entropy', 0):.3f} · answer {ev.get('response_len', 0):.1f} tok · "
        f"rollout {ev.get('rollout_tokens_per_s', 0):,.0f} tok/s"
    )
    return text


HEALTH = {  # a stage's health panel, by its events.STEP_VIEWS row
    "ppo": _ppo_health,
    "grpo": _grpo_health,
    "dpo": _preference_health,
    "orpo": _preference_health,
    "kto": _preference_health,
}
