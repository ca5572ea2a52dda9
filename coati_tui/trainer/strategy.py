"""How a preset becomes a trainable model, and how it is stepped. Runs in the trainer (imports torch lazily).

``load_model`` builds the model for every strategy (plain PyTorch + peft: LoRA, QLoRA on a bitsandbytes
4-bit base, or full fine-tune); the planner's estimate reads the same preset fields used here. Then a
strategy object owns the optimizer step, gradient sync, checkpoint IO and memory figures:
- ``Naive``: one process, or torch DDP when launched by torchrun;
- ``Colossal``: a colossalai Booster with GeminiPlugin, LowLevelZeroPlugin(stage=2, cpu_offload) or,
  for the naive presets under torchrun when colossalai is installed, TorchDDPPlugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coati_tui.core.errors import MissingDependency, transformers_major
from coati_tui.core.presets import Preset


@dataclass
class Prepared:
    model: object  # torch.nn.Module (a PeftModel under LoRA)
    device: str
    dtype_name: str  # fp32 | bf16 | fp16
    trainable_params: int
    total_params: int


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_precision(preset: Preset, device: str) -> str:
    """The preset's precision on a GPU (fp16 where bf16 is missing); fp32 on CPU."""
    import torch

    if device == "cpu":
        return "fp32"
    if preset.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return preset.precision


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_model(model_dir: str | Path, preset: Preset, stage: str, device: str | None = None,
               pad_token_id: int | None = None, adapters: bool = True) -> Prepared:
    """Load ``model_dir`` for ``stage`` ("sft" = causal LM, "rm" = one-label classifier) as ``preset`` says,
    for every strategy: naive models go to ``device``; under Gemini / ZeRO-2 they stay in CPU RAM in the
    preset's dtype until the booster wraps them (moving a model that only fits with offload would OOM).
    ``adapters=False``: the (frozen, possibly quantized) base only; the caller adds its own adapters."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    device = device or pick_device()
    precision = pick_precision(preset, device)
    dtype = torch_dtype(precision)
    kwargs: dict = {"dtype": dtype} if transformers_major() >= 5 else {"torch_dtype": dtype}
    kwargs["attn_implementation"] = "sdpa"
    if preset.quant.bits:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=preset.quant.bits == 4,
            load_in_8bit=preset.quant.bits == 8,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=preset.quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    model_dir = Path(model_dir)
    adapter = (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file()
    base_dir = model_dir
    if adapter:  # a LoRA run's output: its base with the adapter merged in
        import json

        if preset.quant.bits:
            raise ValueError(f"{model_dir} is a LoRA adapter; merging it into a quantized base is lossy. "
                             "Train this stage from a merged model, or with a non-quantized preset.")
        base_dir = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    if stage == "rm":
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if adapter:
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(model_dir)
        config.task_type = None  # an SFT (causal) adapter also merges into a reward model's backbone
        model = PeftModel.from_pretrained(model, model_dir, config=config).merge_and_unload()
    if not preset.quant.bits and preset.strategy == "naive":
        model.to(device)  # Gemini / ZeRO place the weights themselves when the booster wraps the model
    if preset.train.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if not adapters:
        model.requires_grad_(False)
    elif not preset.full_finetune:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=preset.lora.rank,
            lora_alpha=preset.lora.alpha,
            lora_dropout=preset.lora.dropout,
            target_modules=preset.lora.targets,
            task_type="SEQ_CLS" if stage == "rm" else "CAUSAL_LM",  # SEQ_CLS trains the score head too
        )
        model = get_peft_model(model, config)
        for p in model.parameters():  # adapters train in fp32 whatever the base dtype
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Prepared(model, device, precision, trainable, total)


def linear_targets(model, targets: str | list) -> list[str]:
    """LoRA target names. "all-linear" is resolved to the decoder's linear layers by name (peft's own
    resolution breaks when a second adapter is added to a model in peft 0.13)."""
    import torch

    if targets != "all-linear":
        return list(targets)
    skip = {"lm_head", "score", "classifier", "v_head"}
    out = getattr(model, "get_output_embeddings", lambda: None)()
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not out and name.split(".")[-1] not in skip:
            names.add(name.split(".")[-1])
    return sorted(names)


# ---- strategies ------------------------------------------------------------------------------------

def check_requirements(preset: Preset) -> None:
    """Before any model is loaded: what the preset needs and this machine lacks, with the fix."""
    import importlib.util


    if preset.needs.colossalai and importlib.util.find_spec("colossalai") is None:
        raise MissingDependency(f"preset {preset.name} needs colossalai: pip install 'coati-tui[colossalai]' "
                                "(in its own virtual environment: it pins torch<=2.5.1, transformers 4.51.3)")
    if preset.needs.cuda:
        import torch

        if not torch.cuda.is_available():
            why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise MissingDependency(f"preset {preset.name} ({preset.strategy}) needs a CUDA GPU; {why}. "
                                    "Pick lora_naive or qlora_naive here.")
    if preset.quant.bits and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependency(f"preset {preset.name} needs bitsandbytes: pip install bitsandbytes")


def distributed_env() -> tuple[int, int]:
    """(rank, world size); a lone process gets a one-process group's variables."""
    import os

    from coati_tui.core.procenv import free_port

    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


