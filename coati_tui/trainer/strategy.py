"""How a loaded model is stepped. Runs in the trainer (imports torch lazily); ``models.load_model`` loads it.

A strategy object owns the optimizer step, gradient sync, checkpoint IO and memory figures:
- ``Naive``: one process, or torch DDP when launched by torchrun;
- ``Colossal``: a colossalai Booster with GeminiPlugin, LowLevelZeroPlugin(stage=2, cpu_offload) or,
  for the naive presets under torchrun when colossalai is installed, TorchDDPPlugin.
"""

from __future__ import annotations

from pathlib import Path

from coati_tui.core.errors import MissingDependency
from coati_tui.core.presets import Preset
from coati_tui.trainer.malloc import PHASES


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
        raise MissingDependency(
            f"preset {preset.name} needs colossalai: pip install 'coati-tui[colossalai]' "
            "(in its own virtual environment: it pins torch<=2.5.1, transformers 4.51.3)"
        )
    if preset.needs.cuda:
        import torch

        if not torch.cuda.is_available():
            why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise MissingDependency(
                f"preset {preset.name} ({preset.strategy}) needs a CUDA GPU; {why}. "
                "Pick lora_naive or qlora_naive here."
            )
    if preset.quant.bits and importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependency(f"preset {preset.name} needs bitsandbytes: pip install bitsandbytes")


def distributed_env() -> tuple[int, int]:
    """(rank, world size); a lone process gets a one-process group's variables."""
    import os

    from coati_tui.core.procenv import free_port

    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
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
        with PHASES.backward():
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

            t = torch.tensor([value], dtype=torch.float64, device="cuda" if self.device == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            value = float(t.item())
        return value

    def reduce_mean(self, value: float) -> float:
        """The mean of ``value`` over all processes (a controller every process must steer alike)."""
        if self.world > 1:
            import torch
            import torch.distributed as dist

            t = torch.tensor([value], dtype=torch.float64, device="cuda" if self.device == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            value = float(t.item()) / self.world
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
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))

    def save_final(self, model, folder: Path, write) -> None:
        """Whole replicas: the first process writes the final folder; the others wait."""
        self.barrier()
        if self.rank == 0:
            write(self.unwrap(model), folder, None)
        self.barrier()

    def memory(self) -> dict:
        import psutil

        from coati_tui.trainer.measure import rss_peak

        rss = psutil.Process().memory_info().rss
        out = {"cpu_rss": rss, "cpu_peak": max(rss, rss_peak())}  # the kernel's mark lags its counters a little
        if self.device == "cuda":
            import torch

            out.update(
                gpu_allocated=torch.cuda.memory_allocated(),
                gpu_reserved=torch.cuda.memory_reserved(),
                gpu_peak=torch.cuda.max_memory_allocated(),
            )
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
            extra = (
                {}
                if o.placement == "auto"
                else {"offload_optim_frac": o.optim_frac, "offload_param_frac": o.param_frac}
            )
            # without it a second backward before the step overwrites the first one's gradients (Gemini
            # reuses the weights' bf16 chunk for them); it costs that reuse, so only when accumulating
            extra["enable_gradient_accumulation"] = preset.train.accumulation_steps > 1
            plugin = GeminiPlugin(precision=mixed, placement_policy=o.placement, max_norm=1.0, **extra)
            self.name = "colossalai_gemini"
        elif preset.strategy == "zero2_cpu":
            plugin = LowLevelZeroPlugin(stage=2, precision=mixed, cpu_offload=True, max_norm=1.0)
            self.name = "colossalai_zero2_cpu"
        elif preset.strategy == "zero2":  # the optimizer fits on the card: no offload, no CPU Adam
            plugin = LowLevelZeroPlugin(stage=2, precision=mixed, cpu_offload=False, max_norm=1.0)
            self.name = "colossalai_zero2"
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
        with PHASES.backward():
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
