"""PPO on a task built to be hacked (issue 21): does it raise the preferred attribute, or find the shortcut?

The demo's task ("list three fruits"; liked fruits score) with a shortcut the reward model learns: in
``--short-chosen`` of the preference pairs the chosen answer names only its liked fruits, so the shorter
answer wins and the RM learns length along with the preference; a policy that names fewer fruits, or none,
then scores higher with the RM and lower in truth. (``--shortcut``: a share of SFT answers that are a bare
"42.", which no pair holds; at 0.1 this RM did not reward it and nothing collapsed.) Per seed: SFT, RM,
then PPO twice from the same SFT and RM: with the defaults (adaptive KL, normalized rewards, alarms) and
with the KL control off at a zero coefficient. Printed: the true score (the liked-fruit share) before and
after, the answer length, the KL, each alarm with its step, and the first eval (every tenth of the steps)
that shows a collapse: a true score under half the SFT model's.

    python bench/ppo_hacking.py --seeds 0 1 2 3 4 [--steps 60] [--short-chosen 1.0] [--shortcut 0]
    python bench/ppo_hacking.py --setting "t1=--kl-target 1" --setting defaults   # a sweep: these settings only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from coati_tui.core import events
from coati_tui.core.flags import to_flags
from coati_tui.data import demo as task

os.environ.setdefault("OMP_NUM_THREADS", "1")


def coati(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "coati_tui", *args, "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"coati-tui {' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return [e for e in map(events.parse, proc.stdout.splitlines()) if e]


def stage(name: str, model: str, data: Path, out: Path, seed: int, *extra: str) -> list[dict]:
    spec = task.STAGES[name]
    flags = to_flags(spec["overrides"])
    settings = [f"--{k.replace('_', '-')}={v}" for k, v in spec["settings"].items() if k in ("eval_split", "max_steps")]
    return coati(
        "train",
        name,
        "--model",
        model,
        "--data",
        str(data),
        "--preset",
        "lora_naive",
        *flags,
        *settings,
        "--seed",
        str(seed),
        "--out",
        str(out),
        *extra,
    )


def prepare(folder: Path, seed: int, shortcut: float, short_chosen: float) -> dict[str, Path]:
    """The task's data, a tiny model, SFT and RM: what both PPO runs start from."""
    from coati_tui.trainer.tiny import CORPUS, build_tiny_model

    files = task.write_task(folder / "data", seed, shortcut=shortcut, short_chosen=short_chosen)
    done = folder / "rm" / "DONE"
    made = f"shortcut {shortcut} short_chosen {short_chosen}\n"
    if done.exists() and done.read_text() == made:  # a kept folder of an earlier sweep: same SFT and RM
        return files
    corpus = task.corpus() + CORPUS + list(task.SHORTCUT.values())
    build_tiny_model(folder / "model", corpus=corpus, vocab_size=512, hidden=64, layers=2, seed=seed)
    stage("sft", str(folder / "model"), files["sft"], folder / "sft", seed)
    stage("rm", str(folder / "sft"), files["prefs"], folder / "rm", seed)
    done.write_text(made)
    return files


def ppo(folder: Path, files: dict[str, Path], seed: int, steps: int, name: str, *extra: str) -> dict:
    evs = stage(
        "ppo",
        str(folder / "sft"),
        files["prompts"],
        folder / name,
        seed,
        "--reward",
        str(folder / "rm"),
        "--eval-data",
        str(files["test_prompts"]),
        "--task",
        "demo",
        "--max-steps",
        str(steps),
        "--eval-interval",
        str(max(1, steps // 10)),
        *extra,
    )
    evals = [(e["step"], e["metrics"]) for e in evs if e["type"] == "eval"]
    alarms = [(e["kind"], e["step"]) for e in evs if e["type"] == "alarm"]
    first, last = evals[0][1], evals[-1][1]
    fallen = [step for step, m in evals if m["true_score"] < first["true_score"] / 2]
    return {
        "true_before": first["true_score"],
        "true_after": last["true_score"],
        "len_before": first["response_len"],
        "len_after": last["response_len"],
        "kl_after": last["kl"],
        "alarms": alarms,
        "collapse": last["true_score"] < first["true_score"] / 2,
        "collapse_seen_at": fallen[0] if fallen else None,  # the first eval step that shows it
        "alarm_first": min((step for _, step in alarms), default=None),
    }


SETTINGS = {"defaults": (), "kl_off": ("--kl-coef", "0", "--kl-target", "0")}


def parse_setting(text: str) -> tuple[str, tuple[str, ...]]:
    """``name=--flag value ...``: a named setting; ``kl_off`` alone is the built-in one."""
    name, _, flags = text.partition("=")
    if not flags and name in SETTINGS:
        return name, SETTINGS[name]
    return name, tuple(flags.split())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--shortcut", type=float, default=0.0, help="share of SFT answers that are a bare '42.'")
    ap.add_argument("--short-chosen", type=float, default=1.0, help="share of pairs whose chosen answer is shorter")
    ap.add_argument("--keep", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    ap.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="NAME=FLAGS",
        help="a PPO run per seed with these extra flags (repeatable; default: defaults= and kl_off)",
    )
    args = ap.parse_args()
    settings = dict(parse_setting(s) for s in args.setting) if args.setting else dict(SETTINGS)
    root = args.keep or Path(tempfile.mkdtemp(prefix="ppo-hacking-"))
    print(f"# {__doc__.splitlines()[0]}")
    print(f"# shortcut {args.shortcut}, short_chosen {args.short_chosen}, {args.steps} PPO steps, runs in {root}")
    rows = []
    for seed in args.seeds:
        folder = root / f"seed-{seed}"
        files = prepare(folder, seed, args.shortcut, args.short_chosen)
        for name, extra in settings.items():
            row = {"seed": seed, "setting": name, **ppo(folder, files, seed, args.steps, f"ppo-{name}", *extra)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name in settings:
        mine = [r for r in rows if r["setting"] == name]
        gains = sum(r["true_after"] > r["true_before"] for r in mine)
        early = sum(
            r["collapse"] and r["alarm_first"] is not None and r["alarm_first"] < r["collapse_seen_at"] for r in mine
        )
        print(
            f"{name}: true score rose in {gains}/{len(mine)} seeds, collapsed in {sum(r['collapse'] for r in mine)}, "
            f"an alarm in {sum(bool(r['alarms']) for r in mine)}, an alarm before the collapse showed in {early}"
        )


if __name__ == "__main__":
    main()