class Naive:
    name = "naive"

    def __init__(self, device: str, precision: str):
        import os

        self.device, self.precision = device, precision
        self.ddp = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
        self.rank, self.world = 0, 1
        if self.ddp:
            import torch.distributed as dist

            dist.init_process_group("nccl" if device == "cuda" else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.name = "naive+ddp"

    def optimizer(self, params, lr: float, weight_decay: float):
        import torch

        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def boost(self, model, optimizer, scheduler):
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model)
        return model, optimizer, scheduler

    def unwrap(self, model):
        return model.module if self.ddp else model

    def no_sync(self, model, last: bool):
        import contextlib

        return model.no_sync() if (self.ddp and not last) else contextlib.nullcontext()

    def backward(self, loss, optimizer) -> None:
        loss.backward()

    def step(self, model, optimizer) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()

    def reduce_max(self, value: float) -> float:
        """The largest ``value`` over all processes (NaN counts as infinite): a decision every process
        must take alike, such as skipping an update, is taken on it."""
        import math

        value = value if math.isfinite(value) else math.inf
        if self.world > 1:
            import torch
            import torch.distributed as dist

            t = torch.tensor([value], dtype=torch.float64,
                             device="cuda" if self.device == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            value = float(t.item())
        return value

    def _trainable_state(self, model) -> dict:
        inner = self.unwrap(model)
        names = {n for n, p in inner.named_parameters() if p.requires_grad}
        return {k: v.detach().contiguous() for k, v in inner.state_dict().items() if k in names}

    def save(self, model, optimizer, folder: Path) -> None:
        import torch
        from safetensors.torch import save_file

        if self.rank == 0:
            save_file(self._trainable_state(model), str(folder / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, model, optimizer, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        state = load_file(str(folder / "trainable.safetensors"), device=self.device)
        missing = set(self._trainable_state(model)) - set(state)
        if missing:
            raise ValueError(f"{folder}: checkpoint lacks {sorted(missing)[:3]}... (another preset?)")
        self.unwrap(model).load_state_dict(state, strict=False)
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))

    def save_final(self, model, folder: Path, write) -> None:
        """Whole replicas: the first process writes the final folder; the others wait."""
        self.barrier()
        if self.rank == 0:
            write(self.unwrap(model), folder, None)
        self.barrier()

    def memory(self) -> dict:
        import psutil

        out = {"cpu_rss": psutil.Process().memory_info().rss}
        if self.device == "cuda":
            import torch

            out.update(gpu_allocated=torch.cuda.memory_allocated(), gpu_reserved=torch.cuda.memory_reserved(),
                       gpu_peak=torch.cuda.max_memory_allocated())
        return out

    @property
    def fast_path(self) -> bool:
        """Whether a recipe may call into the model's parts (decoder, head) rather than its forward."""
        return not self.ddp


class Colossal(Naive):
    """colossalai's Booster. Gemini and ZeRO-2 need CUDA (HybridAdam has no CPU-only path); the DDP
    plugin runs on CPU too (gloo), which CI's colossalai stage exercises."""

    def __init__(self, preset: Preset, device: str, precision: str):
        import colossalai
        from colossalai.booster import Booster
        from colossalai.booster.plugin import GeminiPlugin, LowLevelZeroPlugin, TorchDDPPlugin

        self.device, self.precision, self.preset = device, precision, preset
        self.rank, self.world = distributed_env()
        colossalai.launch_from_torch(backend="nccl" if device == "cuda" else "gloo", seed=1024, verbose=False)
        mixed = "bf16" if precision == "bf16" else "fp16"
        if preset.strategy == "gemini":
            o = preset.offload
            extra = {} if o.placement == "auto" else {"offload_optim_frac": o.optim_frac,
                                                      "offload_param_frac": o.param_frac}
            # without it a second backward before the step overwrites the first one's gradients (Gemini
            # reuses the weights' bf16 chunk for them); it costs that reuse, so only when accumulating
            extra["enable_gradient_accumulation"] = preset.train.accumulation_steps > 1
            plugin = GeminiPlugin(precision=mixed, placement_policy=o.placement, max_norm=1.0, **extra)
            self.name = "colossalai_gemini"
        elif preset.strategy == "zero2_cpu":
            plugin = LowLevelZeroPlugin(stage=2, precision=mixed, cpu_offload=True, max_norm=1.0)
            self.name = "colossalai_zero2_cpu"
        else:
            plugin = TorchDDPPlugin()
            self.name = "colossalai_ddp"
        self.plugin, self.booster = plugin, Booster(plugin=plugin)
        self.ddp = preset.strategy == "naive"

    def optimizer(self, params, lr: float, weight_decay: float):
        if self.preset.strategy == "naive":
            return super().optimizer(params, lr, weight_decay)
        from colossalai.nn.optimizer import HybridAdam

        return HybridAdam(params, lr=lr, weight_decay=weight_decay)

    def boost(self, model, optimizer, scheduler):
        model, optimizer, _, _, scheduler = self.booster.boost(model, optimizer, lr_scheduler=scheduler)
        return model, optimizer, scheduler

    def unwrap(self, model):
        try:  # keep a PeftModel a PeftModel: the final folder is a standard adapter
            return model.unwrap(unwrap_peft=False)
        except TypeError:
            return model.unwrap()

    def no_sync(self, model, last: bool):
        import contextlib

        if last or not self.plugin.support_no_sync():
            return contextlib.nullcontext()
        return self.booster.no_sync(model)

    def backward(self, loss, optimizer) -> None:
        self.booster.backward(loss, optimizer)

    def step(self, model, optimizer) -> None:
        if self.preset.strategy == "naive":
            return super().step(model, optimizer)
        optimizer.step()  # the plugin clips (max_norm) and unscales

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def save(self, model, optimizer, folder: Path) -> None:
        if self.preset.strategy == "naive":  # DDP replicas: one copy of the trainable part, as plain PyTorch
            return super().save(model, optimizer, folder)  # (the plugin's sharded optimizer load needs CUDA)
        self.booster.save_model(model, str(folder / "model"), shard=True)
        self.booster.save_optimizer(optimizer, str(folder / "optimizer"), shard=True)

    def load(self, model, optimizer, folder: Path) -> None:
        if self.preset.strategy == "naive":
            return super().load(model, optimizer, folder)
        self.booster.load_model(model, str(folder / "model"))
        self.booster.load_optimizer(optimizer, str(folder / "optimizer"))

    @property
    def fast_path(self) -> bool:
        return False

    def save_final(self, model, folder: Path, write) -> None:
        if self.preset.strategy == "naive":
            return super().save_final(model, folder, write)
        # Gemini / ZeRO hold the weights in shards: every process takes part in gathering them
        weights = folder.with_name(folder.name + ".weights")
        self.booster.save_model(model, str(weights), shard=True, use_safetensors=True)
        self.barrier()
        if self.rank == 0:
            write(self.unwrap(model), folder, weights)
        self.barrier()


def make_strategy(preset: Preset, device: str, precision: str):
    """Gemini / ZeRO-2 presets -> Colossal; naive under torchrun with colossalai installed -> its DDP
    plugin; otherwise plain PyTorch."""
    import importlib.util
    import os

    if preset.strategy != "naive":
        return Colossal(preset, device, precision)
    if "WORLD_SIZE" in os.environ and importlib.util.find_spec("colossalai") is not None:
        return Colossal(preset, device, precision)
    return Naive(device, precision)
