"""One prepared GPU check: every CUDA path and GPU figure of coati-tui from one command, in minutes.

    python bench/gpu_check.py [--quick] [--out bench/gpu] [--work DIR] [--budget S] [--dry-run] [--tiny]

Made for a GPU machine that is lent rarely, for minutes, and bare (see bench/gpu/README.md and
bench/gpu_carry.sh, which builds what it lacks). Nothing is downloaded: the models are Qwen2.5-0.5B- and
1.5B-shaped configs with random weights (built on the GPU in bf16) and the tiny trained tokenizer; the
data are synthetic bilingual texts long enough that every sequence is cut at the preset's max_len.

Parts (each guarded: a failure is recorded with its error and the check goes on):
  1. planner vs measured: ``coati-tui train sft|rm|ppo ... --json --max-steps 3`` children (the trainer
     users run), lora_naive and qlora_naive x SFT/RM/PPO, gemini_offload and zero2_cpu x SFT; the step
     events' gpu_peak (torch.cuda.max_memory_allocated) and cpu_rss against ``planner.estimate`` with the
     same preset and overrides; the error per row (goal +-10%).
  2. tokens/s and MFU per preset, from part 1's step events (the first step left out): model FLOPs per
     token 6N (full fine-tune) or 4N (LoRA: forward + activation gradients, no weight gradients), N = the
     matmul parameters, + 12 * layers * seq * attention width for attention; over the card's spec-sheet
     dense bf16 peak (table CARDS) and over a measured 8192^3 bf16 matmul.
  3. PPO: part 1's lean-layout steps, and a step of ColossalChat's four-model layout under Gemini
     (and ZeRO-2 in the full check).
  4. generation through the worker's loader: 16-bit, bitsandbytes int8 and NF4, and a GPTQ folder written
     on the spot by ``coati-tui quantize``: weights footprint, peak GPU memory, decode tokens/s (greedy,
     128 tokens forced, best of 2) beside the bandwidth bound (weight bytes / memory bandwidth per token).
  5. resume under Gemini and ZeRO-2: part 1's runs checkpoint at step 2 (``--save-interval 2``); a
     ``--resume`` child repeats step 3, whose loss must equal the uninterrupted run's within 1e-4.

Time (``--budget``, default 540 s, 225 s with --quick): the essential jobs (every path once) run first, parts
1, 5, 3, 4 in that order (part 5 resumes part 1's runs); then the extra rows (QLoRA RM/PPO, ZeRO-2 PPO, the
1.5B model), each part's within its share (SHARES) of the time left after set-up. A job whose estimate
(scaled by how long the jobs so far took against theirs) does not fit is skipped and said so; each child
has a timeout.
Results: ``OUT/results.md`` (tables) and ``OUT/results.json``, rewritten after every job so a killed
check leaves what it measured; ``OUT/progress.log`` (what was printed), ``OUT/failures.log`` (the tail of
each failed child's log). ``--dry-run`` plans every part (CPU is fine), writes the model folders (the real
configs + tokenizer, no weights; a tiny folder with weights to check the builder), the data, and
``OUT/plan.json``, and prints each command it would run. ``--tiny`` runs every part on a tiny model (a smoke
run of this script itself; on a CPU the CUDA-only parts are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PY = sys.executable

# ---- models: real shapes (random weights) and a tiny one ----------------------------------------------
ARCHS: dict[str, dict[str, Any]] = {
    # the same shape as tests/arch_configs.QWEN25_05B (494,032,768 parameters)
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    # Qwen2.5-1.5B (1,543,714,304 parameters)
    "qwen2.5-1.5b": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    # widths in multiples of 64: bitsandbytes' and GPTQ's CPU kernels need whole groups of 64
    "tiny": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
}
PUBLISHED = {"qwen2.5-0.5b": 494_032_768, "qwen2.5-1.5b": 1_543_714_304}
SHORT = {"0.5b": "qwen2.5-0.5b", "1.5b": "qwen2.5-1.5b", "tiny": "tiny"}

# ---- cards: spec-sheet dense tensor-core peak (TFLOP/s, bf16 with fp32 accumulate; fp16 where a card has
# no bf16) and memory bandwidth (GB/s). Approximate; the check prints a measured matmul and copy beside them.
# Matched in order: every substring of a row in the lower-cased device name.
CARDS: list[tuple[tuple[str, ...], float, float]] = [
    (("gh200",), 989.0, 4000.0),
    (("h200",), 989.0, 4800.0),
    (("h100", "nvl"), 835.0, 3900.0),
    (("h100", "pcie"), 756.0, 2000.0),
    (("h100",), 989.0, 3350.0),
    (("a100", "80gb", "pcie"), 312.0, 1935.0),
    (("a100", "80gb"), 312.0, 2039.0),
    (("a100",), 312.0, 1555.0),
    (("l40s",), 362.0, 864.0),
    (("l40",), 181.0, 864.0),
    (("l4",), 121.0, 300.0),
    (("a6000",), 155.0, 768.0),
    (("a10",), 125.0, 600.0),
    (("4090",), 165.2, 1008.0),
    (("4080",), 97.5, 717.0),
    (("3090", "ti"), 80.0, 1008.0),
    (("3090",), 71.0, 936.0),
    (("3080", "ti"), 68.2, 912.0),
    (("3080",), 59.5, 760.0),
    (("3070",), 40.6, 448.0),
    (("3060",), 25.4, 360.0),
    (("v100",), 125.0, 900.0),
    (("t4",), 65.0, 320.0),
]


def card_spec(name: str) -> tuple[float, float] | None:
    """(peak FLOP/s, bandwidth B/s) of a card by its name, or None when the table lacks it."""
    low = name.lower()
    for keys, tflops, gbps in CARDS:
        if all(k in low for k in keys):
            return tflops * 1e12, gbps * 1e9
    return None


def flops_per_token(arch: Any, stage: str, full_finetune: bool, seq: int) -> float:
    """Model FLOPs per trained token (no recomputation counted): 6N for a full fine-tune, 4N under LoRA
    (forward 2N + activation gradients 2N; the adapters' own gradients are negligible), N = the parameters
    inside matmuls (decoder linears + the LM head; a reward model's head is one column), + attention's
    QK^T and AV: 4 * layers * seq * width forward, twice that backward."""
    head = arch.vocab * arch.hidden if stage != "rm" else arch.hidden
    n = arch.layers * arch.layer_linear_params + head
    attn = 4 * arch.layers * seq * arch.heads * arch.head_dim
    return (6 if full_finetune else 4) * n + 3 * attn


# ---- what runs, in order, and what each part may spend -------------------------------------------------
PART_NAMES = {
    0: "set-up: stacks, model folders, the card",
    1: "planner vs measured memory",
    2: "tokens/s and MFU per preset",
    3: "PPO: lean layout and four models under Gemini",
    4: "generation: 16-bit, int8, NF4, GPTQ",
    5: "resume under Gemini and ZeRO-2",
}
# Time: first every path once (the essential jobs, in the order below: part 5 right after part 1, whose runs it
# resumes), then the extra rows, each part's within its share of the time left after set-up.
EXEC_ORDER = (1, 5, 3, 4)
SHARES = {1: 0.5, 3: 0.12, 4: 0.2, 5: 0.18}
EST = {"sft": 18.0, "rm": 22.0, "ppo": 35.0, "ppo4": 45.0, "resume": 30.0, "gen": 12.0, "quantize": 75.0}
SIZE = {"qwen2.5-0.5b": 1.0, "qwen2.5-1.5b": 1.6, "tiny": 0.6}
PRESET_COST = {"lora_naive": 1.0, "qlora_naive": 1.3, "gemini_offload": 1.8, "zero2_cpu": 1.8}
PRESET_SHORT = {"lora_naive": "lora", "qlora_naive": "qlora", "gemini_offload": "gemini", "zero2_cpu": "zero2"}
COLOSSAL = ("gemini_offload", "zero2_cpu")
# PPO rows: shorter than the presets' 256-token prompts + 128-token answers, so a rollout takes seconds;
# train.max_len = prompt + answer, the length the planner counts for PPO
PPO_OVERRIDES = {"train.max_len": 256, "ppo.max_prompt_len": 128, "ppo.max_new_tokens": 128}
GEN_NEW = 128
QUANT_MODES = {"16bit": "none", "int8": "8bit", "nf4": "4bit", "gptq": "gptq"}


@dataclass
class Job:
    key: str
    part: int
    kind: str  # train | resume | quantize | gen
    title: str
    model: str = ""  # an ARCHS key
    preset: str = ""
    stage: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    deps: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # cuda, bitsandbytes, colossalai, gptqmodel
    est_s: float = 30.0
    cmd: list[str] = field(default_factory=list)
    run_dir: str = ""
    quant: str = ""
    planned: dict[str, Any] = field(default_factory=dict)  # the planner's figures
    result: dict[str, Any] = field(default_factory=dict)
    tier: int = 1  # 1: essential (every path once), 2: an extra row, run when its part's share allows


# ---- data ---------------------------------------------------------------------------------------------
def _sentences() -> list[str]:
    from coati_tui.data import demo
    from coati_tui.trainer.tiny import CORPUS  # torch-free at import

    fruit = [
        demo.answer(random.Random(i).sample(demo.FRUITS[lang]["liked"] + demo.FRUITS[lang]["disliked"], 3), lang)
        for i, lang in enumerate(["en", "zh"] * 6)
    ]
    return list(CORPUS) + fruit


def _long(rng: random.Random, sentences: list[str], n: int) -> str:
    return " ".join(rng.choice(sentences) for _ in range(n))


def write_data(folder: Path) -> dict[str, str]:
    """SFT chats, preference pairs and PPO prompts, long enough (~900+ tokens an answer, ~300 a prompt)
    that every sequence is cut at max_len: then the tokens a step trains are the ones the planner counts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, s = random.Random(0), _sentences()
    questions = ["List three fruits.", "请列出三种水果。", "Tell me a long story.", "请写一段很长的文字。"]
    rows = {
        "sft": [
            {
                "messages": [
                    {"role": "user", "content": questions[i % 4]},
                    {"role": "assistant", "content": _long(rng, s, 60)},
                ]
            }
            for i in range(160)
        ],
        "prefs": [
            {"prompt": questions[i % 4], "chosen": _long(rng, s, 60), "rejected": _long(rng, s, 60)} for i in range(128)
        ],
        "prompts": [{"prompt": _long(rng, s, 20) + " " + questions[i % 4]} for i in range(64)],
    }
    out = {}
    for name, records in rows.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        out[name] = str(path)
    return out


# ---- children of this script (the heavy work runs in child processes; this one never imports torch) ---
def child_build(arch_key: str, dest: str, weights: bool, data: list[str]) -> dict[str, Any]:
    """A model folder: the tiny trained tokenizer + the config (+ random bf16 weights, built on the GPU
    when there is one), and the shortest record of each data file in tokens."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from coati_tui.data import formats
    from coati_tui.data.tokenize import render
    from coati_tui.trainer.tiny import train_tokenizer

    t0 = time.perf_counter()
    cfg = dict(ARCHS[arch_key])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    tok = train_tokenizer()
    end = tok.convert_tokens_to_ids("<|end|>")
    config.pad_token_id, config.bos_token_id, config.eos_token_id = tok.pad_token_id, tok.bos_token_id, end
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    params = None
    if weights:
        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if cuda else torch.float32
        key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            model = AutoModelForCausalLM.from_config(config, **{key: dtype})
        model.generation_config = GenerationConfig(
            eos_token_id=end, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id
        )
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(out)
        del model
    else:
        config.save_pretrained(out)
    tok.save_pretrained(out)
    lengths = {}
    for path in data:
        kind, _, _ = formats.sniff(path, preview=0)
        if kind == "sft":
            texts = [render(tok, c, False) for c in formats.load_sft(path)]
        elif kind == "prompts":
            texts = [render(tok, c, True) for c in formats.load_prompts(path)]
        else:
            texts = [render(tok, p.prompt + p.rejected, False) for p in formats.load_preferences(path)]
        lengths[Path(path).stem] = min(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {
        "built_params": params,
        "weights": weights,
        "seconds": round(time.perf_counter() - t0, 1),
        "min_tokens": lengths,
    }


def child_probe() -> dict[str, Any]:
    """The card: name, memory, bf16, a timed bf16 matmul (8192^3, mean of 10 after 3 warm-ups) and a
    device-to-device copy (bytes read + written)."""
    import torch

    from coati_tui.trainer.malloc import describe

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "allocator": describe(),  # the children's (core/procenv.py): mimalloc where its wheel was carried
    }
    if not torch.cuda.is_available():
        return info
    p = torch.cuda.get_device_properties(0)
    info.update(
        name=p.name,
        total_bytes=p.total_memory,
        cc=f"{p.major}.{p.minor}",
        sms=p.multi_processor_count,
        bf16=torch.cuda.is_bf16_supported(),
    )
    dtype = torch.bfloat16 if info["bf16"] else torch.float16
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    stop.record()
    torch.cuda.synchronize()
    info["matmul_flops"] = 2 * n**3 * 10 / (start.elapsed_time(stop) / 1e3)
    del a, b
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    start.record()
    for _ in range(10):
        y.copy_(x)
    stop.record()
    torch.cuda.synchronize()
    info["copy_bytes_per_s"] = 2 * x.numel() * 10 / (start.elapsed_time(stop) / 1e3)
    return info


IMPORT_CHECKS = {
    # what each stack must do here before its rows are worth a child
    "bitsandbytes": "import torch, bitsandbytes as bnb; v = bnb.__version__\n"
    "if torch.cuda.is_available():\n"
    "    import bitsandbytes.functional as F\n"
    "    x = torch.randn(64, 64, device='cuda', dtype=torch.bfloat16)\n"
    "    q, s = F.quantize_4bit(x, quant_type='nf4'); F.dequantize_4bit(q, s)\n"
    "print(v)",
    "colossalai": "import colossalai; from colossalai.booster import Booster\n"
    "from colossalai.booster.plugin import GeminiPlugin, LowLevelZeroPlugin\n"
    "from colossalai.nn.optimizer import HybridAdam\nprint(colossalai.__version__)",
    "gptqmodel": "import gptqmodel, optimum; from gptqmodel import GPTQModel, QuantizeConfig\n"
    "print(gptqmodel.__version__)",
}


def child_warm() -> dict[str, Any]:
    """colossalai builds HybridAdam's kernels (CPU Adam, fused CUDA Adam) with nvcc the first time one is
    made: here, in the background, while the naive rows run, rather than inside the first Gemini run."""
    import torch
    from colossalai.nn.optimizer import HybridAdam

    t0 = time.perf_counter()
    p = torch.nn.Parameter(torch.zeros(64, device="cuda"))
    opt = HybridAdam([p], lr=1e-3)  # loads (building when first) both kernels
    out: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1)}
    try:
        p.grad = torch.ones_like(p)
        opt.step()
        out["step"] = "ok"
    except Exception as exc:  # the kernels loaded; a lone step outside a booster is only a bonus
        out["step"] = f"{type(exc).__name__}: {exc}"
    return out


def child_gen(model: str, quant: str, new: int) -> dict[str, Any]:
    """Load as ``coati-tui generate`` does (the worker's loader), then time greedy decoding of ``new``
    forced tokens for one short prompt (best of 2, after a warm-up)."""
    import torch
    from transformers import GenerationConfig

    from coati_tui.data.tokenize import render
    from coati_tui.worker.generate import load

    m, tok, info = load(model, quant, "auto")
    text = render(tok, [{"role": "user", "content": "请列出三种水果。 List three fruits, please."}], True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False).to(info["device"])
    gen = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    cuda = info["device"] == "cuda"
    with torch.no_grad():
        m.generate(
            **enc,
            generation_config=GenerationConfig(
                max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
            ),
        )
    best = float("inf")
    for _ in range(2):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = m.generate(**enc, generation_config=gen)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    assert out.shape[1] - enc["input_ids"].shape[1] == new
    return {
        "weights_bytes": info["memory_bytes"],
        "dtype": info["dtype"],
        "quant": info["quant"],
        "device": info["device"],
        "load_s": round(info["load_s"], 2),
        "tokens_per_s": new / best,
        "gpu_peak": torch.cuda.max_memory_allocated() if cuda else None,
    }


def child_main(args: argparse.Namespace) -> None:
    if args.child == "probe":
        out = child_probe()
    elif args.child == "build":
        out = child_build(args.arch, args.dest, not args.no_weights, args.data or [])
    elif args.child == "warm":
        out = child_warm()
    elif args.child == "gen":
        out = child_gen(args.model, args.quant, args.new)
    else:
        raise SystemExit(f"unknown child {args.child}")
    print("RESULT " + json.dumps(out), flush=True)


# ---- running children ---------------------------------------------------------------------------------
class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.monotonic()
        self.out = Path(args.out).absolute()
        self.work = Path(args.work).absolute()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        # this process plans with the shipped presets, as the children train with them (no user's own)
        os.environ["COATI_TUI_HOME"] = str(self.work / "home")
        for d in ("logs", "runs", "models", "presets", "home"):
            (self.work / d).mkdir(exist_ok=True)
        self.log = open(self.out / ("plan.log" if args.dry_run else "progress.log"), "w", encoding="utf-8")
        self.deadline = self.t0 + args.budget
        self.jobs: list[Job] = []
        self.by_key: dict[str, Job] = {}
        self.machine: dict[str, Any] = {}
        self.stacks: dict[str, dict[str, Any]] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.ratios: list[float] = []
        self.wanted: set[int] = {int(x) for x in args.parts.split(",")}
        self.spent: dict[int, float] = {}  # part -> seconds its jobs took
        self.usable = 0.0  # seconds left after set-up: what the shares divide
        self.data: dict[str, str] = {}
        default_models = "0.5b" if args.quick else "0.5b,1.5b"
        self.model_keys = (
            ["tiny"] if args.tiny else [SHORT[k.strip()] for k in (args.models or default_models).split(",")]
        )
        self.device, self.bf16 = "cuda", True  # what the planner plans for (a CPU smoke run: RAM)
        self.live: set[subprocess.Popen] = set()
        self.warm: subprocess.Popen | None = None
        self.warm_result: dict[str, Any] = {}
        self.env = self._env()

    def _env(self) -> dict[str, str]:
        from coati_tui.core.procenv import child_env

        return child_env(
            PYTHONUNBUFFERED="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            COATI_TUI_HOME=str(self.work / "home"),
            TOKENIZERS_PARALLELISM="false",
        )

    def say(self, message: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f}s] {message}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spawn(self, cmd: list[str], name: str, pipe: bool = True) -> subprocess.Popen:
        """Start a child in its own process group (a timeout ends its whole tree); stderr to logs/NAME.log,
        stdout to a pipe, or (``pipe=False``, for children left running in the background, which must not
        block on a full pipe) to logs/NAME.out."""
        err = open(self.work / "logs" / f"{name}.log", "w", encoding="utf-8")
        out = subprocess.PIPE if pipe else open(self.work / "logs" / f"{name}.out", "w", encoding="utf-8")
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=err,
            text=True,
            encoding="utf-8",
            errors="replace",
            cwd=self.work,
            env=self.env,
            bufsize=1,
            preexec_fn=os.setpgrp,
        )
        err.close()
        if not pipe:
            out.close()
        self.live.add(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def run(self, cmd: list[str], name: str, timeout: float, on_line=None) -> dict[str, Any]:
        """Run a child to its end or ``timeout``; its stdout lines go to ``on_line`` and to
        logs/NAME.out, its stderr to logs/NAME.log."""
        start = time.monotonic()
        proc = self.spawn(cmd, name)
        timer = threading.Timer(max(1.0, timeout), self.kill, (proc,))
        timer.start()
        lines = []
        assert proc.stdout is not None
        with open(self.work / "logs" / f"{name}.out", "w", encoding="utf-8") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                lines.append(line)
                if on_line:
                    on_line(line)
        rc = proc.wait()
        timer.cancel()
        self.live.discard(proc)
        wall = time.monotonic() - start
        return {
            "rc": rc,
            "lines": lines,
            "wall_s": round(wall, 1),
            "timed_out": rc == -signal.SIGKILL and wall >= timeout - 1,
            "log": str(self.work / "logs" / f"{name}.log"),
        }

    def finish(self, proc: subprocess.Popen, name: str, timeout: float) -> tuple[bool, list[str]]:
        """Wait for a background child (``spawn(pipe=False)``) up to ``timeout``: (exit 0, its stdout lines)."""
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            self.kill(proc)
            proc.wait()
        self.live.discard(proc)
        return proc.returncode == 0, self.log_tail(str(self.work / "logs" / f"{name}.out"), 10_000)

    def log_tail(self, path: str, n: int = 25) -> list[str]:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def child_cmd(self, *argv: str) -> list[str]:
        return [PY, str(HERE), "--child", *argv]

    @staticmethod
    def result_of(lines: list[str]) -> dict[str, Any] | None:
        for line in reversed(lines):
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        return None

    def calibration(self) -> float:
        """How long jobs took against their estimates so far (the median ratio, within 0.3-3)."""
        return min(3.0, max(0.3, statistics.median(self.ratios))) if self.ratios else 1.0

    def close_children(self) -> None:
        for proc in list(self.live):
            self.kill(proc)


# ---- planning -----------------------------------------------------------------------------------------
def model_dir(check: Check, arch_key: str) -> str:
    return str(check.work / "models" / arch_key)


def run_dir(check: Check, key: str) -> str:
    return str(check.work / "runs" / key)


def preset_arg(check: Check, name: str, overrides: dict[str, Any], tag: str) -> tuple[str, list[str]]:
    """(the --preset argument, the flags) giving ``name`` with ``overrides``: keys with a `train` flag become
    flags, the others go into a preset file written beside the runs (a copy of the shipped preset)."""
    from coati_tui.core import flags, presets

    flagged = {k: v for k, v in overrides.items() if k in flags.BY_KEY}
    other = {k: v for k, v in overrides.items() if k not in flags.BY_KEY}
    if not other:
        return name, flags.to_flags(flagged)
    import tomli_w

    path = check.work / "presets" / f"{name}-{tag}.toml"
    path.write_text(tomli_w.dumps(presets.load(name).with_overrides(other).to_dict()), encoding="utf-8")
    return str(path), flags.to_flags(flagged)


def planner_figures(
    arch_key: str, preset_name: str, stage: str, overrides: dict[str, Any], device: str, bf16: bool = True
) -> dict[str, Any]:
    from coati_tui.core import modelinfo, planner, presets

    arch = modelinfo.Arch.from_config(ARCHS[arch_key])
    preset = presets.load(preset_name).with_overrides(overrides)
    batch, seq = preset.train.batch_size, preset.train.max_len
    dev, host, alt, precision = planner.estimate(arch, preset, stage, batch, seq, device, bf16)
    out = {
        "device": device,
        "gpu_bytes": sum(dev.values()),
        "cpu_bytes": sum(host.values()),
        "gpu": dev,
        "cpu": host,
        "precision": precision,
        "batch_size": batch,
        "seq_len": seq,
        "accumulation_steps": preset.train.accumulation_steps,
        "full_finetune": preset.full_finetune,
        "ppo_lean": preset.ppo_lean,
        "speed": preset.speed,
    }
    if stage in ("sft", "rm"):
        out["flops_per_token"] = flops_per_token(arch, stage, preset.full_finetune, seq)
    return out


def train_job(
    check: Check,
    part: int,
    model: str,
    preset: str,
    stage: str,
    *,
    steps: int,
    save: int = 0,
    src: str = "",
    reward: str = "",
    deps: list[str] | None = None,
    kind: str | None = None,
    key: str | None = None,
) -> Job:
    """A `coati-tui train` child: ``src`` / ``reward`` name earlier jobs whose run folders are the model /
    the reward model (else the base folder)."""
    data = check.data
    overrides = dict(PPO_OVERRIDES) if stage == "ppo" else {}
    key = key or f"{stage}-{PRESET_SHORT[preset]}-{model.split('-')[-1]}"
    tag = f"{stage}-{model}"
    preset_value, flag_args = preset_arg(check, preset, overrides, tag)
    model_path = run_dir(check, src) if src else model_dir(check, model)
    cmd = [
        PY,
        "-m",
        "coati_tui",
        "train",
        stage,
        "--model",
        model_path,
        "--data",
        data["prompts"] if stage == "ppo" else data["prefs"] if stage == "rm" else data["sft"],
    ]
    if stage == "ppo":
        cmd += ["--reward", run_dir(check, reward) if reward else model_dir(check, model), "--ptx", data["sft"]]
    cmd += [
        "--preset",
        preset_value,
        "--out",
        run_dir(check, key),
        "--max-steps",
        str(steps),
        "--save-interval",
        str(save),
        "--eval-split",
        "0",
        "--seed",
        "0",
        *flag_args,
        "--json",
    ]
    needs = ["cuda", "colossalai"] if preset in COLOSSAL else ["bitsandbytes"] if preset == "qlora_naive" else []
    kind_est = kind or stage
    # EST is for 3 steps; about half of a child's time is its start (imports, CUDA, loading) and end (saving)
    est = EST[kind_est] * SIZE[model] * PRESET_COST[preset] * (0.5 + steps / 6)
    title = f"{stage} {preset} {model}" + (" (four models)" if kind == "ppo4" else "")
    job = Job(
        key,
        part,
        "train",
        title,
        model=model,
        preset=preset,
        stage=stage,
        overrides=overrides,
        deps=list(deps or []),
        needs=needs,
        est_s=est,
        cmd=cmd,
        run_dir=run_dir(check, key),
    )
    job.planned = planner_figures(model, preset, stage, overrides, check.device, check.bf16)
    job.planned["steps"], job.planned["save_interval"] = steps, save
    return job


def plan(check: Check) -> list[Job]:
    a = check.args
    models = check.model_keys
    first = models[0]
    quick = a.quick
    steps = 2 if quick else 3
    jobs: list[Job] = []

    def add(job: Job) -> Job:
        jobs.append(job)
        return job

    s = first.split("-")[-1]
    tiny = first == "tiny"  # a smoke run: the LoRA SFT run also checkpoints, so part 5 resumes it on a CPU too
    if check.wanted & {1, 3, 5}:
        add(train_job(check, 1, first, "lora_naive", "sft", steps=3 if tiny else steps, save=2 if tiny else 0))
        add(train_job(check, 1, first, "lora_naive", "rm", steps=steps, src=f"sft-lora-{s}", deps=[f"sft-lora-{s}"]))
        add(
            train_job(
                check,
                1,
                first,
                "lora_naive",
                "ppo",
                steps=steps,
                src=f"sft-lora-{s}",
                reward=f"rm-lora-{s}",
                deps=[f"sft-lora-{s}", f"rm-lora-{s}"],
            )
        )
        add(train_job(check, 1, first, "qlora_naive", "sft", steps=steps))
        if not quick:  # QLoRA trains from a merged model (the loader refuses an adapter under a 4-bit base)
            add(train_job(check, 1, first, "qlora_naive", "rm", steps=steps))
            add(
                train_job(
                    check, 1, first, "qlora_naive", "ppo", steps=steps, reward=f"rm-qlora-{s}", deps=[f"rm-qlora-{s}"]
                )
            )
        for preset in COLOSSAL:  # --save-interval 2: the checkpoint part 5 resumes from
            add(train_job(check, 1, first, preset, "sft", steps=3, save=2))
        for second in models[1:]:
            t = second.split("-")[-1]
            for preset in ("lora_naive", "qlora_naive", *COLOSSAL):
                add(train_job(check, 1, second, preset, "sft", steps=steps))
            add(train_job(check, 1, second, "lora_naive", "rm", steps=steps))
            add(
                train_job(
                    check, 1, second, "lora_naive", "ppo", steps=steps, reward=f"rm-lora-{t}", deps=[f"rm-lora-{t}"]
                )
            )
    if 3 in check.wanted:
        for preset in COLOSSAL[: 1 if quick else 2]:
            add(
                train_job(
                    check,
                    3,
                    first,
                    preset,
                    "ppo",
                    steps=1 if quick else 2,
                    src=f"sft-lora-{s}",
                    reward=f"rm-lora-{s}",
                    deps=[f"sft-lora-{s}", f"rm-lora-{s}"],
                    kind="ppo4",
                    key=f"ppo4-{PRESET_SHORT[preset]}-{s}",
                )
            )
    if 4 in check.wanted:
        base = model_dir(check, first)
        gptq_dir = str(check.work / "models" / f"{first}-gptq")
        for name in ("16bit", "nf4", "int8", "quantize", "gptq"):
            if name == "quantize":
                cmd = [
                    PY,
                    "-m",
                    "coati_tui",
                    "quantize",
                    base,
                    "--calib",
                    check.data["sft"],
                    "--group-size",
                    "64",
                    "--samples",
                    "32",
                    "--max-len",
                    "256",
                    "--out",
                    gptq_dir,
                ]
                jobs.append(
                    Job(
                        "quantize",
                        4,
                        "quantize",
                        f"coati-tui quantize {first} (GPTQ 4-bit, g64)",
                        first,
                        needs=["gptqmodel"],
                        est_s=EST["quantize"] * SIZE[first],
                        cmd=cmd,
                        run_dir=gptq_dir,
                    )
                )
                continue
            folder = gptq_dir if name == "gptq" else base
            cmd = check.child_cmd("gen", "--model", folder, "--quant", QUANT_MODES[name], "--new", str(GEN_NEW))
            needs = ["gptqmodel"] if name == "gptq" else ["bitsandbytes"] if name in ("int8", "nf4") else []
            jobs.append(
                Job(
                    f"gen-{name}",
                    4,
                    "gen",
                    f"generate {name} {first}",
                    first,
                    deps=["quantize"] if name == "gptq" else [],
                    needs=needs,
                    est_s=EST["gen"] * SIZE[first],
                    cmd=cmd,
                    quant=name,
                )
            )
    if 5 in check.wanted:
        for preset in (("lora_naive",) if tiny else ()) + COLOSSAL:
            src = f"sft-{PRESET_SHORT[preset]}-{s}"
            cmd = [PY, "-m", "coati_tui", "train", "sft", "--resume", run_dir(check, src), "--json"]
            jobs.append(
                Job(
                    f"resume-{PRESET_SHORT[preset]}-{s}",
                    5,
                    "resume",
                    f"resume sft {preset} {first} at step 2",
                    first,
                    preset,
                    "sft",
                    deps=[src],
                    needs=["cuda", "colossalai"] if preset in COLOSSAL else [],
                    est_s=EST["resume"] * SIZE[first] * PRESET_COST[preset] / 2,
                    cmd=cmd,
                    run_dir=run_dir(check, src),
                )
            )
    s2 = [m.split("-")[-1] for m in models[1:]]
    extras = {"gen-int8", "quantize", "gen-gptq"} if quick else {f"rm-qlora-{s}", f"ppo-qlora-{s}", f"ppo4-zero2-{s}"}
    for j in jobs:
        if j.key in extras or j.key.split("-")[-1] in s2:
            j.tier = 2
    if 1 not in check.wanted:  # keep only the part-1 runs that parts 3 and 5 start from
        by_key = {j.key: j for j in jobs}
        needed: set[str] = set()
        todo = [d for j in jobs if j.part != 1 for d in j.deps]
        while todo:
            key = todo.pop()
            if key in by_key and key not in needed:
                needed.add(key)
                todo += by_key[key].deps
        jobs = [j for j in jobs if j.part != 1 or j.key in needed]
    return jobs


# ---- executing ----------------------------------------------------------------------------------------
def setup(check: Check) -> None:
    """Part 0: stacks (each import in its own child, in parallel), model folders, the card."""
    a = check.args
    check.say(f"part 0: {PART_NAMES[0]}")
    check.data = write_data(check.work / "data")
    procs = {}
    if not a.dry_run:
        for name, code in IMPORT_CHECKS.items():
            procs[name] = check.spawn([PY, "-c", code], f"import-{name}", pipe=False)
    builds = {}
    for key in check.model_keys + (["tiny"] if a.dry_run and "tiny" not in check.model_keys else []):
        weights = not a.dry_run or key == "tiny"
        argv = ["build", "--arch", key, "--dest", model_dir(check, key), "--data", *check.data.values()]
        builds[key] = check.run(
            check.child_cmd(*argv, *([] if weights else ["--no-weights"])),
            f"build-{key}",
            timeout=max(60.0, check.left()),
        )
        res = check.result_of(builds[key]["lines"])
        if res is None:
            check.say(f"  model {key}: build FAILED: {' | '.join(check.log_tail(builds[key]['log'], 3))}")
            check.models[key] = {"ok": False, "error": check.log_tail(builds[key]["log"])}
            continue
        from coati_tui.core.modelinfo import Arch

        params = Arch.from_config(ARCHS[key]).param_count()
        check.models[key] = {"ok": True, "path": model_dir(check, key), "params": params, **res}
        what = "with random weights" if res["weights"] else "config + tokenizer only (no weights: a dry run)"
        if res["built_params"] and res["built_params"] != params:
            what += f" (transformers built {res['built_params']:,} parameters; the planner counts {params:,})"
        short = min(res["min_tokens"].values())
        check.say(
            f"  model {key}: {params / 1e6:.1f}M params, {what}, {res['seconds']} s; "
            f"shortest data record {short} tokens ({res['min_tokens']})"
        )
    for name, proc in procs.items():
        ok, lines = check.finish(proc, f"import-{name}", min(120.0, check.left()))
        version = lines[-1].strip() if ok and lines else None
        check.stacks[name] = {
            "ok": ok,
            "version": version,
            "error": None if ok else (check.log_tail(str(check.work / "logs" / f"import-{name}.log"), 1) or ["?"])[-1],
            "log_tail": [] if ok else check.log_tail(str(check.work / "logs" / f"import-{name}.log"), 12),
        }
        check.say(f"  {name}: " + (f"imports ({version})" if ok else f"does not import: {check.stacks[name]['error']}"))
    if a.dry_run:
        check.machine = {"dry_run": True, "cuda_available": None}
        for name in IMPORT_CHECKS:
            check.stacks[name] = {"ok": True, "version": "assumed (dry run)", "error": None}
        return
    probe = check.run(check.child_cmd("probe"), "probe", timeout=max(30.0, min(120.0, check.left())))
    check.machine = check.result_of(probe["lines"]) or {"error": check.log_tail(probe["log"])}
    m = check.machine
    if m.get("cuda_available"):
        spec = card_spec(m["name"])
        m["spec_flops"], m["spec_bandwidth"] = spec if spec else (None, None)
        check.say(
            f"  card: {m['name']}, {m['total_bytes'] / 2**30:.0f} GiB, cc {m['cc']}, torch {m['torch']} "
            f"(CUDA {m['cuda']}); bf16 matmul {m['matmul_flops'] / 1e12:.0f} TFLOP/s measured"
            + (f" vs {spec[0] / 1e12:.0f} spec" if spec else " (card not in the table)")
            + f"; copy {m['copy_bytes_per_s'] / 1e12:.2f} TB/s"
            + (f" vs {spec[1] / 1e12:.2f} TB/s spec" if spec else "")
        )
    else:
        check.say(f"  no CUDA device (torch {m.get('torch')}): the CUDA-only rows are skipped")
    if m.get("cuda_available"):  # the same for every child: torch's JIT builds key on the flags they give
        check.env.setdefault("MAX_JOBS", str(min(8, os.cpu_count() or 1)))
        check.env.setdefault("TORCH_CUDA_ARCH_LIST", m["cc"])
    if check.stacks.get("colossalai", {}).get("ok") and m.get("cuda_available"):
        check.warm = check.spawn(check.child_cmd("warm"), "colossalai-warm", pipe=False)
        check.say("  colossalai: building HybridAdam's kernels in the background (logs/colossalai-warm.log)")


def have(check: Check, need: str) -> str | None:
    """Why ``need`` is missing here, or None."""
    if check.args.dry_run:
        return None
    if need == "cuda":
        return None if check.machine.get("cuda_available") else "needs CUDA"
    s = check.stacks.get(need, {})
    return None if s.get("ok") else f"{need} does not import ({(s.get('error') or '')[-160:]})"


def wait_warm(check: Check) -> str | None:
    if check.warm is None:
        return None
    if not check.warm_result:
        _, lines = check.finish(check.warm, "colossalai-warm", check.left() - 30)
        res = Check.result_of(lines)
        check.warm_result = {
            "ok": res is not None,
            **(res or {}),
            "error": None if res else check.log_tail(str(check.work / "logs" / "colossalai-warm.log")),
        }
        check.say(
            "  colossalai kernels: "
            + (
                f"built in {res['seconds']} s"
                if res
                else "FAILED to build: " + " | ".join(check.warm_result["error"][-3:])
            )
        )
    return None if check.warm_result["ok"] else "colossalai's HybridAdam kernels did not build (see failures.log)"


def step_events(lines: list[str]) -> list[dict[str, Any]]:
    from coati_tui.core import events

    return [e for e in map(events.parse, lines) if e]


def analyse_train(check: Check, job: Job, evs: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a train child's events: memory before the first checkpoint, tokens/s without the
    first step, losses, the start event's layout."""
    steps = [e for e in evs if e["type"] == "step"]
    start = next((e for e in evs if e["type"] == "start"), {})
    ckpt = next((i for i, e in enumerate(evs) if e["type"] == "checkpoint"), None)
    before = [e for e in evs[:ckpt] if e["type"] == "step"] if ckpt is not None else steps
    mem = before[-1] if before else (steps[-1] if steps else {})
    tps = [e["tokens_per_s"] for e in steps[1:]] or [e["tokens_per_s"] for e in steps]
    out: dict[str, Any] = {
        "steps": len(steps),
        "losses": {e["step"]: e["loss"] for e in steps},
        "gpu_peak": mem.get("gpu_peak"),
        "gpu_peak_at_step": mem.get("step"),
        "cpu_rss": max((e["cpu_rss"] for e in before), default=None),
        "tokens_per_s": statistics.median(tps) if tps else None,
        "step_s": statistics.median([e["tokens"] / e["tokens_per_s"] for e in steps[1:] if e["tokens_per_s"]])
        if len(steps) > 1
        else None,
        "strategy": start.get("strategy"),
        "precision": start.get("precision"),
        "params": start.get("params"),
        "trainable_params": start.get("trainable_params"),
        "layout": start.get("layout"),
        "shared_reward": start.get("shared_reward"),
        "resumed_from": start.get("resumed_from"),
        "checkpoints": [e["step"] for e in evs if e["type"] == "checkpoint"],
        "done": next((e["status"] for e in evs if e["type"] == "done"), None),
    }
    if steps and "rollout_tokens_per_s" in steps[-1]:
        out["rollout_tokens_per_s"] = statistics.median(e["rollout_tokens_per_s"] for e in steps)
        out["rollout_s"] = statistics.median(e["rollout_s"] for e in steps)
    p = job.planned  # empty for a resume: its figures are the losses
    got = out["gpu_peak"] if p.get("device") == "cuda" else out["cpu_rss"]
    pred = p.get("gpu_bytes") if p.get("device") == "cuda" else p.get("cpu_bytes")
    if got and pred:
        out["mem_error"] = (pred - got) / got
    if p.get("device") == "cuda" and out["cpu_rss"]:
        out["cpu_error"] = (p["cpu_bytes"] - out["cpu_rss"]) / out["cpu_rss"]
    m = check.machine
    if p.get("flops_per_token") and out["tokens_per_s"]:
        achieved = p["flops_per_token"] * out["tokens_per_s"]
        out["model_flops_per_s"] = achieved
        if m.get("spec_flops"):
            out["mfu"] = achieved / m["spec_flops"]
        if m.get("matmul_flops"):
            out["mfu_of_matmul"] = achieved / m["matmul_flops"]
    return out


def gib(x: float | None) -> str:
    from coati_tui.core.units import fmt_bytes

    return "-" if not x else fmt_bytes(int(x))


def execute(check: Check, job: Job) -> None:
    """Run one job (or say why not), then record its result."""
    for dep in job.deps:
        d = check.by_key.get(dep)
        if d is None or d.result.get("status") != "ok":
            why = "not planned" if d is None else d.result.get("status", "not run")
            job.result = {"status": "skipped", "reason": f"needs {dep}, which {why}"}
            return
    for need in job.needs:
        why = have(check, need)
        if why:
            job.result = {"status": "skipped", "reason": why}
            return
    if job.model and not check.models.get(job.model, {}).get("ok"):
        job.result = {"status": "skipped", "reason": f"model {job.model} was not built"}
        return
    if "colossalai" in job.needs:
        why = wait_warm(check)
        if why:
            job.result = {"status": "skipped", "reason": why}
            return
    est = job.est_s * check.calibration()
    part_left = SHARES[job.part] * check.usable - check.spent.get(job.part, 0.0)
    if est > check.left() or (job.tier == 2 and est > part_left):
        where = f"part {job.part}'s share has {max(0.0, part_left):.0f} s left, " if job.tier == 2 else ""
        job.result = {
            "status": "skipped",
            "reason": f"time: needs ~{est:.0f} s; {where}{check.left():.0f} s left in all",
        }
        return
    timeout = min(check.left(), max(90.0, 3 * est))
    check.say(f"  {job.key}: {job.title} (~{est:.0f} s)")

    def on_line(line: str) -> None:
        if line.startswith("{") and '"type": "step"' in line:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                return
            mem = f"gpu_peak {gib(e.get('gpu_peak'))}" if e.get("gpu_peak") else f"rss {gib(e.get('cpu_rss'))}"
            check.say(
                f"    step {e['step']}/{e['total_steps']} loss {e['loss']:.4f} {mem} {e['tokens_per_s']:.0f} tok/s"
            )

    r = check.run(job.cmd, job.key, timeout, on_line)
    check.spent[job.part] = check.spent.get(job.part, 0.0) + r["wall_s"]
    res: dict[str, Any] = {"wall_s": r["wall_s"], "rc": r["rc"], "log": r["log"]}
    if job.kind in ("train", "resume"):
        evs = step_events(r["lines"])
        res.update(analyse_train(check, job, evs))
        err = next((e for e in evs if e["type"] == "error"), None)
        ok = r["rc"] == 0 and res["done"] == "completed" and res["steps"] > 0
        if err:
            res["error"] = f"{err['kind']}: {err['message']}"
            res["log_tail"] = err.get("log_tail", [])[-15:]
    elif job.kind == "gen":
        got = Check.result_of(r["lines"])
        ok = r["rc"] == 0 and got is not None
        res.update(got or {})
    else:  # quantize
        ok = r["rc"] == 0 and (Path(job.run_dir) / "config.json").is_file()
        res["seconds"] = r["wall_s"]
    if r["timed_out"]:
        res["status"], res["reason"] = "timeout", f"killed after {timeout:.0f} s"
    elif ok:
        res["status"] = "ok"
        check.ratios.append(r["wall_s"] / max(job.est_s, 1.0))
    else:
        res["status"] = "failed"
    if res["status"] != "ok":
        res.setdefault("log_tail", check.log_tail(r["log"]))
        res.setdefault("error", res["log_tail"][-1] if res["log_tail"] else f"exit {r['rc']}")
    job.result = res
    try:
        summary(check, job)
    except Exception as exc:  # a line of progress must not cost the job its figures
        check.say(f"    ({job.result['status']}; its summary line failed: {type(exc).__name__}: {exc})")


def prune(check: Check) -> None:
    """Free the disk: the weights of a run no job still to come starts from (its final/, checkpoints/ and
    sharded weights go; config, events and logs stay). A 0.5B Gemini checkpoint alone is ~7 GB."""
    if check.args.keep:
        return
    waiting = {d for j in check.jobs if not j.result for d in j.deps}
    for j in check.jobs:
        if j.kind != "train" or not j.result or j.key in waiting:
            continue
        for name in ("final", "checkpoints", "final.weights"):
            path = Path(j.run_dir) / name
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)


def summary(check: Check, job: Job) -> None:
    r, p = job.result, job.planned
    if r["status"] != "ok":
        check.say(f"    {r['status'].upper()} after {r.get('wall_s', 0)} s: {str(r.get('error', ''))[:300]}")
        return
    if job.kind == "train":
        where = "GPU" if p["device"] == "cuda" else "RAM"
        got = r["gpu_peak"] if p["device"] == "cuda" else r["cpu_rss"]
        want = p["gpu_bytes"] if p["device"] == "cuda" else p["cpu_bytes"]
        err = f"{r['mem_error']:+.1%}" if r.get("mem_error") is not None else "-"
        extra = f", MFU {r['mfu']:.1%}" if r.get("mfu") else ""
        check.say(
            f"    ok in {r['wall_s']} s: {where} {gib(got)} measured, planner {gib(want)} ({err}); "
            f"RSS {gib(r['cpu_rss'])} (planner {gib(p['cpu_bytes'])}); {r['tokens_per_s'] or 0:.0f} tok/s{extra}"
        )
    elif job.kind == "resume":
        whole = check.by_key[job.deps[0]].result.get("losses", {})
        same = [
            f"step {k}: {whole[k]:.6f} vs {v:.6f} (diff {abs(whole[k] - v):.1e})"
            for k, v in r["losses"].items()
            if k in whole
        ]
        ok = bool(same) and all(abs(whole[k] - v) <= 1e-4 for k, v in r["losses"].items() if k in whole)
        check.say(
            f"    ok in {r['wall_s']} s: resumed from step {r.get('resumed_from')}; {'; '.join(same)} -> "
            + ("equal within 1e-4" if ok else "NOT equal within 1e-4")
        )
    elif job.kind == "gen":
        check.say(
            f"    ok in {r['wall_s']} s: weights {gib(r['weights_bytes'])}, peak {gib(r['gpu_peak'])}, "
            f"{r['tokens_per_s']:.1f} tok/s ({r['dtype']})"
        )
    else:
        check.say(f"    ok in {r['wall_s']} s: {job.run_dir}")


# ---- results ------------------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def resume_rows(check: Check) -> list[dict[str, Any]]:
    rows = []
    for job in check.jobs:
        if job.kind != "resume" or job.result.get("status") != "ok":
            continue
        whole = check.by_key[job.deps[0]].result.get("losses", {})
        again = job.result.get("losses", {})
        common = sorted(set(whole) & set(again))
        diffs = {s: abs(whole[s] - again[s]) for s in common}
        rows.append(
            {
                "key": job.key,
                "preset": job.preset,
                "resumed_from": job.result.get("resumed_from"),
                "steps": common,
                "whole": {s: whole[s] for s in common},
                "resumed": {s: again[s] for s in common},
                "max_diff": max(diffs.values()) if diffs else None,
                "ok": bool(diffs) and max(diffs.values()) <= 1e-4 and job.result.get("resumed_from") == 2,
            }
        )
    return rows


def report(check: Check, final: bool = False) -> None:
    """results.json and results.md, rewritten after every job; a bug here must not stop the check."""
    try:
        write_results(check, final)
    except Exception as exc:
        check.say(f"  (results.md could not be written: {type(exc).__name__}: {exc}; results.json holds the figures)")


def write_results(check: Check, final: bool) -> None:
    m = check.machine
    elapsed = time.monotonic() - check.t0
    data = {
        "mode": "quick" if check.args.quick else "full",
        "tiny": check.args.tiny,
        "budget_s": check.args.budget,
        "elapsed_s": round(elapsed, 1),
        "finished": final,
        "machine": m,
        "stacks": check.stacks,
        "colossalai_kernels": check.warm_result,
        "models": check.models,
        "jobs": [asdict(j) for j in check.jobs],
        "resume": resume_rows(check),
    }
    (check.out / "results.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    L = [f"# GPU check: {m.get('name', 'no CUDA device')}", ""]
    L.append(
        f"torch {m.get('torch')} (CUDA {m.get('cuda')}); children's allocator {m.get('allocator', '?')}; "
        f"mode {data['mode']}"
        f"{' (tiny model)' if check.args.tiny else ''}; "
        f"{elapsed:.0f} s of a {check.args.budget:.0f} s budget{'' if final else ' (still running or killed)'}."
    )
    stk = ", ".join(f"{k} {v['version'] if v['ok'] else 'missing'}" for k, v in check.stacks.items())
    L.append(
        f"Stacks: {stk}."
        + (
            f" colossalai kernels: built in {check.warm_result.get('seconds')} s."
            if check.warm_result.get("ok")
            else ""
        )
    )
    if m.get("matmul_flops"):
        L.append(
            f"Card: bf16 matmul {m['matmul_flops'] / 1e12:.0f} TFLOP/s measured, "
            f"{(m.get('spec_flops') or 0) / 1e12:.0f} spec; copy {m['copy_bytes_per_s'] / 1e9:.0f} GB/s measured, "
            f"{(m.get('spec_bandwidth') or 0) / 1e9:.0f} spec."
        )
    train = [j for j in check.jobs if j.kind == "train"]
    L += [
        "",
        "## 1. Planner vs measured (goal: error within +-10%)",
        "",
        "measured: the step events' gpu_peak (torch.cuda.max_memory_allocated) up to the last step before any "
        "checkpoint, and the largest cpu_rss; planner: `planner.estimate` with the run's preset and overrides.",
        "",
        "| model | preset | stage | batch x seq | planner GPU | measured GPU | error | planner RAM | measured RSS | "
        "RAM error | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j in train:
        r, p = j.result, j.planned
        L.append(
            f"| {j.model} | {j.preset} | {j.stage}{' (4 models)' if j.part == 3 else ''} | "
            f"{p['batch_size']} x {p['seq_len']} | {gib(p['gpu_bytes'])} | {gib(r.get('gpu_peak'))} | "
            f"{pct(r.get('mem_error')) if p['device'] == 'cuda' else '-'} | {gib(p['cpu_bytes'])} | "
            f"{gib(r.get('cpu_rss'))} | {pct(r.get('cpu_error') if p['device'] == 'cuda' else r.get('mem_error'))} | "
            f"{r.get('status', 'not run')} |"
        )
    L += [
        "",
        "## 2. Throughput and MFU (SFT and RM rows; the first step left out)",
        "",
        "model FLOPs/token: 6N full fine-tune, 4N LoRA (N = matmul parameters) + attention 12 * layers * seq * "
        "width; no recomputation counted (gradient checkpointing is on in every preset).",
        "",
        "| model | preset | stage | tokens/s | s/step | FLOPs/token | MFU (spec) | of measured matmul | "
        "speed vs lora_naive | preset speed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {(j.model, j.stage): j.result.get("tokens_per_s") for j in train if j.preset == "lora_naive"}
    for j in train:
        r, p = j.result, j.planned
        if j.stage not in ("sft", "rm") or r.get("status") != "ok":
            continue
        ref = base.get((j.model, j.stage))
        rel = f"{r['tokens_per_s'] / ref:.2f}" if ref and r.get("tokens_per_s") else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        mm = f"{r['mfu_of_matmul']:.1%}" if r.get("mfu_of_matmul") else "-"
        L.append(
            f"| {j.model} | {j.preset} | {j.stage} | {r.get('tokens_per_s') or 0:.0f} | "
            f"{r.get('step_s') or 0:.2f} | {p['flops_per_token'] / 1e9:.3g} G | {mfu} | {mm} | {rel} | {p['speed']} |"
        )
    L += [
        "",
        "## 3. PPO steps",
        "",
        "| model | preset | layout | shared reward | steps | s/step | rollout tok/s | "
        "planner GPU | measured GPU | error | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j in train:
        if j.stage != "ppo":
            continue
        r, p = j.result, j.planned
        L.append(
            f"| {j.model} | {j.preset} | {r.get('layout') or ('lean' if p['ppo_lean'] else 'four_models')} | "
            f"{r.get('shared_reward', '-')} | {r.get('steps', '-')} | {r.get('step_s') or 0:.1f} | "
            f"{r.get('rollout_tokens_per_s') or 0:.0f} | {gib(p['gpu_bytes'])} | {gib(r.get('gpu_peak'))} | "
            f"{pct(r.get('mem_error'))} | {r.get('status', 'not run')} |"
        )
    L += [
        "",
        f"## 4. Generation (one prompt, {GEN_NEW} tokens forced, greedy, best of 2)",
        "",
        "bound: weight bytes / memory bandwidth is the least time a token takes (batch 1).",
        "",
        "| precision | weights | peak GPU | load s | decode tok/s | bound tok/s (spec) | bound (measured copy) | "
        "% of bound | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for j in check.jobs:
        if j.kind == "quantize":
            r = j.result
            L.append(
                f"| GPTQ quantize | - | - | {r.get('seconds', '-')} s to write | - | - | - | - | "
                f"{r.get('status', 'not run')} |"
            )
        if j.kind != "gen":
            continue
        r = j.result
        w = r.get("weights_bytes")
        bw, cp = m.get("spec_bandwidth"), m.get("copy_bytes_per_s")
        bound = bw / w if (bw and w) else None
        bound_cp = cp / 2 / w if (cp and w) else None  # the copy counted bytes read + written
        share = f"{r['tokens_per_s'] / bound:.0%}" if bound and r.get("tokens_per_s") else "-"
        L.append(
            f"| {j.quant} ({r.get('dtype', '-')}) | {gib(w)} | {gib(r.get('gpu_peak'))} | {r.get('load_s', '-')} | "
            f"{r.get('tokens_per_s') or 0:.1f} | {bound or 0:.0f} | {bound_cp or 0:.0f} | {share} | "
            f"{r.get('status', 'not run')} |"
        )
    L += [
        "",
        "## 5. Resume (checkpoint at step 2, resume, step 3's loss within 1e-4)",
        "",
        "| preset | resumed from | step | loss uninterrupted | loss resumed | abs diff | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in resume_rows(check):
        for s in row["steps"]:
            L.append(
                f"| {row['preset']} | {row['resumed_from']} | {s} | {row['whole'][s]:.6f} | {row['resumed'][s]:.6f} | "
                f"{abs(row['whole'][s] - row['resumed'][s]):.2e} | {'yes' if row['ok'] else 'NO'} |"
            )
    bad = [j for j in check.jobs if j.result.get("status") not in (None, "ok")]
    L += ["", "## Skipped and failed", ""]
    L += [
        f"- {j.key} ({j.title}): {j.result['status']}: {j.result.get('reason') or str(j.result.get('error', ''))[:400]}"
        for j in bad
    ] or ["- none"]
    not_run = [j.key for j in check.jobs if not j.result]
    if not_run:
        L.append(f"- not reached: {', '.join(not_run)}")
    (check.out / "results.md").write_text("\n".join(L) + "\n", encoding="utf-8")
    with open(check.out / "failures.log", "w", encoding="utf-8") as f:
        for j in bad:
            f.write(f"== {j.key}: {j.result['status']}: {j.result.get('reason') or j.result.get('error')}\n")
            f.write("\n".join(j.result.get("log_tail") or []) + "\n\n")
        for name, st in check.stacks.items():
            if not st.get("ok"):
                f.write(f"== {name} does not import\n" + "\n".join(st.get("log_tail") or []) + "\n\n")
        if check.warm_result and not check.warm_result.get("ok"):
            f.write("== colossalai kernels\n" + "\n".join(check.warm_result.get("error") or []) + "\n")


def dry_run(check: Check) -> None:
    """Print each part's jobs with their commands and the planner's figures; write plan.json."""
    from coati_tui.core.units import fmt_bytes

    plan_out: dict[str, Any] = {
        "dry_run": True,
        "mode": "quick" if check.args.quick else "full",
        "budget_s": check.args.budget,
        "models": check.models,
        "data": check.data,
        "work": str(check.work),
        "parts": {},
    }
    usable = check.args.budget - 30  # set-up takes ~20-30 s on a GPU machine
    essential = sum(j.est_s for j in check.jobs if j.tier == 1)
    check.say(
        f"time: essential jobs (every path once) ~{essential:.0f} s first, in the order of parts "
        f"{', '.join(map(str, EXEC_ORDER))}; then the extras, each part's within its share of ~{usable:.0f} s"
    )
    for part in sorted(PART_NAMES):
        jobs = [j for j in check.jobs if j.part == part]
        share = SHARES.get(part)
        total = sum(j.est_s for j in jobs)
        extra = sum(j.est_s for j in jobs if j.tier == 2)
        fits = (
            f" (jobs ~{total:.0f} s; extras ~{extra:.0f} s within a share of ~{share * usable:.0f} s)"
            if jobs and share
            else ""
        )
        if part:
            check.say(f"part {part}: {PART_NAMES[part]}{fits}")
        entry: dict[str, Any] = {"name": PART_NAMES[part], "jobs": [], "share": share, "est_s": total}
        if part == 0:
            check.say(
                "  stacks: each imported in its own child (bitsandbytes with a CUDA NF4 round trip, colossalai's "
                "Booster + plugins + HybridAdam, gptqmodel + optimum); the card probed (matmul, copy); "
                "colossalai's kernels built in the background"
            )
            entry["derived"] = "stacks, card, model folders"
        if part == 2:
            rows = [j for j in check.jobs if j.kind == "train" and j.stage in ("sft", "rm")]
            check.say(
                f"  derived from part 1's step events: {len(rows)} rows (SFT and RM): tokens/s, MFU over the "
                "card's spec peak and over the measured matmul, speed relative to lora_naive"
            )
            entry["derived"] = [j.key for j in rows]
        for j in jobs:
            p = j.planned
            fig = ""
            if j.kind == "train":
                fig = (
                    f" | planner: GPU {fmt_bytes(p['gpu_bytes'])}, RAM {fmt_bytes(p['cpu_bytes'])}, "
                    f"{p['batch_size']} x {p['seq_len']} tokens, {p['steps']} steps"
                )
            deps = f" | after {', '.join(j.deps)}" if j.deps else ""
            tag = " [extra]" if j.tier == 2 else ""
            check.say(f"  would run {j.key}{tag}: {j.title} (~{j.est_s:.0f} s){fig}{deps}")
            check.say(f"    $ {shlex.join(j.cmd)}")
            entry["jobs"].append(
                {
                    "key": j.key,
                    "kind": j.kind,
                    "title": j.title,
                    "cmd": j.cmd,
                    "deps": j.deps,
                    "needs": j.needs,
                    "est_s": j.est_s,
                    "tier": j.tier,
                    "run_dir": j.run_dir,
                    "planned": p,
                }
            )
        plan_out["parts"][str(part)] = entry
    (check.out / "plan.json").write_text(json.dumps(plan_out, indent=1, default=str), encoding="utf-8")
    check.say(f"plan written to {check.out / 'plan.json'}; {len(check.jobs)} jobs; nothing was run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 0.5B model only, fewer rows: ~4 minutes")
    ap.add_argument("--out", default=str(HERE.parent / "gpu"), help="results folder (default: bench/gpu)")
    ap.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "coati-gpu-check"),
        help="models, data, runs and logs (emptied first)",
    )
    ap.add_argument("--budget", type=float, default=None, help="seconds in all (default: 540, --quick 225)")
    ap.add_argument("--dry-run", action="store_true", help="plan, build the folders, print the commands; run nothing")
    ap.add_argument("--tiny", action="store_true", help="every part on a tiny model (a smoke run of this script)")
    ap.add_argument("--models", default=None, help="comma list of 0.5b, 1.5b (default: both; --quick: 0.5b)")
    ap.add_argument("--parts", default="1,2,3,4,5", help="which parts to run (set-up always runs)")
    ap.add_argument("--keep", action="store_true", help="keep every run's weights (default: freed once unused)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("--arch", "--dest", "--model", "--quant"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--data", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--no-weights", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--new", type=int, default=GEN_NEW, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    try:
        import coati_tui  # noqa: F401
    except ImportError:
        raise SystemExit(
            "coati_tui is not importable: install the carried wheels first (bench/gpu_carry.sh prints the command)"
        ) from None
    args.budget = args.budget or (225.0 if args.quick else 540.0)
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    check = Check(args)

    def stop(signum, _frame):
        check.say(f"signal {signum}: stopping the children, writing what was measured")
        check.close_children()
        report(check)
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mode = "dry run" if args.dry_run else ("quick" if args.quick else "full")
    check.say(
        f"coati-tui GPU check ({mode}): models {', '.join(check.model_keys)}, parts {args.parts}, "
        f"budget {args.budget:.0f} s, results in {check.out}, work in {check.work}"
    )
    try:
        setup(check)
        if not args.dry_run and not check.machine.get("cuda_available"):
            if not args.tiny:
                check.say("no CUDA device here: run with --dry-run, or --tiny for a smoke run on the CPU")
                report(check, final=True)
                raise SystemExit(2)
            check.device, check.bf16 = "cpu", False
        elif not args.dry_run:
            check.bf16 = bool(check.machine.get("bf16"))
        check.jobs = plan(check)
        check.by_key = {j.key: j for j in check.jobs}
        if args.dry_run:
            dry_run(check)
            return
        check.usable = check.left()
        for tier in (1, 2):
            for part in EXEC_ORDER:
                todo = [j for j in check.jobs if j.part == part and j.tier == tier]
                if not todo:
                    continue
                left = SHARES[part] * check.usable - check.spent.get(part, 0.0)
                check.say(
                    f"part {part}: {PART_NAMES[part]}"
                    + (f" (extras; {max(0.0, left):.0f} s of its share left)" if tier == 2 else "")
                )
                for job in todo:
                    try:
                        execute(check, job)
                    except Exception as exc:  # the check itself broke on this job: record it, go on
                        job.result = {"status": "failed", "error": f"gpu_check: {type(exc).__name__}: {exc}"}
                        check.say(f"    FAILED (in the check): {exc}")
                    if job.result.get("status") == "skipped":
                        check.say(f"  {job.key}: skipped: {job.result['reason']}")
                    report(check)
                    prune(check)
                if part == 1 and tier == 1 and 2 in check.wanted:
                    check.say(f"part 2: {PART_NAMES[2]}: derived from part 1's step events (results.md, section 2)")
        if check.warm is not None and check.warm.poll() is None:
            wait_warm(check)
    finally:
        check.close_children()
    report(check, final=True)
    check.say(f"done in {time.monotonic() - check.t0:.0f} s: {check.out / 'results.md'}, results.json, failures.log")
    print((check.out / "results.md").read_text(encoding="utf-8"), flush=True)


if __name__ == "__main__":
    main()
